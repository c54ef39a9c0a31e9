//! The forwarding database (FDB): which remote VTEP an inner MAC address
//! lives behind, as the kernel's `vxlan` device keeps it
//! (`drivers/net/vxlan/vxlan_core.c`).
//!
//! - **Learning** (`vxlan_snoop`): a received inner frame's source MAC is
//!   recorded against the VTEP it came from. A MAC seen from a new VTEP
//!   moves there.
//! - **Lookup** (`vxlan_xmit`): a known unicast destination goes to its
//!   VTEP. Broadcast, multicast and unknown unicast are flooded to every
//!   configured remote: head-end replication, the kernel's all-zero-MAC
//!   entry with one remote per `bridge fdb append 00:00:00:00:00:00`.
//! - **Ageing** (`vxlan_cleanup`): a learned entry not refreshed for the
//!   ageing time (default 300 s, `FDB_AGE_DEFAULT`) is gone. Expired
//!   entries stop being used at once; [`Fdb::expire`] frees them (the
//!   kernel sweeps every 10 s, `FDB_AGE_INTERVAL`).
//! - **Static entries** (`NUD_PERMANENT`, from the CLI) never age, and
//!   learning never overwrites them.
//!
//! # Where zcnet differs from the kernel
//! - **Bounded.** The kernel learns without limit by default
//!   (`IFLA_VXLAN_LIMIT` = 0). zcnet caps learned entries (default 4096)
//!   and counts what it refuses, so a flood of random source MACs cannot
//!   grow its memory. Refused MACs are still reachable: they are flooded.
//! - **Learns only from configured remotes by default.** The kernel learns
//!   from any datagram that reaches its socket, so any host on the
//!   underlay can claim a MAC and have its unicast traffic redirected.
//!   zcnet's default, [`Learning::FromRemotes`], learns only from the
//!   configured remotes' addresses; [`Learning::FromAnyVtep`] is the
//!   kernel's behaviour, for underlays where VTEPs come and go.
//!
//! Time is passed in (`now: Instant`), so ageing is tested without
//! sleeping. Lookups take `&self` and never allocate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::ether::MacAddr;
use super::header::VXLAN_PORT;

/// The kernel's default ageing time (`FDB_AGE_DEFAULT`).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
/// Default cap on learned entries.
pub const DEFAULT_MAX_LEARNED: usize = 4096;
/// How long a learned entry may go without its age being restarted while
/// its MAC keeps arriving from the same VTEP: [`Fdb::is_current`] says
/// "nothing to learn" within it, so a shared FDB is written (and its write
/// lock taken) about once a second per active MAC, not once per frame. An
/// entry therefore ages out up to this much earlier than the ageing time
/// after its last frame.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often, at most, a full table sweeps itself for expired entries
/// while learning (the kernel's `FDB_AGE_INTERVAL`).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Where learned entries may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learning {
    /// Learn nothing: only static entries and flooding (the kernel's
    /// `nolearning`).
    Off,
    /// Learn only from datagrams sent by a configured remote's IP address
    /// (the default).
    FromRemotes,
    /// Learn from any VTEP, as the kernel does.
    FromAnyVtep,
}

/// How the FDB behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbConfig {
    /// How long a learned entry lives without being refreshed.
    pub ageing: Duration,
    /// The most learned entries held at once; static entries do not count.
    pub max_learned: usize,
    pub learning: Learning,
    /// The UDP port of a VTEP learned from an address that is not a
    /// configured remote. (A datagram's source port is its sender's flow
    /// hash, not where that VTEP listens; the kernel likewise sends to its
    /// own `dst_port`.)
    pub dst_port: u16,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            ageing: DEFAULT_AGEING,
            max_learned: DEFAULT_MAX_LEARNED,
            learning: Learning::FromRemotes,
            dst_port: VXLAN_PORT,
        }
    }
}

/// Where a frame for some destination MAC goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A known unicast MAC: to this VTEP only.
    Unicast(SocketAddr),
    /// Broadcast, multicast or unknown unicast: one copy to each of these
    /// VTEPs (every configured remote; none if none is configured).
    Flood(&'a [SocketAddr]),
}

