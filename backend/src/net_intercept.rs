//! zcnet's own handling of frontend requests, ahead of vhost-user-backend's
//! handler (see [`crate::intercept`]). It checks ring sizes and ring
//! indices, answers GET/SET_INFLIGHT_FD (see `crate::inflight`), and hands
//! live migration's requests to [`crate::migration`];
//! everything else is forwarded.
//!
//! **SET_VRING_NUM.** A split ring's size is always a power of two (virtio
//! 1.x, "Split Virtqueues"), and zcnet's rings are at most `--queue-size`
//! entries. vhost-user-backend 0.24 checks only 0 and the maximum, and
//! virtio-queue's `set_size` silently keeps the old size for a size that
//! is not a power of two. A frontend that asked for 100 entries would then
//! run a 100-entry ring while zcnet kept the ring's previous size (its
//! `--queue-size`, or an earlier SET_VRING_NUM; 256 in the field case):
//! zcnet writes `avail_event` where a 256-entry ring keeps it, past the end
//! of the guest's 100-entry used ring, and reads avail entries at positions
//! the guest never writes.
//! Such a size (and 0, and more than the maximum) is refused, as is a ring
//! index the device does not have. zcnet offers no packed rings, whose
//! sizes need not be powers of two, so every ring is split.
//!
//! **SET_VRING_ENABLE.** An index the device does not have, or a value
//! other than 0 or 1, is refused here too: the relay acknowledges an early
//! SET_VRING_ENABLE itself before the handler sees it, so it must not be
//! one the handler would then reject.
//!
//! **SET_VRING_CALL.** The new call fd is signalled once as it arrives
//! (see [`ring::signal_new_call`]); the handler then installs it.
//!
//! **Live migration.** SET_LOG_BASE and SEND_RARP are answered by
//! [`crate::migration`], which also learns from SET_PROTOCOL_FEATURES and
//! SET_VRING_ADDR (both still go on to the handler).

use std::sync::Arc;

use vhost::vhost_user::message::FrontendReq;

use crate::inflight::Session;
use crate::intercept::{Intercept, Message, Verdict};
use crate::migration::Migration;
use crate::request_checks::RequestChecks;
use crate::ring;

/// What the device learns from requests the handler applies.
pub trait DeviceEvents: Send + Sync {
    /// SET_VRING_ENABLE of ring `index` was accepted.
    fn vring_enabled(&self, index: usize, enabled: bool);
}

/// A device that ignores what it is told (relay tests).
#[cfg(test)]
impl DeviceEvents for () {
    fn vring_enabled(&self, _index: usize, _enabled: bool) {}
}

/// The checks for one device.
pub struct NetIntercept {
    /// Rings the device has: two per queue pair.
    rings: u32,
    /// `--queue-size`: the largest ring, a power of two.
    max_size: u32,
    device: Arc<dyn DeviceEvents>,
    /// Sizes, descriptors, ring indices, memory and ring addresses
    /// (hostile frontends; see `request_checks`).
    checks: RequestChecks,
    /// Answers GET/SET_INFLIGHT_FD; without it they go to the handler,
    /// which refuses them.
    inflight: Option<Arc<Session>>,
    /// Live migration's requests (SET_LOG_BASE, SEND_RARP), when the
    /// device supports it.
    migration: Option<Migration>,
}

impl NetIntercept {
    pub fn new(
        queue_pairs: usize,
        max_queue_size: u16,
        device: Arc<dyn DeviceEvents>,
    ) -> NetIntercept {
        NetIntercept {
            rings: u32::try_from(2 * queue_pairs).unwrap_or(u32::MAX),
            max_size: u32::from(max_queue_size),
            device,
            checks: RequestChecks::new(queue_pairs, max_queue_size),
            inflight: None,
            migration: None,
        }
    }

    /// Answers GET/SET_INFLIGHT_FD for `session`'s connection.
    pub fn with_inflight(mut self, session: Arc<Session>) -> NetIntercept {
        self.inflight = Some(session);
        self
    }

