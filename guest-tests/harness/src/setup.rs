//! The usual backend test bed: zcnet running on a fresh tap in its own
//! network namespace.

use crate::daemon::{Daemon, ZcnetBin};
use crate::netns::NetNs;

pub const TAP: &str = "zt0";

/// A namespace with zcnet running on a fresh tap that is up.
pub struct Setup {
    pub daemon: Daemon,
    pub ns: NetNs,
}

impl Setup {
    pub fn new(bin: &ZcnetBin, extra: &[&str]) -> Setup {
        let ns = NetNs::new();
        let daemon = Daemon::start(bin, &ns, TAP, extra);
        // zcnet opens (here: creates) the tap before it listens.
        ns.ip(&["link", "set", TAP, "up"]);
        Setup { daemon, ns }
    }
}
