//! Health measurement: host cpu and memory from `/proc`, bandwidth, sessions and failures from
//! the data plane's counters. Pure: the shell reads the files and the clock and passes them in.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::domain::Fraction;
use crate::tunnel::stats::StatsSnapshot;

/// Cumulative cpu time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Ticks not idle.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal ...; idle + iowait is idle time.
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    // guest and guest_nice (fields 8, 9) are already counted in user and nice.
    let total: u64 = fields.iter().take(8).sum();
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Share of memory in use from `/proc/meminfo` (1 - MemAvailable / MemTotal).
pub fn parse_meminfo(text: &str) -> Option<Fraction> {
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| Fraction::saturating(1.0 - available / total))
}

/// One health measurement, before the appliance and region are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSample {
    /// When it was taken.
    pub ts: DateTime<Utc>,
    /// CPU use since the previous sample.
    pub cpu: Fraction,
    /// Memory use now.
    pub mem: Fraction,
    /// Received bits per second since the previous sample.
    pub bw_in_bps: u64,
    /// Sent bits per second since the previous sample.
    pub bw_out_bps: u64,
    /// Larger direction over capacity.
    pub bw_util: Fraction,
    /// Live sessions now.
    pub sessions: u32,
    /// Failed handshakes since the previous sample.
    pub handshake_failures: u32,
    /// Packets dropped since the previous sample.
    pub packets_dropped: u64,
}

/// Turns cumulative counters into per-interval rates.
#[derive(Debug)]
pub struct HealthMeter {
    capacity_bps: u64,
    prev: Option<(Instant, CpuTimes, StatsSnapshot)>,
}

impl HealthMeter {
    /// A meter for an appliance whose full bandwidth is `capacity_bps`.
    pub fn new(capacity_bps: u64) -> Self {
        Self {
            capacity_bps: capacity_bps.max(1),
            prev: None,
        }
    }

    /// A sample from the readings at `now`; the first call primes the meter and returns
    /// `None` (rates need two readings).
    pub fn sample(
        &mut self,
        now: Instant,
        ts: DateTime<Utc>,
        cpu: CpuTimes,
        mem: Fraction,
        stats: StatsSnapshot,
    ) -> Option<HealthSample> {
        let prev = self.prev.replace((now, cpu, stats.clone()));
        let (then, cpu0, s0) = prev?;
        let dt = now
            .saturating_duration_since(then)
            .max(Duration::from_millis(1));
        let per_sec = |bytes: u64| -> u64 {
            let bits = u128::from(bytes) * 8 * 1_000_000 / dt.as_micros().max(1);
            u64::try_from(bits).unwrap_or(u64::MAX)
        };
        let bw_in = per_sec(stats.rx_bytes.saturating_sub(s0.rx_bytes));
        let bw_out = per_sec(stats.tx_bytes.saturating_sub(s0.tx_bytes));
        let dtotal = cpu.total.saturating_sub(cpu0.total);
        let dbusy = cpu.busy.saturating_sub(cpu0.busy);
        Some(HealthSample {
            ts,
            cpu: if dtotal == 0 {
                Fraction::default()
            } else {
                Fraction::saturating(dbusy as f64 / dtotal as f64)
            },
            mem,
            bw_in_bps: bw_in,
            bw_out_bps: bw_out,
            bw_util: Fraction::saturating(bw_in.max(bw_out) as f64 / self.capacity_bps as f64),
            sessions: u32::try_from(stats.sessions).unwrap_or(u32::MAX),
            handshake_failures: u32::try_from(
                stats
                    .handshake_failures
                    .saturating_sub(s0.handshake_failures),
            )
            .unwrap_or(u32::MAX),
            packets_dropped: stats.packets_dropped.saturating_sub(s0.packets_dropped),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(CpuTimes {
                busy: 150,
                total: 1000
            })
        );
        assert_eq!(parse_proc_stat("cpu x\n"), None);
        let mem = "MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(mem), Fraction::new(0.75).ok());
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn rates_from_two_readings() {
        let mut m = HealthMeter::new(8_000);
        let t0 = Instant::now();
        let s0 = StatsSnapshot::default();
        assert!(
            m.sample(t0, Utc::now(), CpuTimes::default(), Fraction::default(), s0)
                .is_none()
        );
        let s1 = StatsSnapshot {
            rx_bytes: 500,
            tx_bytes: 1000,
            packets_dropped: 7,
            handshake_failures: 2,
            sessions: 3,
            ..StatsSnapshot::default()
        };
        let cpu = CpuTimes {
            busy: 25,
            total: 100,
        };
        let s = m
            .sample(
                t0 + Duration::from_secs(1),
                Utc::now(),
                cpu,
                Fraction::default(),
                s1,
            )
            .unwrap();
        assert_eq!((s.bw_in_bps, s.bw_out_bps), (4000, 8000));
        assert_eq!(s.bw_util.get(), 1.0);
        assert_eq!(s.cpu.get(), 0.25);
        assert_eq!(
            (s.sessions, s.handshake_failures, s.packets_dropped),
            (3, 2, 7)
        );
    }
}
