//! The host side of the tap: an AF_PACKET socket inside the test namespace
//! that sees every frame the guest sent and injects frames for the guest,
//! and builders for the frames the tests send.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// A local experimental ethertype that nothing else on the tap sends.
const TEST_ETHERTYPE: u16 = 0x88b5;
/// The legacy virtio-net header packet sockets use.
pub const PACKET_HDR_LEN: usize = 10;

pub struct PacketSock {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSock {
    /// Opens a raw packet socket on `ifname` inside `ns`. With `vnet_hdr`
    /// every frame in both directions carries a 10-byte virtio-net header.
    pub fn open(ns: &NetNs, ifname: &str, vnet_hdr: bool) -> PacketSock {
        let name = CString::new(ifname).unwrap();
        ns.enter(move || {
            // SAFETY: plain socket creation; the returned fd is checked and
            // owned by the OwnedFd below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            assert!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `raw` is a fresh fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: `name` is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            assert!(ifindex > 0, "no interface {name:?} in the namespace");
            if vnet_hdr {
                let one: libc::c_int = 1;
                // SAFETY: PACKET_VNET_HDR takes an int; the pointer and size
                // describe `one`, a live local.
                let r = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        PACKET_VNET_HDR,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as u32,
                    )
                };
                assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
            }
            let sll = sockaddr_ll(ifindex);
            // SAFETY: `sll` is a valid sockaddr_ll and the length matches.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            PacketSock { fd, ifindex }
        })
    }

    /// Sends one frame out of the interface (towards zcnet and the guest).
    pub fn send(&self, bytes: &[u8]) {
        match self.try_send(bytes) {
            Ok(n) => assert_eq!(n, bytes.len(), "AF_PACKET send: short write"),
            Err(e) => panic!("AF_PACKET send: {e}"),
        }
    }

    /// Sends frames straight to the device, past its qdisc
    /// (`PACKET_QDISC_BYPASS`), as packet generators do.
    pub fn bypass_qdisc(&self) {
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and size
        // describe `one`, a live local; the fd is owned by `self`.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(
            r,
            0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends one frame out of the interface and returns the error instead
    /// of failing, for senders that keep going when the device drops.
    pub fn try_send(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let sll = sockaddr_ll(self.ifindex);
        // SAFETY: the buffer and address are valid for the call; the fd is
        // owned by `self`.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Receives the next frame that arrived on the interface (not one it
    /// sent) and satisfies `want`, waiting at most `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the fd is owned by `self`.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `sll` are valid for writes of the sizes
            // given; the fd is owned by `self`.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut alen,
                )
            };
            if n < 0 || sll.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            if want(frame) {
                return Some(frame.to_vec());
            }
        }
    }
}

fn sockaddr_ll(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex;
    sll
}

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// A frame of exactly `len` bytes with the test ethertype, whose payload
/// starts with `tag` (4 bytes) and continues with a pattern.
pub fn test_frame(len: usize, tag: u32, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    assert!(len >= 18);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&tag.to_be_bytes());
    f.extend((f.len()..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]));
    f
}

/// The tag of a test frame, if it is one.
pub fn tag_of(frame: &[u8]) -> Option<u32> {
    (frame.len() >= 18 && frame[12..14] == TEST_ETHERTYPE.to_be_bytes())
        .then(|| u32::from_be_bytes(frame[14..18].try_into().unwrap()))
}

/// The virtio-net header fields of a TCPv4 GSO frame built by `tcp4_frame`.
pub struct Gso {
    pub hdr: [u8; PACKET_HDR_LEN],
}

/// An IPv4/TCP frame carrying `payload_len` bytes, with a partial TCP
/// checksum (as a guest with CSUM offload sends it) and the virtio-net
/// header that describes it as a TSO frame with MSS `mss`.
pub fn tcp4_frame(
    payload_len: usize,
    mss: u16,
    src_port: u16,
    dst: [u8; 6],
    src: [u8; 6],
) -> (Gso, Vec<u8>) {
    tcp4_frame_between(
        payload_len,
        mss,
        src_port,
        dst,
        src,
        [10, 0, 0, 2],
        [10, 0, 0, 1],
    )
}

/// [`tcp4_frame`] from IPv4 address `saddr` to `daddr`.
pub fn tcp4_frame_between(
    payload_len: usize,
    mss: u16,
    src_port: u16,
    dst: [u8; 6],
    src: [u8; 6],
    saddr: [u8; 4],
    daddr: [u8; 4],
) -> (Gso, Vec<u8>) {
    let ip_len = 20 + 20 + payload_len;
    assert!(ip_len <= 65535);
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&saddr);
    ip[16..20].copy_from_slice(&daddr);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH|ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Partial checksum: the folded pseudo-header sum, not inverted.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&saddr);
    pseudo.extend_from_slice(&daddr);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    let partial = !checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload_len).map(|i| (i % 251) as u8));
    let mut hdr = [0u8; PACKET_HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO TCPV4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&mss.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    (Gso { hdr }, f)
}

/// The Internet checksum (RFC 1071) of `bytes`, the naive way: what a
/// receiver computes over a header or pseudo-header and segment.
pub fn checksum(bytes: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 12-byte virtio-net header with no offload.
pub fn plain_hdr() -> [u8; 12] {
    [0; 12]
}

/// The 12-byte form of a packet-socket (10-byte) header.
pub fn v1_hdr(h: &[u8; PACKET_HDR_LEN]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..PACKET_HDR_LEN].copy_from_slice(h);
    out
}
