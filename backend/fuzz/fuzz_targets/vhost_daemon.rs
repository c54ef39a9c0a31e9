#![no_main]
//! See `zcnet::fuzzing::vhost_daemon` for the input layout and the checks.
//! Here, where nothing else runs, also: the daemon's request path leaves
//! no descriptor open behind it (each input is one frontend connection).

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let before = open_fds();
    zcnet::fuzzing::vhost_daemon(data);
    assert_eq!(
        open_fds(),
        before,
        "descriptors left open by one connection"
    );
});
