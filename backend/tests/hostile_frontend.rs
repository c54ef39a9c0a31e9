//! Hostile frontend messages (issue 13), through the real daemon: each is
//! answered with an error, and the daemon goes on serving: on the same
//! connection when zcnet keeps it (the frontend negotiated REPLY_ACK and
//! asked for a reply), a frame then moves on it; when the request's reply
//! carries data, so that no error ack can answer it, the connection is
//! closed and the next frontend moves a frame.
//!
//! The fake guest's frontend is told the device may have two queue pairs
//! (and asks no GET_QUEUE_NUM), so its crate lets it name rings 2 and 3 of
//! this one-pair zcnet. Messages the crate will not send malformed go raw
//! on the same socket.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use zcnet_harness::daemon::{Daemon, ZcnetBin};
use zcnet_harness::frames::PacketSock;
use zcnet_harness::guest::{FakeGuest, GuestOpts, MEM_SIZE};
use zcnet_harness::roundtrip::tx_roundtrip;
use zcnet_harness::setup::{Setup, TAP};
use zcnet_harness::vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use zcnet_harness::vhost::vhost_user::VhostUserFrontend;
use zcnet_harness::vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

/// The zcnet that Cargo built for these tests.
fn zcnet() -> ZcnetBin {
    ZcnetBin::at(env!("CARGO_BIN_EXE_zcnet"))
}

const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_BASE: u32 = 10;
const SET_VRING_KICK: u32 = 12;
const GET_FEATURES: u32 = 1;
const NEED_REPLY: u32 = 0x1 | 0x8;

/// A frontend that asks for a reply to every request, on a one-pair
/// zcnet it believes has two pairs.
fn hostile(s: &Setup) -> FakeGuest {
    let opts = GuestOpts {
        pairs: 2,
        protocol: VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ..GuestOpts::default()
    };
    let g = FakeGuest::negotiate(&s.daemon.socket, &opts);
    g.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    g
}

/// Memory and both rings of pair 0, 256 entries.
fn bring_up(g: &mut FakeGuest) {
    g.set_mem_table();
    for q in 0..2 {
        g.start_ring(q, 256);
    }
    g.sync();
}

/// The daemon logged the refusal of `code` for `why` (once) and kept the
/// connection.
fn refused(d: &Daemon, code: &str, why: &str) {
    let log = d.log_text();
    let line = format!("refused {code} from the frontend: {why}");
    assert_eq!(
        log.matches(&line).count(),
        1,
        "{line:?} not logged once:\n{log}"
    );
    assert!(!log.contains("frontend connection ended"), "{log}");
}

/// Sends a raw request with `fds` on the frontend's socket.
fn raw_send(sock: RawFd, code: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
    let mut msg = Vec::new();
    for word in [code, flags, body.len() as u32] {
        msg.extend_from_slice(&word.to_ne_bytes());
    }
    msg.extend_from_slice(body);
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(sock, &[IoSlice::new(&msg)], cmsgs, MsgFlags::empty(), None)
        .expect("send a raw request");
    assert_eq!(n, msg.len());
}

/// Reads a REPLY_ACK answer to `code`: its u64 (0 success), or `None` if
/// the daemon closed the connection.
fn raw_ack(sock: RawFd, code: u32) -> Option<u64> {
    let mut reply = [0u8; 20];
    let mut got = 0;
    while got < reply.len() {
        // SAFETY: `sock` is the fake guest's socket, which the caller's
        // FakeGuest keeps open for the whole call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) };
        let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
        let n = poll(&mut pfd, PollTimeout::from(20_000u16)).expect("poll");
        assert_eq!(n, 1, "no answer to request {code} in 20 s");
        let r = recv(sock, &mut reply[got..], MsgFlags::empty()).expect("recv");
        if r == 0 {
            return None;
        }
        got += r;
    }
    let word = |i: usize| u32::from_ne_bytes(reply[i..i + 4].try_into().unwrap());
    assert_eq!(word(0), code, "reply to another request");
    assert_eq!(word(8), 8, "not an ack");
    Some(u64::from_ne_bytes(reply[12..20].try_into().unwrap()))
}

fn memfd(len: u64) -> File {
    let f = File::from(memfd_create(c"zcnet-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
    f.set_len(len).unwrap();
    f
}

fn state(index: u32, num: u32) -> Vec<u8> {
    [index.to_ne_bytes(), num.to_ne_bytes()].concat()
}

#[test]
fn ring_sizes_of_0_not_a_power_of_two_or_too_large_are_refused_on_a_kept_connection() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    for num in [0u16, 3, 2048] {
        assert!(
            g.frontend.set_vring_num(0, num).is_err(),
            "size {num} accepted"
        );
        refused(&s.daemon, "SET_VRING_NUM", &format!("ring 0 size {num}: "));
    }
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 1);
}

