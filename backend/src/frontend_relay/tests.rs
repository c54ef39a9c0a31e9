//! The relay between a fake frontend and a fake handler, each the test's
//! end of a `UnixStream::pair()`. Every read on the test's ends has a
//! timeout, so a message that never comes fails the test instead of
//! hanging it. That a message was *not* forwarded is shown by the next one
//! arriving first: the relay keeps order.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserU64,
    VhostUserVirtioFeatures, VhostUserVringState,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::intercept::{Code, ForwardAll};
use crate::net_intercept::NetIntercept;

const WAIT: Duration = Duration::from_secs(10);
const NEED_REPLY: VhostUserHeaderFlag = VhostUserHeaderFlag::NEED_REPLY;
const NO_FLAGS: VhostUserHeaderFlag = VhostUserHeaderFlag::empty();

/// The relay running between the test's two ends.
struct Rig {
    /// The test plays the frontend here.
    front: UnixStream,
    /// The test plays vhost-user-backend's handler here.
    handler: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

fn rig(intercept: Arc<dyn Intercept>) -> Rig {
    let (front, relay_front) = UnixStream::pair().unwrap();
    let (relay_back, handler) = UnixStream::pair().unwrap();
    for end in [&front, &handler] {
        end.set_read_timeout(Some(WAIT)).unwrap();
    }
    let threads = start(relay_front, relay_back, intercept).unwrap();
    Rig {
        front,
        handler,
        threads,
    }
}

impl Rig {
    fn frontend_sends(&self, code: FrontendReq, flags: VhostUserHeaderFlag, body: &[u8]) {
        self.frontend_sends_fds(code, flags, body, Vec::new());
    }

    fn frontend_sends_fds(
        &self,
        code: FrontendReq,
        flags: VhostUserHeaderFlag,
        body: &[u8],
        fds: Vec<OwnedFd>,
    ) {
        Message::new(code, flags, body.to_vec(), fds)
            .write_to(&self.front)
            .unwrap();
    }

    fn handler_gets(&self) -> Message {
        read(&self.handler, "the handler")
    }

    fn frontend_gets(&self) -> Message {
        read(&self.front, "the frontend")
    }

    /// The handler answers `req` with a u64, as for GET_FEATURES.
    fn handler_replies(&self, req: &Message, value: u64) {
        Message::reply_to(
            req,
            VhostUserU64::new(value).as_slice().to_vec(),
            Vec::new(),
        )
        .write_to(&self.handler)
        .unwrap();
    }

    /// Negotiates REPLY_ACK as a frontend does, and checks the handler got
    /// that request.
    fn negotiate_reply_ack(&self) {
        let proto = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ;
        self.frontend_sends(
            FrontendReq::SET_PROTOCOL_FEATURES,
            NO_FLAGS,
            &u64_body(proto.bits()),
        );
        let got = self.handler_gets();
        assert_eq!(got.request(), Some(FrontendReq::SET_PROTOCOL_FEATURES));
        assert_eq!(got.u64(), Some(proto.bits()));
    }

    /// A round trip that proves everything sent before it went through:
    /// GET_FEATURES must be the next request the handler reads, and its
    /// answer the next message the frontend reads.
    fn round_trip(&self, value: u64) {
        self.frontend_sends(FrontendReq::GET_FEATURES, NO_FLAGS, &[]);
        let req = self.handler_gets();
        assert_eq!(req.request(), Some(FrontendReq::GET_FEATURES));
        self.handler_replies(&req, value);
        let reply = self.frontend_gets();
        assert_eq!(reply.request(), Some(FrontendReq::GET_FEATURES));
        assert!(reply.flags().contains(VhostUserHeaderFlag::REPLY));
        assert_eq!(reply.u64(), Some(value), "not the reply: {reply:?}");
    }

    /// Waits (bounded) until both relay threads have ended; returns the
    /// test's ends.
    fn threads_end(self) -> (UnixStream, UnixStream) {
        all_end(self.threads);
        (self.front, self.handler)
    }
}

/// Waits (bounded) until every thread in `threads` has ended.
fn all_end(threads: Vec<JoinHandle<()>>) {
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
        let _ = done.send(());
    });
    assert!(
        ended.recv_timeout(WAIT).is_ok(),
        "relay threads still running"
    );
}

fn read(sock: &UnixStream, who: &str) -> Message {
    match Message::read_from(sock) {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{who}'s connection closed"),
        Err(e) => panic!("{who} got no message: {}", error_chain(&e)),
    }
}

