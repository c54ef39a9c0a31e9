//! The VXLAN attachment's counters: per queue pair and per VTEP, frames,
//! bytes, drops by reason and lent pages. Lock-free atomics, written by
//! each pair's worker and read by whoever exports them (the daemon's
//! metrics, through [`VxlanSnapshot`]); this crate knows nothing of the
//! export format.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::header::DropReason;

/// Why a received datagram did not reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// A [`decapsulate`](super::header::decapsulate) check failed.
    Header(DropReason),
    /// The sender is neither a configured remote nor the VTEP of a static
    /// FDB entry.
    UnknownVtep,
    /// The inner source MAC is multicast or all-zero (the kernel drops
    /// these too).
    InvalidSource,
    /// The inner source MAC has a static FDB entry for another VTEP (the
    /// kernel drops these too).
    StaticConflict,
    /// The inner frame is longer than any frame the guest takes (the
    /// device offers no receive GSO), or longer than its buffers.
    TooLong,
}

impl RxDrop {
    pub const COUNT: usize = DropReason::ALL.len() + 4;

    /// Every reason, in index order.
    pub const ALL: [RxDrop; Self::COUNT] = [
        RxDrop::Header(DropReason::TooShort),
        RxDrop::Header(DropReason::NoVniFlag),
        RxDrop::Header(DropReason::WrongVni),
        RxDrop::Header(DropReason::ReservedBits),
        RxDrop::Header(DropReason::InnerTooShort),
        RxDrop::UnknownVtep,
        RxDrop::InvalidSource,
        RxDrop::StaticConflict,
        RxDrop::TooLong,
    ];

    fn index(self) -> usize {
        match self {
            RxDrop::Header(r) => r as usize,
            RxDrop::UnknownVtep => DropReason::ALL.len(),
            RxDrop::InvalidSource => DropReason::ALL.len() + 1,
            RxDrop::StaticConflict => DropReason::ALL.len() + 2,
            RxDrop::TooLong => DropReason::ALL.len() + 3,
        }
    }

    /// The stable `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            RxDrop::Header(r) => r.label(),
            RxDrop::UnknownVtep => "unknown_vtep",
            RxDrop::InvalidSource => "invalid_source",
            RxDrop::StaticConflict => "static_conflict",
            RxDrop::TooLong => "too_long",
        }
    }
}

/// Why a guest frame (or part of it) was not sent to a VTEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDrop {
    /// Larger than one underlay packet can carry (the kernel would have
    /// to fragment the outer datagram, which zcnet never lets it do).
    TooBig,
    /// A TSO or checksum-offload header the frame does not match (the
    /// guest's fault).
    BadOffload,
    /// The kernel refused the send (no route, for instance).
    SendError,
    /// The kernel's buffers filled after part of the frame went out: the
    /// rest was dropped (TCP retransmits it).
    EagainMidFrame,
}

impl TxDrop {
    pub const COUNT: usize = 4;
    pub const ALL: [TxDrop; Self::COUNT] = [
        TxDrop::TooBig,
        TxDrop::BadOffload,
        TxDrop::SendError,
        TxDrop::EagainMidFrame,
    ];

    /// The stable `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            TxDrop::TooBig => "too_big",
            TxDrop::BadOffload => "bad_offload",
            TxDrop::SendError => "send_error",
            TxDrop::EagainMidFrame => "eagain_mid_frame",
        }
    }
}

/// The label of the drop slot past the VTEPs: a received datagram from no
/// known VTEP, or a frame dropped before a VTEP was chosen.
pub const UNKNOWN_VTEP_LABEL: &str = "unknown";
pub const NO_VTEP_LABEL: &str = "none";

#[derive(Debug, Default)]
struct VtepCounters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    lent_pages: AtomicU64,
}

#[derive(Debug)]
struct PairCounters {
    vteps: Box<[VtepCounters]>,
    /// `(vtep slot) * RxDrop::COUNT + reason`; the last slot is "unknown".
    rx_drops: Box<[AtomicU64]>,
    /// `(vtep slot) * TxDrop::COUNT + reason`; the last slot is "none".
    tx_drops: Box<[AtomicU64]>,
    /// Guest pages the kernel holds now.
    lent_pages: AtomicU64,
}

