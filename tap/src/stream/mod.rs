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
//! while no peer is connected, the timer of the reconnect backoff (or of
//! a TX retry), and a wake eventfd. An epoll fd is readable while any fd
//! in it is ready, and wakes its own pollers whenever one of them does.
//!
//! The set's registrations are level-triggered. The worker calls
//! `Attachment::ready` on every wake-up, and `ready` and `reap` (and
//! `send` and `recv` while no peer is connected) first drain the set with
//! a zero timeout (`service`), which advances the connection: accept,
//! connect completion or timeout, the backoff timer, peer loss. Level
//! triggering means a readiness that one call looked at and left is
//! still there for the next, so the worker's edge-triggered registration
//! cannot miss it; and work found outside `ready` (a peer lost during a
//! `send`, say, which leaves completions to reap) is signalled on the
//! wake eventfd, so the worker is woken to act on it.
//!
//! # Zero-copy ids across sockets
//! Each socket numbers its `MSG_ZEROCOPY` sends from 0; the ids handed to
//! the completion engine are offset so they keep increasing across
//! sockets, and a socket that dies with sends outstanding has them
//! completed exactly once (see `ids` and `conn`'s `retire`).
//!
//! [`fd`]: Attachment::fd

mod conn;
mod ids;
pub(crate) mod records;
mod send;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::attachment::{Attachment, Completion, GuestConfig, Readiness, SendMode, Sent};
use crate::frame::{RxBuffers, TxFrame};
use crate::Offloads;
use conn::{Conn, State};
use records::{Next, PREFIX_LEN};

/// The largest frame: 64 KiB of GSO payload and headers, an Ethernet
/// header and a VLAN tag (as the TX path accepts).
const MAX_FRAME: usize = 65536 + 14 + 4;
/// The virtio-net header on the wire with `--vnet-hdr-peer`
/// (`virtio_net_hdr_v1`; a 10-byte guest header is padded with zeros).
const WIRE_HDR_LEN: usize = 12;
/// Header bytes a guest header carries besides `num_buffers`.
const HDR_FIELDS_LEN: usize = 10;
/// The shortest frame delivered: an Ethernet header.
const MIN_FRAME: usize = 14;

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
    hdr_len: AtomicUsize,
    state: Mutex<State>,
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
        let max_body = MAX_FRAME + if peer_hdr { WIRE_HDR_LEN } else { 0 };
        let state = State::new(&epoll, &wake, max_body).map_err(StreamError::Events)?;
        let a = StreamAttachment {
            endpoint,
            listener,
            epoll,
            wake,
            peer_hdr,
            zerocopy,
            hdr_len: AtomicUsize::new(12),
            state: Mutex::new(state),
        };
        {
            let mut st = a.lock();
            a.start(&mut st).map_err(StreamError::Events)?;
        }
        Ok(a)
    }

    /// The address listened on (`Listen` only; useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only the queue pair's worker (or its stopping frontend thread,
        // under the pair's lock) calls in; a panic there would be a bug,
        // and the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn max_body(&self) -> usize {
        MAX_FRAME + if self.peer_hdr { WIRE_HDR_LEN } else { 0 }
    }

    /// Whether a record from a zcnet peer carries only offloads this
    /// guest accepted (a device must not hand over anything else).
    fn deliverable(hdr: &[u8], o: &Offloads) -> bool {
        const NEEDS_CSUM: u8 = 1;
        const GSO_ECN: u8 = 0x80;
        let (flags, gso) = (hdr[0], hdr[1]);
        let gso_ok = match gso & !GSO_ECN {
            0 => true,
            1 => o.tso4,
            4 => o.tso6,
            _ => false,
        };
        let ecn_ok = gso & GSO_ECN == 0 || o.tso_ecn;
        (flags & NEEDS_CSUM == 0 || o.csum) && gso_ok && ecn_ok
    }

    /// Copies one record's frame into the guest's buffers, behind the
    /// guest's header: the peer's (`--vnet-hdr-peer`) or all zeros.
    /// Returns the length the guest sees; when that exceeds the buffers,
    /// nothing is written (the RX path drops the frame and counts it).
    fn deliver(&self, hdr: &[u8], frame: &[u8], bufs: &mut RxBuffers<'_>) -> usize {
        let hdr_len = self.hdr_len.load(Ordering::Relaxed);
        // `num_buffers` (bytes 10..12) is the RX path's to fill in.
        let mut guest_hdr = [0u8; WIRE_HDR_LEN];
        guest_hdr[..hdr.len().min(HDR_FIELDS_LEN)]
            .copy_from_slice(&hdr[..hdr.len().min(HDR_FIELDS_LEN)]);
        let n = hdr_len + frame.len();
        if n <= bufs.capacity() {
            bufs.write_at(0, &guest_hdr[..hdr_len]);
            bufs.write_at(hdr_len, frame);
        }
        n
    }
}

