//! The sandbox: a seccomp filter on every thread of the daemon, allowing
//! only the system calls that thread's kind of work needs (`--seccomp`).
//!
//! # Where each filter is installed
//!
//! Filters are per thread, a thread inherits the filters of the thread
//! that created it, and filters stack: every filter attached to a thread
//! judges each of its system calls, and the strictest answer wins. So:
//!
//! - **The main thread** installs its filter ([`lock_down_main`]) once the
//!   privileged start-up work is done: after the attachments, the ledger,
//!   the metrics and vhost-user listeners are open and `--user` has
//!   switched users, and before it starts any other thread. It keeps
//!   serving frontends (accepting them, building each connection's
//!   device, starting and joining the connection's threads), and every
//!   other thread descends from it, so its list is the union of every
//!   kind's list plus its own. With it goes a second filter that answers
//!   `clone3` with ENOSYS, so glibc falls back to `clone`, whose flags a
//!   filter can read: a `clone` without `CLONE_THREAD` (a fork) is denied
//!   everywhere.
//! - **The control (signal) thread and the metrics thread** are zcnet's:
//!   each installs its own filter first thing ([`enter`]). The metrics
//!   thread builds the HTTP server itself, after its filter, so the
//!   server's own threads (tiny_http's acceptor and pool) inherit it.
//! - **The relay threads** of a connection (`frontend_relay`) are zcnet's
//!   too and install the frontend filter first thing.
//! - **vhost-user-backend's request handler thread** (one per connection,
//!   named [`HANDLER_THREAD`] by zcnet) is created by the crate, which
//!   calls back into zcnet only through the `VhostUserBackend` methods.
//!   `NetDevice::features` installs the frontend filter when it runs on
//!   that thread, and the daemon makes it run there before any request of
//!   the frontend is relayed: the first request the handler ever gets is
//!   a GET_FEATURES of zcnet's own, whose reply the daemon reads and drops
//!   (`daemon::serve_connection`).
//! - **vhost-user-backend's queue workers** (one per queue pair, created
//!   when the connection's `VhostUserDaemon` is built) call zcnet only
//!   through `NetDevice::handle_event`, whose first line installs the
//!   worker filter. The daemon wakes each worker once, right after it
//!   registers the pair's descriptors (a "sandbox" eventfd of the pair),
//!   so an idle worker is tightened too. Before that a worker runs only
//!   the crate's epoll loop, under the main thread's filter.
//!
//! # What a denial does
//!
//! `enforce` (the default) makes a denied call raise SIGSYS
//! (`SECCOMP_RET_TRAP`); the handler ([`sigsys`]) writes one line naming
//! the thread's kind and the system call (number and name) to stderr and
//! exits the process with status [`DENIED_EXIT_STATUS`]. Where glibc
//! blocks every signal around a call (inside `fork` or `pthread_create`),
//! the kernel cannot deliver the SIGSYS to the handler and kills the
//! process with it instead; the kernel logs trapped calls too (audit type
//! 1326, `sig=31`). `log` allows
//! every call but has the kernel log each one outside a list
//! (`SECCOMP_RET_LOG`: an audit record of type 1326 in the kernel log, or
//! in the audit log when auditd runs). `off` installs nothing.

mod lists;
mod sigsys;
mod syscall_names;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use log::{error, info};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use thiserror::Error;

pub use sigsys::DENIED_EXIT_STATUS;

/// The name zcnet gives vhost-user-backend's request handler thread.
pub const HANDLER_THREAD: &str = "zcnet-vhost-user";

/// `--seccomp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// A system call outside the thread's list kills the daemon, with a
    /// log line naming it.
    Enforce,
    /// A system call outside the thread's list is allowed and logged by
    /// the kernel (audit type 1326: dmesg, journalctl -k).
    Log,
    /// No filter.
    Off,
}

/// What a thread does, and so what it may ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The main thread: start-up is over; it accepts frontends and starts
    /// every other thread.
    Main,
    /// vhost-user-backend's request handler and zcnet's two relay threads
    /// of each connection.
    Frontend,
    /// A queue pair's worker.
    Worker,
    /// The metrics HTTP server.
    Metrics,
    /// The signal thread.
    Control,
}

impl Kind {
    /// As the denial message names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Frontend => "frontend (vhost-user request handler or relay)",
            Kind::Worker => "queue-pair worker",
            Kind::Metrics => "metrics",
            Kind::Control => "control (signal)",
        }
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter of the {kind} thread")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot compile the seccomp filter of the {kind} thread")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error(
        "cannot install the seccomp filter of the {kind} thread (does the kernel have \
         CONFIG_SECCOMP_FILTER? --seccomp off runs without filters)"
    )]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler that reports denied system calls")]
    Handler(#[source] std::io::Error),
}

