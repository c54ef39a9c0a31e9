//! The relay between the frontend's connection and rust-vmm's vhost-user
//! request handler: the one place where zcnet sees a request before the
//! handler does.
//!
//! Two threads carry whole messages ([`Message`]): requests from the
//! frontend to the handler, replies from the handler to the frontend.
//! Every request is first shown to the [`Intercept`] the daemon gave, in
//! order, and goes on to the handler only if it says [`Verdict::Forward`].
//! Forwarded requests and all replies pass unchanged and in order, file
//! descriptors included. When either side closes, the relay shuts the other
//! down, so the handler sees the frontend leave and vice versa.
//!
//! # Early SET_VRING_ENABLE: what is held, and when it is replayed
//!
//! QEMU (7.2 and later) sends `SET_VRING_ENABLE` for a vhost-user net
//! device while it realizes the device, before `SET_FEATURES`. vhost 0.18
//! and vhost-user-backend 0.24 both refuse `SET_VRING_ENABLE` until
//! `SET_FEATURES` has acked `VHOST_USER_F_PROTOCOL_FEATURES`, and an error
//! from a request ends the whole connection, so QEMU's NIC would never come
//! up. So the relay:
//!
//! - **holds** every `SET_VRING_ENABLE` the interceptor forwards while no
//!   `SET_FEATURES` has been forwarded yet on this connection (or since a
//!   `RESET_OWNER` or `RESET_DEVICE`, after which vhost-user-backend
//!   forgets the acked features and refuses it again). Nothing else is
//!   held, and later requests do not wait behind it. Enabling the ring a
//!   little later is harmless: the guest's driver uses no ring before
//!   feature negotiation is over, and QEMU sends `SET_FEATURES` only then.
//! - **acknowledges** a held request that has `NEED_REPLY`, at once and
//!   with success, only if `REPLY_ACK` was negotiated (a forwarded
//!   `SET_PROTOCOL_FEATURES` had it). Without `REPLY_ACK` the frontend waits
//!   for no reply, so none is sent, as the handler would send none. The
//!   interceptor has already seen the request and could refuse a bad index
//!   or value ([`crate::net_intercept`]), so the success ack is not a lie
//!   the handler would contradict.
//! - **replays** the held requests to the handler right after forwarding
//!   `SET_FEATURES`, in the order they arrived and before any later
//!   request, each with `NEED_REPLY` cleared, so the handler sends no second
//!   reply that the frontend would take for the answer to a later request.
//!   If that `SET_FEATURES` did not ack `PROTOCOL_FEATURES`, the held
//!   requests are dropped instead (logged): without it every ring is enabled
//!   by `SET_FEATURES` itself, and the handler would refuse them.
//! - **drops** held requests if the frontend disconnects first: they never
//!   reach the handler, their descriptors (none, for this request) are
//!   closed, and both relay threads end as for any disconnect.
//!
//! # The upstream fix that makes holding unnecessary
//!
//! Both crates test the *acked* `PROTOCOL_FEATURES` bit, but a frontend
//! that sends `SET_VRING_ENABLE` before `SET_FEATURES` can only have gone
//! by the bit the backend *offered*. The crates go by that bit elsewhere: they accept `GET/SET_PROTOCOL_FEATURES`
//! before `SET_FEATURES`, vhost's `update_reply_ack_flag` enables
//! `REPLY_ACK` from the offered bit, and vhost's own `Frontend::check_feature`
//! tests the offered bit. The fix makes each backend handler's
//! `check_feature` test the offered bit. In both crates that helper has
//! exactly one caller, the `SET_VRING_ENABLE` check (vhost:
//! `BackendReqHandler::handle_request`, line 623; vhost-user-backend:
//! `set_vring_enable`, line 603), so the change is one line in each:
//!
//! ```text
//! vhost 0.18.0, src/vhost_user/backend_req_handler.rs,
//! BackendReqHandler::check_feature, line 415
//! (virtio_features is what the handler answered to GET_FEATURES):
//! -        if self.acked_virtio_features & feat.bits() != 0 {
//! +        if self.virtio_features & feat.bits() != 0 {
//!
//! vhost-user-backend 0.24.0, src/handler.rs,
//! VhostUserHandler::check_feature, line 295:
//! -        if self.acked_features & feat.bits() != 0 {
//! +        if self.backend.features() & feat.bits() != 0 {
//! ```
//!
//! (Upstream may rather rename the helpers, e.g. `check_offered_feature`,
//! and fix the comments above them and above the call in
//! `set_vring_enable`, which say "negotiated".) With both lines changed
//! and the holding here switched off, the test
//! `qemu_order_set_vring_enable_before_set_features_keeps_the_connection`
//! (backend/tests/vhost_user.rs) passes, as do the rest of that file and
//! `tap_datapath`; without the change, the handler closes the connection
//! at the first early `SET_VRING_ENABLE`, with no error reply. Once a
//! release of both carries it, the holding (the `held` field and
//! `replay`) can be deleted; the interception stays.
//!
//! # Replies the relay sends itself
//!
//! Acks for held requests and for requests the interceptor handled go to
//! the frontend under the same lock as the handler's replies, so messages
//! never interleave. Their order relative to the handler's replies is the
//! frontend's order only because a frontend waits for the reply to a
//! request before it sends another that wants one, as QEMU and
//! cloud-hypervisor do.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use log::{debug, info, warn};
use thiserror::Error;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures, VhostUserVirtioFeatures};

