//! Live migration: the frontend requests zcnet handles itself, ahead of
//! vhost-user-backend's handler (the interceptor, [`crate::net_intercept`],
//! hands them here), and what moves from one zcnet to the next.
//!
//! # What QEMU sends, and expects back
//!
//! (QEMU 10, `hw/virtio/vhost.c` and `hw/virtio/vhost-user.c`.)
//! - **Start of a migration** (`vhost_migration_log(true)`): SET_LOG_BASE
//!   with a memfd, `mmap_size` = the log's bytes (one 64-bit word per 256
//!   KiB of guest-physical space up to the last region), `mmap_offset` 0
//!   (`vhost_dev_log_resize`, `vhost_user_set_log_base`). With
//!   `LOG_SHMFD` QEMU then reads one reply whose request code must be
//!   SET_LOG_BASE; it does not look at the payload. Then SET_FEATURES
//!   with `VHOST_F_LOG_ALL`, and SET_VRING_ADDR for every ring with
//!   `VHOST_VRING_F_LOG` and `log_guest_addr` = the used ring's guest
//!   address (`vhost_dev_set_log`, `vhost_virtqueue_set_addr`). A later
//!   change of guest memory may send a larger log first (`vhost_commit`).
//! - **While it runs** QEMU reads and clears the log (an atomic exchange
//!   per 64-bit word, `vhost_dev_sync_region`), for guest memory and for
//!   each ring's used area at `used_phys`.
//! - **At the switch-over** the source stops the device: GET_VRING_BASE
//!   for every ring, then one last sync of the log (`vhost_log_put`
//!   syncs). So every mark zcnet sets before its GET_VRING_BASE reply is
//!   seen; zcnet writes nothing after it.
//! - **On the destination**, after the device started: SEND_RARP with the
//!   guest's MAC in the first 6 bytes of a u64, once per announce round,
//!   unless the guest negotiated `GUEST_ANNOUNCE` (zcnet does not offer
//!   it). QEMU waits for no reply (`vhost_user_migration_done`; the
//!   request is made by `vhost_user_receive` when QEMU's own announcement,
//!   a 60-byte RARP, reaches the vhost-user netdev).
//!
//! # Replies
//!
//! SET_LOG_BASE gets the log description back on success, as
//! vhost-user-backend's handler would answer (and as the vhost crate's
//! frontend checks). On failure, the reply has the same size with a log
//! size of 0, which no success reply can have: the vhost crate's frontend
//! rejects it as invalid, and the connection stays in step, because the
//! frontend reads exactly one reply of the size it expects. QEMU reads
//! the reply without looking at it, so for QEMU a refused log is logged
//! by zcnet and nothing more; QEMU's logs never fail these checks.
//!
//! # What else moves: nothing
//!
//! The rings' positions move through GET_VRING_BASE and SET_VRING_BASE
//! (the used index is read back from guest memory at SET_VRING_ADDR).
//! zcnet keeps nothing else that the guest could miss, so it offers no
//! `DEVICE_STATE` transfer:
//! - lent TX chains are drained before GET_VRING_BASE answers
//!   (`QueuePair::stop_queue`, invariant 4 of DESIGN.md), so no chain is
//!   in flight across the move;
//! - RX chains gathered for a read are given back to the avail ring at the
//!   end of every event, so none is held between events; a frame held for
//!   want of room is dropped at GET_VRING_BASE (its chains are on the
//!   avail ring, covered by the base the frontend gets), as a NIC drops a
//!   frame on a link change;
//! - frames still queued in the source's tap belong to the source host's
//!   network, not to the guest; TCP retransmits them;
//! - counters are the daemon's, per queue pair, not the guest's; the
//!   destination's zcnet counts from its own start;
//! - the config space (MAC, status, MTU) comes from the destination's
//!   command line, as it must match the source's for QEMU to accept the
//!   migration at all.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{info, warn};
use vhost::vhost_user::message::{
    VhostUserLog, VhostUserProtocolFeatures, VhostUserVringAddr, VhostUserVringAddrFlags,
};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend};

use crate::dirty_log::{DirtyLog, LogError, LogMap};
use crate::error_chain;
use crate::intercept::{Message, Verdict};
use crate::iovec::Mem;

/// What the migration requests need of the device.
pub trait MigrationDevice: Send + Sync {
    /// Returns once every event a queue pair's worker is handling has
    /// ended, so later events see the dirty log as it is now.
    fn quiesce(&self);

    /// Sends `frame`, a whole Ethernet frame, through queue pair 0's
    /// attachment.
    fn announce(&self, frame: &[u8]) -> io::Result<()>;
}

/// The migration requests of one connection.
pub struct Migration {
    dirty: Arc<DirtyLog>,
    /// The guest memory the log must cover.
    mem: GuestMemoryAtomic<Mem>,
    device: Arc<dyn MigrationDevice>,
    /// SET_PROTOCOL_FEATURES acked `LOG_SHMFD`: SET_LOG_BASE carries an fd
    /// and wants a reply.
    log_shmfd: AtomicBool,
}

