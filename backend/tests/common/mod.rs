//! The fake-guest harness: real namespaces, a real tap, the real zcnet
//! binary, and a real vhost-user frontend with memfd guest memory.
#![allow(dead_code)] // each test binary uses a different part

pub mod daemon;
pub mod frames;
pub mod guest;
pub mod netns;
pub mod ring;
pub mod stream_lab;
pub mod udp_lab;

use daemon::Daemon;
use netns::NetNs;

pub const TAP: &str = "zt0";

/// A namespace with zcnet running on a fresh tap that is up.
pub struct Setup {
    pub daemon: Daemon,
    pub ns: NetNs,
}

impl Setup {
    pub fn new(extra: &[&str]) -> Setup {
        let ns = NetNs::new();
        let daemon = Daemon::start(&ns, TAP, extra);
        // zcnet opens (here: creates) the tap before it listens.
        ns.ip(&["link", "set", TAP, "up"]);
        Setup { daemon, ns }
    }
}
