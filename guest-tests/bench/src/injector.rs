//! The host side of the RX workloads: one thread sends the workload's frame
//! into the tap through an AF_PACKET socket in the tap's namespace (with
//! `PACKET_VNET_HDR` for GSO frames), as fast as the kernel takes it. The
//! same injector feeds zcnet and the raw tap reader.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use zcnet_harness::driver::Counters;
use zcnet_harness::frames::PacketSock;

/// Sends `packet` until `stop`, counting what the socket accepted as
/// `offered`. A device queue that is full drops frames (`ENOBUFS`); those
/// count in neither.
pub fn run(
    sock: &PacketSock,
    packet: &[u8],
    frame_len: usize,
    offered: &Counters,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0u64;
        for _ in 0..64 {
            match sock.try_send(packet) {
                Ok(_) => sent += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e),
            }
        }
        offered.add(sent, sent * frame_len as u64);
    }
    Ok(())
}
