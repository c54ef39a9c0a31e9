//! The tap device: the only code in zcnet that speaks to `/dev/net/tun`.
//!
//! A zcnet tap is always `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//! IFF_MULTI_QUEUE`: one fd per queue pair, each carrying a virtio-net header
//! in front of every frame so checksum offload and GSO pass through.
//!
//! The tap copies once: `writev` from user space goes through
//! `tun_get_user`, which copies the guest's bytes into a fresh skb. A tap fd
//! cannot take `MSG_ZEROCOPY`, so every send completes at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

use arrayvec::ArrayVec;
use log::warn;

use crate::attachment::{self, Attachment, GuestConfig, SendMode, Sent, MAX_BATCH};
use crate::frame::{RxBuffers, TxFrame};
use crate::uring::UringWriter;
use crate::vnet_hdr::HDR_LEN_V1;
use crate::Offloads;

const TUN_PATH: &str = "/dev/net/tun";

/// The flags of every zcnet tap (`<linux/if_tun.h>`).
const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// Why a tap could not be opened or configured.
#[derive(Debug, Error)]
pub enum TapError {
    #[error("tap name {0:?} is not valid: it must be 1 to 15 bytes with no NUL or '/'")]
    InvalidName(String),
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    #[error(
        "tap {name:?} exists but cannot be attached as a multi-queue tap with a vnet header; \
         recreate it with `ip tuntap add dev {name} mode tap multi_queue vnet_hdr`"
    )]
    Incompatible {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "not permitted to open or create tap {name:?}: run as root, or create it first with \
         `ip tuntap add dev {name} mode tap multi_queue vnet_hdr user $USER`"
    )]
    NotPermitted {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach queue {queue} of tap {name:?}")]
    Attach {
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the virtio-net header length of tap {name:?}")]
    HeaderLength {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// How a tap queue hands TX frames to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    /// One `writev` per frame.
    Syscall,
    /// Each batch of frames as linked writes with one `io_uring_enter`
    /// on a registered fd (`uring`).
    Uring,
}

/// One queue of a multi-queue tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// The virtio-net header length the device was set to (10 or 12).
    hdr_len: usize,
    /// Whether this queue is attached (takes frames from the kernel).
    attached: bool,
    /// Batches go through io_uring (the `Uring` engine) when set.
    uring: Option<UringWriter>,
    /// The io_uring failed on some thread: batches go by `writev` there.
    uring_failed: bool,
}

impl Tap {
    /// Opens `queues` queues of the tap called `name`, creating the device
    /// if it does not exist (it then lives as long as zcnet holds its fds).
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        (0..queues)
            .map(|queue| Self::open_one(name, queue))
            .collect()
    }

    /// Opens (creating) a plain tap called `name`: one queue, no
    /// virtio-net header (`IFF_TAP | IFF_NO_PI`), the kind a simple user
    /// space writer uses. zcnet does not run on one; its benchmark
    /// measures one as a reference.
    pub fn open_plain(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let mut tap = Self::open_flags(name, 0, libc::IFF_TAP | libc::IFF_NO_PI)?;
        tap.hdr_len = 0;
        Ok(tap)
    }

    fn open_one(name: &str, queue: usize) -> Result<Tap, TapError> {
        Self::open_flags(name, queue, TAP_FLAGS)
    }

    fn open_flags(name: &str, queue: usize, flags: libc::c_int) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;

        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;

        // SAFETY: `file` is an fd of /dev/net/tun that we own and keep open
        // for the call; TUNSETIFF reads and writes one `struct ifreq`, and
        // `ifr` is a valid, exclusively borrowed ifreq that outlives it.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) => TapError::NotPermitted { name, source },
                Some(libc::EINVAL) => TapError::Incompatible { name, source },
                _ => TapError::Attach {
                    name,
                    queue,
                    source,
                },
            });
        }
        let tap = Tap {
            file,
            name: name.to_owned(),
            hdr_len: HDR_LEN_V1,
            attached: true,
            uring: None,
            uring_failed: false,
        };
        // The kernel starts a queue at the legacy 10-byte header; a frame
        // sent before the first `configure` (zcnet's RARP announcement can
        // come before SET_FEATURES) must carry the header `send` writes.
        tap.set_vnet_hdr_len(tap.hdr_len)
            .map_err(|source| TapError::HeaderLength {
                name: name.to_owned(),
                source,
            })?;
        Ok(tap)
    }

    /// Sends TX batches through `engine` from now on. For `Uring`, the
    /// caller has checked that the kernel offers it (`uring::probe`).
    pub fn set_io_engine(&mut self, engine: IoEngine) {
        self.uring = match engine {
            IoEngine::Syscall => None,
            // The writer registers this queue's fd, which `self` owns and
            // keeps open as long as the writer (a field of `self`) lives.
            IoEngine::Uring => Some(UringWriter::new(self.file.as_fd())),
        };
        self.uring_failed = false;
    }

    /// The engine TX batches go through.
    pub fn io_engine(&self) -> IoEngine {
        if self.uring.is_some() {
            IoEngine::Uring
        } else {
            IoEngine::Syscall
        }
    }

    /// Batches written through io_uring, and the io_uring_enter calls
    /// they took.
    pub fn uring_stats(&self) -> Option<(u64, u64)> {
        self.uring.as_ref().map(UringWriter::stats)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ioctl_int(&self, request: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
        // SAFETY: the fd is a tap queue owned by `self`; the request used
        // (TUNSETVNETHDRSZ) reads one int through the pointer, which
        // points at a live local.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), request, &value) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets the virtio-net header length (10 or 12) of the device.
    pub fn set_vnet_hdr_len(&self, len: usize) -> io::Result<()> {
        let len = libc::c_int::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.ioctl_int(libc::TUNSETVNETHDRSZ, len)
    }

    /// Attaches this queue to the device, or detaches it, so the kernel
    /// steers frames only to queues someone reads (`TUNSETQUEUE` with
    /// `IFF_ATTACH_QUEUE` / `IFF_DETACH_QUEUE`; `drivers/net/tun.c`).
    pub fn set_attached(&mut self, attached: bool) -> io::Result<()> {
        if attached == self.attached {
            return Ok(());
        }
        let flag = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_ifru.ifru_flags = flag as libc::c_short;
        // SAFETY: the fd is a tap queue owned by `self`; TUNSETQUEUE reads
        // one `struct ifreq`, and `ifr` is a valid local that outlives it.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        self.attached = attached;
        Ok(())
    }

    /// Sets the offloads the device may hand to the reader.
    pub fn set_offloads(&self, offloads: Offloads) -> io::Result<()> {
        // SAFETY: the fd is an attached tap queue owned by `self`;
        // TUNSETOFFLOAD takes its argument by value, not through a pointer.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads.tun_flags()),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The offloads this kernel's tun driver accepts: each GSO type is
    /// tried on its own, and kept if the kernel takes it.
    pub fn supported_offloads(&self) -> Offloads {
        let mut supported = Offloads {
            csum: true,
            ..Offloads::default()
        };
        if self.set_offloads(supported).is_err() {
            return Offloads::default();
        }
        // USO is only taken for both IP versions at once.
        let candidates: [fn(&mut Offloads); 5] = [
            |o| o.tso4 = true,
            |o| o.tso6 = true,
            |o| o.tso_ecn = true,
            |o| o.ufo = true,
            |o| (o.uso4, o.uso6) = (true, true),
        ];
        for enable in candidates {
            let mut trial = supported;
            enable(&mut trial);
            if self.set_offloads(trial).is_ok() {
                supported = trial;
            }
        }
        // Leave the device delivering nothing special until a guest
        // negotiates its RX offloads.
        let _ = self.set_offloads(Offloads::default());
        supported
    }

    /// Writes one frame gathered from `iov`. The kernel copies it once.
    pub fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the fd is an attached tap queue owned by `self`. writev
        // only reads the described memory; a range that is not mapped makes
        // the kernel fail with EFAULT and cannot corrupt this process.
        let ret = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }

    /// Reads one frame scattered into `iov`.
    ///
    /// # Safety
    /// Every iovec must describe memory that is mapped, writable and not
    /// referenced by any Rust reference for the duration of the call.
    pub unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the fd is an attached tap queue owned by `self`; the
        // caller guarantees that every iovec is writable memory nobody else
        // borrows, so the kernel's writes cannot alias Rust references.
        let ret = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Attachment for Tap {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }

    /// A tap fd cannot take `MSG_ZEROCOPY`: every write is copied once.
    /// The header written is the frame's validated, normalised one, from
    /// zcnet's memory.
    fn send(&mut self, frame: &mut TxFrame<'_>, _mode: SendMode) -> io::Result<Sent> {
        let hdr = frame.hdr().to_bytes();
        let iov = frame.with_header(&hdr[..self.hdr_len]);
        self.writev(iov).map(|_| Sent::Copied)
    }

    /// With the `Uring` engine: every frame's header and iovecs as one
    /// batch of linked writes, one `io_uring_enter`. The headers live on
    /// this stack frame and the iovecs in the frames, both borrowed until
    /// `write_batch` has reaped every completion.
    fn send_batch(
        &mut self,
        frames: &mut [TxFrame<'_>],
        modes: &[SendMode],
        results: &mut [io::Result<Sent>],
    ) -> usize {
        let Some(writer) = self.uring.as_mut().filter(|_| !self.uring_failed) else {
            return attachment::send_each(self, frames, modes, results);
        };
        let n = frames.len();
        let hdr_len = self.hdr_len;
        let mut hdrs = [[0u8; HDR_LEN_V1]; MAX_BATCH];
        for (h, f) in hdrs.iter_mut().zip(frames.iter()) {
            *h = f.hdr().to_bytes();
        }
        let writes: ArrayVec<&[libc::iovec], MAX_BATCH> = frames
            .iter_mut()
            .zip(&hdrs)
            .map(|(f, h)| f.with_header(&h[..hdr_len]))
            .collect();
        let mut written = [0i32; MAX_BATCH];
        if let Err(e) = writer.write_batch(&writes, &mut written[..n]) {
            // Nothing was written: this thread cannot have a ring (memory
            // limits?). Frames go by writev from now on.
            warn!(
                "tap {}: io_uring unusable ({}), writing frames one by one",
                self.name,
                crate::error_chain(&e)
            );
            drop(writes);
            self.uring_failed = true;
            return attachment::send_each(self, frames, modes, results);
        }
        for (i, &r) in written[..n].iter().enumerate() {
            results[i] = match r {
                r if r >= 0 => Ok(Sent::Copied),
                // This frame and (cancelled) every later one: not written.
                r if r == -libc::EAGAIN => return i,
                r => Err(io::Error::from_raw_os_error(-r)),
            };
        }
        n
    }

    /// The kernel writes the header and the frame straight into the
    /// guest's buffers.
    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        // SAFETY: `RxBuffers`' constructor guarantees every iovec is
        // mapped, writable and unaliased while `bufs` is borrowed.
        unsafe { self.readv(bufs.iov()) }
    }

    fn supported_offloads(&self) -> Offloads {
        Tap::supported_offloads(self)
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        self.set_vnet_hdr_len(guest.hdr_len)?;
        self.hdr_len = guest.hdr_len;
        self.set_offloads(guest.rx_offloads)
    }

    fn set_enabled(&mut self, enabled: bool) -> io::Result<()> {
        self.set_attached(enabled)
    }
}
