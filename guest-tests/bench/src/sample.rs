//! The one sample and summary type of every workload, tap or UDP: what a
//! measured window moved and what it cost, and the same figures over the
//! repetitions as median and min..max. A workload's own sample and row
//! add what it is (workload and side, or mode and frame size) around them.

use serde::Serialize;

use crate::measure::Reading;

/// Other load above which a window is marked as disturbed, in cores.
pub const DISTURBED: f64 = 0.25;

/// What one window moved and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub frames: u64,
    /// Frame bytes, without the virtio-net header.
    pub bytes: u64,
    /// CPU time of what is measured: the whole zcnet process, or the raw
    /// tap's writer or reader threads.
    pub cpu_seconds: f64,
    /// CPU time of the bench's threads that feed it: the fake guest's
    /// drivers, the RX injector.
    pub feeder_cpu_seconds: f64,
    /// The whole machine's busy CPU time, all cores: what the measured
    /// and feeding threads do not account for is other load.
    pub machine_busy_seconds: f64,
    /// CPU time the hypervisor took from this machine's cores.
    pub steal_seconds: f64,
}

impl Sample {
    /// The window from reading `a` to reading `b`.
    pub fn between(a: &Reading, b: &Reading) -> Sample {
        Sample {
            seconds: (b.at - a.at).as_secs_f64(),
            frames: b.frames - a.frames,
            bytes: b.bytes - a.bytes,
            cpu_seconds: b.cpu - a.cpu,
            feeder_cpu_seconds: b.feeder_cpu - a.feeder_cpu,
            machine_busy_seconds: b.machine_busy - a.machine_busy,
            steal_seconds: b.steal - a.steal,
        }
    }

    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub fn gbit_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    /// CPU seconds of what is measured per 10^9 frame bytes.
    pub fn cpu_seconds_per_gb(&self) -> f64 {
        self.cpu_seconds / self.bytes as f64 * 1e9
    }

    /// Cores busy with other work during the window: the machine's busy
    /// time that neither the measured nor the feeding threads account for.
    pub fn other_load(&self) -> f64 {
        (self.machine_busy_seconds - self.cpu_seconds - self.feeder_cpu_seconds).max(0.0)
            / self.seconds
    }

    /// More than [`DISTURBED`] cores were busy with other work.
    pub fn disturbed(&self) -> bool {
        self.other_load() > DISTURBED
    }
}

/// Median, smallest and largest of the repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Each value times `k`.
    pub fn scaled(self, k: f64) -> Spread {
        Spread {
            median: self.median * k,
            min: self.min * k,
            max: self.max * k,
        }
    }
}

const NAN_SPREAD: Spread = Spread {
    median: f64::NAN,
    min: f64::NAN,
    max: f64::NAN,
};

/// The rates of one thing measured over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub frames_per_second: Spread,
    pub gbit_per_second: Spread,
    /// CPU seconds per million frames.
    pub cpu_seconds_per_mframe: Spread,
    /// CPU seconds per 10^9 frame bytes.
    pub cpu_seconds_per_gb: Spread,
    /// CPU seconds per second: how many cores it kept busy.
    pub cores_busy: Spread,
}

impl Summary {
    /// None without a window; the CPU figures per frame and per byte are
    /// NaN (shown as n/a) when no window moved a frame.
    pub fn of(samples: &[&Sample]) -> Option<Summary> {
        let per = |f: fn(&Sample) -> f64| Spread::of(samples.iter().map(|s| f(s)));
        Some(Summary {
            frames_per_second: per(Sample::frames_per_second)?,
            gbit_per_second: per(Sample::gbit_per_second)?,
            cpu_seconds_per_mframe: per(|s| s.cpu_seconds / s.frames as f64 * 1e6)
                .unwrap_or(NAN_SPREAD),
            cpu_seconds_per_gb: per(Sample::cpu_seconds_per_gb).unwrap_or(NAN_SPREAD),
            cores_busy: per(|s| s.cpu_seconds / s.seconds)?,
        })
    }
}

/// The machine's other load and the hypervisor's steal, in cores, over a
/// set of windows.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Load {
    /// Cores busy with other work during the windows (the machine's busy
    /// time that the measured and feeding threads do not account for).
    pub other_load_cores: Option<Spread>,
    /// CPU time the hypervisor took, in cores.
    pub steal_cores: Option<Spread>,
}

impl Load {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample> + Clone) -> Load {
        Load {
            other_load_cores: Spread::of(samples.clone().into_iter().map(Sample::other_load)),
            steal_cores: Spread::of(samples.into_iter().map(|s| s.steal_seconds / s.seconds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn other_load_is_what_the_measured_and_feeding_threads_leave() {
        let s = Sample {
            seconds: 2.0,
            frames: 10,
            bytes: 1000,
            cpu_seconds: 1.0,
            feeder_cpu_seconds: 0.5,
            machine_busy_seconds: 2.5,
            steal_seconds: 0.0,
        };
        assert_eq!(s.other_load(), 0.5);
        assert!(s.disturbed());
        assert_eq!(s.gbit_per_second(), 4e-6);
    }
}
