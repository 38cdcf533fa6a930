//! The classic scenario, one appliance at a time: five hand-written failure kinds with
//! precursors, two without, and harmless look-alikes (see the parent module). Its output is
//! pinned bit for bit (`classic_output_is_unchanged`): the shipped model was trained on it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    ApplianceRun, Event, FailureKind, REGIONS, RegionEvents, SimConfig, active, down_row, normal,
    poisson, poisson_events, round,
};
use crate::risk::data::failures::FailureLabel;
use crate::risk::data::telemetry::{ApplianceInfo, Metric, Row};

/// Per-appliance failure kinds and their weights (regional outages are drawn per region).
const KIND_WEIGHTS: [(FailureKind, f64); 6] = [
    (FailureKind::MemoryLeak, 0.18),
    (FailureKind::Congestion, 0.18),
    (FailureKind::CpuSaturation, 0.14),
    (FailureKind::LatencyDrift, 0.14),
    (FailureKind::LinkFlap, 0.12),
    (FailureKind::PowerLoss, 0.24),
];

/// The state of a failure being simulated.
#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: FailureKind,
    /// When the precursor began.
    begin: u64,
    /// First down second.
    fail_at: u64,
    /// Intensity in [0.5, 1].
    k: f64,
}

/// Simulates appliance `i` (identity `info`, region events `regions`).
pub(super) fn appliance(
    cfg: SimConfig,
    regions: &[RegionEvents],
    info: ApplianceInfo,
    i: usize,
) -> ApplianceRun {
    let mut a = Appliance::new(cfg, regions, info, i);
    for t in 0..cfg.seconds {
        a.step(t);
    }
    ApplianceRun {
        info: a.info,
        rows: a.rows,
        failures: a.failures,
    }
}

/// Harmless events of one appliance.
struct Harmless {
    spikes: Vec<Event>,
    mem_bumps: Vec<Event>,
    lat_blips: Vec<Event>,
    loss_blips: Vec<Event>,
    hs_bursts: Vec<Event>,
}

/// One appliance as the simulation runs, a second at a time.
struct Appliance<'a> {
    cfg: SimConfig,
    region: &'a RegionEvents,
    /// Hours from UTC.
    tz: f64,
    info: ApplianceInfo,
    appliance: u32,
    rng: ChaCha8Rng,
    // Character.
    capacity: f64,
    base_rtt: f64,
    mem_base: f64,
    sessions_max: f64,
    harmless: Harmless,
    /// Failures per second while up.
    hazard: f64,
    rows: Vec<Row>,
    failures: Vec<FailureLabel>,
    pending: Option<Pending>,
    down_until: Option<u64>,
    ar_load: f64,
    ar_rtt: f64,
    /// Missing fields until when, and whether health (else probe) fields.
    hiccup: Option<(u64, bool)>,
    flap_until: u64,
}

