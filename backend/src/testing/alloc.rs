//! The test binary's global allocator: the harness's counting one, so a
//! test can show that the datapath allocates nothing per frame.

use zcnet_harness::alloc::CountingAlloc;

pub use zcnet_harness::alloc::allocations;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;