impl Migration {
    pub fn new(
        dirty: Arc<DirtyLog>,
        mem: GuestMemoryAtomic<Mem>,
        device: Arc<dyn MigrationDevice>,
    ) -> Migration {
        Migration {
            dirty,
            mem,
            device,
            log_shmfd: AtomicBool::new(false),
        }
    }

    /// SET_PROTOCOL_FEATURES (forwarded after this): whether SET_LOG_BASE
    /// will come with a shared-memory log.
    pub fn protocol_features(&self, req: &Message) {
        if let Some(bits) = req.u64() {
            let shmfd = bits & VhostUserProtocolFeatures::LOG_SHMFD.bits() != 0;
            self.log_shmfd.store(shmfd, Ordering::Relaxed);
        }
    }

    /// SET_VRING_ADDR (forwarded after this): where the ring's used area
    /// is logged while `LOG_ALL` is acked.
    pub fn vring_addr(&self, req: &Message) {
        if let Some(addr) = req.body::<VhostUserVringAddr>() {
            let (index, flags, log) = (addr.index, addr.flags, addr.log);
            let logged = flags & VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits() != 0;
            self.dirty.set_ring_addr(index as usize, logged, log);
        }
    }

    /// SET_LOG_BASE: maps the log and puts it in place of the last one.
    pub fn set_log_base(&self, req: &Message) -> Verdict {
        if !self.log_shmfd.load(Ordering::Relaxed) {
            return Verdict::Refuse(
                "SET_LOG_BASE without the protocol feature LOG_SHMFD: zcnet logs dirty pages \
                 only into a shared-memory log the frontend passes as an fd; ack LOG_SHMFD"
                    .to_owned(),
            );
        }
        match self.map(req) {
            Ok((log, body)) => {
                let bytes = log.len();
                self.dirty.replace(log);
                // Events that took the old log end before QEMU, on our
                // reply, syncs it for the last time and frees it.
                self.device.quiesce();
                info!(
                    "dirty log set: {bytes} bytes (guest pages up to {:#x}); pages zcnet \
                     writes are logged while LOG_ALL is acked (now {})",
                    (bytes as u64 * 8 * crate::dirty_log::LOG_PAGE).saturating_sub(1),
                    if self.dirty.log_all() { "on" } else { "off" }
                );
                Verdict::reply(&body, Vec::new())
            }
            Err(e) => {
                warn!(
                    "refused SET_LOG_BASE: {}; the previous log (if any) stays in use and the \
                     connection is kept",
                    error_chain(&e)
                );
                Verdict::reply(&VhostUserLog::default(), Vec::new())
            }
        }
    }

    fn map(&self, req: &Message) -> Result<(LogMap, VhostUserLog), LogError> {
        let body = req.body::<VhostUserLog>();
        let fd = req.fds().first().ok_or(LogError::NoFd)?;
        let Some(body) = body else {
            // Wrong size, a size of 0, or an offset that overflows.
            let raw = |i: usize| {
                req.payload()
                    .get(i..i + 8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_ne_bytes)
            };
            return Err(LogError::BadArea {
                size: raw(0),
                offset: raw(8),
            });
        };
        // The memory map the handler has applied: QEMU sends SET_LOG_BASE
        // after its memory table was acknowledged (REPLY_ACK), and sends a
        // larger log before a larger table (`vhost_commit`).
        let mem = self.mem.memory();
        let last = (mem.num_regions() > 0).then(|| mem.last_addr().0);
        let (size, offset) = (body.mmap_size, body.mmap_offset);
        let log = LogMap::map(fd.as_fd(), size, offset, last)?;
        Ok((log, body))
    }

    /// SEND_RARP: broadcasts a RARP for the guest's MAC through queue pair
    /// 0's attachment, so bridges learn the guest's new port. A failure is
    /// logged, not refused: QEMU asks for no reply and repeats the request
    /// every announce round, and ending the connection over it would take
    /// the guest's NIC down.
    pub fn send_rarp(&self, req: &Message) -> Verdict {
        let Some(mac) = req
            .payload()
            .get(..6)
            .and_then(|m| <[u8; 6]>::try_from(m).ok())
        else {
            warn!(
                "SEND_RARP with a {}-byte body, too short for a MAC: ignored",
                req.payload().len()
            );
            return Verdict::Done;
        };
        let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
        match self.device.announce(&rarp_frame(mac)) {
            Ok(()) => info!("SEND_RARP: broadcast a RARP announcement for {mac_text}"),
            Err(e) => warn!("SEND_RARP: cannot broadcast a RARP for {mac_text}: {e}"),
        }
        Verdict::Done
    }
}

/// Ethertype of RARP.
const ETH_P_RARP: u16 = 0x8035;