    /// Hands SET_LOG_BASE and SEND_RARP to `migration`, and shows it the
    /// requests it must learn from (see [`crate::migration`]).
    pub fn with_migration(mut self, migration: Migration) -> NetIntercept {
        self.migration = Some(migration);
        self
    }

    fn vring_num(&self, req: &Message) -> Verdict {
        // A malformed body goes on to the handler, which rejects it.
        let Some(state) = req.vring_state() else {
            return Verdict::Forward;
        };
        let (index, num) = (state.index, state.num);
        if let Some(refusal) = self.bad_index(index) {
            return refusal;
        }
        if num == 0 || !num.is_power_of_two() || num > self.max_size {
            let max = self.max_size;
            return Verdict::Refuse(format!(
                "ring {index} size {num}: a split ring's size must be a power of two from 1 to \
                 {max} (zcnet runs with --queue-size {max}); give the frontend such a queue size \
                 (QEMU: virtio-net-pci rx_queue_size/tx_queue_size; cloud-hypervisor: --net \
                 queue_size=), or start zcnet with a larger --queue-size"
            ));
        }
        Verdict::Forward
    }

    fn vring_enable(&self, req: &Message) -> Verdict {
        let Some(state) = req.vring_state() else {
            return Verdict::Forward;
        };
        let (index, num) = (state.index, state.num);
        if let Some(refusal) = self.bad_index(index) {
            return refusal;
        }
        if num > 1 {
            return Verdict::Refuse(format!(
                "ring {index} value {num}: only 0 (disable) and 1 (enable) mean anything; the \
                 frontend is broken"
            ));
        }
        self.device.vring_enabled(index as usize, num == 1);
        Verdict::Forward
    }

    fn bad_index(&self, index: u32) -> Option<Verdict> {
        let rings = self.rings;
        (index >= rings).then(|| {
            Verdict::Refuse(format!(
                "ring {index}: the device has rings 0 to {} ({} queue pairs); start zcnet with \
                 more --queue-pairs or give the frontend fewer queues",
                rings - 1,
                rings / 2
            ))
        })
    }
}

