//! Sockets lost while the kernel still held pages lent through them.
//!
//! A lost socket whose zero-copy sends are not all released is reset
//! (`connect` with AF_UNSPEC), which purges its write queue, and kept
//! open here, retiring, so its error queue can still be read. The worker
//! never waits for it: each retiring socket sits in a set of its own,
//! edge-triggered on EPOLLERR (a reset socket reports EPOLLHUP for good,
//! so only edges say that something new arrived), beside a timer for the
//! earliest deadline; that set sits in the attachment's, so a
//! notification or the deadline wakes the worker, and `service` reaps.
//!
//! A socket leaves when every send is released, or when its deadline
//! (`RETIRE_WAIT` after the reset) passes: what the kernel never reported
//! is then completed anyway, exactly once ([`SocketIds::retire`]). After
//! the reset its pages can only be in packets of a connection the peer no
//! longer accepts data on, so a guest that rewrites them harms nobody.
//!
//! Each socket's ids were offset away from its successor's when it was
//! lost (see `ids`), so a reconnect goes on meanwhile.

use std::io;
use std::mem;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::reap_into;
use super::ids::SocketIds;
use crate::attachment::Completion;

/// How long a lost connection's lent pages may take to come back (after
/// its write queue is purged) before they are completed anyway.
const RETIRE_WAIT: Duration = Duration::from_millis(200);
/// The set's token for the deadline timer; sockets count up from 1.
const TOKEN_TIMER: u64 = 0;

/// The retiring sockets of one attachment.
pub(super) struct Retiring {
    /// Each retiring socket (EPOLLERR, edge-triggered) and the timer.
    set: Epoll,
    /// Armed for the earliest deadline while any socket retires.
    timer: TimerFd,
    socks: Vec<Retiree>,
    next_token: u64,
}

struct Retiree {
    sock: TcpStream,
    ids: SocketIds,
    deadline: Instant,
}

impl Retiring {
    /// No socket yet; the set joins `parent` (level-triggered, readable)
    /// under `token`.
    pub(super) fn new(parent: &Epoll, token: u64) -> io::Result<Self> {
        let set = Epoll::new()?;
        let timer = TimerFd::new()?;
        fcntl(timer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        set.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TIMER),
        )?;
        parent.ctl(
            ControlOperation::Add,
            set.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
        Ok(Retiring {
            set,
            timer,
            socks: Vec::new(),
            next_token: TOKEN_TIMER + 1,
        })
    }

    /// The set: readable when a retiring socket has news or a deadline
    /// passed.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.set` owns the epoll fd and closes it only when
        // dropped, which cannot happen while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.set.as_raw_fd()) }
    }

    /// Takes a lost socket and its ids. Appends to `out` what its
    /// notifications complete; if sends are still outstanding, resets it
    /// and keeps it until they are released or the deadline passes;
    /// otherwise closes it at once.
    pub(super) fn retire(
        &mut self,
        sock: TcpStream,
        mut ids: SocketIds,
        raw: &mut Vec<Completion>,
        out: &mut Vec<Completion>,
    ) {
        let _ = reap_into(&sock, &mut ids, raw, out);
        if ids.outstanding() == 0 {
            return;
        }
        if let Err(e) = disconnect(&sock) {
            debug!("TCP stream: cannot reset the lost connection: {e}");
        }
        // The purge usually releases everything at once.
        let _ = reap_into(&sock, &mut ids, raw, out);
        if ids.outstanding() == 0 {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.set.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::ERROR | EventSet::EDGE_TRIGGERED, token),
        ) {
            // Only the early wake-ups are lost: the deadline still comes.
            warn!("TCP stream: cannot watch the lost connection's notifications: {e}");
        }
        debug!(
            "TCP stream: the lost connection retires with {} zero-copy sends outstanding",
            ids.outstanding()
        );
        self.socks.push(Retiree {
            sock,
            ids,
            deadline: Instant::now() + RETIRE_WAIT,
        });
        self.arm();
    }

    /// Reaps every retiring socket into `out` (engine ids), and closes
    /// those whose sends are all released or whose deadline passed,
    /// completing what is left of the latter. Returns whether anything
    /// was appended. Never blocks.
    pub(super) fn service(&mut self, raw: &mut Vec<Completion>, out: &mut Vec<Completion>) -> bool {
        if self.socks.is_empty() {
            return false;
        }
        // Consume the edges and the expiry: each socket is reaped below
        // whichever fired.
        let mut events = [EpollEvent::default(); 8];
        while let Ok(n) = self.set.wait(0, &mut events) {
            if n < events.len() {
                break;
            }
        }
        let _ = self.timer.wait(); // non-blocking: clears the expiry
        let before = out.len();
        let now = Instant::now();
        let set = &self.set;
        self.socks.retain_mut(|r| {
            let _ = reap_into(&r.sock, &mut r.ids, raw, out);
            let expired = now >= r.deadline;
            if r.ids.outstanding() > 0 && !expired {
                return true;
            }
            if r.ids.outstanding() > 0 {
                warn!(
                    "TCP stream: the kernel did not release {} zero-copy sends of the lost \
                     connection within {RETIRE_WAIT:?}; completing their chains anyway",
                    r.ids.outstanding()
                );
                r.ids.retire(out);
            }
            let _ = set.ctl(
                ControlOperation::Delete,
                r.sock.as_raw_fd(),
                EpollEvent::default(),
            );
            false
        });
        self.arm();
        out.len() > before
    }

    /// Arms the timer for the earliest deadline, or disarms it.
    fn arm(&mut self) {
        // Deadlines follow the order sockets were lost in.
        let Some(first) = self.socks.first() else {
            let _ = self.timer.clear();
            return;
        };
        // A zero duration would disarm the timer.
        let left = first
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1));
        if let Err(e) = self.timer.reset(left, None) {
            warn!("TCP stream: cannot arm the retiring deadline: {e}");
        }
    }
}

/// Resets the connection and frees its write queue at once (`connect`
/// with AF_UNSPEC), keeping the fd open so its error queue can still be
/// read.
fn disconnect(sock: &TcpStream) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr is valid; only its family is read.
    let mut addr: libc::sockaddr = unsafe { mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: the socket is borrowed, so open, for the call; the pointer
    // and length describe `addr` on our stack.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr,
            mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
