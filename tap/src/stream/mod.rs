//! The TCP stream attachment: Ethernet frames carried over one TCP
//! connection, each as a record of a 4-byte big-endian length and the
//! frame, both ways (QEMU's `-netdev stream` speaks this). With a zcnet
//! peer (`--vnet-hdr-peer`) the 12-byte virtio-net header travels inside
//! each record, before the frame, so checksum offload and 64 KiB TSO
//! frames cross whole.
//!
//! zcnet either connects (and reconnects, with backoff, whenever the peer
//! goes away) or listens (and serves one peer at a time). TX frames lend
//! the guest's pages to the kernel with `MSG_ZEROCOPY`; RX copies once in
//! user space to find the record boundaries (see `records`).
//!
//! # One fd that stays
//! The queue pair's worker registers the attachment's fd once per frontend
//! connection (edge-triggered), but TCP sockets come and go. So [`fd`]
//! is an epoll set of the attachment's own, which always holds whatever
//! is current: the connected socket, the connecting one, the listener
//! while no peer is connected, the timer of the reconnect backoff and
//! connect timeout, the set of retiring sockets (see below), and a wake
//! eventfd. An epoll fd is readable while any fd in it is ready, and
//! wakes its own pollers whenever one of them does.
//!
//! The set's registrations are level-triggered. The worker calls
//! `Attachment::ready` on every wake-up, and `ready` and `reap` (and
//! `send` and `recv` while no peer is connected) first drain the set with
//! a zero timeout (`service`), which advances the connection: accept,
//! connect completion or timeout, the backoff timer, peer loss, room for
//! a waiting tail, news of retiring sockets. Level triggering means a
//! readiness that one call looked at and left is still there for the
//! next, so the worker's edge-triggered registration cannot miss it; and
//! work found outside `ready` (a peer lost during a `send`, say, which
//! leaves completions to reap) is signalled on the wake eventfd, so the
//! worker is woken to act on it.
//!
//! # Never waiting
//! The worker calls in with its queue pair's lock held, so nothing here
//! blocks. A record the kernel took only part of has its rest copied into
//! a tail that goes out on EPOLLOUT, before anything else (see `send`). A
//! lost socket with lent pages is reset and retires in the set until the
//! kernel releases them or a deadline passes (see `retiring`). The one
//! bounded wait is `wait_notifications`, which its caller asks for.
//! Nothing is allocated per frame either way: TX, RX and reaping work in
//! buffers the attachment keeps.
//!
//! # Zero-copy ids across sockets
//! Each socket numbers its `MSG_ZEROCOPY` sends from 0; the ids handed to
//! the completion engine are offset so they keep increasing across
//! sockets, and a socket that dies with sends outstanding has them
//! completed exactly once (see `ids` and `retiring`).
//!
//! [`fd`]: Attachment::fd

mod conn;
mod ids;
pub(crate) mod records;
mod retiring;
mod send;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::attachment::{Attachment, Completion, GuestConfig, Readiness, SendMode, Sent};
use crate::frame::{RxBuffers, TxFrame};
use crate::Offloads;
use conn::{Conn, Link, TOKEN_RETIRING};
use ids::SocketIds;
use records::RecordBuf;
use retiring::Retiring;
use send::Tx;

// The largest frame, from `vnet_hdr`.
use crate::vnet_hdr::MAX_FRAME_LEN as MAX_FRAME;
// The virtio-net header on the wire with `--vnet-hdr-peer`
// (`virtio_net_hdr_v1`; a 10-byte guest header is padded with zeros).
use crate::vnet_hdr::HDR_LEN_V1 as WIRE_HDR_LEN;

/// Where the TCP connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEndpoint {
    /// Connect to this peer, and again whenever the connection is lost.
    Connect(SocketAddr),
    /// Listen here and serve one peer at a time.
    Listen(SocketAddr),
}

