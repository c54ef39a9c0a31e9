//! Building blocks of the VXLAN attachment (RFC 7348): each guest TX frame
//! leaves as one UDP datagram to a remote VTEP, an 8-byte VXLAN header from
//! zcnet's memory followed by the inner Ethernet frame straight from guest
//! memory; a TSO frame leaves as MSS-sized inner segments in as few
//! `UDP_SEGMENT` sends as the kernel allows.
//!
//! The building blocks do no I/O and are tested without root; the
//! attachment puts them together:
//! - [`attachment`]: [`open`] and [`VxlanAttachment`], one per queue pair
//!   (sockets, shared FDB, multiqueue), with its TX path (`tx`), RX path
//!   (`rx`), sockets (`socket`), zero-copy ids (`ids`) and counters
//!   ([`stats`]).
//! - [`header`]: the VXLAN header, decapsulation checks, overhead and MTU.
//! - [`ether`]: MAC addresses and the inner Ethernet/VLAN header.
//! - [`fdb`]: the forwarding database (inner MAC to remote VTEP).
//! - [`flow_hash`]: the outer UDP source port, from the inner flow.
//! - The guest's virtio-net header is `crate::vnet_hdr::VnetHdr` (one module
//!   owns those facts).
//! - [`csum`]: the Internet checksum, from pieces (payload sums come from
//!   guest memory through [`PayloadSum`]).
//! - [`layout`]: where a TSO frame's Ethernet, IP and TCP headers are.
//! - [`segment`]: TSO planning, per-segment headers and checksums.
//! - [`partial_csum`]: checksum offload for a frame sent whole.

pub mod attachment;
pub mod csum;
pub mod ether;
pub mod fdb;
pub mod flow_hash;
pub mod header;
mod ids;
pub mod layout;
pub mod partial_csum;
mod rx;
pub mod segment;
mod socket;
pub mod stats;
mod tx;

#[cfg(test)]
mod attachment_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod segment_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod udp_gso_tests;

pub use attachment::{
    open, FdbSnapshot, Vxlan, VxlanAttachment, VxlanConfig, VxlanError, VxlanMetrics,
    VxlanSnapshot, TX_SOCKETS,
};
pub use csum::{Csum, PayloadSum};
pub use ether::MacAddr;
pub use fdb::{Destination, Fdb, FdbConfig, Learned, Learning, Refusal};
pub use flow_hash::{FlowHasher, PortRange};
pub use header::{decapsulate, encode, DropReason, Underlay, Vni, VXLAN_PORT};
pub use partial_csum::{complete_checksum, CsumError};
pub use segment::{SegmentError, TsoLimits, TsoPlan};
