//! The allow-lists, one per thread kind (see the module doc of
//! `sandbox` for where each is installed).
//!
//! Arguments are checked where that is cheap and safe: the ioctl request
//! numbers (tap configuration on the frontend threads, `FIONREAD` and
//! `FIONBIO` elsewhere), the address family of new sockets (IPv4 and
//! IPv6 for the attachments' reconnects and VXLAN's receive sockets, Unix
//! for the main thread's private connection to the handler), `clone`
//! only for threads (no fork), `prctl` only to name a thread or set
//! no-new-privs, `seccomp` only to add a filter. Everything else is
//! allowed by number.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::Kind;

/// A syscall allowed outright (`None`) or when one of the rules matches.
type List = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// `kind`'s rules, as seccompiler takes them.
pub(super) fn rules(kind: Kind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let list = match kind {
        Kind::Main => {
            // Every thread descends from the main thread and inherits its
            // filter: its list is everyone's, plus its own.
            let mut l = main()?;
            for k in [Kind::Frontend, Kind::Worker, Kind::Metrics, Kind::Control] {
                merge(&mut l, own(k)?);
            }
            l
        }
        k => own(k)?,
    };
    Ok(list
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

fn own(kind: Kind) -> Result<List, BackendError> {
    let mut l = List::new();
    allow(&mut l, EVERY_THREAD);
    match kind {
        Kind::Main => return main(),
        Kind::Frontend => {
            allow(&mut l, FRONTEND);
            allow(&mut l, ATTACHMENT);
            // Wherever the tap's io_uring is set up (configuring the
            // attachment runs on these threads too).
            allow(&mut l, IO_URING);
            ioctls(&mut l, TAP_IOCTLS)?;
            ioctls(&mut l, FD_IOCTLS)?;
            sockets(&mut l, &[libc::AF_INET, libc::AF_INET6])?;
        }
        Kind::Worker => {
            allow(&mut l, WORKER);
            allow(&mut l, ATTACHMENT);
            allow(&mut l, IO_URING);
            ioctls(&mut l, FD_IOCTLS)?;
            sockets(&mut l, &[libc::AF_INET, libc::AF_INET6])?;
        }
        Kind::Metrics => {
            allow(&mut l, METRICS);
            ioctls(&mut l, FD_IOCTLS)?;
            new_threads(&mut l)?;
        }
        Kind::Control => allow(&mut l, CONTROL),
    }
    Ok(l)
}

/// The main thread's own needs.
fn main() -> Result<List, BackendError> {
    let mut l = List::new();
    allow(&mut l, EVERY_THREAD);
    allow(&mut l, MAIN);
    ioctls(&mut l, TAP_IOCTLS)?;
    ioctls(&mut l, FD_IOCTLS)?;
    sockets(&mut l, &[libc::AF_UNIX])?;
    new_threads(&mut l)?;
    // glibc installs its handlers of SIGCANCEL and SIGSETXID (signals 32
    // and 33, the kernel's first real-time signals, which glibc keeps for
    // itself) when the process starts its first thread.
    with_args(&mut l, libc::SYS_rt_sigaction, &[32, 33], 0)?;
    // Threads it starts install their own filter under this one.
    with_args(
        &mut l,
        libc::SYS_prctl,
        &[libc::PR_SET_NO_NEW_PRIVS as u64],
        0,
    )?;
    with_args(
        &mut l,
        libc::SYS_seccomp,
        &[libc::SECCOMP_SET_MODE_FILTER as u64],
        0,
    )?;
    Ok(l)
}

/// Thread life, memory, locks, time, logging, closing descriptors.
const EVERY_THREAD: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Logging to stderr.
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
];

/// vhost-user-backend's request handler and the relays: vhost-user
/// messages with descriptors, guest memory and in-flight regions mapped
/// from them (SET_MEM_TABLE, ADD/REM_MEM_REG, SET_LOG_BASE,
/// GET/SET_INFLIGHT_FD), kick and call eventfds registered with the
/// workers. Beside these, the attachment's own work ([`ATTACHMENT`]) runs
/// on these threads too: SET_FEATURES configures it, SET_VRING_ENABLE
/// attaches a tap queue or opens a VXLAN pair's receive socket, and
/// GET_VRING_BASE's drain reaps its error queue and services it (a stream
/// reconnects, accepts and runs its timers there).
const FRONTEND: &[i64] = &[
    libc::SYS_dup,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_msync,
    libc::SYS_eventfd2,
];

/// A queue pair's worker, beside its attachment's work ([`ATTACHMENT`]):
/// the crate's epoll loop, eventfds, mapped guest memory.
const WORKER: &[i64] = &[
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// An attachment at work, on a worker or a frontend thread: the tap
/// (`readv`/`writev`), sockets (MSG_ZEROCOPY sends, the error queue,
/// reconnects and accepts of the stream attachment, VXLAN's receive
/// sockets), the attachment's own epoll sets and timers, and waiting for
/// notifications.
const ATTACHMENT: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_sendto,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
];

/// Batched tap writes through io_uring (workers; and the frontend
/// threads, which configure the attachment).
const IO_URING: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// The metrics HTTP server (tiny_http: an acceptor thread, a pool of
/// connection threads it starts and retires).
const METRICS: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_fcntl,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
];