/// What [`Fdb::learn`] did with a received frame's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    Added,
    /// The entry already pointed at this VTEP; its age starts again.
    Refreshed,
    /// The MAC was behind `from` and is now behind this VTEP (a guest
    /// migrated, or someone claims its address).
    Moved { from: SocketAddr },
    /// The MAC has a static entry for this very VTEP: nothing to learn.
    Static,
    /// Learning is off.
    Off,
    /// Not learned, and counted in [`FdbStats`].
    Refused(Refusal),
}

/// Why a source was not learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A multicast or all-zero source MAC. The kernel drops such a frame
    /// (`SKB_DROP_REASON_MAC_INVALID_SOURCE`); so should the caller.
    InvalidSource,
    /// The sender is not a configured remote ([`Learning::FromRemotes`]).
    UnknownVtep,
    /// The MAC has a static entry for another VTEP. The kernel drops such
    /// a frame (`SKB_DROP_REASON_VXLAN_ENTRY_EXISTS`); so should the caller.
    StaticConflict,
    /// The cap on learned entries is reached. Frames to this MAC are
    /// flooded until room is made.
    Full,
}

impl Refusal {
    /// Every refusal (to register one metric per reason).
    pub const ALL: [Refusal; 4] = [
        Refusal::InvalidSource,
        Refusal::UnknownVtep,
        Refusal::StaticConflict,
        Refusal::Full,
    ];

    /// A stable snake_case label for per-reason metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::InvalidSource => "invalid_source",
            Refusal::UnknownVtep => "unknown_vtep",
            Refusal::StaticConflict => "static_conflict",
            Refusal::Full => "full",
        }
    }
}

/// Counters of what learning and ageing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbStats {
    pub added: u64,
    pub moved: u64,
    pub aged_out: u64,
    /// Indexed like [`Refusal::ALL`]; read with [`FdbStats::refused`].
    refused: [u64; 4],
}

impl FdbStats {
    /// How many sources were refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize]
    }
}

/// A static entry the FDB cannot hold.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FdbError {
    #[error("static FDB entry {0}: a static entry needs a unicast MAC (broadcast, multicast and unknown MACs are flooded to every remote)")]
    StaticNotUnicast(MacAddr),
}

#[derive(Clone, Copy, Debug)]
enum Origin {
    Static,
    Learned { updated: Instant },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    vtep: SocketAddr,
    origin: Origin,
}

/// The forwarding database of one VXLAN segment (one VNI).
#[derive(Debug)]
pub struct Fdb {
    config: FdbConfig,
    /// The configured remotes, each once: the flood list.
    remotes: Vec<SocketAddr>,
    entries: HashMap<MacAddr, Entry>,
    /// Entries of `entries` that are learned, not static.
    learned: usize,
    /// When a full table may sweep itself again.
    next_sweep: Option<Instant>,
    stats: FdbStats,
}