fn u64_body(v: u64) -> Vec<u8> {
    VhostUserU64::new(v).as_slice().to_vec()
}

fn vring_body(index: u32, num: u32) -> Vec<u8> {
    VhostUserVringState::new(index, num).as_slice().to_vec()
}

fn assert_ack(m: &Message, code: FrontendReq, value: u64) {
    assert_eq!(m.request(), Some(code), "{m:?}");
    assert!(m.flags().contains(VhostUserHeaderFlag::REPLY), "{m:?}");
    assert_eq!(m.u64(), Some(value), "{m:?}");
    assert!(m.fds().is_empty());
}

fn assert_vring(m: &Message, code: FrontendReq, index: u32, num: u32) {
    assert_eq!(m.request(), Some(code), "{m:?}");
    let s = m.vring_state().expect("a vring state body");
    assert_eq!(({ s.index }, { s.num }), (index, num), "{m:?}");
}

fn memfd_with(bytes: &[u8]) -> OwnedFd {
    let fd = memfd_create(c"zcnet-relay-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    File::from(fd.try_clone().unwrap())
        .write_all(bytes)
        .unwrap();
    fd
}

fn memfd_contents(fd: &OwnedFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::from(fd.try_clone().unwrap())
        .read_exact_at(&mut buf, 0)
        .unwrap();
    buf
}

/// An eventfd, and the same eventfd as an OwnedFd to send.
fn eventfd() -> (EventFd, OwnedFd) {
    let kept = EventFd::new(0).unwrap();
    let raw = kept.try_clone().unwrap().into_raw_fd();
    // SAFETY: `into_raw_fd` gave up the clone's ownership of `raw`, a
    // descriptor just created by dup; the OwnedFd becomes its only owner.
    (kept, unsafe { OwnedFd::from_raw_fd(raw) })
}

#[test]
fn a_message_written_one_byte_at_a_time_arrives_whole() {
    let r = rig(Arc::new(ForwardAll));
    // SET_MEM_TABLE with one region (8-byte count + 32-byte region) and its
    // memfd, as a frontend would lay it out.
    let mut body = vec![0u8; 40];
    body[0] = 1;
    for (i, b) in body[8..].iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    let mut bytes = Vec::new();
    for word in [FrontendReq::SET_MEM_TABLE as u32, 1, body.len() as u32] {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    bytes.extend_from_slice(&body);
    let memfd = memfd_with(b"guest memory");

    // The descriptor goes with the first byte, then one byte per write.
    let raw = [memfd.as_raw_fd()];
    let sent = sendmsg::<()>(
        r.front.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes[..1])],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, 1);
    drop(memfd);
    for b in &bytes[1..] {
        (&r.front).write_all(std::slice::from_ref(b)).unwrap();
    }
    r.frontend_sends(FrontendReq::GET_FEATURES, NO_FLAGS, &[]);

    // The handler's end reads exactly the bytes sent, with the descriptor.
    let (got, fds) = recv_raw(&r.handler, bytes.len());
    assert_eq!(got, bytes, "the message changed on the way");
    assert_eq!(fds.len(), 1, "the memfd did not come with its message");
    assert_eq!(memfd_contents(&fds[0], 12), b"guest memory");
    // And the next message is whole too, with no descriptor of its own.
    let next = r.handler_gets();
    assert_eq!(next.request(), Some(FrontendReq::GET_FEATURES));
    assert!(next.fds().is_empty() && next.payload().is_empty());
}

/// Reads exactly `len` bytes, collecting descriptors, without the relay's
/// own reader.
fn recv_raw(sock: &UnixStream, len: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; len];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < len {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .expect("the handler's end got the message");
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in this
                // process for this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        assert_ne!(msg.bytes, 0, "connection closed after {got} of {len} bytes");
        got += msg.bytes;
    }
    (buf, fds)
}

