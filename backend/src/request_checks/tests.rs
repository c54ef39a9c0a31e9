use std::fs::File;
use std::os::fd::OwnedFd;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::vhost_user::message::VhostUserHeaderFlag;

use super::*;

const USER: u64 = 0x7f00_0000_0000;
const MEM: u64 = 1 << 20;

fn memfd(len: u64) -> OwnedFd {
    let f = File::from(memfd_create(c"zcnet-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
    f.set_len(len).unwrap();
    OwnedFd::from(f)
}

fn eventfd() -> OwnedFd {
    memfd(0)
}

fn msg(code: FrontendReq, body: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
    Message::new(code, VhostUserHeaderFlag::NEED_REPLY, body, fds)
}

fn region(gpa: u64, size: u64, user: u64, offset: u64) -> Vec<u8> {
    [gpa, size, user, offset]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

fn table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut b = (regions.len() as u32).to_ne_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    for &(g, s, u, o) in regions {
        b.extend(region(g, s, u, o));
    }
    b
}

fn addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = index.to_ne_bytes().to_vec();
    b.extend_from_slice(&0u32.to_ne_bytes());
    for v in [desc, used, avail, 0] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_ne_bytes().to_vec();
    b.extend_from_slice(&num.to_ne_bytes());
    b
}

/// Forwards `m` if it passes; returns the refusal's reason otherwise.
fn send(c: &RequestChecks, m: Message) -> Result<(), String> {
    match c.refusal(&m) {
        None => {
            c.forwarded(&m);
            Ok(())
        }
        Some(Verdict::Refuse(why)) | Some(Verdict::Close(why)) => Err(why),
        Some(other) => panic!("{other:?}"),
    }
}

/// A device with one pair, a 1 MiB table at USER, and ring 0 running
/// at 0x10000 (256 entries).
fn running() -> RequestChecks {
    let c = RequestChecks::new(1, 256);
    send(
        &c,
        msg(
            FrontendReq::SET_MEM_TABLE,
            table(&[(0, MEM, USER, 0)]),
            vec![memfd(MEM)],
        ),
    )
    .unwrap();
    send(&c, msg(FrontendReq::SET_VRING_NUM, state(0, 256), vec![])).unwrap();
    send(
        &c,
        msg(
            FrontendReq::SET_VRING_ADDR,
            addr(0, USER + 0x10000, USER + 0x12000, USER + 0x11000),
            vec![],
        ),
    )
    .unwrap();
    c
}

#[test]
fn a_ring_must_lie_wholly_inside_guest_memory() {
    let c = running();
    // Starts inside, runs past the end (the handler would take it).
    let why = send(
        &c,
        msg(
            FrontendReq::SET_VRING_ADDR,
            addr(1, USER + MEM - 16, USER + 0x22000, USER + 0x21000),
            vec![],
        ),
    )
    .unwrap_err();
    assert!(
        why.contains("ring 1's descriptor table") && why.contains("runs past"),
        "{why}"
    );
    let why = send(
        &c,
        msg(
            FrontendReq::SET_VRING_ADDR,
            addr(1, 0x1000, 0x3000, 0x2000),
            vec![],
        ),
    )
    .unwrap_err();
    assert!(why.contains("outside the guest memory"), "{why}");
    let why = send(
        &c,
        msg(
            FrontendReq::SET_VRING_ADDR,
            addr(1, USER + 0x20008, USER + 0x22000, USER + 0x21000),
            vec![],
        ),
    )
    .unwrap_err();
    assert!(why.contains("not 16-byte aligned"), "{why}");
}

#[test]
fn memory_the_running_rings_use_cannot_go() {
    let c = running();
    let why = send(
        &c,
        msg(
            FrontendReq::REM_MEM_REG,
            [vec![0; 8], region(0, MEM, USER, 0)].concat(),
            vec![],
        ),
    )
    .unwrap_err();
    assert!(why.contains("ring 0 runs in guest memory"), "{why}");
    let why = send(
        &c,
        msg(
            FrontendReq::SET_MEM_TABLE,
            table(&[(0x100000, MEM, USER, 0)]),
            vec![memfd(MEM)],
        ),
    )
    .unwrap_err();
    assert!(why.contains("stop the ring first"), "{why}");
    // Once stopped, it may.
    send(&c, msg(FrontendReq::GET_VRING_BASE, state(0, 0), vec![])).unwrap();
    send(
        &c,
        msg(
            FrontendReq::REM_MEM_REG,
            [vec![0; 8], region(0, MEM, USER, 0)].concat(),
            vec![],
        ),
    )
    .unwrap();
}

#[test]
fn bad_memory_regions_are_refused() {
    let c = RequestChecks::new(1, 256);
    for (regions, fds, want) in [
        (vec![(0, 0, USER, 0)], 1, "has size 0"),
        (
            vec![(0, MEM, USER, 0), (0x8000, MEM, USER + MEM, 0)],
            2,
            "overlaps",
        ),
        (
            vec![(0, 2 * MEM, USER, 0)],
            1,
            "past the end would kill the daemon",
        ),
        (vec![(0, MEM, USER, MEM)], 1, "past the end"),
    ] {
        let fds = (0..fds).map(|_| memfd(MEM)).collect();
        let why = send(&c, msg(FrontendReq::SET_MEM_TABLE, table(&regions), fds)).unwrap_err();
        assert!(why.contains(want), "{regions:?}: {why}");
    }
    let nine: Vec<_> = (0..9).map(|i| (i * MEM, MEM, USER + i * MEM, 0)).collect();
    let why = send(
        &c,
        msg(
            FrontendReq::SET_MEM_TABLE,
            table(&nine),
            (0..9).map(|_| memfd(MEM)).collect(),
        ),
    )
    .unwrap_err();
    assert!(why.contains("9 regions"), "{why}");
}

#[test]
fn regions_past_the_slot_limit_are_refused() {
    let c = RequestChecks::new(1, 256);
    let add = |i: u64| {
        msg(
            FrontendReq::ADD_MEM_REG,
            [vec![0; 8], region(i * 0x1000, 0x1000, USER + i * 0x1000, 0)].concat(),
            vec![memfd(0x1000)],
        )
    };
    for i in 0..MAX_MEM_SLOTS as u64 {
        send(&c, add(i)).unwrap();
    }
    let why = send(&c, add(MAX_MEM_SLOTS as u64)).unwrap_err();
    assert!(why.contains("509 regions already"), "{why}");
}

#[test]
fn sizes_descriptors_and_indices_are_checked() {
    let c = RequestChecks::new(1, 256);
    let why = send(&c, msg(FrontendReq::SET_VRING_BASE, vec![0; 12], vec![])).unwrap_err();
    assert!(
        why.contains("body is 12 bytes; SET_VRING_BASE has a 8-byte body"),
        "{why}"
    );
    let why = send(&c, msg(FrontendReq::SET_OWNER, vec![], vec![eventfd()])).unwrap_err();
    assert!(
        why.contains("1 file descriptor(s); SET_OWNER here takes none"),
        "{why}"
    );
    let why = send(
        &c,
        msg(
            FrontendReq::SET_VRING_KICK,
            0u64.to_ne_bytes().to_vec(),
            vec![],
        ),
    )
    .unwrap_err();
    assert!(why.contains("takes 1"), "{why}");
    for code in [FrontendReq::SET_VRING_BASE, FrontendReq::GET_VRING_BASE] {
        let why = send(&c, msg(code, state(2, 0), vec![])).unwrap_err();
        assert!(
            why.starts_with("ring 2: the device has rings 0 to 1"),
            "{why}"
        );
    }
    for code in [
        FrontendReq::SET_VRING_KICK,
        FrontendReq::SET_VRING_CALL,
        FrontendReq::SET_VRING_ERR,
    ] {
        let why = send(&c, msg(code, 2u64.to_ne_bytes().to_vec(), vec![eventfd()])).unwrap_err();
        assert!(why.starts_with("ring 2:"), "{why}");
        let why = send(
            &c,
            msg(code, 0x201u64.to_ne_bytes().to_vec(), vec![eventfd()]),
        )
        .unwrap_err();
        assert!(why.contains("would read ring 1"), "{why}");
        send(&c, msg(code, 0x101u64.to_ne_bytes().to_vec(), vec![])).unwrap();
    }
    // A request whose reply carries data is refused by closing.
    let m = msg(FrontendReq::GET_VRING_BASE, state(7, 0), vec![]);
    assert!(matches!(c.refusal(&m), Some(Verdict::Close(_))));
}
