//! The soak: the real zcnet (default `--seccomp enforce`), driven by the
//! fake guest for a long run of TX and RX frames of random sizes, one in
//! ten chains malformed, first through a tap, then through the UDP
//! attachment with `--zerocopy on` (a tbf qdisc on the way out holds lent
//! pages), with a clean frontend reconnect every so many frames, the
//! memory table sent again (the daemon maps the same memory anew) and a
//! region the rings do not use added and removed while frames are in
//! flight.
//!
//! It panics at the first broken promise:
//! - a TX chain lost, returned twice or returned early (the guest
//!   overwrites each round's buffers as soon as its chains come back,
//!   before the peer reads them: a chain returned while the kernel still
//!   held its pages would send the overwritten bytes);
//! - a valid frame that does not arrive exactly once and byte for byte
//!   within its round (TX at the tap or the UDP peer, RX in the guest's
//!   buffers), or a malformed one that leaves. Order within a round is not
//!   required: a veth or a tap hands each packet to the backlog of the CPU
//!   that sends it, so packets sent from two CPUs can overtake each other
//!   (seen in a 10^7-frame run: every datagram arrived, two swapped);
//! - a malformed chain not returned with length 0, or an RX buffer that
//!   is read-only and was written;
//! - counters that disagree;
//! - zcnet's open descriptors (`/proc/PID/fd`) not back at their count
//!   after warm-up (the first reconnect), or its RSS (`VmRSS`) more than
//!   [`RSS_TOLERANCE_KIB`] above it, both read right after a reconnect.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::daemon::{Daemon, ZcnetBin};
use crate::frames::{self, PacketSock, GUEST_MAC, HOST_MAC};
use crate::guest::{self, FakeGuest, GuestOpts, HDR_LEN};
use crate::malformed::{Malformed, SCRATCH_LEN};
use crate::netns::NetNs;
use crate::ring::{Desc, Used};
use crate::setup::{Setup, TAP};
use crate::udp_lab::{self, UdpLab};

/// How far zcnet's RSS may rise above its level after warm-up.
pub const RSS_TOLERANCE_KIB: u64 = 4096;

/// TX chains per round (one in ten malformed).
const TX_ROUND: usize = 64;
/// RX frames per round.
const RX_ROUND: usize = 64;
/// RX buffers kept posted beyond a round (a tap also carries the
/// kernel's own frames, which take buffers too).
const RX_SLACK: usize = 32;
const RX_BUF: usize = 2048;
const QUEUE_SIZE: u16 = 256;
/// Where the extra region (ADD_MEM_REG / REM_MEM_REG) sits: far above
/// guest RAM, used by no ring.
const EXTRA_GPA: u64 = 1 << 32;
const EXTRA_LEN: usize = 2 << 20;
/// Tags of malformed frames have this bit set; good ones never.
const BAD_BIT: u32 = 1 << 31;
const WAIT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// TX frames, and as many RX frames, over both attachments (half
    /// through each).
    pub frames: u64,
    /// A clean frontend reconnect every this many frames (TX and RX
    /// counted together) on each attachment.
    pub reconnect_every: u64,
    pub seed: u64,
}

/// zcnet's memory and descriptors at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
}

/// One attachment's run.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    pub attachment: &'static str,
    pub tx_frames: u64,
    pub tx_malformed: u64,
    pub rx_frames: u64,
    pub rx_malformed: u64,
    pub reconnects: u64,
    pub mem_tables: u64,
    pub regions_added_and_removed: u64,
    pub lent: u64,
    pub elapsed: Duration,
    /// After the first reconnect.
    pub warm: Usage,
    /// After the last reconnect.
    pub end: Usage,
    pub peak_rss_kib: u64,
}

