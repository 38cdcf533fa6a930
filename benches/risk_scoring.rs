//! Benchmark: one live scoring round over 10,000 appliances and 10,000 paths, from in-memory
//! windows (the live scorer's ring buffers, filled with 300 s of simulated telemetry). Each
//! timed round is a new second, as live: every subject first hears that second's telemetry
//! (timed apart, as "ingest"), so its features move and its alarm hold keeps real scores.
//!
//! Run: `cargo bench --bench risk_scoring` (release profile). Set `RISK_BENCH_SUBJECTS` to
//! change the number of appliances (paths: the same number). Prints timings; asserts nothing.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a tiny smoke version so
//! the code stays exercised without slowing the test suite.
//! Target (issue 5): <= 50 ms per round for 10,000 appliances and paths.

use std::path::Path;
use std::time::Instant;

use shadowsteer::risk::data::records::{HealthSecond, ProbeSecond};
use shadowsteer::risk::data::telemetry::Row;
use shadowsteer::risk::live::fleet::Fleet;
use shadowsteer::risk::model::Model;
use shadowsteer::risk::simulate::{SimConfig, Simulator};

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("RISK_BENCH_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|_| full)
        .unwrap_or(if full { 10_000 } else { 20 });
    let rounds = if full { 30 } else { 2 };
    if !full {
        println!("smoke run with {n} appliances; `cargo bench --bench risk_scoring` measures");
    }
    println!("(set RISK_BENCH_SUBJECTS=5000 for 10,000 subjects in total)");
    let model_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let model = Model::load(&model_path).expect("models/default.json loads");
    println!("model {} ({} members)", model.version, model.members.len());

    let t0 = Instant::now();
    let sim = Simulator::new(SimConfig::new(n, (WARM_S + 2 * rounds) as u64, 42));
    let mut fleet = Fleet::new();
    let mut appliances = Vec::with_capacity(n);
    for i in 0..n {
        let run = sim.appliance(i);
        let mut a = Appliance {
            id: run.info.id.to_string(),
            region: run.info.region.to_string(),
            peer: sim.info((i + 1) % n).id.to_string(),
            rows: run.rows,
        };
        let (health, probes) = a.seconds(..WARM_S);
        fleet.handle_health(&health);
        fleet.handle_probes(&probes);
        a.rows.drain(..WARM_S);
        appliances.push(a);
    }
    println!(
        "filled {} subjects ({n} appliances, {n} paths) with {WARM_S} s each in {:.1} s",
        fleet.len(),
        t0.elapsed().as_secs_f64()
    );

    // Where the time goes: features alone, then the model alone, on one thread.
    {
        use shadowsteer::risk::features::window::{Sample, WINDOW_S, Window};
        use shadowsteer::risk::features::{self, History};
        let run = sim.appliance(0);
        let window: Vec<Sample> = run.rows[run.rows.len() - WINDOW_S..]
            .iter()
            .map(|r| r.values.map(|v| v as f32))
            .collect();
        // Known levels, so that the anomaly features do their full work.
        let mut b = shadowsteer::risk::features::baseline::Baseline::UNKNOWN;
        b.rtt = 20.0;
        b.levels.median = window[0];
        b.levels.spread = [0.01; 8];
        let t = Instant::now();
        let mut x = features::compute(&Window::new(&[], &window), History::default(), &b);
        for _ in 0..fleet.len() {
            x = std::hint::black_box(features::compute(
                &Window::new(&[], std::hint::black_box(&window)),
                History::default(),
                &b,
            ));
        }
        let feat_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        for _ in 0..fleet.len() {
            std::hint::black_box(model.score(std::hint::black_box(&x)));
        }
        println!(
            "breakdown for {} subjects on one thread: features {feat_ms:.1} ms, model {:.1} ms",
            fleet.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }

    let rss_before = rss_mb();
    let mut next = 0;
    for threads in [1, 2] {
        let (mut times, mut ingest) = (Vec::new(), Vec::new());
        let mut now = 0;
        for _ in 0..rounds {
            // A new second each round, as live: every subject hears its next second first, so
            // its features move and its alarm hold keeps a minute of real scores.
            let (mut health, mut probes) = (Vec::new(), Vec::new());
            for a in &appliances {
                let (h, p) = a.seconds(next..next + 1);
                health.extend(h);
                probes.extend(p);
            }
            now = appliances.first().map_or(0, |a| a.rows[next].ts);
            next += 1;
            let t = Instant::now();
            fleet.handle_health(&health);
            fleet.handle_probes(&probes);
            ingest.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            fleet.score(&model, now, threads);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let t = Instant::now();
        let writes = fleet.poll_writes("eu", 0.02, 1000, now - 5);
        let poll_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "score {} subjects, {threads} thread(s): median {:.1} ms, p90 {:.1} ms, min {:.1} ms over {rounds} rounds; ingest of the round's second {:.1} ms (median); poll_writes {:.1} ms ({} rows)",
            fleet.len(),
            percentile(&mut times.clone(), 0.5),
            percentile(&mut times.clone(), 0.9),
            percentile(&mut times, 0.0),
            percentile(&mut ingest, 0.5),
            poll_ms,
            writes.len()
        );
    }
    println!(
        "resident memory {:.0} MB before the timed rounds, {:.0} MB after {} rounds (the model's alarm hold: {} s)",
        rss_before,
        rss_mb(),
        2 * rounds,
        model.hold_s
    );
}

/// Seconds of telemetry each subject has before the first timed round: a full feature window.
const WARM_S: usize = 300;

/// One simulated appliance: the telemetry not yet handed to the fleet.
struct Appliance {
    id: String,
    region: String,
    peer: String,
    rows: Vec<Row>,
}

impl Appliance {
    /// Its health rows and probes for `range` of its rows. It probes itself (its own network
    /// columns) and one peer (a path).
    fn seconds(
        &self,
        range: impl std::slice::SliceIndex<[Row], Output = [Row]>,
    ) -> (Vec<HealthSecond>, Vec<ProbeSecond>) {
        let rows = &self.rows[range];
        let health = rows
            .iter()
            .map(|r| HealthSecond {
                region: self.region.clone(),
                appliance: self.id.clone(),
                sec: r.ts,
                values: [
                    r.values[0],
                    r.values[1],
                    r.values[2],
                    r.values[3],
                    r.values[4],
                ],
            })
            .collect();
        let probes = rows
            .iter()
            .flat_map(|r| {
                [self.id.clone(), self.peer.clone()].map(|dst| ProbeSecond {
                    region: self.region.clone(),
                    src: self.id.clone(),
                    dst_kind: "appliance".into(),
                    dst,
                    sec: r.ts,
                    rtt_ms: r.values[5],
                    jitter_ms: r.values[6],
                    loss: if r.values[7].is_nan() {
                        0.0
                    } else {
                        r.values[7]
                    },
                })
            })
            .collect();
        (health, probes)
    }
}

/// This process's resident memory (Linux), in MB; NaN where it cannot be read.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / 1e6)
}
