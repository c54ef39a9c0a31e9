//! One vhost-user message on a Unix stream socket: its header, its payload
//! and the file descriptors that came with it, read and written whole.
//!
//! A stream socket may deliver a message in pieces, and the kernel attaches
//! a message's file descriptors (SCM_RIGHTS) to the first byte of the
//! `sendmsg` that carried them. [`Message::read_from`] therefore reads every
//! piece with `recvmsg`, keeps whatever descriptors arrive with any piece,
//! and never reads past the end of the message, so descriptors stay with
//! the message they were sent with. [`Message::write_to`] sends header and
//! payload in one `sendmsg` with the descriptors on its first byte, as the
//! vhost crate's own endpoint does.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use thiserror::Error;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserMsgValidator, VhostUserU64, VhostUserVringState,
    MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vm_memory::ByteValued;

#[derive(Debug, Error)]
pub enum MessageError {
    #[error("cannot receive from the socket")]
    Recv(#[source] io::Error),
    #[error("cannot send to the socket")]
    Send(#[source] io::Error),
    #[error("the peer closed the connection {got} bytes into a {want}-byte message part")]
    Truncated { got: usize, want: usize },
    #[error("{code} claims a {size}-byte payload; vhost-user allows at most {MAX_MSG_SIZE}")]
    Oversized { code: Code, size: u32 },
    #[error(
        "more file descriptors came with one message than the {MAX_ATTACHED_FD_ENTRIES} \
         vhost-user allows"
    )]
    TooManyFds,
    #[error("the kernel cut off the control data of a message (MSG_CTRUNC)")]
    ControlTruncated,
}

/// The header every vhost-user message starts with: request code, flags,
/// payload size, in the machine's byte order.
///
/// The vhost crate's own `VhostUserMsgHeader` has exactly this layout, but
/// 0.18 declares it `pub(super)`, so it cannot be named outside the crate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}

// SAFETY: `Header` is `repr(C)` with three `u32` fields, so it has no
// padding, and every bit pattern is a valid value of each field.
unsafe impl ByteValued for Header {}

const HEADER_LEN: usize = size_of::<Header>();

/// A request code as it came over the wire, named when the vhost crate
/// knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(u32);

impl Code {
    /// The request, if the vhost crate knows the code.
    pub fn request(self) -> Option<FrontendReq> {
        FrontendReq::try_from(self.0).ok()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.request() {
            Some(r) => write!(f, "{r:?}"),
            None => write!(f, "request {}", self.0),
        }
    }
}

/// One vhost-user message: a request from the frontend or a reply to it.
#[derive(Debug)]
pub struct Message {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    /// The request code (also in a reply: it repeats the request's code).
    pub fn code(&self) -> Code {
        Code(self.header.request)
    }

    /// The request, if the vhost crate knows its code.
    pub fn request(&self) -> Option<FrontendReq> {
        self.code().request()
    }

    /// The header flags, unknown bits included.
    pub fn flags(&self) -> VhostUserHeaderFlag {
        VhostUserHeaderFlag::from_bits_retain(self.header.flags)
    }

    /// Whether the sender asked for a reply (REPLY_ACK's NEED_REPLY).
    pub fn need_reply(&self) -> bool {
        self.flags().contains(VhostUserHeaderFlag::NEED_REPLY)
    }

    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The file descriptors that came with the message, in order.
    /// `try_clone` one to keep a duplicate: the message still carries the
    /// original to the handler.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// The payload as the message body `T`, if it is exactly
    /// `size_of::<T>()` bytes and `T` finds it valid: the same test the
    /// vhost crate's handler applies before it accepts a request.
    pub fn body<T: ByteValued + Default + VhostUserMsgValidator>(&self) -> Option<T> {
        if self.payload.len() != size_of::<T>() {
            return None;
        }
        let mut body = T::default();
        body.as_mut_slice().copy_from_slice(&self.payload);
        body.is_valid().then_some(body)
    }

    /// The body of SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE and
    /// SET_VRING_ENABLE.
    pub fn vring_state(&self) -> Option<VhostUserVringState> {
        self.body()
    }

    /// The body of a message that carries one `u64` (SET_FEATURES,
    /// SET_PROTOCOL_FEATURES, SET_VRING_KICK/CALL/ERR, ...).
    pub fn u64(&self) -> Option<u64> {
        self.body::<VhostUserU64>().map(|b| b.value)
    }

