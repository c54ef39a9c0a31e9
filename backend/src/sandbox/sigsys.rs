//! Reporting a denied system call: under `--seccomp enforce` the kernel
//! answers a call outside the thread's list with SIGSYS (`SECCOMP_RET_TRAP`),
//! whose `siginfo` names the call. The handler writes one line to stderr
//! and ends the process.
//!
//! A signal handler may run between any two instructions of the thread it
//! interrupts, which may hold the allocator's or stderr's lock: so it
//! allocates nothing and takes no lock. It formats into a buffer on its
//! own stack, looks the name up in a static table, and calls `write(2)`
//! and `_exit(2)` directly (both on every list).

use std::io;

use super::installed;
use super::syscall_names::SYSCALLS;

/// The daemon's exit status after a denied system call: 128 + SIGSYS, as
/// a shell reports a process killed by SIGSYS.
pub const DENIED_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by seccomp (`SYS_SECCOMP`, asm-generic
/// siginfo.h).
const SYS_SECCOMP: i32 = 1;

/// The start of `siginfo_t` as the kernel fills it for SIGSYS on 64-bit
/// Linux (`struct kernel_siginfo`, `_sigsys` member of the union): three
/// ints, padding to the union's 8-byte alignment, then the union.
#[cfg(target_pointer_width = "64")]
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Installs the handler for the whole process.
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (no handler, empty
    // mask, no flags); every field the kernel reads is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is a fully initialised sigaction naming a handler
    // of the SA_SIGINFO signature; the old action is not asked for.
    let r = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel calls this SA_SIGINFO handler with a pointer to
    // a siginfo_t it filled, valid for the handler's run; for SIGSYS its
    // layout on 64-bit Linux is `SigsysInfo`'s (a prefix of siginfo_t,
    // which is 128 bytes).
    let info = unsafe { &*(info as *const SigsysInfo) };
    let mut line = Line::new();
    if info.code == SYS_SECCOMP {
        let nr = info.syscall;
        match installed() {
            Some(kind) => {
                line.push(b"zcnet: seccomp: the ");
                line.push(kind.name().as_bytes());
                line.push(b" thread made system call ");
            }
            None => line
                .push(b"zcnet: seccomp: a thread under the filter it inherited made system call "),
        }
        line.push(name(nr).as_bytes());
        line.push(b" (number ");
        line.push_number(i64::from(nr));
        line.push(
            b"), which its allow-list does not permit: exiting. Run zcnet with \
--seccomp log to have the kernel log every such call (dmesg or journalctl -k, audit type=1326), \
and report it\n",
        );
    } else {
        line.push(b"zcnet: SIGSYS not raised by seccomp: exiting\n");
    }
    line.write_to_stderr();
    // SAFETY: `_exit` ends the process without running anything of this
    // one (no atexit handlers, no stdio flush): async-signal-safe.
    unsafe { libc::_exit(DENIED_EXIT_STATUS) };
}

/// The name of system call `nr` on this architecture.
pub(super) fn name(nr: i32) -> &'static str {
    let Ok(nr) = u32::try_from(nr) else {
        return "unknown";
    };
    match SYSCALLS.binary_search_by_key(&nr, |&(n, _)| n) {
        Ok(i) => SYSCALLS[i].1,
        Err(_) => "unknown",
    }
}

/// A fixed buffer on the handler's stack; what does not fit is cut.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }

    fn write_to_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the range is inside `buf`, which outlives the call.
            let r = unsafe {
                libc::write(
                    libc::STDERR_FILENO,
                    self.buf[done..self.len].as_ptr().cast(),
                    self.len - done,
                )
            };
            if r <= 0 {
                return;
            }
            done += r as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_table() {
        assert_eq!(name(libc::SYS_execve as i32), "execve");
        assert_eq!(name(libc::SYS_ptrace as i32), "ptrace");
        assert_eq!(name(libc::SYS_io_uring_enter as i32), "io_uring_enter");
        assert_eq!(name(-1), "unknown");
        assert_eq!(name(100_000), "unknown");
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn the_line_formats_numbers_and_cuts_what_does_not_fit() {
        let mut l = Line::new();
        l.push_number(0);
        l.push(b" ");
        l.push_number(59);
        l.push(b" ");
        l.push_number(-12);
        assert_eq!(&l.buf[..l.len], b"0 59 -12");
        l.push(&[b'x'; 600]);
        assert_eq!(l.len, 512);
    }
}
