//! The UDP attachment: one Ethernet frame per datagram, both ways, to one
//! remote address. Without a virtio-net header on the wire it speaks to
//! QEMU's `-netdev dgram`; with one (`--vnet-hdr-peer`) to another zcnet,
//! so checksum offload survives end to end.
//!
//! TX can lend the guest's pages to the kernel (`MSG_ZEROCOPY`): the send
//! then returns `Sent::Lent` with the socket's next notification id.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use log::warn;
use thiserror::Error;

use crate::attachment::{Attachment, Completion, GuestConfig, SendMode, Sent};
use crate::frame::{RxBuffers, TxFrame};
use crate::lent_headers::LentHeaders;
use crate::vnet_hdr::HDR_LEN_V1;
use crate::zerocopy;
use crate::Offloads;

#[derive(Debug, Error)]
pub enum UdpError {
    #[error("cannot bind UDP {local}: is the address on this host and the port free?")]
    Bind {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect UDP to {remote}")]
    Connect {
        remote: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the UDP socket non-blocking")]
    NonBlocking(#[source] io::Error),
}

pub struct UdpAttachment {
    sock: UdpSocket,
    /// The wire carries the virtio-net header before each frame.
    peer_hdr: bool,
    /// Length of the guest's virtio-net header (10 or 12).
    hdr_len: usize,
    /// SO_ZEROCOPY is on.
    zerocopy: bool,
    /// The zero-copy ids of the socket's sends.
    ids: UdpIds,
    /// Wire headers of lent sends (`--vnet-hdr-peer`): see `lent_headers`.
    headers: LentHeaders,
}

/// Wire headers kept for lent sends at once; past it frames are copied.
/// The completion engine lends at most 128 chains per queue.
const LENT_HEADER_SLOTS: usize = 128;

impl UdpAttachment {
    /// Binds `local`, connects to `remote`; turns SO_ZEROCOPY on when
    /// `zerocopy` (logging, not failing, if the kernel refuses).
    pub fn open(
        local: SocketAddr,
        remote: SocketAddr,
        peer_hdr: bool,
        zerocopy: bool,
    ) -> Result<Self, UdpError> {
        let sock = UdpSocket::bind(local).map_err(|source| UdpError::Bind { local, source })?;
        sock.connect(remote)
            .map_err(|source| UdpError::Connect { remote, source })?;
        sock.set_nonblocking(true).map_err(UdpError::NonBlocking)?;
        let zc = zerocopy
            && match zerocopy::enable(sock.as_fd()) {
                Ok(()) => true,
                Err(e) => {
                    warn!("UDP {local}: SO_ZEROCOPY refused ({e}); every frame will be copied");
                    false
                }
            };
        Ok(UdpAttachment {
            sock,
            peer_hdr,
            hdr_len: HDR_LEN_V1,
            zerocopy: zc,
            ids: UdpIds::default(),
            headers: LentHeaders::new(if peer_hdr { LENT_HEADER_SLOTS } else { 0 }, HDR_LEN_V1),
        })
    }
}

/// The socket's zero-copy ids as the kernel hands them out.
#[derive(Debug, Default)]
struct UdpIds {
    /// The id the kernel gives the next `MSG_ZEROCOPY` send that takes one.
    next: u32,
    /// Notifications read while settling a failed send, for the next
    /// `reap`.
    early: Vec<Completion>,
}

impl UdpIds {
    /// Lends `iov` to the kernel through `sock`; returns the send's id, or
    /// `Ok(None)` when the kernel is out of optmem or RLIMIT_MEMLOCK
    /// (ENOBUFS): copy the frame instead.
    ///
    /// A send that fails after the kernel built its skb (EPERM from a
    /// netfilter drop on the way out) still took an id, and its
    /// notification is queued by the time `sendmsg` returns; one that
    /// fails earlier (ENOBUFS, a pending ICMP error) took none. So after a
    /// failure the error queue is read at once: if a notification covers
    /// the id the send would have had, it took it (measured on this
    /// kernel; see `vxlan/ids.rs`). Without this, the count would run
    /// behind the kernel's and a later chain could be completed by the
    /// failed send's notification, before the kernel let go of its pages.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays mapped, and unchanged
    /// by zcnet, until the notification for the returned id (guest memory
    /// of a lent chain, which goes back to the guest only then; or a held
    /// header slot).
    unsafe fn lend(&mut self, sock: &UdpSocket, iov: &[libc::iovec]) -> io::Result<Option<u32>> {
        // SAFETY: forwarded from this function's contract.
        match unsafe { zerocopy::send(sock.as_fd(), iov, true) } {
            Ok(_) => {
                let id = self.next;
                self.next = id.wrapping_add(1);
                Ok(Some(id))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(None),
            Err(e) => {
                let from = self.early.len();
                // A failure to read is reported by the next `reap`.
                let _ = zerocopy::reap(sock.as_fd(), &mut self.early);
                let would_be = self.next;
                let took = self.early[from..]
                    .iter()
                    .any(|c| would_be.wrapping_sub(c.first) <= c.last.wrapping_sub(c.first));
                if took {
                    self.next = would_be.wrapping_add(1);
                }
                Err(e)
            }
        }
    }
}

impl Attachment for UdpAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent> {
        let lending = mode == SendMode::Lend && self.zerocopy;
        let wire_hdr = frame.hdr().to_bytes();
        if lending {
            // The guest can rewrite a lent buffer while the kernel sends
            // it (it owns it): that corrupts only its own frame on the
            // wire, since no host state depends on those bytes.
            let sent = if !self.peer_hdr {
                // SAFETY: the frame's iovecs are guest memory the datapath
                // keeps mapped; a lent chain goes back to the guest only
                // when the notification for this id is reaped.
                unsafe { self.ids.lend(&self.sock, frame.payload())? }
            } else if let Some(slot) = self.headers.take() {
                self.headers.slot_mut(slot).copy_from_slice(&wire_hdr);
                let iov = frame.with_header(self.headers.slot(slot));
                // SAFETY: as above for the frame; the header slot is held
                // (unchanged) until the same notification.
                match unsafe { self.ids.lend(&self.sock, iov) } {
                    Ok(Some(id)) => {
                        self.headers.hold(slot, id);
                        Some(id)
                    }
                    other => {
                        self.headers.put_back(slot);
                        other?
                    }
                }
            } else {
                None
            };
            if let Some(id) = sent {
                return Ok(Sent::Lent {
                    first_id: id,
                    last_id: id,
                });
            }
        }
        let iov = if self.peer_hdr {
            frame.with_header(&wire_hdr)
        } else {
            frame.payload()
        };
        // SAFETY: `iov` describes guest memory the frame keeps mapped and
        // `wire_hdr` on our stack; without MSG_ZEROCOPY the kernel copies
        // it before sendmsg returns.
        unsafe { zerocopy::send(self.sock.as_fd(), iov, false) }.map(|_| Sent::Copied)
    }

    fn can_lend(&self) -> bool {
        self.zerocopy
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let from = out.len();
        out.append(&mut self.ids.early);
        let r = zerocopy::reap(self.sock.as_fd(), out);
        for c in &out[from..] {
            self.headers.release(c);
        }
        r
    }

    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        // A header-less peer: the guest gets an all-zero header (no
        // offloads, num_buffers set by the RX path).
        let skip = if self.peer_hdr { 0 } else { self.hdr_len };
        if !bufs.zero_prefix(skip) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "RX buffers shorter than the virtio-net header",
            ));
        }
        let body = bufs.skip(skip);
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = body.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = body.len();
        // SAFETY: the socket is ours; the iovecs describe mapped, writable
        // memory no Rust reference points into (`RxBuffers`' contract).
        // MSG_TRUNC makes recvmsg return the datagram's real length, so
        // the caller sees a frame that did not fit.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(skip + n as usize)
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        self.hdr_len = guest.hdr_len;
        Ok(())
    }

    /// Raw frames cannot carry offloads; a zcnet peer gets the header and
    /// so partial checksums. GSO frames do not fit one datagram.
    fn supported_offloads(&self) -> Offloads {
        Offloads {
            csum: self.peer_hdr,
            ..Offloads::default()
        }
    }
}
