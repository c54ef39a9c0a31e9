//! The connection's life: connecting with backoff, accepting one peer at a
//! time, noticing that the peer is gone, and retiring a socket whose
//! pages are still lent.

use std::fmt::Display;
use std::io::{self, Write};
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
use super::records::RecordBuf;
use super::{StreamAttachment, StreamEndpoint};
use crate::attachment::Completion;
use crate::zerocopy;
use crate::Offloads;

/// Tokens of the attachment's epoll set. A socket's token also carries
/// its generation, so an event of a closed socket is never taken for one
/// of its successor's.
const TOKEN_TIMER: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const TOKEN_LISTENER: u64 = 3;
const TOKEN_SOCKET: u64 = 4;
const TOKEN_KIND: u64 = 0xff;

/// Reconnect backoff: 100 ms, doubling up to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connect attempt that gets no answer (SYNs dropped) fails after this,
/// rather than after the kernel's minutes of SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection trouble is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How long a lost connection's lent pages may take to come back (after
/// its write queue is purged) before they are completed anyway.
const RETIRE_WAIT: Duration = Duration::from_millis(200);
/// A TX that found the socket too full for a whole record retries after
/// this (doubling while it stays full), in case the kernel itself never
/// saw the socket full and so never reports room (see `want_space`).
const SPACE_RETRY_MIN: Duration = Duration::from_millis(1);
const SPACE_RETRY_MAX: Duration = Duration::from_millis(64);

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

/// Everything that changes, behind the attachment's lock.
pub(super) struct State {
    pub(super) conn: Conn,
    /// Bumped for every socket.
    generation: u64,
    pub(super) ids: SocketIds,
    /// Completions to hand to the engine at the next `reap`.
    pub(super) pending: Vec<Completion>,
    pub(super) rx: RecordBuf,
    /// The copied rest of a record the kernel took only part of: it goes
    /// out before anything else.
    pub(super) tail: Vec<u8>,
    /// What the guest accepts on RX.
    pub(super) offloads: Offloads,
    /// The reconnect backoff while down, the TX retry while up.
    timer: TimerFd,
    /// TX waits for room: the socket is watched for EPOLLOUT.
    want_space: bool,
    space_delay: Duration,
    backoff: Duration,
    /// Failed attempts since the last connection.
    failures: u32,
    last_log: Option<Instant>,
}

