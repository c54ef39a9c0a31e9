//! A fake guest: a real vhost-user frontend over the real Unix socket, with
//! memfd guest memory shared with the daemon and split virtqueues laid out
//! in it, driven the way QEMU or cloud-hypervisor drive a backend.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVringAddrFlags,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::ring::{Desc, Ring, Used};

/// Guest memory of a fake guest made by [`FakeGuest::connect`] (others:
/// [`FakeGuest::connect_with_mem`]).
pub const MEM_SIZE: u64 = 64 << 20;
/// QEMU's low-memory hole: guest RAM is two regions of one memfd.
const HOLE_START: u64 = 0xa0000;
const HOLE_END: u64 = 0xc0000;
const RINGS_BASE: u64 = 0x10_0000;
const RING_STRIDE: u64 = 0x1_0000;
/// Where [`FakeGuest::reconnect_with_new_rings`] lays moved rings out:
/// past the 64 rings of 32 queue pairs.
const MOVED_RINGS: u64 = 64;
const BUFFERS_BASE: u64 = 0x80_0000;

pub const VERSION_1: u64 = 1 << 32;
pub const EVENT_IDX: u64 = 1 << 29;
pub const INDIRECT_DESC: u64 = 1 << 28;
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
pub const IN_ORDER: u64 = 1 << 35;
pub const CSUM: u64 = 1 << 0;
pub const GUEST_CSUM: u64 = 1 << 1;
pub const MTU: u64 = 1 << 3;
pub const MAC: u64 = 1 << 5;
pub const GUEST_TSO4: u64 = 1 << 7;
pub const GUEST_TSO6: u64 = 1 << 8;
pub const HOST_TSO4: u64 = 1 << 11;
pub const HOST_TSO6: u64 = 1 << 12;
pub const MRG_RXBUF: u64 = 1 << 15;
pub const STATUS: u64 = 1 << 16;
pub const MQ: u64 = 1 << 22;
/// `VHOST_F_LOG_ALL`: the frontend wants every write logged (migration).
pub const LOG_ALL: u64 = 1 << 26;

pub const HDR_LEN: usize = 12;

/// How the fake guest negotiates.
#[derive(Clone, Debug)]
pub struct GuestOpts {
    pub pairs: usize,
    pub queue_size: u16,
    /// Features the guest would like; it acks those the device offers.
    pub wanted: u64,
    pub protocol: VhostUserProtocolFeatures,
}

impl Default for GuestOpts {
    fn default() -> Self {
        GuestOpts {
            pairs: 1,
            queue_size: 256,
            wanted: VERSION_1
                | PROTOCOL_FEATURES
                | EVENT_IDX
                | INDIRECT_DESC
                | CSUM
                | GUEST_CSUM
                | HOST_TSO4
                | HOST_TSO6
                | GUEST_TSO4
                | GUEST_TSO6
                | MRG_RXBUF
                | STATUS
                | MAC
                | MQ,
            protocol: VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
        }
    }
}

/// Where a frontend restarts each ring after its backend died and came
/// back (it cannot ask the dead backend with GET_VRING_BASE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingBase {
    /// The guest's used index, as QEMU's net device does.
    Used,
    /// The driver's avail index, as cloud-hypervisor does without IN_ORDER.
    Avail,
}

pub struct FakeGuest {
    pub frontend: Frontend,
    opts: GuestOpts,
    /// The in-flight region the device handed out (GET_INFLIGHT_FD), kept
    /// across reconnects as cloud-hypervisor keeps it.
    inflight: Option<(VhostUserInflight, File)>,
    pub mem: GuestMemoryMmap,
    _memfd: File,
    pub offered: u64,
    pub acked: u64,
    pub protocol: VhostUserProtocolFeatures,
    pub queue_num: u64,
    /// rings[2 * pair] is RX, rings[2 * pair + 1] is TX.
    pub rings: Vec<Ring>,
    next_buf: u64,
    mem_size: u64,
}

impl FakeGuest {
    /// Connects and brings every queue up, in QEMU's order of messages.
    pub fn connect(socket: &Path, opts: &GuestOpts) -> FakeGuest {
        Self::connect_with_mem(socket, opts, MEM_SIZE)
    }

