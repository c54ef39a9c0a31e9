//! The fuzz targets' committed corpus (`backend/fuzz/corpus/<target>/`),
//! replayed on stable through the very functions the targets call: the
//! seeds (valid inputs, `backend/fuzz/seeds.py`), a `crash-*` file for
//! every crash the fuzzer found in zcnet, which must not crash again, and
//! a `harness-*` file for every input that broke a target's own harness.

use std::fs;
use std::path::Path;

/// Runs every file of `corpus/<target>` through `f`; at least one must
/// be there.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus for {target} in {}",
        dir.display()
    );
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        eprintln!("{target}: {}", file.display());
        f(&data);
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn descriptor_chains() {
    replay("descriptor_chains", zcnet::fuzzing::descriptor_chains);
}

#[test]
fn vnet_hdr() {
    replay("vnet_hdr", zcnet_tap::fuzzing::vnet_hdr);
}

#[test]
fn records() {
    replay("records", zcnet_tap::fuzzing::records);
}

#[test]
fn vxlan() {
    replay("vxlan", zcnet_tap::fuzzing::vxlan);
}

#[test]
fn vhost_messages() {
    replay("vhost_messages", zcnet::fuzzing::vhost_messages);
}

#[test]
fn vhost_daemon() {
    replay("vhost_daemon", zcnet::fuzzing::vhost_daemon);
}
