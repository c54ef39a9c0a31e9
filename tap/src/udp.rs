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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use log::warn;
use thiserror::Error;

use crate::attachment::{Attachment, Completion, SendMode, Sent};
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
    hdr_len: AtomicUsize,
    /// SO_ZEROCOPY is on.
    zerocopy: AtomicBool,
    /// The id the kernel gives the next successful MSG_ZEROCOPY send.
    next_id: AtomicU32,
}

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
            hdr_len: AtomicUsize::new(12),
            zerocopy: AtomicBool::new(zc),
            next_id: AtomicU32::new(0),
        })
    }

    /// The iovecs of `iov` past its first `skip` bytes.
    fn skip(iov: &[libc::iovec], mut skip: usize) -> Vec<libc::iovec> {
        let mut out = Vec::with_capacity(iov.len());
        for v in iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            out.push(libc::iovec {
                // SAFETY (pointer arithmetic only): `skip < iov_len`, so the
                // result stays inside the described range.
                iov_base: v.iov_base.wrapping_byte_add(skip),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        out
    }
}

impl Attachment for UdpAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn send(&self, iov: &[libc::iovec], mode: SendMode) -> io::Result<Sent> {
        let wire = if self.peer_hdr {
            iov.to_vec()
        } else {
            Self::skip(iov, self.hdr_len.load(Ordering::Relaxed))
        };
        let lend = mode == SendMode::Lend && self.zerocopy.load(Ordering::Relaxed);
        if lend {
            // SAFETY: the datapath built `iov` from bounds-checked guest
            // memory it keeps mapped; a lent chain is not returned to the
            // guest (and the memory snapshot it came from stays referenced
            // by the kernel's page pins) until the notification for this
            // id is reaped. The guest may still rewrite the buffer while
            // the kernel sends it: that can only corrupt its own frame.
            match unsafe { zerocopy::send(self.sock.as_fd(), &wire, true) } {
                Ok(_) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    return Ok(Sent::Lent {
                        first_id: id,
                        last_id: id,
                    });
                }
                // Out of optmem or RLIMIT_MEMLOCK: copy this frame instead.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e),
            }
        }
        // SAFETY: `wire` describes mapped guest memory (see above); without
        // MSG_ZEROCOPY the kernel copies it before sendmsg returns.
        unsafe { zerocopy::send(self.sock.as_fd(), &wire, false) }.map(|_| Sent::Copied)
    }

    fn can_lend(&self) -> bool {
        self.zerocopy.load(Ordering::Relaxed)
    }

    fn reap(&self, out: &mut Vec<Completion>) -> io::Result<()> {
        zerocopy::reap(self.sock.as_fd(), out)
    }

    unsafe fn recv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let hdr_len = if self.peer_hdr {
            0
        } else {
            self.hdr_len.load(Ordering::Relaxed)
        };
        // A header-less peer: the guest gets an all-zero header (no
        // offloads, num_buffers set by the RX path).
        let mut left = hdr_len;
        for v in iov {
            if left == 0 {
                break;
            }
            let n = left.min(v.iov_len);
            // SAFETY: the caller guarantees every iovec is mapped and
            // writable and not referenced by Rust; `n <= iov_len`.
            unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, n) };
            left -= n;
        }
        let body = Self::skip(iov, hdr_len);
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = body.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = body.len();
        // SAFETY: the socket is ours; the iovecs describe mapped, writable
        // memory (the caller's contract). MSG_TRUNC makes recvmsg return
        // the datagram's real length, so the caller sees a frame that did
        // not fit.
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
        Ok(hdr_len + n as usize)
    }

    fn set_vnet_hdr_len(&self, len: usize) -> io::Result<()> {
        self.hdr_len.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn set_offloads(&self, _offloads: Offloads) -> io::Result<()> {
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
