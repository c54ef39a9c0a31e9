//! The backend's fake-guest harness, included from `backend/tests/common`
//! as it is: network namespaces, the real zcnet binary, a real vhost-user
//! frontend with memfd guest memory and split rings, the host side of the
//! tap, and the `ifb` namespace of the UDP attachment. The modules refer
//! to each other as `super::...`, so they are siblings here as they are
//! there.
#![allow(dead_code)] // the backend's tests use more of it than the bench

#[path = "../../../../backend/tests/common/daemon.rs"]
pub mod daemon;
#[path = "../../../../backend/tests/common/frames.rs"]
pub mod frames;
#[path = "../../../../backend/tests/common/guest.rs"]
pub mod guest;
#[path = "../../../../backend/tests/common/netns.rs"]
pub mod netns;
#[path = "../../../../backend/tests/common/ring.rs"]
pub mod ring;
#[path = "../../../../backend/tests/common/udp_lab.rs"]
pub mod udp_lab;
