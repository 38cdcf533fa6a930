//! Benchmark: training on 1,000,000 rows of simulated telemetry (35 appliances x 8 h), with the
//! settings of the default model (`train --members 16`: 16 logistic members, 32 trees).
//!
//! Run: `cargo bench --bench risk_training` (release profile). Reports reading the CSV and
//! training separately. Prints timings; asserts nothing. Target (issue 5): <= 2 minutes.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a tiny smoke version.

use std::time::Instant;

use shadowsteer::risk::data::dataset;
use shadowsteer::risk::data::failures::{companion_path, write_failures};
use shadowsteer::risk::data::telemetry::TelemetryWriter;
use shadowsteer::risk::model::train::{TrainOptions, train};
use shadowsteer::risk::simulate::{SimConfig, Simulator};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("bench.csv");
    let full = std::env::args().any(|a| a == "--bench");
    let (appliances, cfg) = if full {
        (35, SimConfig::new(35, 8 * 3600, 7))
    } else {
        println!("smoke run; `cargo bench --bench risk_training` measures");
        let cfg = SimConfig {
            failures_per_day: 48.0,
            ..SimConfig::new(4, 3 * 3600, 7)
        };
        (4, cfg)
    };
    let sim = Simulator::new(cfg);
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&csv).expect("create"));
        let mut out = TelemetryWriter::new(file).expect("write");
        let mut labels = Vec::new();
        for i in 0..appliances {
            let run = sim.appliance(i);
            let infos = [run.info.clone()];
            for r in &run.rows {
                let mut r = *r;
                r.appliance = 0;
                out.write_row(&infos, &r).expect("write");
            }
            labels.extend(run.failures);
        }
        out.finish().expect("flush");
        let mut f = std::fs::File::create(companion_path(&csv)).expect("create");
        write_failures(&mut f, &labels).expect("write");
    }

    let t0 = Instant::now();
    let loaded = dataset::load(&csv, None).expect("load");
    let read_s = t0.elapsed().as_secs_f64();
    println!(
        "read {} rows ({} failures labelled) in {read_s:.1} s",
        loaded.telemetry.rows.len(),
        loaded.labels.as_ref().map_or(0, |l| l.len())
    );
    let opts = if full {
        TrainOptions {
            name: "bench".into(),
            logistic_members: 16,
            forest_members: 32,
            ..TrainOptions::default()
        }
    } else {
        TrainOptions {
            name: "smoke".into(),
            logistic_members: 2,
            forest_members: 2,
            tree_rows: 2000,
            max_false_alarms_per_day: 50.0,
            ..TrainOptions::default()
        }
    };
    let t1 = Instant::now();
    let model = train(&loaded.series, &opts, &|m: &str| {
        if !m.contains("member") {
            eprintln!("[{:6.1}s] {m}", t1.elapsed().as_secs_f64());
        }
    })
    .expect("train");
    let train_s = t1.elapsed().as_secs_f64();
    println!(
        "trained {} on {} rows in {train_s:.1} s (reading + training {:.1} s); threads {}",
        model.version,
        loaded.telemetry.rows.len(),
        read_s + train_s,
        opts.threads
    );
}
