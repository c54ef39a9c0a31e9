//! What live-migration guest tests need besides guests and daemons: the
//! host side of two backends that a guest moves between (two taps in one
//! bridge, or a "wire" that two UDP attachments share), a free port for
//! QEMU's migration stream, and TCP streams of known bytes whose SHA-256
//! the guest checks.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::frames::PacketSock;
use crate::netns::NetNs;
use crate::vm::HOST_IP;

/// The bridge, and the taps of the source's and the destination's
/// backend in it.
pub const BRIDGE: &str = "zmbr0";
pub const TAP_A: &str = "zma0";
pub const TAP_B: &str = "zmb0";
/// The guest's address (as `VmSpec::IP` gives it) and the TCP port of the
/// stream that crosses the migration.
pub const GUEST_ADDR: &str = "10.77.0.2";
pub const STREAM_PORT: u16 = 5300;
/// The iperf3 server the guest reaches after the move.
pub const IPERF_PORT: u16 = 5201;

/// Starts `iperf3 -s` on the host address in `ns`, logging to `log`.
fn iperf_server(ns: &NetNs, log: &tempfile::NamedTempFile) -> Child {
    let out = log.reopen().expect("log file");
    ns.command("iperf3")
        .args(["-s", "-B", HOST_IP, "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::from(out.try_clone().expect("log file")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start iperf3 -s (the image builder installs iperf3)")
}

/// Waits (bounded) until the iperf3 server in `ns` listens.
fn wait_iperf(ns: &NetNs, log: &tempfile::NamedTempFile) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let filter = format!("sport = :{IPERF_PORT}");
    loop {
        let ss = ns.command("ss").args(["-Hltn", &filter]).output();
        if ss.is_ok_and(|o| !o.stdout.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 -s never listened: {}",
            fs::read_to_string(log.path()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20)); // polling a condition, with a deadline
    }
}

/// A namespace with a bridge that has the host address, two persistent
/// taps in it (one per backend) and an iperf3 server.
pub struct BridgeLab {
    server: Child,
    log: tempfile::NamedTempFile,
    // Dropped last: deleting the namespace removes bridge and taps.
    pub ns: NetNs,
}

impl BridgeLab {
    /// Taps `multi_queue vnet_hdr` for zcnet, or `vnet_hdr` only for
    /// QEMU's own `-netdev tap`.
    pub fn new(multi_queue: bool) -> BridgeLab {
        let ns = NetNs::new();
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE]);
        ns.ip(&["link", "set", BRIDGE, "up"]);
        for tap in [TAP_A, TAP_B] {
            let mut add = vec!["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"];
            if multi_queue {
                add.push("multi_queue");
            }
            ns.ip(&add);
            ns.ip(&["link", "set", tap, "master", BRIDGE]);
            ns.ip(&["link", "set", tap, "up"]);
        }
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let lab = BridgeLab {
            server: iperf_server(&ns, &log),
            log,
            ns,
        };
        wait_iperf(&lab.ns, &lab.log);
        lab
    }

    /// The bridge port the bridge has learned `mac` on, if any.
    pub fn port_of(&self, mac: &str) -> Option<String> {
        let fdb = Command::new("bridge")
            .args(["-n", &self.ns.name, "fdb", "show", "br", BRIDGE])
            .output()
            .expect("run bridge fdb");
        String::from_utf8_lossy(&fdb.stdout).lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(mac) && words.next() == Some("dev"))
                .then(|| words.next().unwrap_or_default().to_owned())
        })
    }
}

impl Drop for BridgeLab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if thread::panicking() {
            eprintln!(
                "---- iperf3 server log ----\n{}\n---- end ----",
                fs::read_to_string(self.log.path()).unwrap_or_default()
            );
        }
    }
}

/// zcnet's namespace, `10.9.0.1` on a veth.
pub const UDP_LOCAL_IP: &str = "10.9.0.1";
/// The wire's UDP endpoint every zcnet sends to.
pub const UDP_WIRE: &str = "10.9.0.2:7001";
/// The veth of zcnet's namespace, where a qdisc can hold datagrams.
pub const UDP_VETH: &str = "va";
/// The MTU of the wire: jumbo frames, so TX frames are large enough to
/// lend.
pub const WIRE_MTU: u16 = 9000;

/// Two UDP attachments on one "wire": zcnet's namespace is joined by a
/// veth to a second one where a relay takes raw frames out of UDP
/// datagrams and puts them on a veth whose peer has the host address
/// (and iperf3), and sends frames from the host back to the attachment
/// that spoke last, as a switch learns a moved MAC.
pub struct UdpRelayLab {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Each attachment the relay heard from, in the order it first did.
    pub heard: Arc<Mutex<Vec<SocketAddr>>>,
    server: Child,
    log: tempfile::NamedTempFile,
    pub zcnet_ns: NetNs,
    pub wire_ns: NetNs,
}

