//! The VXLAN attachment (RFC 7348): guest TX frames leave as VXLAN UDP
//! datagrams to remote VTEPs straight from guest memory, lent to the kernel
//! with `MSG_ZEROCOPY`; datagrams from remote VTEPs are received straight
//! into the guest's RX buffers, behind an all-zero virtio-net header.
//!
//! # One attachment per queue pair, one FDB for all
//! [`open`] makes one [`VxlanAttachment`] per queue pair. Each has:
//! - a **receive socket** bound to the local VTEP address (port 4789 by
//!   default) with `SO_REUSEPORT`: the pairs' sockets form one group and
//!   the kernel spreads incoming datagrams over them by their 4-tuple hash.
//!   A remote VTEP picks its source port from the inner flow, so each inner
//!   flow lands on one pair, in order. A pair the guest disables closes its
//!   receive socket, so the group only holds pairs the guest reads (a tap
//!   detaches its queue for the same reason).
//! - [`TX_SOCKETS`] **transmit sockets**, each bound to a port the kernel
//!   picks, each with `SO_ZEROCOPY` and its own notification ids (see
//!   `ids`). A UDP socket sends from the one port it is bound to, and RFC
//!   7348 wants the outer source port to follow the inner flow (the
//!   underlay's ECMP hashes it): the inner flow's hash picks the socket, so
//!   a flow keeps one source port and flows spread over several.
//! - its own epoll set holding those sockets, which is the fd the pair's
//!   worker polls (`Attachment::ready` reads it to say what happened).
//!
//! The FDB is shared by every pair (`RwLock`): lookups on TX take the read
//! lock; learning on RX takes the write lock only when something changes
//! (a new MAC, a move, or an age older than a second: `Fdb::is_current`),
//! so a MAC learned on one pair's RX steers every pair's TX. Expired
//! entries are swept every 10 s by whichever pair gets there first.
//!
//! # The underlay MTU
//! At start the kernel is asked for the MTU of the route to each remote
//! VTEP (`IP_MTU`/`IPV6_MTU` of a UDP socket connected there), and the
//! smallest is the underlay MTU. The guest is offered that minus 50 (IPv4)
//! or 70 (IPv6) bytes, as the kernel sizes a `vxlan` device. Transmit
//! sockets set `PMTUDISC_DO`: the kernel never fragments an outer datagram;
//! a frame that does not fit is dropped and counted.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use log::warn;
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ether::MacAddr;
use super::fdb::{Fdb, FdbConfig, FdbError, Learning, Refusal, SWEEP_INTERVAL};
use super::flow_hash::{FlowHasher, PortRange};
use super::header::{encode, Underlay, Vni, VXLAN_HEADER_LEN};
use super::ids::SocketIds;
use super::layout::MAX_HEADERS_LEN;
use super::segment::{TsoPlan, UDP_MAX_SEGMENTS};
use super::socket::{self, RawAddr, SourceAddr};
use super::stats::{StatsSnapshot, VxlanStats};
use crate::attachment::{Attachment, Completion, GuestConfig, Readiness, SendMode, Sent};
use crate::frame::{RxBuffers, TxFrame};
use crate::lent_headers::{LentHeaders, SlotHolds};
use crate::vnet_hdr::HDR_LEN_V1;
use crate::{zerocopy, Offloads};

/// Transmit sockets (outer source ports) per queue pair.
pub const TX_SOCKETS: usize = 8;
/// Bytes of each frame's start copied into zcnet's memory before it is
/// sent: enough for the destination MAC, the flow
/// (`flow_hash::FLOW_HEADER_BYTES`), a TSO frame's headers
/// ([`MAX_HEADERS_LEN`]) and the usual checksum prefixes.
pub(super) const HEAD_LEN: usize = 256;
/// Slots for the copied, checksummed prefix of lent NEEDS_CSUM frames.
pub(super) const PREFIX_SLOTS: usize = 128;
pub(super) const PREFIX_SLOT_LEN: usize = VXLAN_HEADER_LEN + HEAD_LEN;
/// Slots for the per-segment headers of lent TSO frames.
pub(super) const PLAN_SLOTS: usize = 64;
/// The most iovecs one `sendmsg` takes (`UIO_MAXIOV`).
pub(super) const IOV_MAX: usize = 1024;

/// Epoll tokens of the attachment's own set.
const TOKEN_RX: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_TX0: u64 = 2;