/// Every counter of one VXLAN attachment (all its queue pairs).
#[derive(Debug)]
pub struct VxlanStats {
    vteps: Vec<SocketAddr>,
    pairs: Box<[PairCounters]>,
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl VxlanStats {
    /// Counters for `pairs` queue pairs and the VTEPs `vteps` (indexed as
    /// the attachment indexes them).
    pub fn new(pairs: usize, vteps: &[SocketAddr]) -> VxlanStats {
        let slots = vteps.len() + 1;
        VxlanStats {
            vteps: vteps.to_vec(),
            pairs: (0..pairs)
                .map(|_| PairCounters {
                    vteps: (0..vteps.len()).map(|_| VtepCounters::default()).collect(),
                    rx_drops: zeros(slots * RxDrop::COUNT),
                    tx_drops: zeros(slots * TxDrop::COUNT),
                    lent_pages: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// `frames` inner frames of `bytes` bytes in all went to VTEP `vtep`.
    pub fn sent(&self, pair: usize, vtep: usize, frames: u64, bytes: u64) {
        let v = &self.pairs[pair].vteps[vtep];
        Self::add(&v.tx_frames, frames);
        Self::add(&v.tx_bytes, bytes);
    }

    /// A send to VTEP `vtep` lent `pages` guest pages to the kernel.
    pub fn lent(&self, pair: usize, vtep: usize, pages: u64) {
        Self::add(&self.pairs[pair].vteps[vtep].lent_pages, pages);
        Self::add(&self.pairs[pair].lent_pages, pages);
    }

    /// The kernel released `pages` lent guest pages of pair `pair`.
    pub fn released(&self, pair: usize, pages: u64) {
        let _ =
            self.pairs[pair]
                .lent_pages
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(pages))
                });
    }

    /// An inner frame of `bytes` bytes from VTEP `vtep` went to the guest.
    pub fn received(&self, pair: usize, vtep: usize, bytes: u64) {
        let v = &self.pairs[pair].vteps[vtep];
        Self::add(&v.rx_frames, 1);
        Self::add(&v.rx_bytes, bytes);
    }

    /// A datagram from VTEP `vtep` (`None`: from no known VTEP) was
    /// dropped.
    pub fn rx_dropped(&self, pair: usize, vtep: Option<usize>, why: RxDrop) {
        let slot = vtep.unwrap_or(self.vteps.len());
        Self::add(
            &self.pairs[pair].rx_drops[slot * RxDrop::COUNT + why.index()],
            1,
        );
    }

    /// A frame for VTEP `vtep` (`None`: before one was chosen) was dropped.
    pub fn tx_dropped(&self, pair: usize, vtep: Option<usize>, why: TxDrop) {
        let slot = vtep.unwrap_or(self.vteps.len());
        Self::add(
            &self.pairs[pair].tx_drops[slot * TxDrop::COUNT + why as usize],
            1,
        );
    }

    /// Every counter now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let vtep_label = |slot: usize, past: &str| {
            self.vteps
                .get(slot)
                .map_or_else(|| past.to_owned(), |a| a.to_string())
        };
        let pairs = self
            .pairs
            .iter()
            .map(|p| {
                let mut rx_dropped = Vec::new();
                let mut tx_dropped = Vec::new();
                for slot in 0..=self.vteps.len() {
                    for why in RxDrop::ALL {
                        rx_dropped.push(DropSample {
                            vtep: vtep_label(slot, UNKNOWN_VTEP_LABEL),
                            reason: why.label(),
                            count: load(&p.rx_drops[slot * RxDrop::COUNT + why.index()]),
                        });
                    }
                    for why in TxDrop::ALL {
                        tx_dropped.push(DropSample {
                            vtep: vtep_label(slot, NO_VTEP_LABEL),
                            reason: why.label(),
                            count: load(&p.tx_drops[slot * TxDrop::COUNT + why as usize]),
                        });
                    }
                }
                PairSnapshot {
                    vteps: p
                        .vteps
                        .iter()
                        .map(|v| VtepSnapshot {
                            tx_frames: load(&v.tx_frames),
                            tx_bytes: load(&v.tx_bytes),
                            rx_frames: load(&v.rx_frames),
                            rx_bytes: load(&v.rx_bytes),
                            lent_pages: load(&v.lent_pages),
                        })
                        .collect(),
                    rx_dropped,
                    tx_dropped,
                    lent_pages_now: load(&p.lent_pages),
                }
            })
            .collect();
        StatsSnapshot {
            vteps: self.vteps.iter().map(|a| a.to_string()).collect(),
            pairs,
        }
    }
}

