//! Benchmark: one live scoring round over 10,000 appliances and 10,000 paths, from in-memory
//! windows (the live scorer's ring buffers, filled with 300 s of simulated telemetry).
//!
//! Run: `cargo bench --bench risk_scoring` (release profile). Set `RISK_BENCH_SUBJECTS` to
//! change the number of appliances (paths: the same number). Prints timings; asserts nothing.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a tiny smoke version so
//! the code stays exercised without slowing the test suite.
//! Target (issue 5): <= 50 ms per round for 10,000 appliances and paths.

use std::path::Path;
use std::time::Instant;

use shadowsteer::risk::data::records::{HealthSecond, ProbeSecond};
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
    let sim = Simulator::new(SimConfig::new(n, 300, 42));
    let mut fleet = Fleet::new();
    let mut last = 0;
    for i in 0..n {
        let run = sim.appliance(i);
        let id = run.info.id.to_string();
        let region = run.info.region.to_string();
        let peer = sim.info((i + 1) % n).id.to_string();
        let health: Vec<HealthSecond> = run
            .rows
            .iter()
            .map(|r| HealthSecond {
                region: region.clone(),
                appliance: id.clone(),
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
        // Each appliance probes itself (its own network columns) and one peer (a path).
        let probes: Vec<ProbeSecond> = run
            .rows
            .iter()
            .flat_map(|r| {
                [id.clone(), peer.clone()].map(|dst| ProbeSecond {
                    region: region.clone(),
                    src: id.clone(),
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
        fleet.handle_health(&health);
        fleet.handle_probes(&probes);
        last = run.rows.last().map_or(0, |r| r.ts);
    }
    println!(
        "filled {} subjects ({n} appliances, {n} paths) with 300 s each in {:.1} s",
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

    for threads in [1, 2] {
        let mut times = Vec::new();
        for _ in 0..rounds {
            // Every round scores the newest second again: a later second with no new data
            // would find every subject silent after SILENT_S and skip it, timing nothing.
            let t = Instant::now();
            fleet.score(&model, last, threads);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let t = Instant::now();
        let writes = fleet.poll_writes("eu", 0.02, 1000, i64::MIN);
        let poll_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "score {} subjects, {threads} thread(s): median {:.1} ms, p90 {:.1} ms, min {:.1} ms over {rounds} rounds; poll_writes {:.1} ms ({} rows)",
            fleet.len(),
            percentile(&mut times.clone(), 0.5),
            percentile(&mut times.clone(), 0.9),
            percentile(&mut times, 0.0),
            poll_ms,
            writes.len()
        );
    }
}
