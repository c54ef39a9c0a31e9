//! Offloads the tap delivers to the guest (`TUNSETOFFLOAD`).

use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, TUN_F_USO4, TUN_F_USO6};

/// A set of offloads: partial checksums and GSO types.
///
/// It says what an attachment can carry, what the device may hand the
/// guest on RX (from the guest's GUEST_* features, so the guest only ever
/// receives what it said it can take; `TUNSETOFFLOAD` for a tap), and what
/// the guest may send on TX (its HOST_* features).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub tso_ecn: bool,
    pub ufo: bool,
    pub uso4: bool,
    pub uso6: bool,
}

impl Offloads {
    /// Everything the kernel's tun driver can do today.
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
        ufo: true,
        uso4: true,
        uso6: true,
    };

    /// The `TUNSETOFFLOAD` argument. GSO bits are only meaningful with the
    /// checksum offload, so without `csum` the result is 0.
    pub fn tun_flags(&self) -> u32 {
        if !self.csum {
            return 0;
        }
        let mut flags = TUN_F_CSUM;
        for (on, bit) in [
            (self.tso4, TUN_F_TSO4),
            (self.tso6, TUN_F_TSO6),
            (self.tso_ecn, TUN_F_TSO_ECN),
            (self.ufo, TUN_F_UFO),
            (self.uso4, TUN_F_USO4),
            (self.uso6, TUN_F_USO6),
        ] {
            if on {
                flags |= bit;
            }
        }
        flags
    }

    /// Whether any GSO type is enabled, i.e. whether the tap may hand over
    /// frames of up to 64 KiB.
    pub fn any_gso(&self) -> bool {
        self.tun_flags() & !TUN_F_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_without_csum_is_not_requested() {
        let o = Offloads {
            tso4: true,
            ..Default::default()
        };
        assert_eq!(o.tun_flags(), 0);
        assert!(!o.any_gso());
    }

    #[test]
    fn flags_match_the_kernel_abi() {
        assert_eq!(Offloads::ALL.tun_flags(), 0x7f);
        let o = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Default::default()
        };
        assert_eq!(o.tun_flags(), 0x07);
        assert!(o.any_gso());
    }
}
