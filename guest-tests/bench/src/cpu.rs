//! CPU time (user + system) from `/proc`: of a whole process (zcnet), of
//! one thread of this process (the raw tap writer, the fake guest), or of
//! the whole machine.

use std::fs;
use std::io;
use std::sync::OnceLock;

/// Whose CPU time to read.
#[derive(Clone, Copy, Debug)]
pub enum CpuOf {
    /// A process, all its threads (`/proc/PID/stat`).
    Process(u32),
    /// A thread of this process (`/proc/self/task/TID/stat`).
    Thread(libc::pid_t),
}

/// Clock ticks per second, the unit of `utime` and `stime`.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a configuration value; it has no
        // pointer arguments and no side effects.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    })
}

/// User plus system time used so far, in seconds.
pub fn seconds(of: CpuOf) -> io::Result<f64> {
    let path = match of {
        CpuOf::Process(pid) => format!("/proc/{pid}/stat"),
        CpuOf::Thread(tid) => format!("/proc/self/task/{tid}/stat"),
    };
    let text = fs::read_to_string(&path)?;
    let ticks = utime_plus_stime(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {path}: {text:?}"),
        )
    })?;
    Ok(ticks as f64 / ticks_per_second())
}

/// Fields 14 (utime) and 15 (stime) of a stat line. The command name
/// (field 2) is in parentheses and may hold spaces, so counting starts after
/// the last `)`, at field 3.
fn utime_plus_stime(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The whole machine's busy time (user, nice, system, irq, softirq) and
/// stolen time so far, in seconds summed over all cores (`/proc/stat`).
pub fn machine() -> io::Result<(f64, f64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let (busy, steal) = busy_and_steal(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/stat"))?;
    let t = ticks_per_second();
    Ok((busy as f64 / t, steal as f64 / t))
}

/// From the `cpu` line: user nice system idle iowait irq softirq steal.
fn busy_and_steal(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq, steal))
}

/// The calling thread's id, for [`CpuOf::Thread`].
pub fn current_thread() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_name_with_spaces_and_parens() {
        let stat = "4242 (zc (net) 1) S 1 4242 4242 0 -1 4194560 123 0 0 0 \
                    250 70 0 0 20 0 5 0 100 200000 300 18446744073709551615";
        assert_eq!(utime_plus_stime(stat), Some(320));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 2 7 0 0\ncpu0 50 2 25 4500 20 1 1 3 0 0\n";
        assert_eq!(busy_and_steal(stat), Some((160, 7)));
    }

    #[test]
    fn this_thread_has_a_cpu_time() {
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(seconds(CpuOf::Thread(current_thread())).unwrap() >= 0.0);
        assert!(seconds(CpuOf::Process(std::process::id())).unwrap() >= 0.0);
    }
}
