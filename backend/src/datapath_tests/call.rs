//! A replaced call fd (SET_VRING_CALL): the guest is notified through the
//! new one even when EVENT_IDX says it already was, since what went
//! through the old one may have been lost (QEMU discards what its
//! placeholder fd got before it hands over the guest's, `ring.rs`).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;

use vhost_user_backend::VringT;

use crate::ring::signal_new_call;
use crate::testing::{eventfd, frame, Setup, Vq};

/// How many times `fd` was signalled since the last look.
fn signals(fd: &File) -> u64 {
    let mut buf = [0u8; 8];
    match (&*fd).read(&mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        other => panic!("reading an eventfd: {other:?}"),
    }
}

#[test]
fn a_new_call_fd_is_notified_although_event_idx_says_the_guest_was() {
    let h = Setup::default().build();
    let posted = h.rx.post(4, 1526);
    // The driver wants a call after the first used entry, and has not
    // looked at the used ring since (used_event stays 0).
    h.rx.set_used_event(0);
    h.fake.push_rx(frame(100, 1));
    h.rx_kick();
    assert_eq!(h.calls(Vq::Rx), 1, "notified for the first entry");

    // Another entry: EVENT_IDX says no notification is due.
    h.fake.push_rx(frame(100, 2));
    h.readable();
    assert_eq!(h.calls(Vq::Rx), 0, "used_event 0 was passed already");

    // SET_VRING_CALL: the frontend's new fd replaces the old one.
    let new = eventfd();
    let new_read = File::from(new.try_clone().unwrap());
    h.vrings[Vq::Rx as usize].set_call(Some(File::from(new)));
    h.fake.push_rx(frame(100, 3));
    h.readable();
    assert_eq!(signals(&new_read), 1, "the new fd is notified");
    h.fake.push_rx(frame(100, 4));
    h.readable();
    assert_eq!(signals(&new_read), 0, "once: EVENT_IDX applies again");
    assert_eq!(h.delivered(&posted).len(), 4);
}

#[test]
fn signal_new_call_signals_the_fd_it_is_given_once() {
    let fd: OwnedFd = eventfd();
    let read = File::from(fd.try_clone().unwrap());
    signal_new_call(Some(&fd));
    assert_eq!(signals(&read), 1);
    signal_new_call(None);
    assert_eq!(signals(&read), 0);
}