#[test]
fn ring_indices_out_of_range_are_refused_for_every_ring_message() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    g.set_mem_table();
    let ev = EventFd::new(0).unwrap();
    let config = VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: g.mem.get_host_address(GuestAddress(0x100000)).unwrap() as u64,
        used_ring_addr: g.mem.get_host_address(GuestAddress(0x102000)).unwrap() as u64,
        avail_ring_addr: g.mem.get_host_address(GuestAddress(0x101000)).unwrap() as u64,
        log_addr: None,
    };
    let why = "ring 2: the device has rings 0 to 1 (1 queue pairs)";
    assert!(g.frontend.set_vring_base(2, 0).is_err());
    refused(&s.daemon, "SET_VRING_BASE", why);
    assert!(g.frontend.set_vring_addr(2, &config).is_err());
    refused(&s.daemon, "SET_VRING_ADDR", why);
    assert!(g.frontend.set_vring_kick(2, &ev).is_err());
    refused(&s.daemon, "SET_VRING_KICK", why);
    assert!(g.frontend.set_vring_call(2, &ev).is_err());
    refused(&s.daemon, "SET_VRING_CALL", why);
    assert!(g.frontend.set_vring_err(2, &ev).is_err());
    refused(&s.daemon, "SET_VRING_ERR", why);
    // The handler reads KICK's ring from the low 8 bits only: 0x201 would
    // be ring 1.
    let sock = g.frontend.as_raw_fd();
    raw_send(
        sock,
        SET_VRING_KICK,
        NEED_REPLY,
        &0x201u64.to_ne_bytes(),
        &[ev.as_raw_fd()],
    );
    assert_eq!(raw_ack(sock, SET_VRING_KICK), Some(1));
    refused(&s.daemon, "SET_VRING_KICK", "value 0x201: only bits 0-7");
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 2);

    // GET_VRING_BASE's reply is the ring's state: no error ack can answer
    // it, so the connection is closed; the next frontend is served.
    assert!(g.frontend.get_vring_base(2).is_err());
    s.daemon.wait_log(&format!(
        "closing the frontend's connection at GET_VRING_BASE: {why}"
    ));
    drop(g);
    s.daemon
        .wait_log("frontend disconnected; waiting for the next connection");
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 3);
}

#[test]
fn ring_addresses_outside_guest_memory_are_refused() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    g.set_mem_table();
    g.frontend.set_vring_num(0, 256).unwrap();
    let hva = |gpa: u64| g.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    let ok = VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: hva(0x100000),
        used_ring_addr: hva(0x102000),
        avail_ring_addr: hva(0x101000),
        log_addr: None,
    };
    // The used ring starts in the last bytes of guest memory and runs
    // past its end (vhost-user-backend checks only where it starts).
    let past_end = VringConfigData {
        used_ring_addr: hva(MEM_SIZE - 16),
        ..ok
    };
    assert!(g.frontend.set_vring_addr(0, &past_end).is_err());
    refused(
        &s.daemon,
        "SET_VRING_ADDR",
        "ring 0's used ring (2054 bytes for 256 entries at",
    );
    // A descriptor table nowhere in guest memory.
    let nowhere = VringConfigData {
        desc_table_addr: 0x1000,
        ..ok
    };
    assert!(g.frontend.set_vring_addr(0, &nowhere).is_err());
    refused(
        &s.daemon,
        "SET_VRING_ADDR",
        "ring 0's descriptor table at 0x1000 is outside the guest memory",
    );
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 4);
}

