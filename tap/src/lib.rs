//! The host side of zcnet.
//!
//! [`tap`] is the only module in the project that speaks to `/dev/net/tun`.
//! [`attachment`] is the interface the datapath uses to hand a frame to the
//! host: a send either completes at once (the kernel copied the frame) or is
//! lent, in which case the descriptor chain stays with zcnet until the kernel
//! reports that it released the guest's pages.
//! [`uring`] writes a batch of frames with one `io_uring_enter` (the tap's
//! `uring` I/O engine).
//! [`vxlan`] holds the building blocks of a VXLAN attachment (header, FDB,
//! source-port hash, TSO planning); no attachment uses them yet.

pub mod attachment;
pub mod frame;
/// The fuzz targets' entry points (see `backend/fuzz/`); not an interface.
#[doc(hidden)]
pub mod fuzzing;
pub mod lent_headers;
pub mod offload;
pub mod stream;
pub mod tap;
pub mod udp;
pub mod uring;
pub mod vnet_hdr;
pub mod vxlan;
pub mod zerocopy;

pub use attachment::{Attachment, Completion, GuestConfig, Readiness, SendMode, Sent, MAX_BATCH};
pub use frame::{RxBuffers, TxFrame};
pub use offload::Offloads;
pub use stream::{StreamAttachment, StreamEndpoint, StreamError};
pub use tap::{IoEngine, Tap, TapError};
pub use udp::{UdpAttachment, UdpError};

/// `e` and its causes, joined with ": ", for one log line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