/// The RARP request QEMU's `qemu_announce_self` broadcasts for a guest
/// (`announce_self_create`, net/announce.c): a reverse request (opcode 3)
/// for `mac`, from `mac`, to everyone, padded to the 60-byte minimum.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, VhostUserU64};
    use virtio_queue::QueueT;
    use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

    use super::*;

    #[derive(Default)]
    struct Device {
        quiesced: Mutex<usize>,
        sent: Mutex<Vec<Vec<u8>>>,
    }

    impl MigrationDevice for Device {
        fn quiesce(&self) {
            *self.quiesced.lock().unwrap() += 1;
        }
        fn announce(&self, frame: &[u8]) -> io::Result<()> {
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(())
        }
    }

    /// 1 MiB of guest memory: a log needs 32 bytes.
    fn setup() -> (Migration, Arc<DirtyLog>, Arc<Device>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dirty = Arc::new(DirtyLog::new(2));
        let dev = Arc::new(Device::default());
        let m = Migration::new(dirty.clone(), GuestMemoryAtomic::new(mem), dev.clone());
        let proto = VhostUserU64::new(VhostUserProtocolFeatures::LOG_SHMFD.bits());
        m.protocol_features(&msg(
            FrontendReq::SET_PROTOCOL_FEATURES,
            proto.as_slice(),
            vec![],
        ));
        (m, dirty, dev)
    }

    fn msg(code: FrontendReq, body: &[u8], fds: Vec<OwnedFd>) -> Message {
        Message::new(code, VhostUserHeaderFlag::empty(), body.to_vec(), fds)
    }

    fn memfd(len: u64) -> File {
        let f = File::from(memfd_create(c"log", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
        f.set_len(len).unwrap();
        f
    }

    fn log_base(m: &Migration, size: u64, fd: Option<&File>) -> VhostUserLog {
        let body = VhostUserLog::new(size, 0);
        let fds = fd.map(|f| vec![OwnedFd::from(f.try_clone().unwrap())]);
        let req = msg(
            FrontendReq::SET_LOG_BASE,
            body.as_slice(),
            fds.unwrap_or_default(),
        );
        match m.set_log_base(&req) {
            Verdict::Reply { payload, fds } => {
                assert!(fds.is_empty());
                let mut reply = VhostUserLog::default();
                reply.as_mut_slice().copy_from_slice(&payload);
                reply
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_log_that_covers_guest_memory_is_taken_and_echoed() {
        let (m, dirty, dev) = setup();
        let f = memfd(32);
        let reply = log_base(&m, 32, Some(&f));
        assert_eq!({ reply.mmap_size }, 32);
        assert_eq!(
            *dev.quiesced.lock().unwrap(),
            1,
            "waits for events in progress"
        );
        dirty.set_log_all(true);
        assert!(dirty.batch().is_some());
    }

    #[test]
    fn a_short_log_or_a_missing_fd_gets_a_zero_size_reply_and_changes_nothing() {
        let (m, dirty, _) = setup();
        let f = memfd(32);
        assert_eq!({ log_base(&m, 31, Some(&f)).mmap_size }, 0, "too small");
        assert_eq!({ log_base(&m, 32, None).mmap_size }, 0, "no fd");
        assert_eq!(
            { log_base(&m, 64, Some(&f)).mmap_size },
            0,
            "file too short"
        );
        dirty.set_log_all(true);
        assert!(dirty.batch().is_none(), "no log was taken");
    }

    #[test]
    fn set_log_base_without_log_shmfd_is_refused() {
        let (m, _, _) = setup();
        m.protocol_features(&msg(
            FrontendReq::SET_PROTOCOL_FEATURES,
            VhostUserU64::new(0).as_slice(),
            vec![],
        ));
        let req = msg(
            FrontendReq::SET_LOG_BASE,
            VhostUserU64::new(0).as_slice(),
            vec![],
        );
        assert!(matches!(m.set_log_base(&req), Verdict::Refuse(_)));
    }

    #[test]
    fn vring_addr_with_the_log_flag_sets_where_the_used_ring_is_logged() {
        let (m, dirty, _) = setup();
        let f = memfd(32);
        log_base(&m, 32, Some(&f));
        dirty.set_log_all(true);
        let addr = VhostUserVringAddr::new(
            1,
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG,
            0,
            0x7000_0000,
            0,
            0x5000,
        );
        m.vring_addr(&msg(FrontendReq::SET_VRING_ADDR, addr.as_slice(), vec![]));
        let map = dirty.batch().unwrap();
        let q = virtio_queue::Queue::new(16).unwrap();
        dirty.used(&map, 1).mark(&q, 2, 2);
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
        assert_eq!(b[0], 1 << 5, "page 5: log_guest_addr 0x5000");
    }

    #[test]
    fn send_rarp_broadcasts_qemus_announcement_for_the_mac() {
        let (m, _, dev) = setup();
        let mut body = [0u8; 8];
        body[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!(matches!(
            m.send_rarp(&msg(FrontendReq::SEND_RARP, &body, vec![])),
            Verdict::Done
        ));
        let sent = dev.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        let f = &sent[0];
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &body[..6]);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3], "reverse request");
        assert_eq!(&f[22..28], &body[..6]);
        assert_eq!(&f[32..38], &body[..6]);
        assert!(f[38..].iter().all(|&b| b == 0));
    }
}