#[test]
fn a_message_the_relay_cannot_carry_whole_closes_the_connection() {
    // A payload larger than vhost-user allows.
    let r = rig(Arc::new(ForwardAll));
    let mut header = Vec::new();
    for word in [FrontendReq::SET_MEM_TABLE as u32, 1, 5000] {
        header.extend_from_slice(&word.to_ne_bytes());
    }
    (&r.front).write_all(&header).unwrap();
    closed_with_nothing_forwarded(r);

    // More descriptors than vhost-user allows (32), and more than the
    // kernel would have let the relay receive had it made room for only
    // 32: every one is closed, none left open in the daemon.
    for count in [33, 253] {
        let r = rig(Arc::new(ForwardAll));
        let (end, far_end) = UnixStream::pair().unwrap();
        far_end.set_read_timeout(Some(WAIT)).unwrap();
        let fds: Vec<OwnedFd> = (0..count)
            .map(|_| OwnedFd::from(end.try_clone().unwrap()))
            .collect();
        drop(end);
        r.frontend_sends_fds(FrontendReq::SET_MEM_TABLE, NO_FLAGS, &[0; 8], fds);
        closed_with_nothing_forwarded(r);
        // The far end reads EOF only once every copy of `end` is closed.
        let mut byte = [0u8; 1];
        assert_eq!(
            (&far_end).read(&mut byte).expect("a descriptor left open"),
            0,
            "{count} descriptors"
        );
    }
}

/// Both relay threads end, the frontend's connection is closed, and the
/// handler saw nothing.
fn closed_with_nothing_forwarded(r: Rig) {
    let (front, handler) = r.threads_end();
    let mut byte = [0u8; 1];
    // A socket closed with unread bytes of ours in it reads as a reset.
    let front_read = (&front).read(&mut byte);
    assert!(
        matches!(front_read, Ok(0))
            || front_read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "frontend not closed: {front_read:?}"
    );
    assert_eq!(
        (&handler).read(&mut byte).unwrap(),
        0,
        "the handler got part of a message"
    );
}

#[test]
fn descriptors_pass_through_with_their_message_and_still_work() {
    let r = rig(Arc::new(ForwardAll));
    let (kick, kick_fd) = eventfd();
    r.frontend_sends_fds(
        FrontendReq::SET_VRING_KICK,
        NO_FLAGS,
        &u64_body(1),
        vec![kick_fd],
    );
    r.frontend_sends(FrontendReq::GET_FEATURES, NO_FLAGS, &[]);
    r.frontend_sends_fds(
        FrontendReq::SET_MEM_TABLE,
        NO_FLAGS,
        &[0u8; 72],
        vec![memfd_with(b"first"), memfd_with(b"second")],
    );

    let m = r.handler_gets();
    assert_eq!(m.request(), Some(FrontendReq::SET_VRING_KICK));
    assert_eq!(m.u64(), Some(1));
    assert_eq!(m.fds().len(), 1);
    // The handler's copy is the frontend's eventfd: a kick through it
    // reaches the frontend's end.
    File::from(m.fds()[0].try_clone().unwrap())
        .write_all(&3u64.to_ne_bytes())
        .unwrap();
    assert_eq!(kick.read().unwrap(), 3);

    let m = r.handler_gets();
    assert_eq!(m.request(), Some(FrontendReq::GET_FEATURES));
    assert!(
        m.fds().is_empty(),
        "a descriptor moved to the wrong message"
    );

    let m = r.handler_gets();
    assert_eq!(m.request(), Some(FrontendReq::SET_MEM_TABLE));
    assert_eq!(m.payload(), &[0u8; 72]);
    assert_eq!(m.fds().len(), 2);
    assert_eq!(memfd_contents(&m.fds()[0], 5), b"first");
    assert_eq!(memfd_contents(&m.fds()[1], 6), b"second");

    // Replies come back with their descriptors too (GET_INFLIGHT_FD's
    // reply carries one).
    let req = Message::new(
        FrontendReq::GET_INFLIGHT_FD,
        NO_FLAGS,
        Vec::new(),
        Vec::new(),
    );
    Message::reply_to(&req, vec![9; 24], vec![memfd_with(b"inflight")])
        .write_to(&r.handler)
        .unwrap();
    let reply = r.frontend_gets();
    assert_eq!(reply.request(), Some(FrontendReq::GET_INFLIGHT_FD));
    assert_eq!(reply.payload(), &[9; 24]);
    assert_eq!(memfd_contents(&reply.fds()[0], 8), b"inflight");
}

