//! The connection's life: connecting with backoff, accepting one peer at a
//! time, noticing that the peer is gone and handing its socket to
//! `retiring`, and acting on whatever the attachment's epoll set reports.

use std::fmt::Display;
use std::io;
use std::mem;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::ids::SocketIds;
use super::{StreamAttachment, StreamEndpoint};
use crate::attachment::Completion;
use crate::zerocopy;

/// Tokens of the attachment's epoll set. A socket's token also carries
/// its generation, so an event of a closed socket is never taken for one
/// of its successor's.
const TOKEN_TIMER: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const TOKEN_LISTENER: u64 = 3;
const TOKEN_SOCKET: u64 = 4;
/// The set of retiring sockets (see `retiring`).
pub(super) const TOKEN_RETIRING: u64 = 5;
const TOKEN_KIND: u64 = 0xff;

/// Reconnect backoff: 100 ms, doubling up to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connect attempt that gets no answer (SYNs dropped) fails after this,
/// rather than after the kernel's minutes of SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection trouble is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The socket of the moment.
pub(super) enum Conn {
    /// None: waiting for the backoff timer (connect) or a peer (listen).
    Down,
    Connecting {
        sock: TcpStream,
        zc: bool,
    },
    /// `zc`: SO_ZEROCOPY is on.
    Up {
        sock: TcpStream,
        zc: bool,
    },
}

/// The socket of the moment and what its life needs.
pub(super) struct Link {
    pub(super) conn: Conn,
    /// Bumped for every socket.
    generation: u64,
    /// The reconnect backoff while down, the connect timeout while
    /// connecting.
    timer: TimerFd,
    backoff: Duration,
    /// Failed attempts since the last connection.
    failures: u32,
    last_log: Option<Instant>,
}

impl Link {
    /// No socket yet; adds the timer and `wake` to `epoll`.
    pub(super) fn new(epoll: &Epoll, wake: &EventFd) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        fcntl(timer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        for (fd, token) in [
            (timer.as_raw_fd(), TOKEN_TIMER),
            (wake.as_raw_fd(), TOKEN_WAKE),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Link {
            conn: Conn::Down,
            generation: 0,
            timer,
            backoff: BACKOFF_MIN,
            failures: 0,
            last_log: None,
        })
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.conn, Conn::Up { .. })
    }

    pub(super) fn token(&self) -> u64 {
        TOKEN_SOCKET | (self.generation << 8)
    }

    /// Whether connection trouble may be logged now (at most every
    /// `LOG_EVERY`); otherwise it goes to the debug log.
    fn may_log(&mut self) -> bool {
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now - t >= LOG_EVERY) {
            self.last_log = Some(now);
            true
        } else {
            false
        }
    }
}

/// Reads the socket's zero-copy notifications into `out`, in engine ids,
/// through `raw` (scratch the caller keeps, so nothing is allocated once
/// it has grown).
pub(super) fn reap_into(
    sock: &TcpStream,
    ids: &mut SocketIds,
    raw: &mut Vec<Completion>,
    out: &mut Vec<Completion>,
) -> io::Result<()> {
    raw.clear();
    let r = zerocopy::reap(sock.as_fd(), raw);
    for c in raw.drain(..) {
        ids.complete(c, out);
    }
    r
}

/// Bytes received and not yet read.
fn unread(sock: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, here `n` on our stack; the socket
    // is borrowed, so open, for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n as usize
    }
}

impl StreamAttachment {
    /// The first step: connect at once, or listen.
    pub(super) fn start(&mut self) -> io::Result<()> {
        match self.endpoint {
            StreamEndpoint::Connect(_) => {
                self.connect();
                Ok(())
            }
            StreamEndpoint::Listen(_) => self.watch_listener(),
        }
    }

    /// Marks the attachment for the worker's attention: its epoll set
    /// turns readable and the worker calls `ready`.
    pub(super) fn poke(&self) {
        let _ = self.wake.write(1);
    }