#[test]
fn memory_tables_with_bad_regions_are_refused() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    let sock = g.frontend.as_raw_fd();
    let file = memfd(1 << 20);
    let fd = file.as_raw_fd();
    let user = 0x7f00_0000_0000u64;
    let table = |regions: &[(u64, u64, u64)]| {
        let mut b = (regions.len() as u32).to_ne_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        for &(gpa, size, offset) in regions {
            for v in [gpa, size, user + gpa, offset] {
                b.extend_from_slice(&v.to_ne_bytes());
            }
        }
        b
    };
    for (regions, why) in [
        (
            vec![(0, 1 << 20, 0), (0x8000, 0x1000, 0)],
            "region 0x8000+0x1000 overlaps region 0x0+0x100000 in guest memory",
        ),
        (vec![(0, 0, 0)], "region at guest address 0x0 has size 0"),
        (
            vec![(0, 2 << 20, 0)],
            "region 0x0+0x200000: it maps bytes 0x0..0x0+0x200000 of a file of 0x100000 bytes",
        ),
    ] {
        let fds = vec![fd; regions.len()];
        raw_send(sock, SET_MEM_TABLE, NEED_REPLY, &table(&regions), &fds);
        assert_eq!(raw_ack(sock, SET_MEM_TABLE), Some(1), "{why}");
        refused(&s.daemon, "SET_MEM_TABLE", why);
    }
    // Nine regions, one more than a table holds (with eight descriptors:
    // nine would not even get through the socket's limit).
    let nine: Vec<(u64, u64, u64)> = (0..9).map(|i| (i << 20, 1 << 20, 0)).collect();
    raw_send(sock, SET_MEM_TABLE, NEED_REPLY, &table(&nine), &[fd; 8]);
    assert_eq!(raw_ack(sock, SET_MEM_TABLE), Some(1));
    refused(
        &s.daemon,
        "SET_MEM_TABLE",
        "9 regions; a memory table has 1 to 8",
    );

    // Past the 509 slots GET_MAX_MEM_SLOTS promises, region by region.
    let slots = g.frontend.get_max_mem_slots().unwrap();
    assert_eq!(slots, 509);
    let small = memfd(0x1000);
    for i in 0..=slots {
        let r = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0x1_0000_0000 + i * 0x1000,
            memory_size: 0x1000,
            userspace_addr: 0x7e00_0000_0000 + i * 0x1000,
            mmap_offset: 0,
            mmap_handle: small.as_raw_fd(),
        };
        let res = g.frontend.add_mem_region(&r);
        assert_eq!(res.is_ok(), i < slots, "region {i}: {res:?}");
    }
    refused(&s.daemon, "ADD_MEM_REG", "509 regions already");

    // A table that replaces them all, and the connection goes on.
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 5);
}

#[test]
fn removing_memory_that_running_rings_use_is_refused() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    bring_up(&mut g);
    // The rings sit at 1 MiB, in the region above QEMU's low hole.
    let regions = g.regions();
    assert!(g.frontend.remove_mem_region(&regions[1]).is_err());
    refused(
        &s.daemon,
        "REM_MEM_REG",
        "ring 0 runs in guest memory at 0x100000+0x1000, which this would unmap",
    );
    tx_roundtrip(&mut g, &host, 6);
    // The region that holds no ring may go.
    g.frontend
        .remove_mem_region(&regions[0])
        .expect("REM_MEM_REG");
    tx_roundtrip(&mut g, &host, 7);
}

#[test]
fn sizes_that_disagree_with_the_body_and_descriptors_where_none_belong_are_refused() {
    let s = Setup::new(&zcnet(), &[]);
    let host = PacketSock::open(&s.ns, TAP, true);
    let mut g = hostile(&s);
    let sock = g.frontend.as_raw_fd();
    raw_send(sock, SET_VRING_BASE, NEED_REPLY, &[0; 12], &[]);
    assert_eq!(raw_ack(sock, SET_VRING_BASE), Some(1));
    refused(
        &s.daemon,
        "SET_VRING_BASE",
        "its body is 12 bytes; SET_VRING_BASE has a 8-byte body",
    );
    raw_send(sock, SET_FEATURES, NEED_REPLY, &[0; 4], &[]);
    assert_eq!(raw_ack(sock, SET_FEATURES), Some(1));
    refused(&s.daemon, "SET_FEATURES", "its body is 4 bytes");
    let ev = EventFd::new(0).unwrap();
    raw_send(
        sock,
        SET_VRING_BASE,
        NEED_REPLY,
        &state(0, 0),
        &[ev.as_raw_fd()],
    );
    assert_eq!(raw_ack(sock, SET_VRING_BASE), Some(1));
    refused(
        &s.daemon,
        "SET_VRING_BASE",
        "it carries 1 file descriptor(s); SET_VRING_BASE here takes none",
    );
    bring_up(&mut g);
    tx_roundtrip(&mut g, &host, 8);

    // GET_FEATURES with a descriptor: its reply is data, so the connection
    // is closed, and the descriptor with it.
    let unused: OwnedFd = memfd(4096).into();
    raw_send(sock, GET_FEATURES, NEED_REPLY, &[], &[unused.as_raw_fd()]);
    assert_eq!(raw_ack(sock, GET_FEATURES), None, "answered, not closed");
    s.daemon.wait_log(
        "closing the frontend's connection at GET_FEATURES: it carries 1 file descriptor(s)",
    );
    drop(g);
    s.daemon
        .wait_log("frontend disconnected; waiting for the next connection");
    let mut g = FakeGuest::connect(&s.daemon.socket, &GuestOpts::default());
    tx_roundtrip(&mut g, &host, 9);
}