impl std::fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} TX frames ({} malformed chains), {} RX frames ({} malformed chains), \
             {} reconnects, {} memory tables, {} regions added and removed, {} frames lent, \
             in {:.1} s; zcnet after warm-up {} KiB RSS and {} fds, at the end {} KiB and {} fds \
             (peak {} KiB)",
            self.attachment,
            self.tx_frames,
            self.tx_malformed,
            self.rx_frames,
            self.rx_malformed,
            self.reconnects,
            self.mem_tables,
            self.regions_added_and_removed,
            self.lent,
            self.elapsed.as_secs_f64(),
            self.warm.rss_kib,
            self.warm.fds,
            self.end.rss_kib,
            self.end.fds,
            self.peak_rss_kib
        )
    }
}

/// Runs the soak (tap, then UDP) and returns what each phase did; panics
/// on any failure (see the module doc).
pub fn run(bin: &ZcnetBin, cfg: &SoakConfig) -> Vec<PhaseReport> {
    // TX and RX frames through each attachment.
    let per_phase = cfg.frames / 2;
    assert!(
        cfg.frames >= 2 * cfg.reconnect_every,
        "--frames {}: each attachment needs at least two reconnects' worth ({} frames) so \
         usage after warm-up can be compared with the end",
        cfg.frames,
        2 * cfg.reconnect_every
    );
    let mut reports = Vec::new();
    {
        let s = Setup::new(bin, &[]);
        let host = TapHost(PacketSock::open(&s.ns, TAP, false));
        reports.push(Phase::new("tap", &s.daemon, &s.ns, cfg, 1514, 1).run(&host, per_phase));
    }
    {
        let lab = UdpLab::new(
            bin,
            udp_lab::Path::Veth,
            &["--zerocopy", "on", "--zerocopy-min-bytes", "4096"],
        );
        // Lent pages wait in the qdisc, whose bucket and queue hold whole
        // rounds (nothing is dropped).
        lab.tc(&[
            "qdisc", "add", "dev", "va", "root", "tbf", "rate", "4gbit", "burst", "256kb", "limit",
            "32mb",
        ]);
        let host = UdpHost {
            sock: lab.receiver(),
            lab: &lab,
        };
        reports.push(
            Phase::new("udp (zero-copy, tbf)", &lab.daemon, &lab.ns, cfg, 30_000, 2)
                .run(&host, per_phase),
        );
    }
    reports
}

/// The far side of an attachment.
trait Host {
    /// The next frame the guest sent, as it left zcnet.
    fn next_tx(&self) -> Vec<u8>;
    /// Sends `frame` towards the guest.
    fn inject(&self, frame: &[u8]);
    /// Whether the far side's own frames (not the soak's) can reach the
    /// guest.
    fn has_noise(&self) -> bool;
    /// The kernel's drop counters on the way, for a failure message.
    fn kernel_counters(&self) -> String {
        String::new()
    }
}

struct TapHost(PacketSock);

impl Host for TapHost {
    fn next_tx(&self) -> Vec<u8> {
        self.0
            .recv_matching(WAIT, |f| frames::tag_of(f).is_some())
            .expect("a TX frame never came out of the tap (lost?)")
    }

    fn inject(&self, frame: &[u8]) {
        self.0.send(frame);
    }

    fn has_noise(&self) -> bool {
        true
    }
}

struct UdpHost<'a> {
    sock: UdpSocket,
    lab: &'a UdpLab,
}

impl Host for UdpHost<'_> {
    fn next_tx(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("a TX datagram never reached the peer (lost?)");
        buf.truncate(n);
        buf
    }

    fn inject(&self, frame: &[u8]) {
        let n = self
            .sock
            .send_to(frame, udp_lab::LOCAL)
            .expect("send to zcnet");
        assert_eq!(n, frame.len());
    }

    fn has_noise(&self) -> bool {
        false
    }

    fn kernel_counters(&self) -> String {
        self.lab.kernel_counters()
    }
}

/// A posted RX buffer.
struct RxBuf {
    addr: u64,
    malformed: bool,
}

