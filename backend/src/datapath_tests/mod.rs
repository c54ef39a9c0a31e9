//! The datapath in process: one queue pair driven through its events, a
//! guest on its rings and a scripted attachment (`crate::testing`).

mod call;
mod dirty;
mod lending;
mod rx;
mod stop;
mod tx;
