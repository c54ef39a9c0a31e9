//! The host side of zcnet.
//!
//! [`tap`] is the only module in the project that speaks to `/dev/net/tun`.
//! [`attachment`] is the interface the datapath uses to hand a frame to the
//! host: a send either completes at once (the kernel copied the frame) or is
//! lent, in which case the descriptor chain stays with zcnet until the kernel
//! reports that it released the guest's pages.
//! [`vxlan`] holds the building blocks of a VXLAN attachment (header, FDB,
//! source-port hash, TSO planning); no attachment uses them yet.

pub mod attachment;
pub mod offload;
pub mod stream;
pub mod tap;
pub mod udp;
pub mod vxlan;
pub mod zerocopy;

pub use attachment::{Attachment, Completion, Readiness, SendMode, Sent};
pub use offload::Offloads;
pub use stream::{StreamAttachment, StreamEndpoint, StreamError};
pub use tap::{Tap, TapError};
pub use udp::{UdpAttachment, UdpError};