    /// Drains the epoll set (zero timeout) and advances the connection.
    /// A change found outside `ready` pokes the worker, which may have
    /// work to do about it (frames to read, completions to reap).
    pub(super) fn service(&mut self, from_ready: bool) {
        let mut events = [EpollEvent::default(); 8];
        let mut changed = false;
        // Each round acts on one change and looks again: a change alters
        // the set. Level triggering keeps whatever a round left.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("TCP stream: cannot poll its sockets: {e}");
                    break;
                }
            };
            let again = events[..n]
                .iter()
                .any(|ev| self.on_event(ev.data(), ev.event_set()));
            if !again {
                break;
            }
            changed = true;
        }
        if changed && !from_ready {
            self.poke();
        }
    }

    /// Acts on one ready fd; returns whether the connection changed or
    /// work became possible (TX room, completions to reap).
    fn on_event(&mut self, token: u64, events: EventSet) -> bool {
        match token & TOKEN_KIND {
            TOKEN_TIMER => {
                let _ = self.link.timer.wait(); // non-blocking: clears the expiry
                match self.link.conn {
                    Conn::Down if matches!(self.endpoint, StreamEndpoint::Connect(_)) => {
                        self.connect();
                        true
                    }
                    Conn::Connecting { .. } => {
                        let timeout = io::Error::from(io::ErrorKind::TimedOut);
                        self.connect_failed(&timeout);
                        true
                    }
                    Conn::Down | Conn::Up { .. } => false,
                }
            }
            TOKEN_LISTENER => matches!(self.link.conn, Conn::Down) && self.accept(),
            TOKEN_SOCKET if token == self.link.token() => self.on_socket(events),
            // Completions for the worker to reap.
            TOKEN_RETIRING => self.retiring.service(&mut self.raw, &mut self.pending),
            // The wake eventfd (`ready` clears it), or a closed socket.
            _ => false,
        }
    }

    fn on_socket(&mut self, events: EventSet) -> bool {
        match &self.link.conn {
            Conn::Connecting { sock, .. } => {
                let err = match socket::getsockopt(sock, sockopt::SocketError) {
                    Ok(0) if events.contains(EventSet::OUT) => None,
                    Ok(0) => Some(io::Error::from(io::ErrorKind::ConnectionAborted)),
                    Ok(e) => Some(io::Error::from_raw_os_error(e)),
                    Err(e) => Some(e.into()),
                };
                match err {
                    None => self.connected(),
                    Some(e) => self.connect_failed(&e),
                }
                true
            }
            Conn::Up { sock, .. } => {
                // EPOLLERR is also raised by queued zero-copy
                // notifications, which `reap` reads; a connection error
                // sets SO_ERROR.
                let broken = if events.contains(EventSet::ERROR) {
                    match socket::getsockopt(sock, sockopt::SocketError) {
                        Ok(0) => None,
                        Ok(e) => Some(io::Error::from_raw_os_error(e)),
                        Err(e) => Some(e.into()),
                    }
                } else {
                    None
                };
                // The peer closed: once its last frames are read (by
                // `recv`, which then meets the end), the connection is over.
                let closed = events.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP)
                    && unread(sock) == 0;
                if let Some(e) = broken {
                    self.lose(e);
                    return true;
                }
                if closed {
                    self.lose("the peer closed the connection");
                    return true;
                }
                if events.contains(EventSet::OUT) {
                    // Room for TX: the tail goes first. Either way TX may
                    // go on now, or the loss must be acted on.
                    if self.tx_clear() {
                        self.space_ok();
                        return true;
                    }
                    return matches!(self.flush_tail(), Ok(true) | Err(_));
                }
                false
            }
            Conn::Down => false,
        }
    }

    /// Turns SO_ZEROCOPY on for a new socket if configured; logs, and
    /// copies that connection's frames, if the kernel refuses.
    fn enable_zerocopy(&self, sock: &impl AsFd) -> bool {
        self.zerocopy
            && match zerocopy::enable(sock.as_fd()) {
                Ok(()) => true,
                Err(e) => {
                    warn!("TCP stream: SO_ZEROCOPY refused ({e}); this connection's frames are copied");
                    false
                }
            }
    }

    /// Starts a non-blocking connect to the peer.
    fn connect(&mut self) {
        let StreamEndpoint::Connect(remote) = self.endpoint else {
            return;
        };
        let family = if remote.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let attempt = socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| {
            match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)) {
                Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
                Err(e) => Err(e),
            }
        });
        let sock = match attempt {
            Ok(sock) => sock,
            Err(e) => return self.connect_failed(&io::Error::from(e)),
        };
        let zc = self.enable_zerocopy(&sock);
        self.link.generation += 1;
        // Writable (or failed) once the handshake is over.
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::OUT, self.link.token()),
        ) {
            return self.connect_failed(&e);
        }
        debug!("TCP stream: connecting to {remote}");
        if let Err(e) = self.link.timer.reset(CONNECT_TIMEOUT, None) {
            warn!("TCP stream: cannot arm the connect timeout: {e}");
        }
        self.link.conn = Conn::Connecting { sock, zc };
    }

    /// The handshake completed.
    fn connected(&mut self) {
        let Conn::Connecting { sock, zc } = mem::replace(&mut self.link.conn, Conn::Down) else {
            return;
        };
        let watched = self.epoll.ctl(
            ControlOperation::Modify,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, self.link.token()),
        );
        if let Err(e) = watched {
            self.link.conn = Conn::Connecting { sock, zc };
            return self.connect_failed(&e);
        }
        let link = &mut self.link;
        let _ = link.timer.clear();
        let _ = sock.set_nodelay(true);
        let peer = sock
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        match link.failures {
            0 => info!("TCP stream: connected to {peer}"),
            n => info!("TCP stream: connected to {peer} after {n} failed attempts"),
        }
        link.failures = 0;
        link.backoff = BACKOFF_MIN;
        link.last_log = None;
        link.conn = Conn::Up { sock, zc };
    }

    /// A connect attempt failed: try again after the backoff.
    fn connect_failed(&mut self, err: &io::Error) {
        if let Conn::Connecting { sock, .. } = mem::replace(&mut self.link.conn, Conn::Down) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                sock.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.link.failures += 1;
        let delay = self.schedule_reconnect();
        let StreamEndpoint::Connect(remote) = self.endpoint else {
            return;
        };
        let attempt = self.link.failures;
        if self.link.may_log() {
            warn!(
                "TCP stream: cannot connect to {remote}: {err} (attempt {attempt}); trying again in {delay:?}"
            );
        } else {
            debug!("TCP stream: cannot connect to {remote}: {err}; trying again in {delay:?}");
        }
    }

    /// Arms the timer for the next attempt; returns its delay.
    fn schedule_reconnect(&mut self) -> Duration {
        let delay = self.link.backoff;
        self.link.backoff = (delay * 2).min(BACKOFF_MAX);
        if let Err(e) = self.link.timer.reset(delay, None) {
            warn!("TCP stream: cannot arm the reconnect timer: {e}");
        }
        delay
    }

    /// Watches the listener for the next peer.
    fn watch_listener(&self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        self.epoll.ctl(
            ControlOperation::Add,
            l.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )
    }

    /// Accepts one peer; the next waits in the backlog until it leaves.
    fn accept(&mut self) -> bool {
        let Some(l) = &self.listener else {
            return false;
        };
        let (sock, peer) = match l.accept() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                if self.link.may_log() {
                    warn!("TCP stream: cannot accept a peer: {e}");
                }
                return false;
            }
        };
        if let Err(e) = sock.set_nonblocking(true) {
            warn!("TCP stream: cannot make the socket of {peer} non-blocking ({e}); closing it");
            return false;
        }
        let zc = self.enable_zerocopy(&sock);
        let _ = sock.set_nodelay(true);
        self.link.generation += 1;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, self.link.token()),
        ) {
            warn!("TCP stream: cannot watch the socket of {peer} ({e}); closing it");
            return false;
        }
        if let Some(l) = &self.listener {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                l.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        info!("TCP stream: accepted a peer from {peer}");
        self.link.conn = Conn::Up { sock, zc };
        true
    }

    /// The peer is gone (`why`). The socket retires (see `retiring`),
    /// which completes every chain lent through it exactly once; the
    /// partial record is dropped, and a new connection is sought.
    pub(super) fn lose(&mut self, why: impl Display) {
        self.rx.trim_partial();
        let sock = match mem::replace(&mut self.link.conn, Conn::Down) {
            Conn::Up { sock, .. } => sock,
            other => {
                // Not connected: nothing to lose.
                self.link.conn = other;
                return;
            }
        };
        self.tx.reset();
        let _ = self.link.timer.clear();
        self.link.generation += 1;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            sock.as_raw_fd(),
            EpollEvent::default(),
        );
        // The next socket's ids start past this one's, which retires with
        // them (completing each lent chain exactly once).
        let successor = self.ids.successor();
        let ids = mem::replace(&mut self.ids, successor);
        self.retiring
            .retire(sock, ids, &mut self.raw, &mut self.pending);
        let log = self.link.may_log();
        match self.endpoint {
            StreamEndpoint::Connect(remote) => {
                let delay = self.schedule_reconnect();
                if log {
                    warn!("TCP stream: lost the connection to {remote} ({why}); reconnecting in {delay:?}");
                } else {
                    debug!("TCP stream: lost the connection to {remote} ({why})");
                }
            }
            StreamEndpoint::Listen(local) => {
                if log {
                    warn!(
                        "TCP stream: the peer went away ({why}); waiting for the next on {local}"
                    );
                } else {
                    debug!("TCP stream: the peer went away ({why})");
                }
                if let Err(e) = self.watch_listener() {
                    warn!("TCP stream: cannot watch the listener again: {e}");
                }
            }
        }
        // TX must now drop rather than wait, and completions may wait.
        self.poke();
    }
}