impl Attachment for StreamAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.epoll` owns the epoll fd and closes it only when
        // dropped, which cannot happen while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.epoll.as_raw_fd()) }
    }

    fn ready(&mut self, polled: Readiness) -> Readiness {
        let mut st = self.lock();
        self.service(&mut st, true);
        let _ = self.wake.read();
        // The set does not say which socket fired, and the connection
        // may have changed: let RX and a blocked TX try (each try costs
        // one system call when there is nothing to do).
        Readiness {
            readable: true,
            writable: true,
            notified: polled.notified || !st.pending.is_empty() || st.ids.outstanding() > 0,
        }
    }

    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent> {
        let mut st = self.lock();
        if !st.is_up() {
            self.service(&mut st, false);
        }
        if !st.tail.is_empty() {
            match self.flush_tail(&mut st) {
                Ok(true) => {}
                Ok(false) => {
                    self.want_space(&mut st);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Err(e) => {
                    self.lose(&mut st, &e);
                    return Err(e);
                }
            }
        }
        let State { conn, ids, .. } = &mut *st;
        let Conn::Up { sock, zc } = conn else {
            // Disconnected: the frame is dropped (and counted), and its
            // chain goes back at once.
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no TCP peer is connected",
            ));
        };
        let payload = frame.payload();
        let body_len = frame.len() + if self.peer_hdr { WIRE_HDR_LEN } else { 0 };
        // Only whole records: the kernel must have room for all of it,
        // or none is sent. (The socket's buffer minus what is in flight;
        // a record larger than the whole buffer goes when it is empty.)
        let in_flight = conn::unacked(sock).unwrap_or(0);
        let room = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::SndBuf)
            .unwrap_or(usize::MAX)
            .saturating_sub(in_flight);
        if in_flight > 0 && room < PREFIX_LEN + body_len {
            self.want_space(&mut st);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The record's head: the length prefix, then (to a zcnet peer) the
        // frame's validated virtio-net header, `num_buffers` 0.
        let mut head_bytes = [0u8; PREFIX_LEN + WIRE_HDR_LEN];
        head_bytes[..PREFIX_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
        head_bytes[PREFIX_LEN..].copy_from_slice(&frame.hdr().to_bytes());
        let head_len = PREFIX_LEN + if self.peer_hdr { WIRE_HDR_LEN } else { 0 };
        let head = [libc::iovec {
            iov_base: head_bytes.as_mut_ptr().cast(),
            iov_len: head_len,
        }];
        let lend = mode == SendMode::Lend && *zc;
        // SAFETY: `iov` was built by the datapath from bounds-checked guest
        // memory it keeps mapped, and `prefix` and `pad` live on our stack
        // through the call; only the frame is ever lent (the head is sent
        // in a copying call of its own). A lent chain is not returned to
        // the guest until notifications cover every id this returns (or
        // the connection is reset, see `retire`). The guest can still
        // rewrite a lent buffer while the kernel sends it: that corrupts
        // only its own frame on the wire.
        let outcome = unsafe { send::record(sock.as_fd(), &head, payload, lend, ids) };
        match outcome {
            send::Outcome::Sent { ids, tail } => {
                if tail.is_empty() {
                    self.space_ok(&mut st);
                } else {
                    st.tail = tail;
                    self.want_space(&mut st);
                }
                Ok(ids.map_or(Sent::Copied, |(first_id, last_id)| Sent::Lent {
                    first_id,
                    last_id,
                }))
            }
            send::Outcome::WouldBlock => {
                self.want_space(&mut st);
                Err(io::ErrorKind::WouldBlock.into())
            }
            send::Outcome::Failed { err, ids } => {
                self.lose(&mut st, &err);
                match ids {
                    // Lent before the failure: the chain waits for those
                    // ids, which the loss completes.
                    Some((first_id, last_id)) => Ok(Sent::Lent { first_id, last_id }),
                    None => Err(err),
                }
            }
        }
    }

    fn can_lend(&self) -> bool {
        self.zerocopy
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let mut st = self.lock();
        self.service(&mut st, false);
        out.append(&mut st.pending);
        let State { conn, ids, .. } = &mut *st;
        match conn {
            Conn::Up { sock, .. } => conn::reap_into(sock, ids, out),
            _ => Ok(()),
        }
    }

    fn wait_notifications(&mut self, timeout: Duration) {
        let mut st = self.lock();
        self.service(&mut st, false);
        if !st.pending.is_empty() {
            return;
        }
        match &st.conn {
            Conn::Up { sock, .. } if st.ids.outstanding() > 0 => {
                // Notifications and connection errors raise POLLERR.
                let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
                let mut pfd = [PollFd::new(sock.as_fd(), PollFlags::empty())];
                let _ = poll(
                    &mut pfd,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                );
            }
            // Nothing can complete: do not spin the caller's loop.
            _ => std::thread::sleep(timeout.min(Duration::from_millis(10))),
        }
    }

    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        let mut st = self.lock();
        loop {
            match st.rx.next() {
                Next::Record(body) => {
                    let bytes = st.rx.body(body.clone());
                    let (hdr, frame) = bytes.split_at(if self.peer_hdr { WIRE_HDR_LEN } else { 0 });
                    let n = if frame.len() < MIN_FRAME {
                        debug!(
                            "TCP stream: dropped a {}-byte frame from the peer",
                            frame.len()
                        );
                        None
                    } else if self.peer_hdr && !Self::deliverable(hdr, &st.offloads) {
                        debug!(
                            "TCP stream: dropped a frame whose offloads (flags {:#x}, GSO {:#x}) the guest did not accept",
                            hdr[0], hdr[1]
                        );
                        None
                    } else {
                        Some(self.deliver(hdr, frame, bufs))
                    };
                    st.rx.consume(body);
                    if let Some(n) = n {
                        return Ok(n);
                    }
                    continue;
                }
                Next::Broken(len) => {
                    warn!(
                        "TCP stream: the peer sent a {len}-byte record, longer than any frame \
                         ({} bytes at most); dropping the connection",
                        self.max_body()
                    );
                    st.rx.trim_partial();
                    self.lose(&mut st, "broken framing");
                    continue;
                }
                Next::Partial => {}
            }
            if !st.is_up() {
                self.service(&mut st, false);
            }
            let State {
                conn: Conn::Up { sock, .. },
                rx,
                ..
            } = &mut *st
            else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            match rx.fill(&*sock) {
                Ok(0) => self.lose(&mut st, "the peer closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.lose(&mut st, e),
            }
        }
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        self.hdr_len.store(guest.hdr_len, Ordering::Relaxed);
        self.lock().offloads = guest.rx_offloads;
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