impl Intercept for NetIntercept {
    fn request(&self, req: &Message) -> Verdict {
        if let Some(refusal) = self.checks.refusal(req) {
            return refusal;
        }
        let verdict = match (req.request(), &self.migration) {
            (Some(FrontendReq::SET_VRING_NUM), _) => self.vring_num(req),
            (Some(FrontendReq::SET_VRING_ENABLE), _) => self.vring_enable(req),
            (Some(FrontendReq::GET_INFLIGHT_FD), _) => self
                .inflight
                .as_ref()
                .map_or(Verdict::Forward, |s| s.get_inflight_fd(req)),
            (Some(FrontendReq::SET_INFLIGHT_FD), _) => self
                .inflight
                .as_ref()
                .map_or(Verdict::Forward, |s| s.set_inflight_fd(req)),
            (Some(FrontendReq::SET_VRING_CALL), _) => {
                ring::signal_new_call(req.fds().first());
                Verdict::Forward
            }
            (Some(FrontendReq::SET_LOG_BASE), Some(m)) => m.set_log_base(req),
            (Some(FrontendReq::SEND_RARP), Some(m)) => m.send_rarp(req),
            (Some(FrontendReq::SET_VRING_ADDR), Some(m)) => {
                m.vring_addr(req);
                Verdict::Forward
            }
            (Some(FrontendReq::SET_PROTOCOL_FEATURES), m) => {
                if let Some(s) = &self.inflight {
                    s.protocol_features(req);
                }
                if let Some(m) = m {
                    m.protocol_features(req);
                }
                Verdict::Forward
            }
            _ => Verdict::Forward,
        };
        if matches!(verdict, Verdict::Forward) {
            self.checks.forwarded(req);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserVringState};
    use vm_memory::ByteValued;

    use super::*;

    /// Records what the device was told.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, bool)>>);

    impl DeviceEvents for Recorder {
        fn vring_enabled(&self, index: usize, enabled: bool) {
            self.0.lock().unwrap().push((index, enabled));
        }
    }

    fn intercept(pairs: usize) -> NetIntercept {
        NetIntercept::new(pairs, 256, Arc::new(Recorder::default()))
    }

    #[test]
    fn accepted_enables_reach_the_device_and_refused_ones_do_not() {
        let rec = Arc::new(Recorder::default());
        let i = NetIntercept::new(2, 256, rec.clone());
        for (index, num) in [(0, 1), (2, 0), (3, 1), (4, 1), (1, 7)] {
            let body = VhostUserVringState::new(index, num);
            let req = Message::new(
                FrontendReq::SET_VRING_ENABLE,
                VhostUserHeaderFlag::empty(),
                body.as_slice().to_vec(),
                Vec::new(),
            );
            i.request(&req);
        }
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(0, true), (2, false), (3, true)]
        );
    }

    fn verdict(code: FrontendReq, index: u32, num: u32) -> Verdict {
        let body = VhostUserVringState::new(index, num);
        let req = Message::new(
            code,
            VhostUserHeaderFlag::NEED_REPLY,
            body.as_slice().to_vec(),
            Vec::new(),
        );
        intercept(2).request(&req)
    }

    fn refusal(v: Verdict) -> String {
        match v {
            Verdict::Refuse(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn ring_sizes_that_are_powers_of_two_up_to_the_maximum_pass() {
        for num in [1, 2, 64, 128, 256] {
            assert!(
                matches!(
                    verdict(FrontendReq::SET_VRING_NUM, 3, num),
                    Verdict::Forward
                ),
                "{num}"
            );
        }
    }

    #[test]
    fn other_ring_sizes_are_refused_with_what_to_fix() {
        for num in [0, 3, 100, 255, 257, 512, 4096, u32::MAX] {
            let why = refusal(verdict(FrontendReq::SET_VRING_NUM, 0, num));
            assert!(why.starts_with(&format!("ring 0 size {num}: ")), "{why}");
            assert!(why.contains("power of two from 1 to 256"), "{why}");
            assert!(why.contains("--queue-size 256"), "{why}");
        }
    }

    #[test]
    fn ring_indices_past_the_device_are_refused() {
        for code in [FrontendReq::SET_VRING_NUM, FrontendReq::SET_VRING_ENABLE] {
            let why = refusal(verdict(code, 4, 1));
            assert!(
                why.starts_with("ring 4: the device has rings 0 to 3 (2 queue pairs)"),
                "{why}"
            );
        }
        assert!(matches!(
            verdict(FrontendReq::SET_VRING_ENABLE, 3, 1),
            Verdict::Forward
        ));
    }

    #[test]
    fn enable_values_other_than_0_and_1_are_refused() {
        assert!(matches!(
            verdict(FrontendReq::SET_VRING_ENABLE, 0, 0),
            Verdict::Forward
        ));
        let why = refusal(verdict(FrontendReq::SET_VRING_ENABLE, 0, 2));
        assert!(why.starts_with("ring 0 value 2: "), "{why}");
    }

    #[test]
    fn other_requests_go_to_the_handler_and_malformed_bodies_are_refused() {
        assert!(matches!(
            verdict(FrontendReq::SET_VRING_BASE, 3, 100),
            Verdict::Forward
        ));
        // Checked ahead of the arms here (request_checks).
        let short = Message::new(
            FrontendReq::SET_VRING_NUM,
            VhostUserHeaderFlag::empty(),
            vec![0; 4],
            Vec::new(),
        );
        let why = refusal(intercept(1).request(&short));
        assert!(why.starts_with("its body is 4 bytes"), "{why}");
        let why = refusal(verdict(FrontendReq::SET_VRING_BASE, 9, 100));
        assert!(why.starts_with("ring 9: "), "{why}");
    }
}
