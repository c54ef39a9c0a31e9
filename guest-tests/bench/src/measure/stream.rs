//! The TCP stream attachment: zcnet with `--stream-connect` in one
//! namespace, a plain TCP peer in the next (a veth with MTU 65535 between
//! them), frames as records (a 4-byte big-endian length, then the frame),
//! the fake guest on zcnet's other side. TX: the guest's TX driver keeps
//! its ring full and the peer reads as fast as it can; the rate is the
//! chains zcnet returned. RX: the peer writes records as fast as TCP takes
//! them and the guest's RX driver counts the frames delivered whole.
//! zcnet's CPU is its whole process; the guest's driver and the peer
//! thread count as the feeders.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use zcnet_harness::driver::{self, Counters};
use zcnet_harness::guest::{self, FakeGuest, GuestOpts};
use zcnet_harness::stream_lab::{accept, Role, StreamLab};

use super::tap::{sample, Engine, Side, TapSample};
use super::{
    checked_metrics, require, spawn_guest_tx, take_rings, zcnet_window, MeasureError, Timing,
    QUEUE_SIZE,
};
use crate::crew::{Crew, Role as CrewRole};
use crate::workload::{Direction, Workload};

/// How long a blocked peer read or write waits before it looks at the
/// stop flag again.
const PEER_WAIT: Duration = Duration::from_millis(50);
/// Record length prefix.
const LEN: usize = 4;

/// Runs a stream `workload` once.
pub fn run(
    bin: &zcnet_harness::daemon::ZcnetBin,
    workload: Workload,
    repetition: usize,
    timing: Timing,
) -> Result<TapSample, MeasureError> {
    let (mut lab, listener) = StreamLab::new(bin, Role::Connect, &[]);
    let listener = listener.expect("zcnet connects, so the bench listens");
    let opts = GuestOpts {
        queue_size: QUEUE_SIZE,
        ..GuestOpts::default()
    };
    let mut guest = FakeGuest::connect(&lab.daemon.socket, &opts);
    require(
        &guest,
        &[
            (guest::VERSION_1, "VERSION_1"),
            (guest::EVENT_IDX, "EVENT_IDX"),
            (guest::MRG_RXBUF, "MRG_RXBUF"),
        ],
    )?;
    let peer = accept(&listener);
    // zcnet takes its side of the connection in when its worker first
    // runs; frames before that would be dropped as sent while
    // disconnected.
    lab.daemon.wait_log("TCP stream: connected to");
    peer.set_read_timeout(Some(PEER_WAIT))
        .and_then(|()| peer.set_write_timeout(Some(PEER_WAIT)))
        .and_then(|()| peer.set_nodelay(true))
        .map_err(|e| MeasureError::Thread {
            name: "peer".into(),
            why: format!("cannot set up the peer's socket: {e}"),
        })?;
    // The peer's thread gets a handle of its own; this one keeps the
    // connection up after the threads stop, so zcnet does not drop the
    // frames still queued as sent while disconnected.
    let keep = peer.try_clone().map_err(|e| MeasureError::Thread {
        name: "peer".into(),
        why: format!("cannot clone the peer's socket: {e}"),
    })?;
    let traffic = workload.traffic();
    let frame_len = traffic.frame.len();
    let queue_size = usize::from(QUEUE_SIZE);
    let delivered = Arc::new(Counters::default());
    let offered = Arc::new(Counters::default());
    let mut rings = take_rings(&mut guest);
    let mut crew = Crew::new();
    match workload.direction() {
        Direction::Tx => {
            let bufs = driver::fill_buffers(&mut guest, queue_size, &traffic.with_hdr());
            let ring = rings[1].take().expect("TX ring");
            spawn_guest_tx(&mut crew, 0, ring, bufs, &delivered);
            let received = Arc::clone(&offered);
            crew.spawn("peer-reader".into(), CrewRole::Feeder, move |stop| {
                read_records(peer, frame_len, &received, stop)
            });
        }
        Direction::Rx => {
            let bufs = driver::alloc_buffers(&mut guest, queue_size, workload.rx_buffer_len());
            let ring = rings[0].take().expect("RX ring");
            let mem = guest.mem.clone();
            let (whole, damaged) = (Arc::clone(&delivered), Arc::new(Counters::default()));
            crew.spawn("guest-rx0".into(), CrewRole::Feeder, move |stop| {
                driver::run_rx(ring, mem, bufs, frame_len, &whole, &damaged, stop);
                Ok(())
            });
            let frame = traffic.frame.clone();
            let sent = Arc::clone(&offered);
            crew.spawn("peer-writer".into(), CrewRole::Feeder, move |stop| {
                write_records(peer, &frame, &sent, stop)
            });
        }
    }
    let (a, b) = zcnet_window(timing, &lab.daemon, crew, &delivered, &offered)?;
    let sample = sample(workload, Side::Zcnet(Engine::Uring), repetition, &a, &b)?;
    checked_metrics(&mut lab.daemon, &lab.ns, workload.direction(), 1)?;
    drop(keep);
    drop(rings);
    Ok(sample)
}

/// Reads records until `stop`, counting whole `frame_len`-byte frames.
fn read_records(
    mut peer: TcpStream,
    frame_len: usize,
    received: &Counters,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let record = (LEN + frame_len) as u64;
    let mut buf = vec![0u8; 1 << 18];
    let mut carry = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match peer.read(&mut buf) {
            Ok(0) => return Err("zcnet closed the stream".into()),
            Ok(n) => {
                carry += n as u64;
                let frames = carry / record;
                carry %= record;
                received.add(frames, frames * frame_len as u64);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("peer read: {e}")),
        }
    }
    Ok(())
}

/// Writes records of `frame` until `stop`, counting those written whole.
fn write_records(
    mut peer: TcpStream,
    frame: &[u8],
    sent: &Counters,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    // 64 records per write.
    let mut record = (frame.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(frame);
    let chunk = record.repeat(64);
    let mut at = 0;
    let mut bytes = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match peer.write(&chunk[at..]) {
            Ok(n) => {
                at = (at + n) % chunk.len();
                let before = bytes / record.len() as u64;
                bytes += n as u64;
                let frames = bytes / record.len() as u64 - before;
                sent.add(frames, frames * frame.len() as u64);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("peer write: {e}")),
        }
    }
    peer.flush().map_err(|e| format!("peer flush: {e}"))
}
