//! The guest image: built (or found up to date) once per test process by
//! `guest-tests/image/build-image.sh`, cached under `target/guest-image`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub(crate) struct Image {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
}

/// The guest image, built on first use. A failure to build it fails the
/// test with the builder's output: guest tests never pass by skipping.
pub(crate) fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(build) {
        Ok(image) => image,
        Err(e) => panic!("the guest image could not be set up:\n{e}"),
    }
}

fn build() -> Result<Image, String> {
    // This crate is guest-tests/harness; the image builder is
    // guest-tests/image, and the image goes under the workspace's target.
    let guest_tests = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in guest-tests/");
    let script = guest_tests.join("image/build-image.sh");
    let out = guest_tests.join("../target/guest-image");
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    if !run.status.success() {
        return Err(format!(
            "{} failed ({}):\n{log}",
            script.display(),
            run.status
        ));
    }
    eprint!("{log}");
    let image = Image {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs.cpio.gz"),
    };
    for p in [&image.kernel, &image.initrd] {
        if !p.exists() {
            return Err(format!(
                "{} succeeded but {} is missing",
                script.display(),
                p.display()
            ));
        }
    }
    Ok(image)
}