    /// [`FakeGuest::connect`] with `mem_size` bytes of guest memory
    /// instead of [`MEM_SIZE`] (a multiple of 4 KiB, above 8 MiB: rings
    /// and buffers start there).
    pub fn connect_with_mem(socket: &Path, opts: &GuestOpts, mem_size: u64) -> FakeGuest {
        let mut g = Self::negotiate_with_mem(socket, opts, mem_size);
        g.set_mem_table();
        if g.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            g.get_inflight_region();
            g.set_inflight_region();
        }
        for q in 0..2 * opts.pairs {
            g.start_ring(q, opts.queue_size);
        }
        g.sync();
        g
    }

    /// GET_INFLIGHT_FD for every queue, as cloud-hypervisor asks when it
    /// first sets the device up; the region is kept.
    pub fn get_inflight_region(&mut self) {
        let asked = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: 2 * self.opts.pairs as u16,
            queue_size: self.opts.queue_size,
        };
        let region = self
            .frontend
            .get_inflight_fd(&asked)
            .expect("GET_INFLIGHT_FD");
        self.inflight = Some(region);
    }

    /// The in-flight region the device handed out, as the frontend keeps
    /// it (`None` without INFLIGHT_SHMFD).
    pub fn inflight_region(&self) -> Option<&File> {
        self.inflight.as_ref().map(|(_, file)| file)
    }

    /// SET_INFLIGHT_FD with the kept region, before the rings start.
    pub fn set_inflight_region(&mut self) {
        let (info, file) = self.inflight.as_ref().expect("an in-flight region");
        self.frontend
            .set_inflight_fd(info, file.as_raw_fd())
            .expect("SET_INFLIGHT_FD");
    }

    /// The device died and came back on `socket`: connects again, same
    /// guest memory, same features, the in-flight region (if any) given
    /// back, and every ring handed over again where it is, its memory as
    /// it is, at `base`. Returns once the device has handled it all.
    pub fn reconnect(&mut self, socket: &Path, base: RingBase) {
        self.rejoin(socket);
        for q in 0..self.rings.len() {
            let ring = &self.rings[q];
            let at = match base {
                RingBase::Used => ring.used_idx(),
                RingBase::Avail => ring.avail_idx(),
            };
            self.restart_ring(q, at);
        }
        self.sync();
    }

    /// Stops every ring as a frontend does before it disconnects
    /// (GET_VRING_BASE, which the device answers once it has returned
    /// every chain it can) and returns the bases, in queue order.
    pub fn stop_rings(&mut self) -> Vec<u16> {
        (0..self.rings.len())
            .map(|q| {
                let base = self.frontend.get_vring_base(q).expect("GET_VRING_BASE");
                u16::try_from(base).expect("a 16-bit ring base")
            })
            .collect()
    }

    /// A clean reconnect after [`stop_rings`](Self::stop_rings): a new
    /// connection, same memory and features, every ring handed over where
    /// it is at the base the device gave.
    pub fn reconnect_at(&mut self, socket: &Path, bases: &[u16]) {
        self.rejoin(socket);
        for (q, &base) in bases.iter().enumerate() {
            self.restart_ring(q, base);
        }
        self.sync();
    }

    /// Bytes of guest memory (from address 0, the hole included).
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Like [`reconnect`](Self::reconnect), but the driver was reset
    /// meanwhile: every ring is laid out anew and empty (at other
    /// addresses if `moved`, otherwise in place) and handed over at 0.
    pub fn reconnect_with_new_rings(&mut self, socket: &Path, moved: bool) {
        self.rejoin(socket);
        for q in 0..self.rings.len() {
            let slot = if moved {
                MOVED_RINGS + q as u64
            } else {
                q as u64
            };
            let ring = Ring::new(
                &self.mem,
                RINGS_BASE + slot * RING_STRIDE,
                self.opts.queue_size,
            );
            self.hand_ring(q, &ring, 0);
            self.rings[q] = ring;
        }
        self.sync();
    }

    /// A new connection negotiated as before, with the memory table and
    /// the kept in-flight region.
    fn rejoin(&mut self, socket: &Path) {
        // The old connection ends first (if the device is still up it
        // serves one frontend at a time).
        let _ =
            nix::sys::socket::shutdown(self.frontend.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let h = Handshake::run(socket, &self.opts);
        assert_eq!(h.acked, self.acked, "the device offers other features now");
        self.frontend = h.frontend;
        self.protocol = h.protocol;
        self.set_mem_table();
        if self.inflight.is_some() {
            self.set_inflight_region();
        }
    }

    /// Returns once the daemon has handled every message sent so far: it
    /// handles them in order, and GET_FEATURES always gets a reply.
    pub fn sync(&mut self) {
        self.frontend
            .get_features()
            .expect("GET_FEATURES round trip");
    }

    /// Feature and protocol negotiation only.
    pub fn negotiate(socket: &Path, opts: &GuestOpts) -> FakeGuest {
        Self::negotiate_with_mem(socket, opts, MEM_SIZE)
    }

    /// [`FakeGuest::negotiate`] with `mem_size` bytes of guest memory.
    fn negotiate_with_mem(socket: &Path, opts: &GuestOpts, mem_size: u64) -> FakeGuest {
        assert!(
            mem_size > BUFFERS_BASE && mem_size & 0xfff == 0,
            "guest memory of {mem_size} bytes: use a multiple of 4 KiB above {BUFFERS_BASE}"
        );
        let Handshake {
            frontend,
            offered,
            protocol,
            queue_num,
            acked,
        } = Handshake::run(socket, opts);
        let memfd = File::from(
            memfd_create(c"zcnet-test-guest", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd"),
        );
        memfd.set_len(mem_size).unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files(&[
            (
                GuestAddress(0),
                HOLE_START as usize,
                Some(FileOffset::new(memfd.try_clone().unwrap(), 0)),
            ),
            (
                GuestAddress(HOLE_END),
                (mem_size - HOLE_END) as usize,
                Some(FileOffset::new(memfd.try_clone().unwrap(), HOLE_END)),
            ),
        ])
        .expect("map guest memory");
        FakeGuest {
            frontend,
            opts: opts.clone(),
            inflight: None,
            mem,
            _memfd: memfd,
            offered,
            acked,
            protocol,
            queue_num,
            rings: Vec::new(),
            next_buf: BUFFERS_BASE,
            mem_size,
        }
    }

    /// The regions as SET_MEM_TABLE describes them.
    pub fn regions(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("memfd-backed region"))
            .collect()
    }

    pub fn set_mem_table(&mut self) {
        let regions = self.regions();
        self.frontend
            .set_mem_table(&regions)
            .expect("SET_MEM_TABLE");
    }

    /// The frontend's (our) virtual address of guest address `gpa`.
    fn hva(&self, gpa: GuestAddress) -> u64 {
        self.mem.get_host_address(gpa).unwrap() as u64
    }

    /// Lays out queue `q` and hands it to the device: NUM, BASE, ADDR,
    /// KICK, CALL, ENABLE.
    pub fn start_ring(&mut self, q: usize, size: u16) {
        let ring = Ring::new(&self.mem, RINGS_BASE + q as u64 * RING_STRIDE, size);
        self.hand_ring(q, &ring, 0);
        if self.rings.len() <= q {
            self.rings.push(ring);
        } else {
            self.rings[q] = ring;
        }
    }

    /// Hands queue `q` to the device again where it is, its memory as it
    /// is, starting at avail index `base`: what a frontend does after
    /// GET_VRING_BASE, or after reconnecting to a restarted backend.
    pub fn restart_ring(&mut self, q: usize, base: u16) {
        let ring = std::mem::replace(&mut self.rings[q], Ring::placeholder(&self.mem));
        self.hand_ring(q, &ring, base);
        self.rings[q] = ring;
    }

    /// SET_VRING_ADDR for `ring` as queue `q`; with `log`, the used ring
    /// is logged at its guest address (`VHOST_VRING_F_LOG`, as QEMU sets
    /// it while migrating).
    fn vring_addr(&self, q: usize, ring: &Ring, log: bool) {
        let config = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: if log {
                VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
            } else {
                0
            },
            desc_table_addr: self.hva(ring.desc),
            used_ring_addr: self.hva(ring.used),
            avail_ring_addr: self.hva(ring.avail),
            log_addr: log.then_some(ring.used.0),
        };
        self.frontend
            .set_vring_addr(q, &config)
            .expect("SET_VRING_ADDR");
    }

    /// NUM, BASE, ADDR, KICK, CALL and (with PROTOCOL_FEATURES) ENABLE.
    fn hand_ring(&mut self, q: usize, ring: &Ring, base: u16) {
        let size = ring.size;
        self.frontend.set_vring_num(q, size).expect("SET_VRING_NUM");
        self.frontend
            .set_vring_base(q, base)
            .expect("SET_VRING_BASE");
        self.vring_addr(q, ring, false);
        self.frontend
            .set_vring_kick(q, &ring.kick)
            .expect("SET_VRING_KICK");
        self.frontend
            .set_vring_call(q, &ring.call)
            .expect("SET_VRING_CALL");
        if self.acked & PROTOCOL_FEATURES != 0 {
            self.frontend
                .set_vring_enable(q, true)
                .expect("SET_VRING_ENABLE");
        }
    }

    /// Bytes of dirty log that cover this guest's memory, sized as QEMU
    /// sizes it: one 64-bit word per 64 pages up to the last byte.
    pub fn log_size(&self) -> u64 {
        ((self.mem_size - 1) / (LOG_PAGE * 64) + 1) * 8
    }

    /// SET_LOG_BASE with `log` (`size` bytes at offset 0 of its file), as
    /// QEMU sends it; the daemon's answer is the result.
    pub fn set_log_base(&self, log: &impl AsRawFd, size: u64) -> Result<(), vhost::Error> {
        self.frontend.set_log_base(
            0,
            Some(VhostUserDirtyLogRegion {
                mmap_size: size,
                mmap_offset: 0,
                mmap_handle: log.as_raw_fd(),
            }),
        )
    }

    /// What QEMU does when a migration starts (`vhost_migration_log`): a
    /// fresh log by SET_LOG_BASE, SET_FEATURES with `LOG_ALL`, and
    /// SET_VRING_ADDR with `VHOST_VRING_F_LOG` for every ring. The guest
    /// must have negotiated LOG_SHMFD.
    pub fn start_dirty_log(&mut self) -> DirtyLogFile {
        let log = DirtyLogFile::new(self.log_size());
        self.set_log_base(&log.file, log.size)
            .expect("SET_LOG_BASE");
        self.frontend
            .set_features(self.acked | LOG_ALL)
            .expect("SET_FEATURES with LOG_ALL");
        for (q, ring) in self.rings.iter().enumerate() {
            self.vring_addr(q, ring, true);
        }
        self.sync();
        log
    }

    /// What QEMU does when a migration is cancelled: SET_FEATURES
    /// without `LOG_ALL` and the rings' addresses without the log flag.
    pub fn stop_dirty_log(&mut self) {
        self.frontend
            .set_features(self.acked)
            .expect("SET_FEATURES without LOG_ALL");
        for (q, ring) in self.rings.iter().enumerate() {
            self.vring_addr(q, ring, false);
        }
        self.sync();
    }

    pub fn rx(&mut self, pair: usize) -> &mut Ring {
        &mut self.rings[2 * pair]
    }

    pub fn tx(&mut self, pair: usize) -> &mut Ring {
        &mut self.rings[2 * pair + 1]
    }

    /// Reserves `len` bytes of guest memory for buffers.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf = (self.next_buf + len as u64 + 63) & !63;
        assert!(
            self.next_buf < self.mem_size,
            "fake guest out of buffer memory"
        );
        at
    }

    /// Bytes of buffer memory not yet reserved by [`FakeGuest::alloc`].
    pub fn buffer_room(&self) -> u64 {
        self.mem_size.saturating_sub(self.next_buf)
    }

    /// Starts reusing buffer memory from the beginning.
    pub fn reset_alloc(&mut self) {
        self.next_buf = BUFFERS_BASE;
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Queues one TX frame (`hdr` then `frame`), split over `segments`
    /// descriptors, and returns its head. Does not kick.
    pub fn queue_tx(
        &mut self,
        pair: usize,
        hdr: &[u8; HDR_LEN],
        frame: &[u8],
        segments: usize,
    ) -> u16 {
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        let addr = self.alloc(bytes.len());
        self.write(addr, &bytes);
        let chunk = bytes.len().div_ceil(segments.max(1));
        let descs: Vec<Desc> = (0..bytes.len())
            .step_by(chunk)
            .map(|off| Desc {
                addr: addr + off as u64,
                len: chunk.min(bytes.len() - off) as u32,
                write: false,
            })
            .collect();
        let ring = self.tx(pair);
        let head = ring.add_chain(&descs);
        ring.publish(head);
        head
    }

    /// Posts `count` RX buffers of `size` bytes and kicks; returns (head,
    /// address).
    pub fn post_rx(&mut self, pair: usize, count: usize, size: usize) -> Vec<(u16, u64)> {
        let out = self.publish_rx(pair, count, size);
        self.rx(pair).kick();
        out
    }

    /// [`post_rx`](Self::post_rx) without the kick.
    pub fn publish_rx(&mut self, pair: usize, count: usize, size: usize) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for _ in 0..count {
            let addr = self.alloc(size);
            let ring = self.rx(pair);
            let head = ring.add_chain(&[Desc {
                addr,
                len: size as u32,
                write: true,
            }]);
            ring.publish(head);
            out.push((head, addr));
        }
        out
    }

    pub fn wait_tx_used(&mut self, pair: usize, count: usize) -> Vec<Used> {
        self.tx(pair).wait_used(count, Duration::from_secs(20))
    }

    pub fn wait_rx_used(&mut self, pair: usize, count: usize) -> Vec<Used> {
        self.rx(pair).wait_used(count, Duration::from_secs(20))
    }
}