/// What [`open`] needs.
#[derive(Clone, Debug)]
pub struct VxlanConfig {
    pub vni: Vni,
    /// The local VTEP: where remote VTEPs send (port 4789 by default).
    pub local: SocketAddr,
    /// The remote VTEPs: where floods go, and whom zcnet learns from.
    pub remotes: Vec<SocketAddr>,
    /// Static FDB entries: this MAC is behind that VTEP, always.
    pub statics: Vec<(MacAddr, SocketAddr)>,
    /// How long a learned FDB entry lives without traffic.
    pub ageing: Duration,
    pub queue_pairs: usize,
    /// Turn `SO_ZEROCOPY` on (TX frames may be lent).
    pub zerocopy: bool,
    /// Lend TSO frames too. A lent send pins at most 17 pages, so a lent
    /// 64 KiB TSO frame takes about seven sends where a copied one takes
    /// two, and costs more CPU per byte on the kernels measured (see the
    /// README's benchmark): off, TSO frames are copied even when the
    /// datapath asks to lend them.
    pub lend_tso: bool,
}

#[derive(Debug, Error)]
pub enum VxlanError {
    #[error("VXLAN: {0}")]
    Config(String),
    #[error(
        "cannot find the underlay MTU towards remote VTEP {remote}: is there a route to it \
         from {local}?"
    )]
    Mtu {
        local: SocketAddr,
        remote: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "the underlay MTU towards the remote VTEPs is {mtu} bytes, too small to carry VXLAN's \
         {overhead} bytes of headers and a 68-byte packet"
    )]
    UnderlayMtu { mtu: usize, overhead: usize },
    #[error(
        "cannot bind UDP {local} for VXLAN: is the address on this host, and is the port free \
         (a kernel vxlan device with the same dstport in this network namespace holds it)?"
    )]
    Bind {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a VXLAN transmit socket on {local}")]
    TxSocket {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the VXLAN attachment's event fds")]
    Events(#[source] io::Error),
    #[error("invalid static FDB entry")]
    StaticFdb(#[source] FdbError),
}

/// What every queue pair shares: the VNI, the VTEPs, the FDB, counters.
pub(super) struct Shared {
    pub(super) vni: Vni,
    /// The VXLAN header of every datagram zcnet sends: a constant, so lent
    /// sends may point at it for the attachment's whole life (the `Arc`
    /// keeps it at one address until every pair is gone).
    pub(super) header: [u8; VXLAN_HEADER_LEN],
    /// The local VTEP address as bound (the port resolved).
    pub(super) local: SocketAddr,
    pub(super) underlay: Underlay,
    pub(super) underlay_mtu: usize,
    /// Every VTEP zcnet sends to or accepts from: the remotes first (in
    /// the FDB's flood order), then VTEPs only static entries name.
    pub(super) vteps: Vec<SocketAddr>,
    /// Remotes in `vteps[..remotes]`.
    pub(super) remotes: usize,
    /// `vteps` as `sendmsg` takes them.
    pub(super) raw: Vec<RawAddr>,
    fdb: RwLock<Fdb>,
    epoch: Instant,
    /// Milliseconds after `epoch` when the FDB is next swept.
    next_sweep_ms: AtomicU64,
    pub(super) hasher: FlowHasher,
    pub(super) stats: VxlanStats,
}

impl Shared {
    pub(super) fn fdb(&self) -> RwLockReadGuard<'_, Fdb> {
        // Poisoned only by a panic in zcnet while writing; the table is
        // still a valid table.
        self.fdb.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn fdb_mut(&self) -> RwLockWriteGuard<'_, Fdb> {
        self.fdb.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest inner frame one underlay packet carries.
    pub(super) fn max_inner_frame(&self) -> usize {
        self.underlay
            .max_inner_frame(self.underlay_mtu)
            .unwrap_or(0)
    }

    /// The index of VTEP `addr`.
    pub(super) fn vtep_index(&self, addr: &SocketAddr) -> Option<usize> {
        self.vteps.iter().position(|v| v == addr)
    }

    /// The index of the VTEP at IP address `ip` (any port: a VTEP sends
    /// from its flow's source port).
    pub(super) fn vtep_of(&self, ip: IpAddr) -> Option<usize> {
        let ip = ip.to_canonical();
        self.vteps.iter().position(|v| v.ip() == ip)
    }

    /// Sweeps expired FDB entries if [`SWEEP_INTERVAL`] has passed; one
    /// pair does it, the others go on.
    pub(super) fn maybe_sweep(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let next = self.next_sweep_ms.load(Ordering::Relaxed);
        if ms >= next
            && self
                .next_sweep_ms
                .compare_exchange(
                    next,
                    ms + SWEEP_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.fdb_mut().expire(now);
        }
    }
}

/// The attachments of every queue pair, and what the daemon needs to know
/// about them.
pub struct Vxlan {
    /// One per queue pair, in pair order.
    pub pairs: Vec<VxlanAttachment>,
    /// The counters, for export.
    pub metrics: VxlanMetrics,
}

impl Vxlan {
    /// The smallest MTU of the routes to the remote VTEPs.
    pub fn underlay_mtu(&self) -> usize {
        self.metrics.0.underlay_mtu
    }

    /// The MTU to offer the guest: the underlay MTU minus VXLAN's overhead.
    pub fn guest_mtu(&self) -> usize {
        let s = &self.metrics.0;
        s.underlay.inner_mtu(s.underlay_mtu).unwrap_or(0)
    }

    /// The local VTEP address as bound.
    pub fn local(&self) -> SocketAddr {
        self.metrics.0.local
    }
}

/// A handle on the attachment's counters and FDB, for export.
#[derive(Clone)]
pub struct VxlanMetrics(Arc<Shared>);

impl std::fmt::Debug for VxlanMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VxlanMetrics")
            .field("vni", &self.0.vni)
            .field("vteps", &self.0.vteps)
            .finish()
    }
}

/// The FDB's state and what learning did so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbSnapshot {
    /// Learned entries held now (static ones excluded).
    pub learned: usize,
    pub added: u64,
    pub moved: u64,
    pub aged_out: u64,
    /// Sources not learned, by `Refusal` label.
    pub refused: Vec<(&'static str, u64)>,
}

/// Every counter of the attachment at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSnapshot {
    pub stats: StatsSnapshot,
    pub fdb: FdbSnapshot,
}

