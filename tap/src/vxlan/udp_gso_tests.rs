//! The plans against the real kernel: batches sent over loopback with
//! `UDP_SEGMENT` are accepted, and come out as one datagram per planned
//! segment, cut exactly where the plan says. Also measures the limits the
//! plan relies on. Needs no privileges: two UDP sockets on loopback.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};

use super::header::{decapsulate, encode, Underlay, Vni};
use super::layout::MAX_HEADERS_LEN;
use super::segment::{TsoLimits, TsoPlan, UDP_MAX_SEGMENTS};
use super::testutil::{verify_plan, TcpFrame};

/// A connected sender and its receiver on loopback (`[::1]` for IPv6);
/// `None` if this host has no such loopback address.
fn pair(v6: bool) -> Option<(UdpSocket, UdpSocket)> {
    let any: SocketAddr = if v6 { "[::1]:0" } else { "127.0.0.1:0" }.parse().ok()?;
    let rx = UdpSocket::bind(any).ok()?;
    let tx = UdpSocket::bind(any).ok()?;
    tx.connect(rx.local_addr().ok()?).ok()?;
    rx.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some((tx, rx))
}

/// One `sendmsg` of `iov` with `UDP_SEGMENT` = `gso_size`.
fn send_gso(tx: &UdpSocket, iov: &[IoSlice<'_>], gso_size: u16) -> Result<usize, Errno> {
    let cmsg = [ControlMessage::UdpGsoSegments(&gso_size)];
    sendmsg::<SockaddrStorage>(tx.as_raw_fd(), iov, &cmsg, MsgFlags::empty(), None)
}

#[test]
fn the_kernel_cuts_batches_exactly_at_the_planned_segments() {
    let vni = Vni::new(99).unwrap();
    for (v6, mss, mtu) in [
        (false, 1448u16, 1550usize),
        (true, 1448, 1590),
        (false, 500, 9000),
        (true, 8800, 9000),
    ] {
        let Some((tx, rx)) = pair(v6) else {
            eprintln!("no loopback for v6={v6}: skipped");
            continue;
        };
        let spec = TcpFrame::new(v6, 65536 - 14 - 32 - if v6 { 40 } else { 20 });
        let frame = spec.build();
        let underlay = if v6 { Underlay::Ipv6 } else { Underlay::Ipv4 };
        let limits = TsoLimits {
            underlay,
            underlay_mtu: mtu,
        };
        let mut plan = TsoPlan::new();
        plan.plan(
            &spec.vnet(mss),
            &frame[..MAX_HEADERS_LEN],
            frame.len(),
            &frame[..],
            &encode(vni),
            limits,
        )
        .unwrap();
        verify_plan(&plan, &spec, &frame, &encode(vni), usize::from(mss));

        let mut buf = vec![0u8; 65536];
        for batch in plan.batches() {
            let mut iov = Vec::new();
            let mut bytes = 0;
            for i in batch.clone() {
                let s = plan.segment(i).unwrap();
                iov.push(IoSlice::new(s.header));
                iov.push(IoSlice::new(&frame[s.payload.0..s.payload.0 + s.payload.1]));
                bytes += s.header.len() + s.payload.1;
            }
            let sent = send_gso(&tx, &iov, plan.gso_size() as u16)
                .unwrap_or_else(|e| panic!("v6={v6} mss={mss}: batch {batch:?} refused: {e}"));
            assert_eq!(sent, bytes);
            for i in batch.clone() {
                let n = rx.recv(&mut buf).unwrap();
                let s = plan.segment(i).unwrap();
                let inner = decapsulate(&buf, n, vni).unwrap();
                assert_eq!(
                    n,
                    s.header.len() + s.payload.1,
                    "segment {i}: datagram length"
                );
                assert_eq!(&buf[..s.header.len()], s.header, "segment {i}: headers");
                assert_eq!(
                    &buf[s.header.len()..n],
                    &frame[s.payload.0..s.payload.0 + s.payload.1]
                );
                assert_eq!(inner.start, 8);
            }
        }
    }
}

#[test]
fn the_kernels_limits_are_the_ones_planned_for() {
    for v6 in [false, true] {
        let Some((tx, _rx)) = pair(v6) else {
            eprintln!("no loopback for v6={v6}: skipped");
            continue;
        };
        let underlay = if v6 { Underlay::Ipv6 } else { Underlay::Ipv4 };
        let max = underlay.max_udp_payload();
        let data = vec![0u8; max + 1];
        // The most bytes one send may carry, with or without UDP_SEGMENT.
        assert_eq!(
            send_gso(&tx, &[IoSlice::new(&data[..max])], 1400),
            Ok(max),
            "v6={v6}"
        );
        assert_eq!(
            send_gso(&tx, &[IoSlice::new(&data)], 1400),
            Err(Errno::EMSGSIZE),
            "v6={v6}"
        );
        // UDP_MAX_SEGMENTS datagrams per send are always accepted.
        let n = UDP_MAX_SEGMENTS * 100;
        assert_eq!(
            send_gso(&tx, &[IoSlice::new(&data[..n])], 100),
            Ok(n),
            "v6={v6}"
        );
    }
}