    /// A request, as a frontend would send it.
    pub fn new(
        request: FrontendReq,
        flags: VhostUserHeaderFlag,
        payload: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Message {
        Message::with_code(u32::from(request), flags.bits(), payload, fds)
    }

    /// The reply to `req` carrying `payload` and `fds`.
    pub(crate) fn reply_to(req: &Message, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        Message::with_code(
            req.header.request,
            VhostUserHeaderFlag::REPLY.bits() | VERSION_1,
            payload,
            fds,
        )
    }

    /// The REPLY_ACK answer to `req`: a `u64`, 0 for success, 1 for failure.
    pub(crate) fn ack_for(req: &Message, ok: bool) -> Message {
        let value = VhostUserU64::new(u64::from(!ok));
        Message::reply_to(req, value.as_slice().to_vec(), Vec::new())
    }

    /// The same message without NEED_REPLY.
    pub(crate) fn without_need_reply(mut self) -> Message {
        self.header.flags &= !VhostUserHeaderFlag::NEED_REPLY.bits();
        self
    }

    fn with_code(request: u32, flags: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        Message {
            header: Header {
                request,
                flags,
                // Callers pass bodies of vhost-user messages, all far
                // below 4 GiB; `write_to` refuses anything larger.
                size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            },
            payload,
            fds,
        }
    }

    /// Reads one whole message; `None` when the peer closed the connection
    /// between messages.
    pub(crate) fn read_from(sock: &UnixStream) -> Result<Option<Message>, MessageError> {
        let mut header = Header::default();
        let mut fds = Vec::new();
        if !recv_exact(sock, header.as_mut_slice(), &mut fds)? {
            return Ok(None);
        }
        if header.size as usize > MAX_MSG_SIZE {
            return Err(MessageError::Oversized {
                code: Code(header.request),
                size: header.size,
            });
        }
        let mut payload = vec![0u8; header.size as usize];
        if !payload.is_empty() && !recv_exact(sock, &mut payload, &mut fds)? {
            return Err(MessageError::Truncated {
                got: 0,
                want: payload.len(),
            });
        }
        Ok(Some(Message {
            header,
            payload,
            fds,
        }))
    }

    /// Writes the message, its file descriptors attached to its first byte.
    pub(crate) fn write_to(&self, mut sock: &UnixStream) -> Result<(), MessageError> {
        if self.payload.len() > MAX_MSG_SIZE {
            return Err(MessageError::Oversized {
                code: self.code(),
                size: self.header.size,
            });
        }
        let raw: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        let iov = [
            IoSlice::new(self.header.as_slice()),
            IoSlice::new(&self.payload),
        ];
        let sent = loop {
            match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(Errno::EINTR) => continue,
                r => break r.map_err(|e| MessageError::Send(e.into()))?,
            }
        };
        // A stream socket may take less than all at once; the descriptors
        // went with the first byte.
        if sent < HEADER_LEN + self.payload.len() {
            let whole = [self.header.as_slice(), &self.payload].concat();
            sock.write_all(&whole[sent..]).map_err(MessageError::Send)?;
        }
        Ok(())
    }
}

/// Protocol version 1, the only one, in the low bits of every header's flags.
const VERSION_1: u32 = 0x1;

/// The most descriptors the kernel passes with one `sendmsg` (SCM_MAX_FD,
/// include/net/scm.h). A `recvmsg` on a Unix stream socket returns those
/// of one `sendmsg` at most, so with room for this many no descriptor is
/// ever cut off. That matters: the kernel installs the ones that fit before
/// it reports the cut (MSG_CTRUNC), and nix does not hand over the control
/// messages of a cut buffer, so those would stay open and unowned. The
/// vhost-user limit is checked once they are owned.
const SCM_MAX_FD: usize = 253;

/// Fills `buf` from `sock` with as many `recvmsg` calls as it takes,
/// moving the descriptors that come with any of them into `fds`. Returns
/// false if the peer had closed the connection before the first byte.
fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<bool, MessageError> {
    let mut got = 0;
    while got < buf.len() {
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            r => r.map_err(|e| MessageError::Recv(e.into()))?,
        };
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            // Not expected with room for SCM_MAX_FD (see there).
            return Err(MessageError::ControlTruncated);
        }
        for c in msg.cmsgs().map_err(|e| MessageError::Recv(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel installed `fd` in this process for
                    // this message (SCM_RIGHTS) just now; nothing else
                    // knows it, so this OwnedFd is its only owner and
                    // closes it when dropped.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if fds.len() > MAX_ATTACHED_FD_ENTRIES {
            return Err(MessageError::TooManyFds);
        }
        if msg.bytes == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(MessageError::Truncated {
                got,
                want: buf.len(),
            });
        }
        got += msg.bytes;
    }
    Ok(true)
}