#[test]
fn an_early_enable_is_acked_once_and_replayed_after_set_features() {
    let r = rig(Arc::new(ForwardAll));
    r.negotiate_reply_ack();
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &vring_body(0, 1));
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &vring_body(1, 0));
    assert_ack(&r.frontend_gets(), FrontendReq::SET_VRING_ENABLE, 0);
    assert_ack(&r.frontend_gets(), FrontendReq::SET_VRING_ENABLE, 0);
    // Held: the handler's next request is this one, not an enable.
    r.round_trip(0x1234);

    let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | 1 << 32;
    r.frontend_sends(FrontendReq::SET_FEATURES, NO_FLAGS, &u64_body(features));
    r.frontend_sends(FrontendReq::SET_VRING_NUM, NO_FLAGS, &vring_body(0, 256));
    let m = r.handler_gets();
    assert_eq!(m.request(), Some(FrontendReq::SET_FEATURES));
    assert_eq!(m.u64(), Some(features));
    for (index, num) in [(0, 1), (1, 0)] {
        let m = r.handler_gets();
        assert_vring(&m, FrontendReq::SET_VRING_ENABLE, index, num);
        assert!(!m.need_reply(), "replayed with NEED_REPLY: a second reply");
    }
    assert_vring(&r.handler_gets(), FrontendReq::SET_VRING_NUM, 0, 256);
    // No second ack reached the frontend: its next message is this reply.
    r.round_trip(0x5678);

    // After SET_FEATURES an enable goes straight through, NEED_REPLY kept
    // for the handler to answer.
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &vring_body(1, 1));
    let m = r.handler_gets();
    assert_vring(&m, FrontendReq::SET_VRING_ENABLE, 1, 1);
    assert!(m.need_reply());
}

#[test]
fn without_reply_ack_an_early_enable_is_held_but_not_acked() {
    let r = rig(Arc::new(ForwardAll));
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &vring_body(0, 1));
    // Neither held request's ack nor the request itself overtakes this.
    r.round_trip(7);
    let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    r.frontend_sends(FrontendReq::SET_FEATURES, NO_FLAGS, &u64_body(features));
    assert_eq!(r.handler_gets().request(), Some(FrontendReq::SET_FEATURES));
    let m = r.handler_gets();
    assert_vring(&m, FrontendReq::SET_VRING_ENABLE, 0, 1);
    assert!(!m.need_reply());
    r.round_trip(8);
}

#[test]
fn held_enables_are_dropped_when_set_features_lacks_protocol_features() {
    let r = rig(Arc::new(ForwardAll));
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NO_FLAGS, &vring_body(0, 1));
    r.frontend_sends(FrontendReq::SET_FEATURES, NO_FLAGS, &u64_body(1 << 32));
    assert_eq!(r.handler_gets().request(), Some(FrontendReq::SET_FEATURES));
    // The enable is not replayed: the handler's next request is this one.
    r.round_trip(9);
}

#[test]
fn bad_ring_sizes_and_indices_get_an_error_ack_and_are_not_forwarded() {
    let r = rig(Arc::new(NetIntercept::new(1, 256, Arc::new(()))));
    r.negotiate_reply_ack();
    for (index, num) in [(0, 0), (0, 100), (1, 512), (1, 4096), (2, 256)] {
        r.frontend_sends(
            FrontendReq::SET_VRING_NUM,
            NEED_REPLY,
            &vring_body(index, num),
        );
        assert_ack(&r.frontend_gets(), FrontendReq::SET_VRING_NUM, 1);
    }
    // A good size is forwarded, and the handler (not the relay) answers it.
    r.frontend_sends(FrontendReq::SET_VRING_NUM, NEED_REPLY, &vring_body(1, 256));
    let m = r.handler_gets();
    assert_vring(&m, FrontendReq::SET_VRING_NUM, 1, 256);
    assert!(m.need_reply());
    r.round_trip(10);
    // A bad early enable is refused, not held and acked as a success.
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &vring_body(2, 1));
    assert_ack(&r.frontend_gets(), FrontendReq::SET_VRING_ENABLE, 1);
    r.frontend_sends(FrontendReq::SET_FEATURES, NO_FLAGS, &u64_body(1 << 30));
    assert_eq!(r.handler_gets().request(), Some(FrontendReq::SET_FEATURES));
    r.round_trip(11);
}

#[test]
fn a_bad_ring_size_the_frontend_cannot_be_told_of_closes_the_connection() {
    for reply_ack in [false, true] {
        let r = rig(Arc::new(NetIntercept::new(1, 256, Arc::new(()))));
        // NEED_REPLY without REPLY_ACK, or REPLY_ACK without NEED_REPLY:
        // either way the frontend waits for no ack.
        let flags = if reply_ack {
            r.negotiate_reply_ack();
            NO_FLAGS
        } else {
            NEED_REPLY
        };
        r.frontend_sends(FrontendReq::SET_VRING_NUM, flags, &vring_body(0, 100));
        closed_with_nothing_forwarded(r);
    }
}