/// The counters of every pair at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The `vtep` label of each VTEP, in index order.
    pub vteps: Vec<String>,
    pub pairs: Vec<PairSnapshot>,
}

/// One queue pair's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSnapshot {
    /// Indexed like [`StatsSnapshot::vteps`].
    pub vteps: Vec<VtepSnapshot>,
    /// Every (VTEP, reason), zeros included; the VTEP is "unknown" for
    /// datagrams from no known VTEP.
    pub rx_dropped: Vec<DropSample>,
    /// Every (VTEP, reason), zeros included; the VTEP is "none" for frames
    /// dropped before a VTEP was chosen.
    pub tx_dropped: Vec<DropSample>,
    /// Guest pages the kernel holds now.
    pub lent_pages_now: u64,
}

/// One pair's traffic with one VTEP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtepSnapshot {
    /// Inner frames sent (a TSO frame counts each of its segments).
    pub tx_frames: u64,
    /// Their bytes (inner frames, without the outer headers).
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Guest pages lent to the kernel for sends to this VTEP, in all.
    pub lent_pages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropSample {
    pub vtep: String,
    pub reason: &'static str,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_their_pair_vtep_and_reason() {
        let vteps: Vec<SocketAddr> = vec![
            "10.0.0.2:4789".parse().unwrap(),
            "10.0.0.3:4789".parse().unwrap(),
        ];
        let s = VxlanStats::new(2, &vteps);
        s.sent(1, 0, 45, 65000);
        s.received(0, 1, 60);
        s.rx_dropped(0, None, RxDrop::UnknownVtep);
        s.rx_dropped(0, Some(1), RxDrop::Header(DropReason::WrongVni));
        s.tx_dropped(1, None, TxDrop::TooBig);
        s.lent(1, 0, 17);
        s.released(1, 10);
        let snap = s.snapshot();
        assert_eq!(snap.vteps, ["10.0.0.2:4789", "10.0.0.3:4789"]);
        assert_eq!(
            (
                snap.pairs[1].vteps[0].tx_frames,
                snap.pairs[1].vteps[0].tx_bytes
            ),
            (45, 65000)
        );
        assert_eq!(snap.pairs[0].vteps[1].rx_frames, 1);
        assert_eq!(
            (
                snap.pairs[1].vteps[0].lent_pages,
                snap.pairs[1].lent_pages_now
            ),
            (17, 7)
        );
        let count = |v: &[DropSample], vtep: &str, reason: &str| {
            v.iter()
                .find(|d| d.vtep == vtep && d.reason == reason)
                .map(|d| d.count)
                .unwrap()
        };
        assert_eq!(
            count(&snap.pairs[0].rx_dropped, "unknown", "unknown_vtep"),
            1
        );
        assert_eq!(
            count(&snap.pairs[0].rx_dropped, "10.0.0.3:4789", "wrong_vni"),
            1
        );
        assert_eq!(
            count(&snap.pairs[0].rx_dropped, "10.0.0.2:4789", "wrong_vni"),
            0
        );
        assert_eq!(count(&snap.pairs[1].tx_dropped, "none", "too_big"), 1);
        assert_eq!(snap.pairs[0].rx_dropped.len(), 3 * RxDrop::COUNT);
        for (i, r) in RxDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