impl UdpRelayLab {
    pub fn new() -> UdpRelayLab {
        let (zcnet_ns, wire_ns) = NetNs::veth_pair();
        wire_ns.ip(&["link", "add", "wa", "type", "veth", "peer", "name", "wb"]);
        let mtu = WIRE_MTU.to_string();
        for dev in ["wa", "wb"] {
            wire_ns.ip(&["link", "set", dev, "mtu", &mtu, "up"]);
        }
        wire_ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "wb"]);
        // The relay reads the host's frames raw off the veth: they must
        // carry whole checksums and be no larger than the MTU, since the
        // attachments offer the guest no offloads.
        let ethtool = wire_ns
            .command("ethtool")
            .args(["-K", "wb", "tx", "off", "tso", "off", "gso", "off"])
            .output()
            .expect("run ethtool (the image builder installs it)");
        assert!(
            ethtool.status.success(),
            "ethtool -K wb: {}",
            String::from_utf8_lossy(&ethtool.stderr)
        );

        let udp = wire_ns.enter(|| UdpSocket::bind(UDP_WIRE).expect("bind the relay's socket"));
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("relay timeout");
        let wire = Arc::new(PacketSock::open(&wire_ns, "wa", false));
        let stop = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(Mutex::new(Vec::<SocketAddr>::new()));
        let last = Arc::new(Mutex::new(None::<SocketAddr>));
        let mut threads = Vec::new();
        {
            let (udp, wire, stop, heard, last) = (
                udp.try_clone().expect("clone the relay socket"),
                wire.clone(),
                stop.clone(),
                heard.clone(),
                last.clone(),
            );
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    *last.lock().unwrap() = Some(from);
                    {
                        let mut h = heard.lock().unwrap();
                        if !h.contains(&from) {
                            h.push(from);
                        }
                    }
                    // A frame the host refuses (too long) is lost, as on a
                    // wire.
                    let _ = wire.try_send(&buf[..n]);
                }
            }));
        }
        {
            let (stop, last) = (stop.clone(), last.clone());
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(frame) = wire.recv_matching(Duration::from_millis(100), |_| true)
                    else {
                        continue;
                    };
                    if let Some(to) = *last.lock().unwrap() {
                        let _ = udp.send_to(&frame, to);
                    }
                }
            }));
        }
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let lab = UdpRelayLab {
            stop,
            threads,
            heard,
            server: iperf_server(&wire_ns, &log),
            log,
            zcnet_ns,
            wire_ns,
        };
        wait_iperf(&lab.wire_ns, &lab.log);
        lab
    }

    /// `--udp` for a zcnet whose socket is `10.9.0.1:port`.
    pub fn udp_arg(port: u16) -> String {
        format!("{UDP_LOCAL_IP}:{port},{UDP_WIRE}")
    }

    /// Holds zcnet's datagrams in a token bucket on their way out, so a
    /// lent frame's pages stay with the kernel while it waits there.
    pub fn throttle(&self, rate: &str, latency: &str) {
        let out = self
            .zcnet_ns
            .command("tc")
            .args(["qdisc", "add", "dev", UDP_VETH, "root", "tbf", "rate", rate])
            .args(["burst", "64kb", "latency", latency])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc tbf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for UdpRelayLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UdpRelayLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        if thread::panicking() {
            eprintln!(
                "---- iperf3 server log ----\n{}\n---- end ----",
                fs::read_to_string(self.log.path()).unwrap_or_default()
            );
        }
    }
}

/// A TCP port on 127.0.0.1 of the calling thread's namespace that nothing
/// listens on now (for `-incoming tcp:127.0.0.1:PORT`).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// `sha256sum` fed as bytes go by.
struct Sha256 {
    child: Child,
}

impl Sha256 {
    fn new() -> Sha256 {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sha256sum");
        Sha256 { child }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .expect("sha256sum's stdin")
            .write_all(bytes)
            .expect("feed sha256sum");
    }

    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("sha256sum printed a hash")
            .to_owned()
    }
}

/// What crossed a stream: its length and SHA-256 (hex, as `sha256sum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub sha256: String,
}

/// Progress of a stream, shared with the thread that carries it.
#[derive(Default)]
pub struct Progress {
    /// Bytes carried so far.
    pub bytes: AtomicU64,
    /// A sender stops once it has sent this many (u64::MAX: not yet known).
    pub stop_at: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            bytes: AtomicU64::new(0),
            stop_at: AtomicU64::new(u64::MAX),
        })
    }

    /// Waits (bounded) until `bytes` have been carried.
    pub fn wait_for(&self, bytes: u64, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.bytes.load(Ordering::Relaxed) < bytes {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {bytes} bytes within {timeout:?}",
                self.bytes.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(20)); // polling a counter, with a deadline
        }
    }
}

/// Connects to `addr` from inside `ns`, retrying (bounded) while nothing
/// listens yet.
pub fn connect(ns: &NetNs, addr: SocketAddr, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5))) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "nothing accepted a connection to {addr} within {timeout:?}: {e}"
                );
                thread::sleep(Duration::from_millis(100)); // retrying a connection, with a deadline
            }
        }
    }
}

/// Sends pseudo-random bytes (a fixed xorshift sequence) on `sock` until
/// `progress.stop_at` is reached, then closes; returns what was sent.
pub fn send_stream(mut sock: TcpStream, progress: Arc<Progress>) -> JoinHandle<Digest> {
    thread::spawn(move || {
        let mut sha = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        loop {
            let stop = progress.stop_at.load(Ordering::Relaxed);
            if sent >= stop {
                break;
            }
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            let n = block
                .len()
                .min(usize::try_from(stop - sent).unwrap_or(usize::MAX));
            sock.write_all(&block[..n]).expect("send the stream");
            sha.update(&block[..n]);
            sent += n as u64;
            progress.bytes.store(sent, Ordering::Relaxed);
        }
        sock.shutdown(std::net::Shutdown::Write)
            .expect("close the stream");
        // Wait for the guest to close its end: everything arrived.
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest);
        Digest {
            bytes: sent,
            sha256: sha.finish(),
        }
    })
}

/// Accepts one connection on `listener` and reads it to its end;
/// returns what arrived.
pub fn receive_stream(listener: TcpListener, progress: Arc<Progress>) -> JoinHandle<Digest> {
    thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept the guest's stream");
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = sock.read(&mut buf).expect("receive the stream");
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            got += n as u64;
            progress.bytes.store(got, Ordering::Relaxed);
        }
        Digest {
            bytes: got,
            sha256: sha.finish(),
        }
    })
}