/// What feature negotiation leaves.
struct Handshake {
    frontend: Frontend,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    queue_num: u64,
    acked: u64,
}

impl Handshake {
    /// Connects and negotiates features, in QEMU's order.
    fn run(socket: &Path, opts: &GuestOpts) -> Handshake {
        let mut frontend =
            Frontend::connect(socket, 2 * opts.pairs as u64).expect("connect to zcnet");
        let offered = frontend.get_features().expect("GET_FEATURES");
        assert_ne!(
            offered & PROTOCOL_FEATURES,
            0,
            "device must offer PROTOCOL_FEATURES"
        );
        let proto_offered = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        let protocol = proto_offered & opts.protocol;
        frontend
            .set_protocol_features(protocol)
            .expect("SET_PROTOCOL_FEATURES");
        let queue_num = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            frontend.get_queue_num().expect("GET_QUEUE_NUM")
        } else {
            2
        };
        frontend.set_owner().expect("SET_OWNER");
        let acked = offered & opts.wanted;
        frontend.set_features(acked).expect("SET_FEATURES");
        Handshake {
            frontend,
            offered,
            protocol,
            queue_num,
            acked,
        }
    }
}

/// `VHOST_LOG_PAGE`: one bit of a dirty log stands for this many bytes.
pub const LOG_PAGE: u64 = 0x1000;