/// The daemon's mode, set once by [`init`]. Unset (tests and fuzz
/// targets that run a device in-process) means no filter anywhere.
static MODE: OnceLock<SeccompMode> = OnceLock::new();

thread_local! {
    /// The kind whose filter this thread installed, if any; the SIGSYS
    /// handler reads it (a `const`-initialised `Copy` value: no lazy
    /// initialisation and no destructor, so reading it is a plain load
    /// from thread-local storage).
    static INSTALLED: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Records the mode for every thread to come and, for `enforce`,
/// installs the SIGSYS handler. Call it on the main thread before any
/// filter and any other thread.
pub fn init(mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Enforce {
        sigsys::install_handler().map_err(SandboxError::Handler)?;
    }
    if mode != SeccompMode::Off {
        fix_malloc_arenas();
    }
    let _ = MODE.set(mode);
    Ok(())
}

/// Sets glibc's limit of malloc arenas now, as glibc would compute it:
/// otherwise glibc computes it the first time a thread needs a new arena,
/// by opening `/sys/devices/system/cpu/online`, and no list allows
/// `openat`.
fn fix_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // glibc's default on 64-bit: 8 arenas per core.
        let arenas = libc::c_int::try_from(8 * cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes two integers; glibc applies M_ARENA_MAX
        // under its own lock. A failure leaves glibc's default.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// The main thread's filters (see the module doc), once start-up is done.
pub fn lock_down_main() -> Result<(), SandboxError> {
    let Some(&mode) = MODE.get() else {
        return Ok(());
    };
    if mode == SeccompMode::Off {
        info!("seccomp: off (--seccomp off); no thread is filtered");
        return Ok(());
    }
    install(Kind::Main, mode)?;
    apply(&no_clone3()?, Kind::Main)?;
    info!(
        "seccomp: {} (--seccomp {}); every thread now runs under its kind's allow-list",
        if mode == SeccompMode::Enforce {
            "enforced, a denied system call ends the daemon"
        } else {
            "logging, system calls outside the lists are allowed and logged by the kernel \
             (audit type 1326)"
        },
        match mode {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    );
    Ok(())
}

/// Installs `kind`'s filter on the calling thread unless it has one
/// already (or the daemon runs without filters). A thread that cannot be
/// filtered must not go on unfiltered: the daemon exits with the cause.
pub fn enter(kind: Kind) {
    let Some(&mode) = MODE.get() else {
        return;
    };
    if mode == SeccompMode::Off || INSTALLED.with(Cell::get).is_some() {
        return;
    }
    if let Err(e) = install(kind, mode) {
        error!("{}", crate::error_chain(&e));
        std::process::exit(1);
    }
}

/// [`enter`], on the thread named `name` only.
pub fn enter_if_named(name: &str, kind: Kind) {
    if std::thread::current().name() == Some(name) {
        enter(kind);
    }
}

/// The kind whose filter the calling thread installed.
pub(crate) fn installed() -> Option<Kind> {
    INSTALLED.with(Cell::get)
}

fn install(kind: Kind, mode: SeccompMode) -> Result<(), SandboxError> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::Trap,
        _ => SeccompAction::Log,
    };
    let program = compile(kind, mismatch)?;
    apply(&program, kind)?;
    INSTALLED.with(|k| k.set(Some(kind)));
    Ok(())
}

/// `kind`'s list as a BPF program: allowed calls pass, others get
/// `mismatch`.
pub(crate) fn compile(kind: Kind, mismatch: SeccompAction) -> Result<BpfProgram, SandboxError> {
    let build = |source| SandboxError::Build {
        kind: kind.name(),
        source,
    };
    let rules = lists::rules(kind).map_err(build)?;
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()).map_err(build)?;
    filter.try_into().map_err(|source| SandboxError::Compile {
        kind: kind.name(),
        source,
    })
}

/// `clone3` fails with ENOSYS; everything else passes (to the other
/// filters).
fn no_clone3() -> Result<BpfProgram, SandboxError> {
    let build = |source| SandboxError::Build {
        kind: Kind::Main.name(),
        source,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(build)?;
    filter.try_into().map_err(|source| SandboxError::Compile {
        kind: Kind::Main.name(),
        source,
    })
}

fn apply(program: &BpfProgram, kind: Kind) -> Result<(), SandboxError> {
    seccompiler::apply_filter(program).map_err(|source| SandboxError::Install {
        kind: kind.name(),
        source,
    })
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(target_arch = "riscv64")]
    return TargetArch::riscv64;
}
