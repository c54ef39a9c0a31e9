//! The interception point: zcnet's say on every frontend request before
//! vhost-user-backend's handler sees it.
//!
//! The relay ([`crate::frontend_relay`]) calls [`Intercept::request`] for
//! every request, in the order the frontend sent them, with its file
//! descriptors, and acts on the [`Verdict`]. This is where zcnet handles
//! what the crates do not handle, or handle wrongly: checks they lack
//! (SET_VRING_NUM, see [`crate::net_intercept`]), requests they refuse
//! (GET/SET_INFLIGHT_FD, SEND_RARP, NET_SET_MTU, SET_LOG_BASE), and requests
//! zcnet must learn of even though the handler applies them
//! (SET_VRING_ENABLE; SET_VRING_ERR, whose descriptor, if it has one, is
//! `req.fds().first()`: keep a `try_clone` of it and forward).

use std::os::fd::OwnedFd;

use vm_memory::ByteValued;

pub use crate::vhost_message::{Code, Message};

/// Decides what happens to each frontend request.
pub trait Intercept: Send + Sync {
    /// Sees every request from the frontend before the handler does, in
    /// order, file descriptors included, and decides what happens to it.
    ///
    /// A SET_VRING_ENABLE that the relay holds until SET_FEATURES (see
    /// [`crate::frontend_relay`]) is seen once, when it arrives; the relay
    /// holds it only if this returns [`Verdict::Forward`].
    fn request(&self, req: &Message) -> Verdict;
}

/// What the relay does with one request.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it to the handler unchanged (descriptors included).
    Forward,
    /// Handled here, successfully, for a request whose only answer is
    /// REPLY_ACK's. The frontend gets a success ack if it asked for one
    /// (REPLY_ACK negotiated and NEED_REPLY set); the handler never sees
    /// the request.
    Done,
    /// Handled here and refused, for the reason given (say what to fix: it
    /// is logged once). If the frontend asked for an ack it gets an error
    /// ack and the connection stays up. If it did not, it has no way to
    /// learn of the refusal, so the relay closes the connection rather than
    /// let the frontend go on as if the request had been applied. The
    /// handler never sees the request.
    Refuse(String),
    /// Handled here: answer with this reply body and these descriptors
    /// (for requests whose reply carries data, such as GET_INFLIGHT_FD).
    /// The handler never sees the request.
    Reply { payload: Vec<u8>, fds: Vec<OwnedFd> },
    /// Log the reason and end the connection.
    Close(String),
}

impl Verdict {
    /// A [`Verdict::Reply`] whose body is `body`'s bytes.
    pub fn reply<T: ByteValued>(body: &T, fds: Vec<OwnedFd>) -> Verdict {
        Verdict::Reply {
            payload: body.as_slice().to_vec(),
            fds,
        }
    }
}

/// Forwards everything: the relay without interception.
#[cfg(test)]
pub struct ForwardAll;

#[cfg(test)]
impl Intercept for ForwardAll {
    fn request(&self, _req: &Message) -> Verdict {
        Verdict::Forward
    }
}