#[derive(Debug, Error)]
pub enum StreamError {
    #[error("cannot listen on TCP {local}: is the address on this host and the port free?")]
    Listen {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the stream attachment's event fds")]
    Events(#[source] io::Error),
}

/// A TCP stream attachment. Only its queue pair calls in (`&mut self`),
/// so its state is plain fields.
pub struct StreamAttachment {
    endpoint: StreamEndpoint,
    listener: Option<TcpListener>,
    /// The set the worker polls: see the module documentation.
    epoll: Epoll,
    /// Readable when the worker must call `ready` (work found elsewhere).
    wake: EventFd,
    /// The wire carries the virtio-net header before each frame.
    peer_hdr: bool,
    /// Turn SO_ZEROCOPY on for each socket.
    zerocopy: bool,
    /// Length of the guest's virtio-net header (10 or 12).
    hdr_len: usize,
    /// What the guest accepts on RX.
    offloads: Offloads,
    /// The socket of the moment and its life.
    link: Link,
    /// The zero-copy ids of the current socket.
    ids: SocketIds,
    /// Lost sockets whose lent pages are not all released yet.
    retiring: Retiring,
    /// Completions to hand to the engine at the next `reap`.
    pending: Vec<Completion>,
    /// Scratch for one socket's raw notifications.
    raw: Vec<Completion>,
    rx: RecordBuf,
    /// What TX keeps: the tail of a record the kernel took only part of.
    tx: Tx,
}

impl StreamAttachment {
    /// Starts connecting (at once) or listening. A peer that is not there
    /// yet is no error: zcnet keeps trying, and serves the guest meanwhile.
    pub fn open(
        endpoint: StreamEndpoint,
        peer_hdr: bool,
        zerocopy: bool,
    ) -> Result<Self, StreamError> {
        let listener = match endpoint {
            StreamEndpoint::Listen(local) => {
                let l = TcpListener::bind(local)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| StreamError::Listen { local, source })?;
                Some(l)
            }
            StreamEndpoint::Connect(_) => None,
        };
        let epoll = Epoll::new().map_err(StreamError::Events)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(StreamError::Events)?;
        let link = Link::new(&epoll, &wake).map_err(StreamError::Events)?;
        let retiring = Retiring::new(&epoll, TOKEN_RETIRING).map_err(StreamError::Events)?;
        let max_body = MAX_FRAME + if peer_hdr { WIRE_HDR_LEN } else { 0 };
        let mut a = StreamAttachment {
            endpoint,
            listener,
            epoll,
            wake,
            peer_hdr,
            zerocopy,
            hdr_len: 12,
            offloads: Offloads::default(),
            link,
            ids: SocketIds::new(0),
            retiring,
            pending: Vec::with_capacity(64),
            raw: Vec::with_capacity(64),
            rx: RecordBuf::new(max_body),
            tx: Tx::new(),
        };
        a.start().map_err(StreamError::Events)?;
        Ok(a)
    }

    /// The address listened on (`Listen` only; useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

impl Attachment for StreamAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.epoll` owns the epoll fd and closes it only when
        // dropped, which cannot happen while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.epoll.as_raw_fd()) }
    }

    fn ready(&mut self, polled: Readiness) -> Readiness {
        self.service(true);
        let _ = self.wake.read();
        // The set does not say which socket fired, and the connection
        // may have changed: let RX and a blocked TX try (each try costs
        // one system call when there is nothing to do). TX cannot go on
        // while a tail waits for room.
        Readiness {
            readable: true,
            writable: self.tx_clear(),
            notified: polled.notified || !self.pending.is_empty() || self.ids.outstanding() > 0,
        }
    }

    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent> {
        self.send_frame(frame, mode)
    }

    fn can_lend(&self) -> bool {
        self.zerocopy
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        // Advances retiring sockets too (their set is in the epoll set).
        self.service(false);
        out.append(&mut self.pending);
        match &self.link.conn {
            Conn::Up { sock, .. } => conn::reap_into(sock, &mut self.ids, &mut self.raw, out),
            _ => Ok(()),
        }
    }

    /// Returns early when the current socket or a retiring one has
    /// notifications, a retiring socket's deadline passes, or the current
    /// socket fails.
    fn wait_notifications(&mut self, timeout: Duration) {
        self.service(false);
        if !self.pending.is_empty() {
            return;
        }
        // Notifications and connection errors raise POLLERR, which poll
        // reports unasked; the retiring set is readable on either news.
        let retiring = PollFd::new(self.retiring.fd(), PollFlags::POLLIN);
        let mut fds = [retiring, retiring];
        let n = match &self.link.conn {
            Conn::Up { sock, .. } => {
                fds[1] = PollFd::new(sock.as_fd(), PollFlags::empty());
                2
            }
            _ => 1,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let _ = poll(
            &mut fds[..n],
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
    }

    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        self.recv_frame(bufs)
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        self.hdr_len = guest.hdr_len;
        self.offloads = guest.rx_offloads;
        Ok(())
    }

    /// Raw frames carry no offloads. A zcnet peer gets the header, and a
    /// TCP stream carries a 64 KiB TSO frame whole, so checksum offload
    /// and TSO cross end to end.
    fn supported_offloads(&self) -> Offloads {
        Offloads {
            csum: self.peer_hdr,
            tso4: self.peer_hdr,
            tso6: self.peer_hdr,
            ..Offloads::default()
        }
    }
}
