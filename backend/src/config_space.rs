//! The virtio-net device configuration space (`struct virtio_net_config`).

use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;

/// Bytes of config space the device defines: mac, status,
/// max_virtqueue_pairs, mtu, speed, duplex, and the RSS fields (zero).
const DEFINED_LEN: usize = 24;
/// Reads up to this offset succeed (undefined bytes read as zero); past it
/// a read is an error.
const MAX_LEN: u32 = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfigSpace {
    bytes: [u8; DEFINED_LEN],
}

impl NetConfigSpace {
    pub fn new(mac: [u8; 6], max_queue_pairs: u16, mtu: u16) -> Self {
        let mut bytes = [0u8; DEFINED_LEN];
        bytes[0..6].copy_from_slice(&mac);
        bytes[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        bytes[8..10].copy_from_slice(&max_queue_pairs.to_le_bytes());
        bytes[10..12].copy_from_slice(&mtu.to_le_bytes());
        // Speed unknown (u32::MAX), duplex unknown (0xff).
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[16] = 0xff;
        NetConfigSpace { bytes }
    }

    /// `size` bytes from `offset`, or `None` if the range is outside the
    /// config space.
    pub fn read(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let end = offset.checked_add(size)?;
        if end > MAX_LEN {
            return None;
        }
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(DEFINED_LEN);
        let stop = (end as usize).min(DEFINED_LEN);
        out[..stop - start].copy_from_slice(&self.bytes[start..stop]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_virtio_net_config() {
        let c = NetConfigSpace::new([0x52, 0x54, 0, 1, 2, 3], 4, 9000);
        let b = c.read(0, 12).unwrap();
        assert_eq!(&b[0..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 4);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 9000);
        assert_eq!(c.read(8, 2).unwrap(), vec![4, 0]);
    }

    #[test]
    fn reads_are_bounds_checked() {
        let c = NetConfigSpace::new([2; 6], 1, 1500);
        assert_eq!(c.read(250, 6).unwrap(), vec![0; 6]);
        assert_eq!(c.read(250, 7), None);
        assert_eq!(c.read(u32::MAX, 2), None);
        assert_eq!(c.read(20, 8).unwrap().len(), 8);
    }
}