use crate::error_chain;
use crate::intercept::{Intercept, Verdict};
use crate::sandbox::{self, Kind};
use crate::vhost_message::{Message, MessageError};

#[derive(Debug, Error)]
enum RelayError {
    #[error("reading the frontend's request")]
    FromFrontend(#[source] MessageError),
    #[error("passing a request to the handler")]
    ToHandler(#[source] MessageError),
    #[error("reading the handler's reply")]
    FromHandler(#[source] MessageError),
    #[error("answering the frontend")]
    ToFrontend(#[source] MessageError),
}

/// Relays between `front` (the frontend) and `back` (the handler's end)
/// on two threads, until either side closes, showing every request to
/// `intercept` first.
pub fn start(
    front: UnixStream,
    back: UnixStream,
    intercept: Arc<dyn Intercept>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let to_front = Arc::new(Mutex::new(front.try_clone()?));
    let back_reader = back.try_clone()?;
    let mut requests = Requests {
        front,
        back,
        to_front: to_front.clone(),
        intercept,
        reply_ack: false,
        features_set: false,
        held: Vec::new(),
    };
    let to_handler = thread::Builder::new()
        .name("zcnet-relay-req".to_owned())
        .spawn(move || {
            sandbox::enter(Kind::Frontend);
            let result = requests.run();
            let _ = requests.back.shutdown(Shutdown::Both);
            match result {
                Ok(()) => {}
                Err(e @ RelayError::FromFrontend(MessageError::Recv(_)))
                | Err(e @ RelayError::ToHandler(_))
                | Err(e @ RelayError::ToFrontend(_)) => {
                    debug!("request relay ended: {}", error_chain(&e))
                }
                Err(e) => warn!("closing the frontend's connection: {}", error_chain(&e)),
            }
        })?;
    let to_frontend = thread::Builder::new()
        .name("zcnet-relay-reply".to_owned())
        .spawn(move || {
            sandbox::enter(Kind::Frontend);
            let result = replies(&back_reader, &to_front);
            let _ = lock(&to_front).shutdown(Shutdown::Both);
            if let Err(e) = result {
                debug!("reply relay ended: {}", error_chain(&e));
            }
        })?;
    Ok(vec![to_handler, to_frontend])
}

/// The request direction and what it knows of the negotiation.
struct Requests {
    front: UnixStream,
    back: UnixStream,
    to_front: Arc<Mutex<UnixStream>>,
    intercept: Arc<dyn Intercept>,
    /// A forwarded SET_PROTOCOL_FEATURES acked REPLY_ACK.
    reply_ack: bool,
    /// SET_FEATURES was forwarded (and no reset since).
    features_set: bool,
    /// Early SET_VRING_ENABLE requests, in arrival order.
    held: Vec<Message>,
}

impl Requests {
    fn run(&mut self) -> Result<(), RelayError> {
        while let Some(req) = Message::read_from(&self.front).map_err(RelayError::FromFrontend)? {
            match self.intercept.request(&req) {
                Verdict::Forward => self.forward(req)?,
                Verdict::Done => self.ack(&req, true)?,
                Verdict::Refuse(why) if self.can_ack(&req) => {
                    warn!(
                        "refused {} from the frontend: {why} (error reply sent; connection kept)",
                        req.code()
                    );
                    self.ack(&req, false)?;
                }
                Verdict::Refuse(why) => {
                    warn!(
                        "refused {} from the frontend: {why}; closing the connection, since the \
                         frontend did not ask for a reply (REPLY_ACK with NEED_REPLY) and could \
                         not learn of the refusal",
                        req.code()
                    );
                    return Ok(());
                }
                Verdict::Reply { payload, fds } => {
                    send(&self.to_front, &Message::reply_to(&req, payload, fds))
                        .map_err(RelayError::ToFrontend)?;
                }
                Verdict::Close(why) => {
                    warn!("closing the frontend's connection at {}: {why}", req.code());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Passes `req` to the handler, or holds it (see the module doc).
    fn forward(&mut self, req: Message) -> Result<(), RelayError> {
        let mut acked_features = None;
        match req.request() {
            Some(FrontendReq::SET_VRING_ENABLE) if !self.features_set => {
                debug!("holding SET_VRING_ENABLE sent before SET_FEATURES until SET_FEATURES");
                self.ack(&req, true)?;
                self.held.push(req.without_need_reply());
                return Ok(());
            }
            Some(FrontendReq::SET_PROTOCOL_FEATURES) => {
                let proto = req.u64().unwrap_or(0);
                self.reply_ack = proto & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
            }
            Some(FrontendReq::SET_FEATURES) => acked_features = req.u64(),
            Some(FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE) => {
                self.features_set = false;
            }
            _ => {}
        }
        self.to_handler(&req)?;
        if let Some(features) = acked_features {
            self.features_set = true;
            self.replay(features)?;
        }
        Ok(())
    }

    /// After SET_FEATURES (acking `features`): the held requests go to the
    /// handler, or are dropped if PROTOCOL_FEATURES was not acked.
    fn replay(&mut self, features: u64) -> Result<(), RelayError> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            info!(
                "dropping {} SET_VRING_ENABLE sent before SET_FEATURES: SET_FEATURES did not ack \
                 PROTOCOL_FEATURES, so it enables every ring itself",
                held.len()
            );
            return Ok(());
        }
        for early in &held {
            self.to_handler(early)?;
        }
        Ok(())
    }

    /// Whether the frontend waits for an ack of `req`.
    fn can_ack(&self, req: &Message) -> bool {
        self.reply_ack && req.need_reply()
    }

    /// Acks `req` if the frontend asked for it.
    fn ack(&self, req: &Message, ok: bool) -> Result<(), RelayError> {
        if !self.can_ack(req) {
            return Ok(());
        }
        send(&self.to_front, &Message::ack_for(req, ok)).map_err(RelayError::ToFrontend)
    }

    fn to_handler(&self, req: &Message) -> Result<(), RelayError> {
        req.write_to(&self.back).map_err(RelayError::ToHandler)
    }
}

/// Handler to frontend: replies, unchanged.
fn replies(back: &UnixStream, to_front: &Mutex<UnixStream>) -> Result<(), RelayError> {
    while let Some(reply) = Message::read_from(back).map_err(RelayError::FromHandler)? {
        send(to_front, &reply).map_err(RelayError::ToFrontend)?;
    }
    Ok(())
}

fn send(to_front: &Mutex<UnixStream>, m: &Message) -> Result<(), MessageError> {
    m.write_to(&lock(to_front))
}

/// The frontend's socket. A thread that panicked while holding it left no
/// half-updated state behind (the lock guards only the socket), so a
/// poisoned lock is taken as it is.
fn lock(to_front: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    to_front.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
