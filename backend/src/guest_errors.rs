//! Logging of guest mistakes at a limited rate: a guest that sends a
//! million bad descriptors gets one line a second, not a million.

use std::fmt::Display;
use std::time::{Duration, Instant};

use log::warn;

const INTERVAL: Duration = Duration::from_secs(1);

/// One queue pair's rate limiter for guest-error log lines.
#[derive(Debug, Default)]
pub struct GuestErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl GuestErrorLog {
    /// Logs `what` unless a line was logged in the last second; otherwise
    /// counts it and reports the count with the next line.
    pub fn report(&mut self, pair: usize, what: impl Display) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            warn!(
                "queue pair {pair}: {what} ({} similar guest errors not logged)",
                self.suppressed
            );
        } else {
            warn!("queue pair {pair}: {what}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_and_counts_the_rest() {
        let mut log = GuestErrorLog::default();
        for i in 0..100 {
            log.report(0, format!("bad chain {i}"));
        }
        assert_eq!(log.suppressed, 99);
        assert!(log.last.is_some());
    }
}