impl VxlanMetrics {
    pub fn snapshot(&self) -> VxlanSnapshot {
        let stats = self.0.stats.snapshot();
        let fdb = self.0.fdb();
        let s = fdb.stats();
        VxlanSnapshot {
            stats,
            fdb: FdbSnapshot {
                learned: fdb.learned(),
                added: s.added,
                moved: s.moved,
                aged_out: s.aged_out,
                refused: Refusal::ALL
                    .iter()
                    .map(|r| (r.label(), s.refused(*r)))
                    .collect(),
            },
        }
    }
}

/// One transmit socket and its outstanding lent sends.
pub(super) struct TxSocket {
    pub(super) sock: UdpSocket,
    pub(super) ids: SocketIds,
    /// Registered for EPOLLOUT: a send on it returned EAGAIN.
    want_out: bool,
}

impl TxSocket {
    pub(super) fn sock_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// One queue pair's VXLAN attachment.
pub struct VxlanAttachment {
    pub(super) shared: Arc<Shared>,
    pub(super) pair: usize,
    /// SO_ZEROCOPY is on for the transmit sockets.
    zerocopy: bool,
    /// TSO frames may be lent (`VxlanConfig::lend_tso`).
    pub(super) lend_tso: bool,
    /// Length of the guest's virtio-net header (10 or 12).
    pub(super) hdr_len: usize,
    epoll: Epoll,
    /// Readable when completions wait in `early`: wakes the worker to reap.
    wake: EventFd,
    /// Completions read outside `reap` (after a failed lent send, see
    /// `ids`), handed out by the next `reap`.
    early: Vec<Completion>,
    /// `None` while the guest has the pair disabled.
    pub(super) rx: Option<UdpSocket>,
    pub(super) tx: Vec<TxSocket>,
    /// The engine id of the next lent send.
    pub(super) next_id: u32,
    // TX scratch, reused from frame to frame (no allocation per frame).
    pub(super) iov: Vec<libc::iovec>,
    pub(super) dests: Vec<usize>,
    pub(super) long_head: Vec<u8>,
    pub(super) csum_out: Vec<u8>,
    pub(super) prefixes: LentHeaders,
    /// The plan of a TSO frame sent by copy.
    pub(super) copy_plan: TsoPlan,
    /// Plans of lent TSO frames, held (`plan_holds`) until notified.
    pub(super) plans: Vec<TsoPlan>,
    pub(super) plan_holds: SlotHolds,
    raw_completions: Vec<Completion>,
    // RX scratch.
    pub(super) rx_hdr: [u8; VXLAN_HEADER_LEN],
    pub(super) rx_iov: Vec<libc::iovec>,
    pub(super) from: SourceAddr,
    /// Tests only: sends left before every send returns EAGAIN.
    #[cfg(test)]
    pub(super) eagain_after: Option<usize>,
}

// SAFETY: the only fields that are not Send are the iovec scratch vectors
// (`iov`, `rx_iov`), which hold raw pointers. They are filled and used
// within one `send` or `recv` call, while the frame or buffers borrowed for
// that call keep the memory mapped, and are never dereferenced after it;
// whichever thread calls next refills them first. Every other field is Send.
unsafe impl Send for VxlanAttachment {}

/// Opens the attachments of every queue pair (see the module doc).
pub fn open(config: &VxlanConfig) -> Result<Vxlan, VxlanError> {
    if config.remotes.is_empty() {
        return Err(VxlanError::Config("no remote VTEP".to_owned()));
    }
    let underlay = Underlay::of(&config.local);
    let family_ok = |a: &SocketAddr| Underlay::of(a) == underlay;
    if !config.remotes.iter().all(family_ok) || !config.statics.iter().all(|(_, v)| family_ok(v)) {
        return Err(VxlanError::Config(
            "the local and remote VTEPs are not all of one IP version".to_owned(),
        ));
    }
    let mut underlay_mtu = usize::MAX;
    for remote in &config.remotes {
        let mtu = socket::path_mtu(&config.local, remote).map_err(|source| VxlanError::Mtu {
            local: config.local,
            remote: *remote,
            source,
        })?;
        underlay_mtu = underlay_mtu.min(mtu);
    }
    if underlay.inner_mtu(underlay_mtu).is_none_or(|m| m < 68) {
        return Err(VxlanError::UnderlayMtu {
            mtu: underlay_mtu,
            overhead: underlay.overhead(),
        });
    }

    let bind = |local: &SocketAddr| {
        socket::open_rx(local).map_err(|source| VxlanError::Bind {
            local: *local,
            source,
        })
    };
    let first = bind(&config.local)?;
    let local = first.local_addr().map_err(|source| VxlanError::Bind {
        local: config.local,
        source,
    })?;
    let mut rx = vec![first];
    for _ in 1..config.queue_pairs.max(1) {
        rx.push(bind(&local)?);
    }

    let mut fdb = Fdb::new(
        &config.remotes,
        FdbConfig {
            ageing: config.ageing,
            learning: Learning::FromRemotes,
            dst_port: local.port(),
            ..FdbConfig::default()
        },
    );
    let mut vteps: Vec<SocketAddr> = fdb.remotes().to_vec();
    let remotes = vteps.len();
    for (mac, vtep) in &config.statics {
        fdb.add_static(*mac, *vtep).map_err(VxlanError::StaticFdb)?;
        let vtep = SocketAddr::new(vtep.ip().to_canonical(), vtep.port());
        if !vteps.contains(&vtep) {
            vteps.push(vtep);
        }
    }
    let shared = Arc::new(Shared {
        vni: config.vni,
        header: encode(config.vni),
        local,
        underlay,
        underlay_mtu,
        raw: vteps.iter().map(RawAddr::new).collect(),
        stats: VxlanStats::new(config.queue_pairs.max(1), &vteps),
        vteps,
        remotes,
        fdb: RwLock::new(fdb),
        epoch: Instant::now(),
        next_sweep_ms: AtomicU64::new(SWEEP_INTERVAL.as_millis() as u64),
        hasher: FlowHasher::new(
            RandomState::new().build_hasher().finish(),
            PortRange::DYNAMIC,
        ),
    });
    let pairs = rx
        .into_iter()
        .enumerate()
        .map(|(pair, rx)| {
            VxlanAttachment::new(shared.clone(), pair, rx, config.zerocopy, config.lend_tso)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Vxlan {
        pairs,
        metrics: VxlanMetrics(shared),
    })
}

impl VxlanAttachment {
    fn new(
        shared: Arc<Shared>,
        pair: usize,
        rx: UdpSocket,
        zerocopy: bool,
        lend_tso: bool,
    ) -> Result<Self, VxlanError> {
        let epoll = Epoll::new().map_err(VxlanError::Events)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(VxlanError::Events)?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_WAKE),
            )
            .map_err(VxlanError::Events)?;
        let mut tx = Vec::with_capacity(TX_SOCKETS);
        let mut zc = zerocopy;
        for i in 0..TX_SOCKETS {
            let sock = socket::open_tx(&shared.local).map_err(|source| VxlanError::TxSocket {
                local: shared.local,
                source,
            })?;
            if zc {
                if let Err(e) = zerocopy::enable(sock.as_fd()) {
                    warn!("VXLAN: SO_ZEROCOPY refused ({e}); every frame will be copied");
                    zc = false;
                }
            }
            // Notifications raise EPOLLERR, which needs no interest bit;
            // EPOLLOUT is asked for only while a send waits for room.
            epoll
                .ctl(
                    ControlOperation::Add,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), TOKEN_TX0 + i as u64),
                )
                .map_err(VxlanError::Events)?;
            tx.push(TxSocket {
                sock,
                ids: SocketIds::default(),
                want_out: false,
            });
        }
        let mut a = VxlanAttachment {
            pair,
            zerocopy: zc,
            lend_tso,
            hdr_len: HDR_LEN_V1,
            epoll,
            wake,
            early: Vec::with_capacity(64),
            rx: None,
            tx,
            next_id: 0,
            iov: Vec::with_capacity(IOV_MAX + 64),
            dests: Vec::with_capacity(shared.vteps.len()),
            long_head: Vec::with_capacity(shared.max_inner_frame()),
            csum_out: Vec::with_capacity(VXLAN_HEADER_LEN + shared.max_inner_frame()),
            prefixes: LentHeaders::new(PREFIX_SLOTS, PREFIX_SLOT_LEN),
            copy_plan: TsoPlan::with_capacity(UDP_MAX_SEGMENTS, VXLAN_HEADER_LEN + MAX_HEADERS_LEN),
            plans: (0..PLAN_SLOTS)
                .map(|_| {
                    TsoPlan::with_capacity(UDP_MAX_SEGMENTS, VXLAN_HEADER_LEN + MAX_HEADERS_LEN)
                })
                .collect(),
            plan_holds: SlotHolds::new(PLAN_SLOTS),
            raw_completions: Vec::with_capacity(64),
            rx_hdr: [0; VXLAN_HEADER_LEN],
            rx_iov: Vec::with_capacity(IOV_MAX + 1),
            from: SourceAddr::new(),
            #[cfg(test)]
            eagain_after: None,
            shared,
        };
        a.attach_rx(rx).map_err(VxlanError::Events)?;
        Ok(a)
    }

    /// The local VTEP address as bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    fn attach_rx(&mut self, sock: UdpSocket) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_RX),
        )?;
        self.rx = Some(sock);
        Ok(())
    }

    /// Transmit socket `i` returned EAGAIN: wake the worker when it has
    /// room again.
    pub(super) fn want_writable(&mut self, i: usize) {
        let t = &mut self.tx[i];
        if t.want_out {
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Modify,
            t.sock.as_raw_fd(),
            EpollEvent::new(EventSet::OUT, TOKEN_TX0 + i as u64),
        ) {
            Ok(()) => t.want_out = true,
            Err(e) => warn!(
                "VXLAN pair {}: cannot wait for room to send: {e}",
                self.pair
            ),
        }
    }

    fn writable_seen(&mut self, i: usize) {
        let t = &mut self.tx[i];
        if t.want_out
            && self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    t.sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), TOKEN_TX0 + i as u64),
                )
                .is_ok()
        {
            t.want_out = false;
        }
    }

    /// Reads transmit socket `i`'s notifications (never blocks) and appends
    /// their engine ids to `out`; returns the guest pages they released.
    fn reap_socket(
        &mut self,
        i: usize,
        to_early: bool,
        out: &mut Vec<Completion>,
    ) -> io::Result<u64> {
        let VxlanAttachment {
            tx,
            raw_completions,
            early,
            ..
        } = self;
        let out = if to_early { early } else { out };
        let t = &mut tx[i];
        raw_completions.clear();
        let r = zerocopy::reap(t.sock.as_fd(), raw_completions);
        let mut pages = 0;
        for c in raw_completions.iter() {
            pages += t.ids.complete(*c, out);
        }
        r.map(|()| pages)
    }

    /// A lent send on transmit socket `i` failed: it may still have taken
    /// the socket's next id, whose notification is queued by now if so
    /// (see `ids`). Reaps the socket to find out, keeping what it reads for
    /// the next `reap`.
    pub(super) fn settle_failed_send(&mut self, i: usize) {
        self.tx[i].ids.phantom();
        match self.reap_socket(i, true, &mut Vec::new()) {
            Ok(pages) => self.shared.stats.released(self.pair, pages),
            Err(e) => warn!("VXLAN pair {}: cannot read notifications: {e}", self.pair),
        }
        if self.tx[i].ids.settle_phantom() {
            log::debug!(
                "VXLAN pair {}: a failed zero-copy send took an id",
                self.pair
            );
        }
        if !self.early.is_empty() {
            // The worker reaps on its next wake-up.
            let _ = self.wake.write(1);
        }
    }

    /// Lent sends not yet notified, on every transmit socket.
    pub fn outstanding(&self) -> usize {
        self.tx.iter().map(|t| t.ids.outstanding()).sum()
    }
}

