//! Throughput and latency figures of one run, and medians over runs.

use std::time::Duration;

/// The figures of one run of one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub operations: u64,
    /// Operations per second of wall-clock time, summed over the threads.
    pub ops_per_second: f64,
    /// Operations per second of each thread's own CPU time, summed over the
    /// threads: the rate each thread would reach on a core of its own, so
    /// it hardly changes with the load of other processes.
    pub ops_per_cpu_second: f64,
    pub mean_ns: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
}

impl Summary {
    /// Summarizes the latencies of every thread; `rates` are each thread's
    /// operations per second of wall-clock time and of CPU time.
    pub fn from_latencies(latencies: &mut [u32], rates: &[(f64, f64)]) -> Summary {
        if latencies.is_empty() {
            return Summary::default();
        }
        let total: u64 = latencies.iter().map(|&ns| u64::from(ns)).sum();
        latencies.sort_unstable();
        Summary {
            operations: latencies.len() as u64,
            ops_per_second: rates.iter().map(|(wall, _)| wall).sum(),
            ops_per_cpu_second: rates.iter().map(|(_, cpu)| cpu).sum(),
            mean_ns: total as f64 / latencies.len() as f64,
            p50_ns: f64::from(percentile(latencies, 0.50)),
            p99_ns: f64::from(percentile(latencies, 0.99)),
        }
    }

    /// Formats the summary as the fields of a worker's result line.
    pub fn to_fields(self) -> String {
        format!(
            "{} {:.3} {:.3} {:.1} {:.1} {:.1}",
            self.operations,
            self.ops_per_second,
            self.ops_per_cpu_second,
            self.mean_ns,
            self.p50_ns,
            self.p99_ns
        )
    }

    /// Parses the fields that [`Summary::to_fields`] writes.
    pub fn parse_fields(fields: &[&str]) -> Result<Summary, String> {
        let [operations, rate, cpu_rate, mean, p50, p99] = fields else {
            return Err(format!("expected 6 result fields, got {fields:?}"));
        };
        let number = |text: &str| -> Result<f64, String> {
            text.parse()
                .map_err(|_| format!("invalid number {text:?} in a result line"))
        };
        Ok(Summary {
            operations: operations
                .parse()
                .map_err(|_| format!("invalid count {operations:?} in a result line"))?,
            ops_per_second: number(rate)?,
            ops_per_cpu_second: number(cpu_rate)?,
            mean_ns: number(mean)?,
            p50_ns: number(p50)?,
            p99_ns: number(p99)?,
        })
    }
}

/// Returns the value at quantile `q` of sorted `values` (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Returns the median of `values`; the mean of the middle two for an even
/// count. NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Formats a latency in nanoseconds with a unit that keeps 3 digits.
pub fn format_latency(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

/// Formats a rate in operations per second.
pub fn format_rate(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}", rate)
    } else {
        format!("{:.1}", rate)
    }
}

/// Converts a duration to whole nanoseconds, saturating at `u32::MAX`
/// (4.3 s, longer than any single operation measured here).
#[inline(always)]
pub fn nanos_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
}

/// Returns the CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the pointer is valid for writes; CLOCK_THREAD_CPUTIME_ID
    // exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}
