//! The relay between the frontend's connection and rust-vmm's vhost-user
//! request handler: the one place where zcnet sees a request before the
//! handler does.
//!
//! QEMU (7.2 and later) sends `SET_VRING_ENABLE` for a vhost-user net
//! device while it realizes the device, before `SET_FEATURES`. The vhost
//! crate's handler (0.18) refuses `SET_VRING_ENABLE` until `SET_FEATURES`
//! has acknowledged `VHOST_USER_F_PROTOCOL_FEATURES` and then drops the
//! connection, so QEMU's NIC would never come up. The relay holds such
//! early requests, acknowledges them itself when the frontend asked for a
//! reply, and replays them to the handler right after `SET_FEATURES`.
//! Everything else, file descriptors included, passes through unchanged
//! and in order; replies flow back unchanged.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use log::{debug, warn};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures};

const HEADER_LEN: usize = 12;
/// Larger than any vhost-user message (the handler's own limit is 4 KiB).
const MAX_PAYLOAD: usize = 1 << 20;
/// The handler accepts at most this many file descriptors per message.
const MAX_FDS: usize = 32;

/// One vhost-user message: header fields, payload and attached fds.
struct Message {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn need_reply(&self) -> bool {
        self.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0
    }

    fn u64_payload(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
}

/// Relays between `front` (the frontend) and `back` (the handler's end)
/// on two threads, until either side closes. Closing one side shuts the
/// other down, so the handler sees the frontend leave and vice versa.
pub fn start(
    front: UnixStream,
    back: UnixStream,
    on_enable: Box<dyn Fn(usize, bool) + Send>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let front_writer = Arc::new(Mutex::new(front.try_clone()?));
    let back_reader = back.try_clone()?;
    let front_for_replies = front_writer.clone();
    let to_handler = thread::Builder::new()
        .name("zcnet-relay-req".to_owned())
        .spawn(move || {
            if let Err(e) = requests(front, back, &front_writer, &*on_enable) {
                debug!("frontend request relay ended: {e}");
            }
        })?;
    let to_frontend = thread::Builder::new()
        .name("zcnet-relay-reply".to_owned())
        .spawn(move || {
            if let Err(e) = replies(back_reader, &front_for_replies) {
                debug!("handler reply relay ended: {e}");
            }
        })?;
    Ok(vec![to_handler, to_frontend])
}

/// Frontend to handler: requests, with early SET_VRING_ENABLE held back.
fn requests(
    mut front: UnixStream,
    mut back: UnixStream,
    front_writer: &Mutex<UnixStream>,
    on_enable: &dyn Fn(usize, bool),
) -> io::Result<()> {
    let mut features_set = false;
    let mut reply_ack = false;
    let mut held: Vec<Message> = Vec::new();
    let result = loop {
        let msg = match read_message(&mut front) {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if msg.request == FrontendReq::SET_VRING_ENABLE as u32 {
            if let Some(state) = msg.u64_payload() {
                on_enable((state & 0xffff_ffff) as usize, state >> 32 != 0);
            }
        }
        if msg.request == FrontendReq::SET_VRING_ENABLE as u32 && !features_set {
            debug!("holding SET_VRING_ENABLE sent before SET_FEATURES until SET_FEATURES");
            if msg.need_reply() && reply_ack {
                let ack = Message {
                    request: msg.request,
                    flags: 1 | VhostUserHeaderFlag::REPLY.bits(),
                    payload: 0u64.to_le_bytes().to_vec(),
                    fds: Vec::new(),
                };
                write_message(&mut front_writer.lock().unwrap(), &ack)?;
            }
            held.push(msg);
            continue;
        }
        if msg.request == FrontendReq::SET_PROTOCOL_FEATURES as u32 {
            reply_ack = msg
                .u64_payload()
                .is_some_and(|f| f & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0);
        }
        let is_set_features = msg.request == FrontendReq::SET_FEATURES as u32;
        if let Err(e) = write_message(&mut back, &msg) {
            break Err(e);
        }
        if is_set_features && !features_set {
            features_set = true;
            for mut early in held.drain(..) {
                // Already acknowledged to the frontend: no second reply.
                early.flags &= !VhostUserHeaderFlag::NEED_REPLY.bits();
                write_message(&mut back, &early)?;
            }
        }
    };
    let _ = back.shutdown(Shutdown::Both);
    result
}

/// Handler to frontend: replies, unchanged.
fn replies(mut back: UnixStream, front_writer: &Mutex<UnixStream>) -> io::Result<()> {
    let result = loop {
        match read_message(&mut back) {
            Ok(Some(m)) => {
                if let Err(e) = write_message(&mut front_writer.lock().unwrap(), &m) {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = front_writer.lock().unwrap().shutdown(Shutdown::Both);
    result
}

/// Reads one message; `None` when the peer closed the connection between
/// messages.
fn read_message(sock: &mut UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in this process
                    // for this message (SCM_RIGHTS); nothing else owns it, so
                    // the OwnedFd is its one owner and closes it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    sock.read_exact(&mut header[got..])?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_PAYLOAD {
        warn!("vhost-user message {request} claims a {size}-byte payload; closing the connection");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "oversized message",
        ));
    }
    let mut payload = vec![0u8; size];
    sock.read_exact(&mut payload)?;
    Ok(Some(Message {
        request,
        flags,
        payload,
        fds,
    }))
}

/// Writes one message, its fds attached to the first byte.
fn write_message(sock: &mut UnixStream, m: &Message) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&m.request.to_le_bytes());
    header[4..8].copy_from_slice(&m.flags.to_le_bytes());
    header[8..12].copy_from_slice(&(m.payload.len() as u32).to_le_bytes());
    let raw: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: &[ControlMessage] = if raw.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(&header), IoSlice::new(&m.payload)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    // A stream socket may take less than all at once; the fds went with
    // the first byte.
    let whole = [&header[..], &m.payload[..]].concat();
    sock.write_all(&whole[sent..])
}