impl Attachment for VxlanAttachment {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.epoll` owns the epoll fd and closes it only when
        // dropped, which cannot happen while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.epoll.as_raw_fd()) }
    }

    fn ready(&mut self, _polled: Readiness) -> Readiness {
        let mut events = [EpollEvent::default(); 1 + TX_SOCKETS];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                warn!("VXLAN pair {}: cannot read its epoll set: {e}", self.pair);
                // Let everything try: each try costs one system call.
                return Readiness {
                    readable: true,
                    writable: true,
                    notified: true,
                };
            }
        };
        let mut out = Readiness::default();
        for ev in &events[..n] {
            let set = ev.event_set();
            match ev.data() {
                TOKEN_WAKE => {
                    let _ = self.wake.read();
                    out.notified = true;
                }
                TOKEN_RX => {
                    out.readable |=
                        set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP)
                }
                token => {
                    let i = (token - TOKEN_TX0) as usize;
                    if set.contains(EventSet::OUT) {
                        out.writable = true;
                        self.writable_seen(i);
                    }
                    out.notified |= set.contains(EventSet::ERROR);
                }
            }
        }
        out
    }

    fn send(&mut self, frame: &mut TxFrame<'_>, mode: SendMode) -> io::Result<Sent> {
        self.send_frame(frame, mode)
    }

    fn recv(&mut self, bufs: &mut RxBuffers<'_>) -> io::Result<usize> {
        self.recv_frame(bufs)
    }

    fn can_lend(&self) -> bool {
        self.zerocopy
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let from = out.len();
        out.append(&mut self.early);
        let mut result = Ok(());
        let mut pages = 0;
        for i in 0..self.tx.len() {
            if self.tx[i].ids.is_idle() {
                continue;
            }
            match self.reap_socket(i, false, out) {
                Ok(p) => pages += p,
                Err(e) => result = Err(e),
            }
        }
        self.shared.stats.released(self.pair, pages);
        for c in &out[from..] {
            self.prefixes.release(c);
            self.plan_holds.release(c);
        }
        result
    }

    fn wait_notifications(&mut self, timeout: Duration) {
        if !self.early.is_empty() {
            return;
        }
        let mut pfds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; TX_SOCKETS];
        let mut n = 0;
        for t in self.tx.iter().filter(|t| !t.ids.is_idle()) {
            pfds[n].fd = t.sock.as_raw_fd();
            n += 1;
        }
        if n == 0 {
            return;
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `n` pollfds on our stack; their fds are borrowed from
        // `self.tx`, which stays alive (and open) for the call.
        // Notifications raise POLLERR, which poll reports unasked.
        unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    }

    /// CSUM and TSO for IPv4 and IPv6, on TX only: zcnet completes
    /// checksums and cuts TSO frames into MSS-sized segments itself.
    fn supported_offloads(&self) -> Offloads {
        Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Offloads::default()
        }
    }

    /// The guest receives plain frames (no GSO, no partial checksums).
    fn rx_offloads(&self) -> Offloads {
        Offloads::default()
    }

    fn configure(&mut self, guest: GuestConfig) -> io::Result<()> {
        self.hdr_len = guest.hdr_len;
        Ok(())
    }

    /// A disabled pair leaves the `SO_REUSEPORT` group, so the kernel
    /// steers datagrams to the pairs the guest reads; enabling it joins
    /// again.
    fn set_enabled(&mut self, enabled: bool) -> io::Result<()> {
        if enabled && self.rx.is_none() {
            let sock = socket::open_rx(&self.shared.local)?;
            self.attach_rx(sock)?;
        } else if !enabled {
            if let Some(sock) = self.rx.take() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        Ok(())
    }
}
