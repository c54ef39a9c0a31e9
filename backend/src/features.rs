//! Which virtio-net features zcnet offers, and what a negotiated set means
//! for the datapath: header length, receive offloads, buffer gathering.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use zcnet_tap::vnet_hdr::{HDR_LEN_LEGACY, HDR_LEN_V1};
use zcnet_tap::{GuestConfig, Offloads};

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features offered whatever the attachment supports.
///
/// IN_ORDER is deliberately absent: a chain lent to the kernel through a
/// zero-copy attachment completes when the kernel releases its pages, which
/// need not be the order the guest queued them in.
const BASE: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MQ);

/// The virtio feature bits offered to the frontend, given what the
/// attachment accepts from the guest (`tx`: HOST_* bits, which let the
/// guest send offloaded frames) and may hand to it (`rx`: GUEST_* bits),
/// and whether the device has an MTU to report. A tap does both alike; a
/// VXLAN attachment takes offloaded frames but delivers plain ones.
pub fn offered(tx: Offloads, rx: Offloads, mtu: bool) -> u64 {
    // LOG_ALL: zcnet logs the pages it writes while a migration runs
    // (crate::dirty_log); QEMU blocks migration without it.
    let mut f = BASE
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | crate::dirty_log::VHOST_F_LOG_ALL;
    for (host_ok, host, guest_ok, guest) in [
        (tx.csum, VIRTIO_NET_F_CSUM, rx.csum, VIRTIO_NET_F_GUEST_CSUM),
        (
            tx.tso4,
            VIRTIO_NET_F_HOST_TSO4,
            rx.tso4,
            VIRTIO_NET_F_GUEST_TSO4,
        ),
        (
            tx.tso6,
            VIRTIO_NET_F_HOST_TSO6,
            rx.tso6,
            VIRTIO_NET_F_GUEST_TSO6,
        ),
        (
            tx.tso_ecn,
            VIRTIO_NET_F_HOST_ECN,
            rx.tso_ecn,
            VIRTIO_NET_F_GUEST_ECN,
        ),
        (
            tx.ufo,
            VIRTIO_NET_F_HOST_UFO,
            rx.ufo,
            VIRTIO_NET_F_GUEST_UFO,
        ),
    ] {
        if host_ok {
            f |= bit(host);
        }
        if guest_ok {
            f |= bit(guest);
        }
    }
    if tx.uso4 && tx.uso6 {
        f |= bit(VIRTIO_NET_F_HOST_USO);
    }
    if rx.uso4 && rx.uso6 {
        f |= bit(VIRTIO_NET_F_GUEST_USO4) | bit(VIRTIO_NET_F_GUEST_USO6);
    }
    if mtu {
        f |= bit(VIRTIO_NET_F_MTU);
    }
    f
}

/// The vhost-user protocol features zcnet speaks.
///
/// NET_MTU is not offered: the vhost crate cannot dispatch NET_SET_MTU, so
/// QEMU (which only sends it when NET_MTU is negotiated) never sends it.
/// INFLIGHT_SHMFD is answered by zcnet's interceptor (`inflight`), not by
/// vhost-user-backend, which only stubs it.
/// LOG_SHMFD and RARP are live migration's (crate::migration): zcnet
/// answers SET_LOG_BASE and SEND_RARP itself.
pub fn protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

/// What a negotiated feature set means for one connection's datapath.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub bits: u64,
}

impl Negotiated {
    pub fn has(&self, b: u32) -> bool {
        self.bits & bit(b) != 0
    }

    /// Length of the virtio-net header in front of every frame.
    pub fn hdr_len(&self) -> usize {
        if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            HDR_LEN_V1
        } else {
            HDR_LEN_LEGACY
        }
    }

    /// Whether one received frame may span several descriptor chains.
    pub fn mergeable_rx(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// The offloads the tap may deliver to this guest.
    pub fn rx_offloads(&self) -> Offloads {
        Offloads {
            csum: self.has(VIRTIO_NET_F_GUEST_CSUM),
            tso4: self.has(VIRTIO_NET_F_GUEST_TSO4),
            tso6: self.has(VIRTIO_NET_F_GUEST_TSO6),
            tso_ecn: self.has(VIRTIO_NET_F_GUEST_ECN),
            ufo: self.has(VIRTIO_NET_F_GUEST_UFO),
            uso4: self.has(VIRTIO_NET_F_GUEST_USO4),
            uso6: self.has(VIRTIO_NET_F_GUEST_USO6),
        }
    }

    /// The offloads the guest may use on TX (HOST_* features and CSUM).
    pub fn tx_offloads(&self) -> Offloads {
        Offloads {
            csum: self.has(VIRTIO_NET_F_CSUM),
            tso4: self.has(VIRTIO_NET_F_HOST_TSO4),
            tso6: self.has(VIRTIO_NET_F_HOST_TSO6),
            tso_ecn: self.has(VIRTIO_NET_F_HOST_ECN),
            ufo: self.has(VIRTIO_NET_F_HOST_UFO),
            uso4: self.has(VIRTIO_NET_F_HOST_USO),
            uso6: self.has(VIRTIO_NET_F_HOST_USO),
        }
    }

    /// What the attachment must follow for this guest.
    pub fn guest_config(&self) -> GuestConfig {
        GuestConfig {
            hdr_len: self.hdr_len(),
            rx_offloads: self.rx_offloads(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_never_offered() {
        const VIRTIO_F_IN_ORDER: u32 = 35;
        assert_eq!(
            offered(Offloads::ALL, Offloads::ALL, true) & bit(VIRTIO_F_IN_ORDER),
            0
        );
    }

    #[test]
    fn offloads_follow_the_tap() {
        let none = offered(Offloads::default(), Offloads::default(), false);
        assert_eq!(none & bit(VIRTIO_NET_F_HOST_TSO4), 0);
        assert_eq!(none & bit(VIRTIO_NET_F_MTU), 0);
        let all = offered(Offloads::ALL, Offloads::ALL, true);
        for b in [
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_USO,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_MQ,
        ] {
            assert_ne!(all & bit(b), 0, "bit {b}");
        }
    }

    #[test]
    fn host_and_guest_offloads_may_differ() {
        let tx_only = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Offloads::default()
        };
        let f = offered(tx_only, Offloads::default(), false);
        for b in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(f & bit(b), 0, "bit {b}");
        }
        for b in [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
        ] {
            assert_eq!(f & bit(b), 0, "bit {b}");
        }
    }

    #[test]
    fn header_length_depends_on_version_and_mergeable() {
        assert_eq!(Negotiated { bits: 0 }.hdr_len(), HDR_LEN_LEGACY);
        let mrg = Negotiated {
            bits: bit(VIRTIO_NET_F_MRG_RXBUF),
        };
        assert_eq!(mrg.hdr_len(), HDR_LEN_V1);
        let v1 = Negotiated {
            bits: bit(VIRTIO_F_VERSION_1),
        };
        assert_eq!(v1.hdr_len(), HDR_LEN_V1);
    }

    #[test]
    fn rx_offloads_map_guest_bits() {
        let n = Negotiated {
            bits: bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4),
        };
        let o = n.rx_offloads();
        assert!(o.csum && o.tso4 && !o.tso6 && !o.ufo);
        // Guest RX offloads say nothing about what the guest may send.
        assert_eq!(n.tx_offloads(), Offloads::default());
        let host = Negotiated {
            bits: bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_CSUM),
        };
        let tx = host.tx_offloads();
        assert!(tx.csum && tx.tso4 && !tx.tso6 && !tx.ufo);
        assert_eq!(host.rx_offloads(), Offloads::default());
    }
}