/// `addr` with an IPv4-mapped IPv6 address (as a dual-stack socket reports
/// IPv4 senders) turned back into IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Fdb {
    /// An FDB that floods to `remotes` (duplicates dropped) and holds no
    /// entry yet. Room for `min(max_learned, 4096)` entries is reserved
    /// up front.
    pub fn new(remotes: &[SocketAddr], config: FdbConfig) -> Fdb {
        let mut list: Vec<SocketAddr> = Vec::with_capacity(remotes.len());
        for r in remotes.iter().copied().map(canonical) {
            if !list.contains(&r) {
                list.push(r);
            }
        }
        Fdb {
            config,
            remotes: list,
            entries: HashMap::with_capacity(config.max_learned.min(DEFAULT_MAX_LEARNED)),
            learned: 0,
            next_sweep: None,
            stats: FdbStats::default(),
        }
    }

    /// The configured remotes: where floods go.
    pub fn remotes(&self) -> &[SocketAddr] {
        &self.remotes
    }

    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Learned entries held (expired ones included until [`expire`](Self::expire)).
    pub fn learned(&self) -> usize {
        self.learned
    }

    pub fn stats(&self) -> &FdbStats {
        &self.stats
    }

    /// Adds (or replaces) a static entry: `mac` is behind `vtep`, forever.
    /// A learned entry for `mac` is replaced.
    pub fn add_static(&mut self, mac: MacAddr, vtep: SocketAddr) -> Result<(), FdbError> {
        if !mac.is_valid_source() {
            return Err(FdbError::StaticNotUnicast(mac));
        }
        let old = self.entries.insert(
            mac,
            Entry {
                vtep: canonical(vtep),
                origin: Origin::Static,
            },
        );
        if let Some(Entry {
            origin: Origin::Learned { .. },
            ..
        }) = old
        {
            self.learned -= 1;
        }
        Ok(())
    }

    /// Where a frame to `dst` goes at `now`. Never allocates.
    pub fn lookup(&self, dst: MacAddr, now: Instant) -> Destination<'_> {
        if !dst.is_multicast() {
            if let Some(e) = self.entries.get(&dst) {
                if !self.expired(e, now) {
                    return Destination::Unicast(e.vtep);
                }
            }
        }
        Destination::Flood(&self.remotes)
    }

    /// Records that a frame with source MAC `src` arrived at `now` in a
    /// datagram from IP address `from` (the outer source address; its port
    /// is not the VTEP's, see [`FdbConfig::dst_port`]).
    pub fn learn(&mut self, src: MacAddr, from: IpAddr, now: Instant) -> Learned {
        if self.config.learning == Learning::Off {
            return Learned::Off;
        }
        if !src.is_valid_source() {
            return self.refuse(Refusal::InvalidSource);
        }
        let from = from.to_canonical();
        let vtep = match self.remotes.iter().find(|r| r.ip() == from) {
            Some(r) => *r,
            None if self.config.learning == Learning::FromAnyVtep => {
                SocketAddr::new(from, self.config.dst_port)
            }
            None => return self.refuse(Refusal::UnknownVtep),
        };
        if let Some(e) = self.entries.get_mut(&src) {
            return match e.origin {
                // A static VTEP is one host whatever its port.
                Origin::Static if e.vtep.ip() == vtep.ip() => Learned::Static,
                Origin::Static => self.refuse(Refusal::StaticConflict),
                Origin::Learned { .. } => {
                    let from = e.vtep;
                    e.vtep = vtep;
                    e.origin = Origin::Learned { updated: now };
                    if from == vtep {
                        Learned::Refreshed
                    } else {
                        self.stats.moved += 1;
                        Learned::Moved { from }
                    }
                }
            };
        }
        if self.learned >= self.config.max_learned && !self.sweep_when_full(now) {
            return self.refuse(Refusal::Full);
        }
        self.entries.insert(
            src,
            Entry {
                vtep,
                origin: Origin::Learned { updated: now },
            },
        );
        self.learned += 1;
        self.stats.added += 1;
        Learned::Added
    }

    /// Whether [`learn`](Self::learn) of `src` from `from` at `now` would
    /// change nothing that matters: learning is off, `src` has a static
    /// entry for that VTEP, or a learned one for it that was refreshed
    /// less than [`REFRESH_INTERVAL`] ago. A shared FDB answers this under
    /// its read lock and takes the write lock only when it says false.
    /// Never allocates.
    pub fn is_current(&self, src: MacAddr, from: IpAddr, now: Instant) -> bool {
        if self.config.learning == Learning::Off {
            return true;
        }
        let Some(e) = self.entries.get(&src) else {
            return false;
        };
        if e.vtep.ip() != from.to_canonical() {
            return false;
        }
        match e.origin {
            Origin::Static => true,
            Origin::Learned { updated } => {
                now.saturating_duration_since(updated) < REFRESH_INTERVAL.min(self.config.ageing)
            }
        }
    }

    /// Removes the learned entries expired at `now`; returns how many.
    /// Call it every [`SWEEP_INTERVAL`] or so. Never allocates.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ageing = self.config.ageing;
        let before = self.entries.len();
        self.entries.retain(|_, e| match e.origin {
            Origin::Static => true,
            Origin::Learned { updated } => now.saturating_duration_since(updated) < ageing,
        });
        let removed = before - self.entries.len();
        self.learned -= removed;
        self.stats.aged_out += removed as u64;
        removed
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        match e.origin {
            Origin::Static => false,
            Origin::Learned { updated } => {
                now.saturating_duration_since(updated) >= self.config.ageing
            }
        }
    }

    /// A full table frees its expired entries, at most once per
    /// [`SWEEP_INTERVAL`] (so a flood of new MACs cannot make every
    /// datagram walk the table); returns whether there is room now.
    fn sweep_when_full(&mut self, now: Instant) -> bool {
        if self.next_sweep.is_some_and(|t| now < t) {
            return false;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        self.expire(now);
        self.learned < self.config.max_learned
    }

    fn refuse(&mut self, reason: Refusal) -> Learned {
        self.stats.refused[reason as usize] += 1;
        Learned::Refused(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.1:4789";
    const B: &str = "192.0.2.2:4789";
    const C6: &str = "[2001:db8::3]:8472";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        addr(s).ip()
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, last])
    }

    fn fdb(config: FdbConfig) -> Fdb {
        Fdb::new(&[addr(A), addr(B), addr(C6), addr(A)], config)
    }

    #[test]
    fn learned_unicast_goes_to_its_vtep_and_the_rest_floods() {
        let t = Instant::now();
        let mut f = fdb(FdbConfig::default());
        let all = [addr(A), addr(B), addr(C6)];
        assert_eq!(f.remotes(), all, "duplicates dropped, order kept");
        assert_eq!(f.lookup(mac(1), t), Destination::Flood(&all));

        assert_eq!(f.learn(mac(1), ip(B), t), Learned::Added);
        assert_eq!(f.lookup(mac(1), t), Destination::Unicast(addr(B)));
        // The learned VTEP is the configured remote with its port, even
        // for an IPv6 remote on a non-default port.
        assert_eq!(f.learn(mac(2), ip(C6), t), Learned::Added);
        assert_eq!(f.lookup(mac(2), t), Destination::Unicast(addr(C6)));

        assert_eq!(f.lookup(MacAddr::BROADCAST, t), Destination::Flood(&all));
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        assert_eq!(f.lookup(mcast, t), Destination::Flood(&all));
        assert_eq!(f.lookup(mac(9), t), Destination::Flood(&all));
        assert_eq!(f.stats().added, 2);
    }

    #[test]
    fn entries_age_out_and_refreshing_restarts_the_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = fdb(FdbConfig::default());
        f.learn(mac(1), ip(A), t0);
        f.learn(mac(2), ip(A), t0);
        assert_eq!(f.learn(mac(2), ip(A), t0 + s(200)), Learned::Refreshed);

        assert_eq!(f.lookup(mac(1), t0 + s(299)), Destination::Unicast(addr(A)));
        // At exactly the ageing time the entry is gone (the kernel's
        // `time_before_eq(updated + age, now)`), before any sweep.
        assert!(matches!(
            f.lookup(mac(1), t0 + s(300)),
            Destination::Flood(_)
        ));
        assert_eq!(f.lookup(mac(2), t0 + s(300)), Destination::Unicast(addr(A)));

        assert_eq!(f.expire(t0 + s(300)), 1);
        assert_eq!((f.learned(), f.stats().aged_out), (1, 1));
        assert_eq!(f.expire(t0 + s(500)), 1);
        assert_eq!(f.learned(), 0);
    }

    #[test]
    fn ageing_time_is_configurable() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig {
            ageing: Duration::from_secs(5),
            ..FdbConfig::default()
        });
        f.learn(mac(1), ip(A), t0);
        assert!(matches!(
            f.lookup(mac(1), t0 + Duration::from_secs(4)),
            Destination::Unicast(_)
        ));
        assert!(matches!(
            f.lookup(mac(1), t0 + Duration::from_secs(5)),
            Destination::Flood(_)
        ));
    }

    #[test]
    fn static_entries_never_age_and_learning_never_moves_them() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig::default());
        f.add_static(mac(7), addr(A)).unwrap();
        let later = t0 + Duration::from_secs(30 * 86400);
        assert_eq!(f.expire(later), 0);
        assert_eq!(f.lookup(mac(7), later), Destination::Unicast(addr(A)));

        assert_eq!(f.learn(mac(7), ip(A), later), Learned::Static);
        // A static VTEP on another port is still that host.
        f.add_static(mac(8), addr("192.0.2.2:8472")).unwrap();
        assert_eq!(f.learn(mac(8), ip(B), later), Learned::Static);
        assert_eq!(
            f.learn(mac(7), ip(B), later),
            Learned::Refused(Refusal::StaticConflict)
        );
        assert_eq!(f.lookup(mac(7), later), Destination::Unicast(addr(A)));
        assert_eq!(f.stats().refused(Refusal::StaticConflict), 1);
        assert_eq!(f.learned(), 0, "static entries are not learned ones");

        assert_eq!(
            f.add_static(MacAddr::BROADCAST, addr(A)),
            Err(FdbError::StaticNotUnicast(MacAddr::BROADCAST))
        );
        assert!(f.add_static(MacAddr::default(), addr(A)).is_err());
    }

    #[test]
    fn a_static_entry_replaces_a_learned_one() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig::default());
        f.learn(mac(1), ip(A), t0);
        f.add_static(mac(1), addr(B)).unwrap();
        assert_eq!(f.learned(), 0);
        assert_eq!(f.lookup(mac(1), t0), Destination::Unicast(addr(B)));
    }

    #[test]
    fn a_mac_seen_behind_another_vtep_moves() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig::default());
        f.learn(mac(1), ip(A), t0);
        assert_eq!(f.learn(mac(1), ip(B), t0), Learned::Moved { from: addr(A) });
        assert_eq!(f.lookup(mac(1), t0), Destination::Unicast(addr(B)));
        assert_eq!((f.learned(), f.stats().moved), (1, 1));
    }

    #[test]
    fn who_may_teach_the_fdb() {
        let t0 = Instant::now();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();

        let mut f = fdb(FdbConfig::default());
        assert_eq!(
            f.learn(mac(1), stranger, t0),
            Learned::Refused(Refusal::UnknownVtep)
        );
        assert_eq!(f.stats().refused(Refusal::UnknownVtep), 1);
        assert_eq!(
            f.learn(MacAddr::BROADCAST, ip(A), t0),
            Learned::Refused(Refusal::InvalidSource)
        );
        assert_eq!(
            f.learn(MacAddr::default(), ip(A), t0),
            Learned::Refused(Refusal::InvalidSource)
        );

        let mut f = fdb(FdbConfig {
            learning: Learning::FromAnyVtep,
            ..FdbConfig::default()
        });
        assert_eq!(f.learn(mac(1), stranger, t0), Learned::Added);
        assert_eq!(
            f.lookup(mac(1), t0),
            Destination::Unicast(SocketAddr::new(stranger, 4789))
        );

        let mut f = fdb(FdbConfig {
            learning: Learning::Off,
            ..FdbConfig::default()
        });
        assert_eq!(f.learn(mac(1), ip(A), t0), Learned::Off);
        assert!(matches!(f.lookup(mac(1), t0), Destination::Flood(_)));
    }

    #[test]
    fn ipv4_mapped_senders_are_the_ipv4_remote() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig::default());
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert_eq!(f.learn(mac(1), mapped, t0), Learned::Added);
        assert_eq!(f.lookup(mac(1), t0), Destination::Unicast(addr(B)));
    }

    #[test]
    fn the_cap_holds_against_a_flood_of_source_macs() {
        let t0 = Instant::now();
        let cap = 64;
        let mut f = fdb(FdbConfig {
            max_learned: cap,
            learning: Learning::FromAnyVtep,
            ..FdbConfig::default()
        });
        let capacity = f.entries.capacity();
        let mut n = 0u64;
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let src = MacAddr([0x02, 0, 0, 0, a, b]);
                let from = IpAddr::from([10, 0, a, b]);
                f.learn(src, from, t0);
                n += 1;
            }
        }
        assert_eq!(f.learned(), cap);
        assert_eq!(f.stats().added, cap as u64);
        assert_eq!(f.stats().refused(Refusal::Full), n - cap as u64);
        assert_eq!(f.entries.capacity(), capacity, "the table never grew");
        // Refused MACs are still reached, by flooding.
        assert!(matches!(
            f.lookup(MacAddr([0x02, 0, 0, 0, 9, 9]), t0),
            Destination::Flood(_)
        ));
    }

    #[test]
    fn a_full_table_makes_room_when_entries_expire() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = fdb(FdbConfig {
            max_learned: 2,
            ..FdbConfig::default()
        });
        f.learn(mac(1), ip(A), t0);
        f.learn(mac(2), ip(A), t0 + s(100));
        assert_eq!(
            f.learn(mac(3), ip(A), t0 + s(299)),
            Learned::Refused(Refusal::Full)
        );
        // mac(1) has expired, and the last sweep was long enough ago.
        assert_eq!(f.learn(mac(3), ip(A), t0 + s(310)), Learned::Added);
        assert_eq!(f.lookup(mac(3), t0 + s(310)), Destination::Unicast(addr(A)));
        // Full again; mac(2) expires at 400 but the table swept at 310 and
        // waits until 320 to sweep again.
        assert_eq!(
            f.learn(mac(4), ip(A), t0 + s(315)),
            Learned::Refused(Refusal::Full)
        );
        assert_eq!(f.learn(mac(4), ip(A), t0 + s(401)), Learned::Added);
        assert_eq!(f.stats().aged_out, 2);
    }

    #[test]
    fn refusal_labels_are_stable() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            ["invalid_source", "unknown_vtep", "static_conflict", "full"]
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn lookups_and_learning_into_reserved_room_allocate_nothing() {
        let t0 = Instant::now();
        let mut f = fdb(FdbConfig::default());
        let n = zcnet_harness::alloc::allocations(|| {
            for i in 0..=255u8 {
                f.learn(mac(i), ip(if i % 2 == 0 { A } else { B }), t0);
            }
            for i in 0..=255u8 {
                let _ = f.lookup(mac(i), t0);
                let _ = f.lookup(MacAddr([0x02, 1, 2, 3, 4, i]), t0);
            }
            let _ = f.lookup(MacAddr::BROADCAST, t0);
            f.expire(t0 + DEFAULT_AGEING);
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn only_a_change_or_a_stale_age_needs_learning() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = fdb(FdbConfig::default());
        assert!(!f.is_current(mac(1), ip(A), t0), "unknown: learn it");
        f.learn(mac(1), ip(A), t0);
        assert!(f.is_current(mac(1), ip(A), t0 + ms(999)));
        assert!(
            !f.is_current(mac(1), ip(A), t0 + ms(1000)),
            "refresh its age"
        );
        assert!(!f.is_current(mac(1), ip(B), t0), "moved: learn it");
        f.add_static(mac(2), addr(B)).unwrap();
        assert!(f.is_current(mac(2), ip(B), t0 + Duration::from_secs(9999)));
        assert!(
            !f.is_current(mac(2), ip(A), t0),
            "a conflict is refused by learn"
        );
        let off = fdb(FdbConfig {
            learning: Learning::Off,
            ..FdbConfig::default()
        });
        assert!(off.is_current(mac(1), ip(A), t0));
    }

    #[test]
    fn no_remotes_means_an_empty_flood() {
        let f = Fdb::new(&[], FdbConfig::default());
        assert_eq!(
            f.lookup(MacAddr::BROADCAST, Instant::now()),
            Destination::Flood(&[])
        );
    }
}