impl State {
    /// A state with no socket; adds the timer and `wake` to `epoll`.
    pub(super) fn new(epoll: &Epoll, wake: &EventFd, max_body: usize) -> io::Result<Self> {
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
        Ok(State {
            conn: Conn::Down,
            generation: 0,
            ids: SocketIds::new(0),
            pending: Vec::new(),
            rx: RecordBuf::new(max_body),
            tail: Vec::new(),
            offloads: Offloads::default(),
            timer,
            want_space: false,
            space_delay: SPACE_RETRY_MIN,
            backoff: BACKOFF_MIN,
            failures: 0,
            last_log: None,
        })
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.conn, Conn::Up { .. })
    }

    fn token(&self) -> u64 {
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

/// Reads the socket's zero-copy notifications into `out`, in engine ids.
pub(super) fn reap_into(
    sock: &TcpStream,
    ids: &mut SocketIds,
    out: &mut Vec<Completion>,
) -> io::Result<()> {
    let mut raw = Vec::new();
    let r = zerocopy::reap(sock.as_fd(), &mut raw);
    for c in raw {
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

/// Bytes written and not yet acknowledged (`SIOCOUTQ`).
pub(super) fn unacked(sock: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one int, here `n`
    // on our stack; the socket is borrowed, so open, for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
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

impl StreamAttachment {
    /// The first step: connect at once, or listen.
    pub(super) fn start(&self, st: &mut State) -> io::Result<()> {
        match self.endpoint {
            StreamEndpoint::Connect(_) => {
                self.connect(st);
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
    pub(super) fn service(&self, st: &mut State, from_ready: bool) {
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
                .any(|ev| self.on_event(st, ev.data(), ev.event_set()));
            if !again {
                break;
            }
            changed = true;
        }
        if changed && !from_ready {
            self.poke();
        }
    }

    /// Acts on one ready fd; returns whether the connection changed.
    fn on_event(&self, st: &mut State, token: u64, events: EventSet) -> bool {
        match token & TOKEN_KIND {
            TOKEN_TIMER => {
                let _ = st.timer.wait(); // non-blocking: clears the expiry
                match st.conn {
                    Conn::Down if matches!(self.endpoint, StreamEndpoint::Connect(_)) => {
                        self.connect(st);
                        true
                    }
                    // The TX retry: the worker tries again (see `ready`).
                    Conn::Up { .. } => true,
                    Conn::Connecting { .. } => {
                        let timeout = io::Error::from(io::ErrorKind::TimedOut);
                        self.connect_failed(st, &timeout);
                        true
                    }
                    Conn::Down => false,
                }
            }
            TOKEN_LISTENER => matches!(st.conn, Conn::Down) && self.accept(st),
            TOKEN_SOCKET if token == st.token() => self.on_socket(st, events),
            // The wake eventfd (`ready` clears it), or a closed socket.
            _ => false,
        }
    }

    fn on_socket(&self, st: &mut State, events: EventSet) -> bool {
        match &st.conn {
            Conn::Connecting { sock, .. } => {
                let err = match socket::getsockopt(sock, sockopt::SocketError) {
                    Ok(0) if events.contains(EventSet::OUT) => None,
                    Ok(0) => Some(io::Error::from(io::ErrorKind::ConnectionAborted)),
                    Ok(e) => Some(io::Error::from_raw_os_error(e)),
                    Err(e) => Some(e.into()),
                };
                match err {
                    None => self.connected(st),
                    Some(e) => self.connect_failed(st, &e),
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
                    self.lose(st, e);
                    return true;
                }
                if closed {
                    self.lose(st, "the peer closed the connection");
                    return true;
                }
                if events.contains(EventSet::OUT) && !st.tail.is_empty() {
                    match self.flush_tail(st) {
                        Ok(true) => self.space_ok(st),
                        Ok(false) => {}
                        Err(e) => {
                            self.lose(st, e);
                            return true;
                        }
                    }
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
    fn connect(&self, st: &mut State) {
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
            Err(e) => return self.connect_failed(st, &io::Error::from(e)),
        };
        let zc = self.enable_zerocopy(&sock);
        st.generation += 1;
        // Writable (or failed) once the handshake is over.
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::OUT, st.token()),
        ) {
            return self.connect_failed(st, &e);
        }
        debug!("TCP stream: connecting to {remote}");
        if let Err(e) = st.timer.reset(CONNECT_TIMEOUT, None) {
            warn!("TCP stream: cannot arm the connect timeout: {e}");
        }
        st.conn = Conn::Connecting { sock, zc };
    }

    /// The handshake completed.
    fn connected(&self, st: &mut State) {
        let Conn::Connecting { sock, zc } = mem::replace(&mut st.conn, Conn::Down) else {
            return;
        };
        let watched = self.epoll.ctl(
            ControlOperation::Modify,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, st.token()),
        );
        if let Err(e) = watched {
            st.conn = Conn::Connecting { sock, zc };
            return self.connect_failed(st, &e);
        }
        let _ = st.timer.clear();
        let _ = sock.set_nodelay(true);
        let peer = sock
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        match st.failures {
            0 => info!("TCP stream: connected to {peer}"),
            n => info!("TCP stream: connected to {peer} after {n} failed attempts"),
        }
        st.failures = 0;
        st.backoff = BACKOFF_MIN;
        st.last_log = None;
        st.conn = Conn::Up { sock, zc };
    }

    /// A connect attempt failed: try again after the backoff.
    fn connect_failed(&self, st: &mut State, err: &io::Error) {
        if let Conn::Connecting { sock, .. } = mem::replace(&mut st.conn, Conn::Down) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                sock.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        st.failures += 1;
        let delay = self.schedule_reconnect(st);
        let StreamEndpoint::Connect(remote) = self.endpoint else {
            return;
        };
        if st.may_log() {
            warn!(
                "TCP stream: cannot connect to {remote}: {err} (attempt {}); trying again in {delay:?}",
                st.failures
            );
        } else {
            debug!("TCP stream: cannot connect to {remote}: {err}; trying again in {delay:?}");
        }
    }

    /// Arms the timer for the next attempt; returns its delay.
    fn schedule_reconnect(&self, st: &mut State) -> Duration {
        let delay = st.backoff;
        st.backoff = (delay * 2).min(BACKOFF_MAX);
        if let Err(e) = st.timer.reset(delay, None) {
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
    fn accept(&self, st: &mut State) -> bool {
        let Some(l) = &self.listener else {
            return false;
        };
        let (sock, peer) = match l.accept() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                if st.may_log() {
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
        st.generation += 1;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, st.token()),
        ) {
            warn!("TCP stream: cannot watch the socket of {peer} ({e}); closing it");
            return false;
        }
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            l.as_raw_fd(),
            EpollEvent::default(),
        );
        info!("TCP stream: accepted a peer from {peer}");
        st.conn = Conn::Up { sock, zc };
        true
    }

    /// The peer is gone (`why`). Every chain lent through the socket is
    /// completed exactly once (see `retire`), the partial record is
    /// dropped, and a new connection is sought.
    pub(super) fn lose(&self, st: &mut State, why: impl Display) {
        st.rx.trim_partial();
        let sock = match mem::replace(&mut st.conn, Conn::Down) {
            Conn::Up { sock, .. } => sock,
            other => {
                // Not connected: nothing to lose.
                st.conn = other;
                return;
            }
        };
        st.tail.clear();
        st.want_space = false;
        st.space_delay = SPACE_RETRY_MIN;
        let _ = st.timer.clear();
        st.generation += 1;
        self.retire(st, &sock);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            sock.as_raw_fd(),
            EpollEvent::default(),
        );
        drop(sock);
        let log = st.may_log();
        match self.endpoint {
            StreamEndpoint::Connect(remote) => {
                let delay = self.schedule_reconnect(st);
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

    /// Before a socket with lent pages is closed: reads the notifications
    /// it has; if sends are still outstanding, resets the connection,
    /// which frees its write queue, and waits (at most `RETIRE_WAIT`) for
    /// the kernel to report those pages released. What it never reports
    /// is completed anyway (`SocketIds::retire`): after the reset the pages
    /// can only be in packets of a connection the peer no longer accepts
    /// data on, so a guest that rewrites them harms nobody.
    fn retire(&self, st: &mut State, sock: &TcpStream) {
        let _ = reap_into(sock, &mut st.ids, &mut st.pending);
        if st.ids.outstanding() > 0 {
            if let Err(e) = disconnect(sock) {
                debug!("TCP stream: cannot reset the lost connection: {e}");
            }
            // Edge-triggered: each new notification wakes the wait.
            let waiter = Epoll::new().and_then(|ep| {
                ep.ctl(
                    ControlOperation::Add,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::ERROR | EventSet::EDGE_TRIGGERED, 0),
                )
                .map(|()| ep)
            });
            let deadline = Instant::now() + RETIRE_WAIT;
            loop {
                let _ = reap_into(sock, &mut st.ids, &mut st.pending);
                let now = Instant::now();
                if st.ids.outstanding() == 0 || now >= deadline {
                    break;
                }
                let Ok(ep) = &waiter else { break };
                let ms = (deadline - now).as_millis().max(1) as i32;
                let _ = ep.wait(ms, &mut [EpollEvent::default(); 1]);
            }
            if st.ids.outstanding() > 0 {
                warn!(
                    "TCP stream: the kernel did not release {} zero-copy sends of the lost \
                     connection within {RETIRE_WAIT:?}; completing their chains anyway",
                    st.ids.outstanding()
                );
            }
        }
        st.ids.retire(&mut st.pending);
        st.ids = st.ids.successor();
    }

    /// TX found no room for a whole record: watch for room, and retry on
    /// the timer too. The kernel reports room only after it saw the socket
    /// full itself, which it may not have (zcnet checks for a whole
    /// record, the kernel for a third of the buffer).
    pub(super) fn want_space(&self, st: &mut State) {
        let Conn::Up { sock, .. } = &st.conn else {
            return;
        };
        if st.want_space {
            st.space_delay = (st.space_delay * 2).min(SPACE_RETRY_MAX);
        } else {
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                sock.as_raw_fd(),
                EpollEvent::new(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::OUT,
                    st.token(),
                ),
            );
            st.want_space = true;
            st.space_delay = SPACE_RETRY_MIN;
        }
        let _ = st.timer.reset(st.space_delay, None);
    }

    /// TX went through: stop watching for room.
    pub(super) fn space_ok(&self, st: &mut State) {
        let Conn::Up { sock, .. } = &st.conn else {
            return;
        };
        if st.want_space {
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                sock.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, st.token()),
            );
            st.want_space = false;
            st.space_delay = SPACE_RETRY_MIN;
            let _ = st.timer.clear();
        }
    }

    /// Writes what is left of a partly sent record; returns whether all
    /// of it is out.
    pub(super) fn flush_tail(&self, st: &mut State) -> io::Result<bool> {
        let Conn::Up { sock, .. } = &st.conn else {
            return Ok(false);
        };
        while !st.tail.is_empty() {
            match (&*sock).write(&st.tail) {
                Ok(n) => {
                    st.tail.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