/// One attachment's run in progress.
struct Phase<'a> {
    name: &'static str,
    daemon: &'a Daemon,
    ns: &'a NetNs,
    rng: fastrand::Rng,
    g: FakeGuest,
    reconnect_every: u64,
    max_tx: usize,
    max_segments: usize,
    tx_slots: Vec<u64>,
    rx_free: Vec<u64>,
    rx_posted: HashMap<u16, RxBuf>,
    rx_good_posted: usize,
    extra: ExtraRegion,
    extra_added: bool,
    next_tag: u32,
    report: PhaseReport,
}

impl<'a> Phase<'a> {
    fn new(
        name: &'static str,
        daemon: &'a Daemon,
        ns: &'a NetNs,
        cfg: &SoakConfig,
        max_tx: usize,
        max_segments: usize,
    ) -> Phase<'a> {
        let opts = GuestOpts {
            queue_size: QUEUE_SIZE,
            // One buffer per RX frame: no mergeable buffers, no receive
            // offloads (frames of at most 1514 bytes).
            wanted: GuestOpts::default().wanted
                & !(guest::MRG_RXBUF | guest::GUEST_TSO4 | guest::GUEST_TSO6),
            protocol: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            ..GuestOpts::default()
        };
        let mut g = FakeGuest::connect(&daemon.socket, &opts);
        assert!(
            g.protocol
                .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
            "zcnet must offer CONFIGURE_MEM_SLOTS"
        );
        let tx_slots = (0..TX_ROUND).map(|_| g.alloc(SCRATCH_LEN)).collect();
        let rx_free = (0..QUEUE_SIZE).map(|_| g.alloc(RX_BUF)).collect();
        Phase {
            name,
            daemon,
            ns,
            rng: fastrand::Rng::with_seed(cfg.seed ^ name.len() as u64),
            g,
            reconnect_every: cfg.reconnect_every,
            max_tx,
            max_segments,
            tx_slots,
            rx_free,
            rx_posted: HashMap::new(),
            rx_good_posted: 0,
            extra: ExtraRegion::new(),
            extra_added: false,
            next_tag: 0,
            report: PhaseReport {
                attachment: name,
                tx_frames: 0,
                tx_malformed: 0,
                rx_frames: 0,
                rx_malformed: 0,
                reconnects: 0,
                mem_tables: 0,
                regions_added_and_removed: 0,
                lent: 0,
                elapsed: Duration::ZERO,
                warm: Usage { rss_kib: 0, fds: 0 },
                end: Usage { rss_kib: 0, fds: 0 },
                peak_rss_kib: 0,
            },
        }
    }

    /// `frames` TX frames and as many RX frames.
    fn run(mut self, host: &dyn Host, frames: u64) -> PhaseReport {
        let start = Instant::now();
        let (tx_goal, rx_goal) = (frames, frames);
        let mut round = 0u64;
        let mut since_reconnect = 0u64;
        while self.report.tx_frames < tx_goal || self.report.rx_frames < rx_goal {
            let before = self.report.tx_frames + self.report.rx_frames;
            if self.report.tx_frames < tx_goal {
                self.tx_round(host, TX_ROUND, round);
            }
            if self.report.rx_frames < rx_goal {
                let n = RX_ROUND.min((rx_goal - self.report.rx_frames) as usize);
                self.rx_round(host, n);
            }
            round += 1;
            since_reconnect += self.report.tx_frames + self.report.rx_frames - before;
            if since_reconnect >= self.reconnect_every {
                since_reconnect = 0;
                self.reconnect();
            }
        }
        self.reconnect();
        let warm = self.report.warm;
        let end = self.report.end;
        assert_eq!(
            end.fds, warm.fds,
            "{}: zcnet has {} descriptors open after the last reconnect, {} after the first",
            self.name, end.fds, warm.fds
        );
        assert!(
            end.rss_kib <= warm.rss_kib + RSS_TOLERANCE_KIB,
            "{}: zcnet's RSS grew from {} KiB after warm-up to {} KiB (tolerance {} KiB)",
            self.name,
            warm.rss_kib,
            end.rss_kib,
            RSS_TOLERANCE_KIB
        );
        self.settle(host);
        self.check_counters();
        self.report.elapsed = start.elapsed();
        self.report
    }

    /// Queues `n` TX chains (one in ten malformed), sends memory requests
    /// while they are in flight, and checks what comes back and out.
    fn tx_round(&mut self, host: &dyn Host, n: usize, round: u64) {
        let mut good = Vec::new();
        let mut heads = HashSet::new();
        let mut malformed = 0;
        for i in 0..n {
            let slot = self.tx_slots[i];
            let tag = self.next_tag;
            self.next_tag = (self.next_tag + 1) & !BAD_BIT;
            if self.rng.u8(..10) == 0 {
                let kind = Malformed::ALL[self.rng.usize(..Malformed::ALL.len())];
                heads.insert(kind.queue(&mut self.g, 0, slot, tag | BAD_BIT));
                malformed += 1;
            } else {
                let len = self.rng.usize(60..=self.max_tx);
                let mut f = frames::test_frame(len, tag, HOST_MAC, GUEST_MAC);
                self.rng.fill(&mut f[18..]);
                heads.insert(self.queue_tx(slot, &f));
                good.push((slot, f));
            }
        }
        self.g.tx(0).kick();
        // While the device works on them.
        match round % 8 {
            3 if !self.extra_added => {
                self.g.set_mem_table();
                self.report.mem_tables += 1;
            }
            5 if !self.extra_added => {
                self.g
                    .frontend
                    .add_mem_region(&self.extra.info)
                    .expect("ADD_MEM_REG");
                self.extra_added = true;
            }
            7 if self.extra_added => self.remove_extra(),
            _ => {}
        }
        let used = self.g.wait_tx_used(0, n);
        let ids: HashSet<u16> = used.iter().map(|u| u.id).collect();
        assert_eq!(
            used.len(),
            n,
            "{}: a TX chain came back twice: {used:?}",
            self.name
        );
        assert_eq!(ids, heads, "{}: TX chains missing", self.name);
        // The chains are back: the guest may reuse the buffers at once.
        for (slot, f) in &good {
            self.g.write(*slot + HDR_LEN as u64, &vec![0xee; f.len()]);
        }
        // Frames may arrive out of order: a veth (and a tap) hands each
        // packet to the backlog of the CPU that transmits it, so two
        // packets sent from different CPUs can overtake each other. UDP
        // promises no order; what must hold is every frame once, whole.
        let mut expected: HashMap<u32, &Vec<u8>> = good
            .iter()
            .map(|(_, f)| (frames::tag_of(f).expect("a tagged frame"), f))
            .collect();
        for _ in 0..good.len() {
            let out = host.next_tx();
            let tag = frames::tag_of(&out);
            if let Some(tag) = tag {
                assert_eq!(
                    tag & BAD_BIT,
                    0,
                    "{}: a malformed chain's frame was sent",
                    self.name
                );
            }
            match tag.and_then(|t| expected.remove(&t)) {
                Some(f) if out == *f => {}
                sent => panic!(
                    "{}: a TX frame arrived as {} bytes with tag {tag:?}, which {}: returned \
                     early and overwritten, corrupted, duplicated or not this round's; still \
                     expected {:?}\n{}\n{}",
                    self.name,
                    out.len(),
                    match sent {
                        Some(f) => format!(
                            "differs from the {} bytes sent after {} equal bytes",
                            f.len(),
                            out.iter().zip(f.iter()).take_while(|(a, b)| a == b).count()
                        ),
                        None => "was not expected".to_owned(),
                    },
                    expected.keys().collect::<Vec<_>>(),
                    Daemon::scrape(self.ns),
                    host.kernel_counters()
                ),
            }
        }
        self.report.tx_frames += good.len() as u64;
        self.report.tx_malformed += malformed;
    }

    /// `frame` after a plain header at `slot`, over up to `max_segments`
    /// descriptors; published, not kicked.
    fn queue_tx(&mut self, slot: u64, frame: &[u8]) -> u16 {
        let mut bytes = frames::plain_hdr().to_vec();
        bytes.extend_from_slice(frame);
        self.g.write(slot, &bytes);
        let segments = self.rng.usize(1..=self.max_segments);
        let chunk = bytes.len().div_ceil(segments);
        let descs: Vec<Desc> = (0..bytes.len())
            .step_by(chunk)
            .map(|off| Desc {
                addr: slot + off as u64,
                len: chunk.min(bytes.len() - off) as u32,
                write: false,
            })
            .collect();
        let ring = self.g.tx(0);
        let head = ring.add_chain(&descs);
        ring.publish(head);
        head
    }

    /// Keeps buffers posted (one in ten extra ones read-only), injects `n`
    /// frames and checks each lands in the guest whole and in order.
    fn rx_round(&mut self, host: &dyn Host, n: usize) {
        while self.rx_good_posted < RX_ROUND + RX_SLACK {
            if self.rng.u8(..10) == 0 {
                self.post_rx(true);
            }
            self.post_rx(false);
        }
        self.g.rx(0).kick();
        let sent: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = self.rng.usize(60..=1514);
                let tag = self.next_tag;
                self.next_tag = (self.next_tag + 1) & !BAD_BIT;
                let mut f = frames::test_frame(len, tag, GUEST_MAC, HOST_MAC);
                self.rng.fill(&mut f[18..]);
                f
            })
            .collect();
        for f in &sent {
            host.inject(f);
        }
        let mut waiting: HashMap<u32, &Vec<u8>> = sent
            .iter()
            .map(|f| (frames::tag_of(f).expect("a tagged frame"), f))
            .collect();
        let mut next = 0;
        let deadline = Instant::now() + WAIT;
        while next < sent.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: {} of {n} RX frames reached the guest in {WAIT:?} (lost?)",
                self.name,
                next
            );
            for u in self.g.rx(0).wait_used(1, left) {
                if let Some((tag, frame)) = self.returned_rx(host, u) {
                    // As on TX, frames may overtake each other on the way.
                    match waiting.remove(&tag) {
                        Some(f) if frame == *f => {}
                        Some(f) => panic!(
                            "{}: RX frame {tag} arrived as {} bytes that differ from the {} sent",
                            self.name,
                            frame.len(),
                            f.len()
                        ),
                        None => panic!(
                            "{}: RX frame {tag} arrived twice or was not sent in this round",
                            self.name
                        ),
                    }
                    next += 1;
                }
            }
        }
        self.report.rx_frames += n as u64;
    }

    /// Accounts for one RX chain the device returned: a read-only one
    /// must come back unwritten with length 0 (and is counted); a good one
    /// holds a frame. Returns the frame and its tag if it is one of the
    /// soak's, `None` for a malformed chain or the far side's own traffic.
    fn returned_rx(&mut self, host: &dyn Host, u: Used) -> Option<(u32, Vec<u8>)> {
        let buf = self
            .rx_posted
            .remove(&u.id)
            .unwrap_or_else(|| panic!("{}: RX chain {} came back twice", self.name, u.id));
        self.rx_free.push(buf.addr);
        if buf.malformed {
            assert_eq!(u.len, 0, "{}: a read-only RX chain was used", self.name);
            assert_eq!(
                self.g.read(buf.addr, 64),
                vec![0u8; 64],
                "{}: zcnet wrote into a read-only RX buffer",
                self.name
            );
            self.report.rx_malformed += 1;
            return None;
        }
        self.rx_good_posted -= 1;
        let got = self.g.read(buf.addr, u.len as usize);
        let frame = got[HDR_LEN.min(got.len())..].to_vec();
        let Some(tag) = frames::tag_of(&frame) else {
            assert!(
                host.has_noise(),
                "{}: an RX buffer holds a frame nobody sent ({} bytes)",
                self.name,
                u.len
            );
            return None;
        };
        Some((tag, frame))
    }

    /// Stops every ring (GET_VRING_BASE: the device answers once it has
    /// returned every chain it will) and accounts for the RX chains it
    /// returned after the last round ended. The device may take a
    /// read-only RX chain that follows the last filled one without a frame
    /// to put in it (it returns it at once, counted), so a round can end
    /// before that chain shows up; here nothing more can come back, so the
    /// counters can be compared exactly.
    fn settle(&mut self, host: &dyn Host) {
        self.g.stop_rings();
        for u in self.g.rx(0).take_used() {
            if let Some((tag, frame)) = self.returned_rx(host, u) {
                panic!(
                    "{}: RX frame {tag} ({} bytes) arrived after every frame of its round",
                    self.name,
                    frame.len()
                );
            }
        }
    }

    fn post_rx(&mut self, malformed: bool) {
        let addr = self.rx_free.pop().expect("an RX buffer free");
        self.g.write(addr, &[0u8; 64]);
        let ring = self.g.rx(0);
        let head = ring.add_chain(&[Desc {
            addr,
            len: RX_BUF as u32,
            write: !malformed,
        }]);
        ring.publish(head);
        self.rx_posted.insert(head, RxBuf { addr, malformed });
        if !malformed {
            self.rx_good_posted += 1;
        }
    }

    fn remove_extra(&mut self) {
        self.g
            .frontend
            .remove_mem_region(&self.extra.info)
            .expect("REM_MEM_REG");
        self.extra_added = false;
        self.report.regions_added_and_removed += 1;
    }

    /// Stops every ring, leaves, connects again and hands the rings over
    /// where the device stopped them; reads zcnet's usage.
    fn reconnect(&mut self) {
        if self.extra_added {
            self.remove_extra();
        }
        let bases = self.g.stop_rings();
        self.g.reconnect_at(&self.daemon.socket, &bases);
        self.report.reconnects += 1;
        let now = usage(self.daemon.pid());
        self.report.peak_rss_kib = self.report.peak_rss_kib.max(now.rss_kib);
        if self.report.reconnects == 1 {
            self.report.warm = now;
        }
        self.report.end = now;
    }

    fn check_counters(&mut self) {
        let m = Daemon::scrape(self.ns);
        let metric = |name| Daemon::metric(&m, name, 0);
        let r = &self.report;
        assert_eq!(
            metric("zcnet_tx_frames_total"),
            r.tx_frames,
            "{}: TX frames counted",
            self.name
        );
        assert_eq!(
            metric("zcnet_malformed_chains_total"),
            r.tx_malformed + r.rx_malformed,
            "{}: malformed chains counted",
            self.name
        );
        if self.name.starts_with("udp") {
            assert_eq!(metric("zcnet_rx_frames_total"), r.rx_frames);
            assert_eq!(metric("zcnet_tx_lent_chains"), 0, "chains still lent");
            self.report.lent = metric("zcnet_tx_zerocopy_sends_total");
            assert!(self.report.lent > 0, "{}: nothing was lent", self.name);
        } else {
            assert!(metric("zcnet_rx_frames_total") >= r.rx_frames);
        }
        assert!(
            self.g.tx(0).take_used().is_empty(),
            "{}: TX chains came back after their round",
            self.name
        );
    }
}

/// A memfd region above guest RAM, mapped in the fake guest, that ADD_MEM_REG
/// and REM_MEM_REG hand over and take back.
struct ExtraRegion {
    info: VhostUserMemoryRegionInfo,
    _mem: GuestMemoryMmap,
}

impl ExtraRegion {
    fn new() -> ExtraRegion {
        let fd = memfd_create(c"zcnet-soak-extra", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
        let file = File::from(fd);
        file.set_len(EXTRA_LEN as u64).expect("size the memfd");
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(EXTRA_GPA),
            EXTRA_LEN,
            Some(FileOffset::new(file, 0)),
        )])
        .expect("map the extra region");
        let info = VhostUserMemoryRegionInfo::from_guest_region(mem.iter().next().unwrap())
            .expect("memfd-backed region");
        ExtraRegion { info, _mem: mem }
    }
}

/// zcnet's RSS and open descriptors.
fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    let fds = std::fs::read_dir(Path::new(&format!("/proc/{pid}/fd")))
        .expect("/proc/PID/fd")
        .count();
    Usage { rss_kib, fds }
}