/// The signal thread: event-manager's epoll, the signalfd, and removing
/// the socket file at SIGTERM if it is still zcnet's.
const CONTROL: &[i64] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_read,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The main thread after start-up: accepting frontends, building each
/// connection's device and private connection to the handler, joining the
/// connection's threads, closing leaked exit events.
const MAIN: &[i64] = &[
    libc::SYS_accept4,
    // Is an exit event's descriptor still that file?
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
];

// `libc::Ioctl` is a `c_ulong` on glibc and a `c_int` on other C
// libraries: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
/// ioctls on a tap queue: attach or detach it (`TUNSETQUEUE`, as the guest
/// enables pairs), and the offloads and header size the guest negotiated.
const TAP_IOCTLS: &[u64] = &[
    libc::TUNSETQUEUE as u64,
    libc::TUNSETOFFLOAD as u64,
    libc::TUNSETVNETHDRSZ as u64,
];

/// ioctls any descriptor may see: bytes waiting, non-blocking mode.
#[allow(clippy::unnecessary_cast)]
const FD_IOCTLS: &[u64] = &[libc::FIONREAD as u64, libc::FIONBIO as u64];

/// Starting threads: `clone` with `CLONE_THREAD` only (`clone3`, whose
/// flags a filter cannot read, is answered ENOSYS by the main thread's
/// second filter, so glibc uses `clone`), and what a new thread does
/// before it runs its code (under its creator's filter).
fn new_threads(l: &mut List) -> Result<(), BackendError> {
    allow(
        l,
        &[
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
        ],
    );
    let thread = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?])?;
    add_rules(l, libc::SYS_clone, vec![thread]);
    with_args(l, libc::SYS_prctl, &[libc::PR_SET_NAME as u64], 0)
}

fn allow(l: &mut List, nrs: &[i64]) {
    for &nr in nrs {
        l.insert(nr, None);
    }
}

/// `nr` allowed when argument `arg` (its low 32 bits) is one of `values`.
fn with_args(l: &mut List, nr: i64, values: &[u64], arg: u8) -> Result<(), BackendError> {
    let rules = values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                v,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    add_rules(l, nr, rules);
    Ok(())
}

fn ioctls(l: &mut List, requests: &[u64]) -> Result<(), BackendError> {
    with_args(l, libc::SYS_ioctl, requests, 1)
}

fn sockets(l: &mut List, families: &[libc::c_int]) -> Result<(), BackendError> {
    let families: Vec<u64> = families.iter().map(|&f| f as u64).collect();
    with_args(l, libc::SYS_socket, &families, 0)
}

/// Adds `rules` to `nr` unless it is allowed outright already.
fn add_rules(l: &mut List, nr: i64, rules: Vec<SeccompRule>) {
    if let Some(existing) = l.entry(nr).or_insert_with(|| Some(Vec::new())) {
        existing.extend(rules);
    }
}

/// Everything `other` allows, `l` allows too.
fn merge(l: &mut List, other: List) {
    for (nr, rules) in other {
        match rules {
            None => {
                l.insert(nr, None);
            }
            Some(rules) => add_rules(l, nr, rules),
        }
    }
}
