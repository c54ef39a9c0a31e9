//! The datapath in process: one queue pair driven through its events, a
//! guest on its rings and a scripted attachment (`crate::testing`).
//!
//! Every test runs once per I/O engine (`engine_test!`): `NAME::syscall`
//! with an attachment that takes a batch one frame at a time, as the tap's
//! `syscall` engine does, and `NAME::uring` with one that takes the whole
//! batch at once and cancels what follows a frame that would block, as
//! the tap's `uring` engine does.

/// A test run once per engine: `engine_test! { fn name() { ... } }`
/// makes the tests `name::syscall` and `name::uring`; every `Setup` built
/// in the body takes that engine.
macro_rules! engine_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            #[test]
            fn syscall() {
                crate::testing::with_engine(crate::testing::Engine::Syscall, || $body)
            }

            $(#[$meta])*
            #[test]
            fn uring() {
                crate::testing::with_engine(crate::testing::Engine::Uring, || $body)
            }
        }
    };
}

mod call;
mod dirty;
mod lending;
mod no_alloc;
mod rx;
mod stop;
mod tx;
