//! TX with DPDK's `virtio_user` as zcnet's frontend: `dpdk-testpmd` in
//! txonly mode (DPDK 22.11, Debian's `dpdk-dev`) connects to zcnet's
//! vhost-user socket and keeps its TX ring full of frames of the
//! workload's size, busy-polling one core (lcore 1) as a DPDK guest does;
//! zcnet writes them into its tap. The rate and the bytes are zcnet's own
//! counters, read at both ends of the window; the CPU time is zcnet's
//! process, and testpmd's counts as the feeder's.
//!
//! DPDK runs without hugepages (`--no-huge`: its memory is shared with
//! zcnet through a memfd), so nothing on the machine has to be set aside.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::driver::Counters;
use zcnet_harness::netns::NetNs;

use super::tap::{sample, Engine, Side, TapSample};
use super::{checked_metrics, window_of, MeasureError, Timing, QUEUE_SIZE};
use crate::cpu::{self, CpuOf};
use crate::workload::{Direction, Workload};

const TESTPMD: &str = "dpdk-testpmd";
/// How long zcnet may wait for the first frame from testpmd (its start-up
/// allocates and touches 1 GiB).
const FIRST_FRAME: Duration = Duration::from_secs(30);
/// The tap's name in zcnet's namespace.
const TAP: &str = "zb0";

/// Where testpmd is, or why the DPDK rows cannot be measured.
#[derive(Clone, Debug)]
pub struct Dpdk {
    testpmd: PathBuf,
}

impl Dpdk {
    /// `dpdk-testpmd` from PATH; if it is missing, installs Debian's
    /// `dpdk-dev` (which has it) with apt-get, saying so. `Err` says why
    /// the rows are not measured.
    pub fn find_or_install() -> Result<Dpdk, String> {
        if let Some(p) = which(TESTPMD) {
            return Ok(Dpdk { testpmd: p });
        }
        eprintln!("zcnet-bench: {TESTPMD} is missing: installing Debian's dpdk-dev (apt-get)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "dpdk-dev"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
        match (status, which(TESTPMD)) {
            (_, Some(p)) => Ok(Dpdk { testpmd: p }),
            (Ok(s), None) => Err(format!(
                "`apt-get install -y dpdk-dev` ended with {s} and {TESTPMD} is still missing"
            )),
            (Err(e), None) => Err(format!("cannot run apt-get to install dpdk-dev: {e}")),
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// A running testpmd, stopped with SIGINT (its clean exit) on drop.
struct Testpmd {
    child: Child,
    log: PathBuf,
    /// DPDK's runtime directory of this run (`/var/run/dpdk/PREFIX` for
    /// root), removed once testpmd has exited.
    runtime_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Testpmd {
    fn start(dpdk: &Dpdk, socket: &Path, frame_len: usize) -> io::Result<Testpmd> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("testpmd.log");
        let prefix = format!(
            "zcbench{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map_or("0".into(), |n| n.to_string_lossy().replace('.', ""))
        );
        let child = Command::new(&dpdk.testpmd)
            .args(["-l", "0,1", "--no-pci", "--no-huge", "-m", "1024"])
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!(
                "--vdev=net_virtio_user0,path={},queues=1,queue_size={QUEUE_SIZE}",
                socket.display()
            ))
            .arg("--")
            .args(["--forward-mode=txonly", "--nb-cores=1"])
            .arg(format!("--txpkts={frame_len}"))
            .args(["--txd=256", "--rxd=256", "--total-num-mbufs=16384"])
            // Not interactive: testpmd forwards until it reads a line or
            // gets SIGINT; the pipe stays open until it is stopped.
            .stdin(Stdio::piped())
            .stdout(File::create(&log)?)
            .stderr(File::create(dir.path().join("testpmd.err"))?)
            .spawn()?;
        Ok(Testpmd {
            child,
            log,
            runtime_dir: Path::new("/var/run/dpdk").join(&prefix),
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err =
            std::fs::read_to_string(self.log.with_file_name("testpmd.err")).unwrap_or_default();
        format!("{out}{err}")
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the pid of our own child, which has not
        // been waited for yet, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20)); // polling the child's exit, with a deadline
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// zcnet's TX frames and bytes on queue pair 0 so far.
fn tx_counters(ns: &NetNs) -> (u64, u64) {
    let m = Daemon::scrape(ns);
    (
        Daemon::metric(&m, "zcnet_tx_frames_total", 0),
        Daemon::metric(&m, "zcnet_tx_bytes_total", 0),
    )
}

/// Runs a TX `workload` through zcnet with `engine`, fed by testpmd.
pub fn run(
    bin: &ZcnetBin,
    dpdk: &Dpdk,
    workload: Workload,
    engine: Engine,
    repetition: usize,
    timing: Timing,
) -> Result<TapSample, MeasureError> {
    assert_eq!(workload.direction(), Direction::Tx);
    let ns = NetNs::new();
    let mut daemon = Daemon::start(bin, &ns, TAP, &["--io-engine", engine.arg()]);
    ns.ip(&["link", "set", TAP, "up"]);
    let testpmd = Testpmd::start(dpdk, &daemon.socket, workload.frame_len())
        .map_err(MeasureError::Testpmd)?;
    let started = Instant::now();
    while tx_counters(&ns).0 == 0 {
        if started.elapsed() > FIRST_FRAME {
            return Err(MeasureError::TestpmdSilent {
                seconds: FIRST_FRAME.as_secs(),
                log: testpmd.log_text(),
            });
        }
        thread::sleep(Duration::from_millis(100)); // polling zcnet's counter, with a deadline
    }
    let (zcnet_pid, testpmd_pid) = (daemon.pid(), testpmd.pid());
    let nothing = Counters::default();
    let (a, b) = window_of(
        timing,
        || Ok(tx_counters(&ns)),
        &nothing,
        || cpu::seconds(CpuOf::Process(zcnet_pid)),
        || cpu::seconds(CpuOf::Process(testpmd_pid)),
    )?;
    drop(testpmd);
    let sample = sample(workload, Side::ZcnetDpdk(engine), repetition, &a, &b)?;
    checked_metrics(&mut daemon, &ns, Direction::Tx, 1)?;
    Ok(sample)
}