impl<'a> Appliance<'a> {
    fn new(cfg: SimConfig, regions: &'a [RegionEvents], info: ApplianceInfo, i: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64 + 1),
        );
        let n = cfg.seconds;
        let capacity = rng.gen_range(0.6..1.1);
        let base_rtt = rng.gen_range(8.0..80.0);
        let mem_base: f64 = rng.gen_range(0.3..0.5);
        let sessions_max = rng.gen_range(200.0..2000.0);
        let harmless = Harmless {
            spikes: poisson_events(&mut rng, n, 6.0, (30.0, 300.0), (0.15, 0.4)),
            mem_bumps: poisson_events(&mut rng, n, 4.0, (120.0, 900.0), (0.05, 0.25)),
            lat_blips: poisson_events(&mut rng, n, 6.0, (10.0, 120.0), (0.3, 1.5)),
            loss_blips: poisson_events(&mut rng, n, 4.0, (1.0, 5.0), (0.05, 0.3)),
            hs_bursts: poisson_events(&mut rng, n, 4.0, (5.0, 30.0), (2.0, 10.0)),
        };
        Self {
            cfg,
            region: &regions[i % REGIONS.len()],
            tz: REGIONS[i % REGIONS.len()].1,
            info,
            appliance: u32::try_from(i).unwrap_or(u32::MAX),
            rng,
            capacity,
            base_rtt,
            mem_base,
            sessions_max,
            harmless,
            hazard: cfg.failures_per_day / 86_400.0,
            rows: Vec::with_capacity(n as usize),
            failures: Vec::new(),
            pending: None,
            down_until: None,
            ar_load: 0.0,
            ar_rtt: 0.0,
            hiccup: None,
            flap_until: 0,
        }
    }

    fn step(&mut self, t: u64) {
        let ts = self.cfg.start + t as i64;
        if self.is_down(t, ts) {
            self.rows.push(down_row(ts, self.appliance));
            return;
        }
        let mut values = self.values(t);
        self.hiccups(t, &mut values);
        self.rows.push(Row {
            ts,
            appliance: self.appliance,
            values,
            down: false,
        });
    }

    fn label(&mut self, ts: i64, kind: FailureKind, precursor_s: Option<u32>) {
        let label = super::label(&self.info.id, ts, kind.name(), precursor_s);
        self.failures.push(label);
    }

    /// Outages, failures that come due and new failures: whether second `t` is down.
    fn is_down(&mut self, t: u64, ts: i64) -> bool {
        // Regional outage overrides everything.
        let outage = active(&self.region.outages, t).is_some();
        if self.down_until.is_some_and(|until| t >= until) && !outage {
            self.down_until = None;
            self.mem_base = self.rng.gen_range(0.3..0.5);
            self.ar_load = 0.0;
            self.ar_rtt = 0.0;
        }
        let was_down = self.rows.last().is_some_and(|r: &Row| r.down);
        if outage && self.down_until.is_none() {
            // The precursor in progress (if any) is cut short by the outage.
            self.pending = None;
            self.down_until = Some(t + 1);
            if !was_down && t > 0 {
                self.label(ts, FailureKind::RegionalOutage, None);
            }
        }
        if outage {
            self.down_until = Some(self.down_until.unwrap_or(t).max(t + 1));
        }
        if let Some(p) = self.pending.filter(|p| t >= p.fail_at) {
            self.pending = None;
            self.down_until = Some(t + self.rng.gen_range(60..=600));
            let precursor_s = p
                .kind
                .has_precursor()
                .then_some((p.fail_at - p.begin) as u32);
            self.label(ts, p.kind, precursor_s);
        }
        if self.down_until.is_some() {
            return true;
        }
        if self.pending.is_none() && t > 0 && self.rng.r#gen::<f64>() < self.hazard {
            let rng = &mut self.rng;
            let mut x = rng.r#gen::<f64>() * KIND_WEIGHTS.iter().map(|(_, w)| w).sum::<f64>();
            let mut kind = FailureKind::PowerLoss;
            for (k, w) in KIND_WEIGHTS {
                if x < w {
                    kind = k;
                    break;
                }
                x -= w;
            }
            let (lo, hi) = kind.precursor_range();
            let len = if hi > 0.0 {
                rng.gen_range(lo..=hi) as u64
            } else {
                0
            };
            let k = rng.gen_range(0.5..=1.0);
            if len == 0 {
                // Sudden: goes down this very second.
                self.down_until = Some(t + self.rng.gen_range(60..=600));
                self.label(ts, kind, None);
                return true;
            }
            self.pending = Some(Pending {
                kind,
                begin: t,
                fail_at: t + len,
                k,
            });
        }
        false
    }

    /// The values of second `t`: normal behaviour, harmless events, and the precursor of the
    /// pending failure.
    fn values(&mut self, t: u64) -> [f64; 8] {
        let ts = self.cfg.start + t as i64;
        let (h, rng) = (&self.harmless, &mut self.rng);
        let hour = ((ts as f64 / 3600.0) + self.tz).rem_euclid(24.0);
        let daily = 0.5 + 0.5 * (std::f64::consts::TAU * (hour - 20.0) / 24.0).cos();
        self.ar_load = 0.995 * self.ar_load + 0.006 * normal(rng);
        let spike = active(&h.spikes, t).map_or(0.0, |(_, s)| s);
        let load = (0.15 + 0.55 * daily * self.capacity + self.ar_load + spike).clamp(0.0, 1.0);
        let mut cpu = 0.08 + 0.6 * load + 0.02 * normal(rng);
        let mut bw = load * 0.9 + 0.02 * normal(rng);
        self.mem_base = (self.mem_base + 0.0002 * normal(rng)).clamp(0.25, 0.55);
        let bump = active(&h.mem_bumps, t).map_or(0.0, |(p, s)| {
            // Rises for two thirds of the event, then a collection frees it.
            if p < 0.67 { s * p / 0.67 } else { s * 0.2 }
        });
        let mut mem = self.mem_base + 0.1 * load + bump + 0.003 * normal(rng);
        let mut sessions = self.sessions_max * (0.1 + 0.9 * load) * (1.0 + 0.02 * normal(rng));
        let mut hsf = poisson(rng, 0.05 + 0.3 * load)
            + active(&h.hs_bursts, t).map_or(0.0, |(_, s)| poisson(rng, s));
        self.ar_rtt = 0.98 * self.ar_rtt + 0.01 * normal(rng);
        let mut rtt_factor = 1.0
            + 0.25 * ((bw - 0.7) / 0.3).max(0.0)
            + self.ar_rtt
            + active(&h.lat_blips, t).map_or(0.0, |(_, s)| s);
        let mut jitter_factor = 1.0;
        let mut loss: f64 = if rng.r#gen::<f64>() < 0.01 { 0.01 } else { 0.0 };
        if let Some((_, s)) = active(&h.loss_blips, t) {
            loss = loss.max(s);
        }
        if let Some((_, s)) = active(&self.region.congestion, t) {
            rtt_factor += 0.3 + 0.7 * s;
            jitter_factor += 1.0 + s;
            loss = loss.max(0.005 + 0.025 * s * rng.r#gen::<f64>());
        }
        // Precursor of the pending failure.
        if let Some(p) = self.pending {
            let u = (t - p.begin) as f64 / (p.fail_at - p.begin).max(1) as f64;
            let k = p.k;
            match p.kind {
                FailureKind::MemoryLeak => {
                    let target = 0.93 + 0.07 * k;
                    mem += (target - mem).max(0.0) * u.powf(1.5);
                    if u > 0.8 {
                        cpu += 0.25 * k * (u - 0.8) / 0.2;
                    }
                }
                FailureKind::Congestion => {
                    bw += (0.9 + 0.1 * k - bw).max(0.0) * u;
                    rtt_factor += 3.0 * k * u * u;
                    jitter_factor += 4.0 * k * u * u;
                    loss = loss.max(0.2 * k * u.powi(3));
                    if u > 0.85 {
                        loss = loss.max(rng.gen_range(0.2..0.6));
                    }
                }
                FailureKind::CpuSaturation => {
                    cpu += (0.95 + 0.05 * k - cpu).max(0.0) * u.powf(1.2);
                    hsf += poisson(rng, 10.0 * k * u * u);
                    rtt_factor += k * u * u;
                }
                FailureKind::LatencyDrift => {
                    rtt_factor += (2.0 + 6.0 * k) * u.powf(1.3);
                    jitter_factor += 3.0 * k * u;
                }
                FailureKind::LinkFlap => {
                    if t >= self.flap_until && rng.r#gen::<f64>() < 0.01 + 0.08 * u * k {
                        self.flap_until = t + rng.gen_range(1..=4);
                    }
                    if t < self.flap_until {
                        loss = rng.gen_range(0.5..=1.0);
                        jitter_factor += 3.0;
                        sessions *= 0.97;
                    }
                }
                FailureKind::PowerLoss | FailureKind::RegionalOutage => {}
            }
        }
        let rtt = self.base_rtt * rtt_factor * (1.0 + 0.05 * normal(rng)).max(0.5);
        let jitter = (0.03 * rtt * jitter_factor + 0.5 * normal(rng).abs()).max(0.0);
        let loss = loss.clamp(0.0, 1.0);
        let mut values = [
            round(cpu.clamp(0.0, 1.0), 4),
            round(mem.clamp(0.0, 1.0), 4),
            round(bw.clamp(0.0, 1.0), 4),
            sessions.max(0.0).round(),
            hsf,
            round(rtt, 2),
            round(jitter, 2),
            round(loss, 4),
        ];
        if loss >= 0.99 {
            // Every probe lost: no round trip to report.
            values[Metric::RttMs as usize] = f64::NAN;
            values[Metric::JitterMs as usize] = f64::NAN;
        }
        values
    }

    /// Telemetry hiccups: health or probe fields missing for a few seconds.
    fn hiccups(&mut self, t: u64, values: &mut [f64; 8]) {
        if self.hiccup.is_some_and(|(until, _)| t >= until) {
            self.hiccup = None;
        }
        if self.hiccup.is_none() && self.rng.r#gen::<f64>() < 0.002 {
            self.hiccup = Some((t + self.rng.gen_range(1..=5), self.rng.r#gen::<bool>()));
        }
        if let Some((_, health)) = self.hiccup {
            let range = if health { 0..5 } else { 5..8 };
            for v in &mut values[range] {
                *v = f64::NAN;
            }
        }
    }
}