#[test]
fn a_frontend_that_closes_with_requests_held_ends_both_relay_threads() {
    let r = rig(Arc::new(ForwardAll));
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NO_FLAGS, &vring_body(0, 1));
    r.frontend_sends(FrontendReq::SET_VRING_ENABLE, NO_FLAGS, &vring_body(1, 1));
    r.round_trip(1);
    let Rig {
        front,
        handler,
        threads,
    } = r;
    drop(front);
    // The test's handler end stays open: the relay ends on its own.
    all_end(threads);
    let mut byte = [0u8; 1];
    assert_eq!(
        (&handler).read(&mut byte).unwrap(),
        0,
        "held requests reached the handler after the frontend left"
    );
}

/// An interceptor as later work will write one: answers some requests
/// itself and keeps a duplicate of SET_VRING_ERR's descriptor.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Code>>,
    err_fd: Mutex<Option<OwnedFd>>,
}

impl Intercept for Recorder {
    fn request(&self, req: &Message) -> Verdict {
        lock_any(&self.seen).push(req.code());
        match req.request() {
            Some(FrontendReq::GET_INFLIGHT_FD) => Verdict::Reply {
                payload: vec![5; 24],
                fds: vec![memfd_with(b"region")],
            },
            Some(FrontendReq::SET_LOG_BASE) => Verdict::reply(&VhostUserU64::new(0), Vec::new()),
            Some(FrontendReq::SEND_RARP) => Verdict::Done,
            Some(FrontendReq::SET_VRING_ERR) => {
                let dup = req.fds().first().map(|fd| fd.try_clone().unwrap());
                *lock_any(&self.err_fd) = dup;
                Verdict::Forward
            }
            Some(FrontendReq::NET_SET_MTU) => Verdict::Close("test: no MTU".to_owned()),
            _ => Verdict::Forward,
        }
    }
}

fn lock_any<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn the_interceptor_sees_every_request_in_order_and_can_answer_itself() {
    let recorder = Arc::new(Recorder::default());
    let r = rig(recorder.clone());
    r.negotiate_reply_ack();
    r.frontend_sends(FrontendReq::GET_INFLIGHT_FD, NO_FLAGS, &[0; 24]);
    let reply = r.frontend_gets();
    assert_eq!(reply.request(), Some(FrontendReq::GET_INFLIGHT_FD));
    assert_eq!(reply.payload(), &[5; 24]);
    assert_eq!(memfd_contents(&reply.fds()[0], 6), b"region");

    r.frontend_sends(FrontendReq::SET_LOG_BASE, NO_FLAGS, &[0; 16]);
    assert_ack(&r.frontend_gets(), FrontendReq::SET_LOG_BASE, 0);
    r.frontend_sends(FrontendReq::SEND_RARP, NEED_REPLY, &[0; 8]);
    assert_ack(&r.frontend_gets(), FrontendReq::SEND_RARP, 0);

    let (err, err_fd) = eventfd();
    r.frontend_sends_fds(
        FrontendReq::SET_VRING_ERR,
        NO_FLAGS,
        &u64_body(0),
        vec![err_fd],
    );
    // The handler still gets SET_VRING_ERR with its descriptor, and none
    // of the requests handled above.
    let m = r.handler_gets();
    assert_eq!(m.request(), Some(FrontendReq::SET_VRING_ERR));
    File::from(m.fds()[0].try_clone().unwrap())
        .write_all(&1u64.to_ne_bytes())
        .unwrap();
    let kept = lock_any(&recorder.err_fd).take().expect("a duplicate kept");
    File::from(kept).write_all(&2u64.to_ne_bytes()).unwrap();
    assert_eq!(
        err.read().unwrap(),
        3,
        "both copies signal the frontend's eventfd"
    );

    r.frontend_sends(FrontendReq::NET_SET_MTU, NEED_REPLY, &u64_body(1500));
    let (front, _) = r.threads_end();
    let mut byte = [0u8; 1];
    assert_eq!((&front).read(&mut byte).unwrap(), 0, "not closed on Close");
    let seen: Vec<_> = lock_any(&recorder.seen)
        .iter()
        .map(|c| c.request())
        .collect();
    assert_eq!(
        seen,
        [
            FrontendReq::SET_PROTOCOL_FEATURES,
            FrontendReq::GET_INFLIGHT_FD,
            FrontendReq::SET_LOG_BASE,
            FrontendReq::SEND_RARP,
            FrontendReq::SET_VRING_ERR,
            FrontendReq::NET_SET_MTU,
        ]
        .map(Some)
    );
}