/// A dirty log the fake guest shares with the daemon: a memfd whose bit
/// `n` (bit `n % 8` of byte `n / 8`) says guest page `n` was written.
pub struct DirtyLogFile {
    pub file: File,
    pub size: u64,
}

impl DirtyLogFile {
    /// A zeroed log of `size` bytes.
    pub fn new(size: u64) -> DirtyLogFile {
        let file = File::from(
            memfd_create(c"zcnet-test-log", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd"),
        );
        file.set_len(size).unwrap();
        DirtyLogFile { file, size }
    }

    /// The pages whose bits are set.
    pub fn marked(&self) -> BTreeSet<u64> {
        let mut bits = vec![0u8; self.size as usize];
        self.file.read_exact_at(&mut bits, 0).unwrap();
        let mut pages = BTreeSet::new();
        for (i, b) in bits.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.insert(i as u64 * 8 + bit);
                }
            }
        }
        pages
    }

    /// Clears every bit, as QEMU does when it syncs the log.
    pub fn clear(&self) {
        self.file
            .write_all_at(&vec![0; self.size as usize], 0)
            .unwrap();
    }
}

/// The log pages of `len` bytes at guest address `addr`.
pub fn log_pages(addr: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    addr / LOG_PAGE..(addr + len - 1) / LOG_PAGE + 1
}
