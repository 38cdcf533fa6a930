//! The risk commands end to end on small simulated data: simulate -> train -> evaluate/score,
//! determinism, CSV errors with line and column, and model save/load round trips.

use std::path::Path;
use std::process::Command;

use shadowsteer::risk::data::series::{self, Series};
use shadowsteer::risk::data::telemetry::Telemetry;
use shadowsteer::risk::model::score::score_all;
use shadowsteer::risk::model::train::{TrainOptions, train};
use shadowsteer::risk::model::{Model, ModelKind};
use shadowsteer::risk::simulate::{SimConfig, Simulator};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shadowsteer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn simulate_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.csv"),
        dir.path().join("b.csv"),
        dir.path().join("c.csv"),
    );
    for (file, seed) in [(&a, "5"), (&b, "5"), (&c, "6")] {
        let (code, out, err) = run(&[
            "simulate",
            "--appliances",
            "3",
            "--hours",
            "0.5",
            "--seed",
            seed,
            "--out",
            p(file),
            "--failures-per-day",
            "48",
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let read = |f: &Path| std::fs::read(f).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    assert_eq!(
        read(&dir.path().join("a.failures.csv")),
        read(&dir.path().join("b.failures.csv"))
    );
    let text = String::from_utf8(read(&a)).unwrap();
    assert_eq!(text.lines().count(), 1 + 3 * 1800);
}

#[test]
fn simulate_leaves_benign_families_out_of_broad_runs_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.csv");
    let args = |scenario: &'static str, without: &'static str| {
        vec![
            "simulate",
            "--appliances",
            "2",
            "--hours",
            "0.2",
            "--seed",
            "3",
            "--scenario",
            scenario,
            "--without",
            without,
            "--out",
            p(&out),
        ]
    };
    let (code, text, err) = run(&args("broad", "bursts,ramps,congestion"));
    assert_eq!(code, 0, "{text}{err}");
    assert!(out.exists());
    std::fs::remove_file(&out).unwrap();
    for (scenario, without, says) in [
        ("classic", "bursts", "--without needs --scenario broad"),
        ("broad", "bursts,comets", "invalid value 'comets'"),
    ] {
        let (code, _, err) = run(&args(scenario, without));
        assert_eq!(code, 2, "{scenario} --without {without}: {err}");
        assert!(err.contains(says), "{err}");
        assert!(!out.exists(), "nothing is written on bad input");
    }
}

#[test]
fn bad_csv_is_reported_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.csv");
    std::fs::write(
        &data,
        "ts,appliance,region,cpu,mem,bw_util,sessions,handshake_failures,rtt_ms,jitter_ms,loss,down\n\
         100,eu-1,eu,0.5,0.5,0.5,10,0,20,1,0,0\n\
         101,eu-1,eu,0.5,0.5,0.5,10,0,-20,1,0,0\n\
         102,eu-1,eu,0.5,0.5,0.5,10,0,20,1,0,yes\n",
    )
    .unwrap();
    let out = dir.path().join("m.json");
    let (code, _, err) = run(&["train", "--data", p(&data), "--out", p(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3, column 9 (rtt_ms)"), "{err}");
    assert!(err.contains("line 4, column 12 (down)"), "{err}");
    assert!(!out.exists(), "nothing written on bad input");
    // An unknown or repeated feature name is refused before any data is read.
    for features in ["cpu_mean10,nope", "anom_max10,anom_max10", ""] {
        let (code, _, err) = run(&[
            "train",
            "--data",
            p(&data),
            "--out",
            p(&out),
            "--features",
            features,
        ]);
        assert_eq!(code, 2, "{features}: {err}");
        assert!(err.contains("--features: "), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists(), "nothing written on bad input");
    }
}

fn small_data(seed: u64) -> (Telemetry, Vec<Series>) {
    simulated(6, 3, 36.0, seed)
}

fn simulated(appliances: usize, hours: u64, per_day: f64, seed: u64) -> (Telemetry, Vec<Series>) {
    let sim = Simulator::new(SimConfig {
        failures_per_day: per_day,
        ..SimConfig::new(appliances, hours * 3600, seed)
    });
    let mut t = Telemetry::default();
    let mut labels = shadowsteer::risk::data::failures::FailureLabels::new();
    for i in 0..appliances {
        let run = sim.appliance(i);
        t.appliances.push(run.info);
        t.rows.extend(run.rows);
        for f in run.failures {
            labels.insert((f.appliance.clone(), f.ts), f);
        }
    }
    let s = series::build(&t, Some(&labels));
    (t, s)
}

fn small_options(kinds: Vec<ModelKind>) -> TrainOptions {
    TrainOptions {
        name: "t".into(),
        kinds,
        logistic_members: 3,
        forest_members: 4,
        tree_rows: 3000,
        tree_depth: 6,
        max_false_alarms_per_day: 20.0,
        ..TrainOptions::default()
    }
}

#[test]
fn saved_model_scores_identically_after_loading() {
    let (_, series) = small_data(11);
    let dir = tempfile::tempdir().unwrap();
    for kind in [ModelKind::Logistic, ModelKind::Forest] {
        let model = train(&series, &small_options(vec![kind]), &|_| {}).unwrap();
        assert_eq!(model.members.kind(), kind);
        let path = dir.path().join(format!("{}.json", kind.name()));
        model.save(&path).unwrap();
        let loaded = Model::load(&path).unwrap();
        assert_eq!(loaded, model);
        let a = score_all(&model, &series, 2);
        let b = score_all(&loaded, &series, 1);
        assert_eq!(a, b, "{} scores differ after a round trip", kind.name());
        // Editing a parameter without retraining is caught by the version check.
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"threshold\":", "\"threshold\":0.01,\"x\":", 1);
        assert!(Model::from_json(&edited).is_err());
        let mut tampered: serde_json::Value = serde_json::from_str(&text).unwrap();
        tampered["calibration"]["b"] = serde_json::json!(3.0);
        let err = Model::from_json(&tampered.to_string()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}

#[test]
fn a_novelty_term_round_trips_and_only_raises_scores() {
    // 8 appliances for 12 h: enough normal seconds for the tails.
    let (_, series) = simulated(8, 12, 8.0, 21);
    let opts = TrainOptions {
        novelty: true,
        ..small_options(vec![ModelKind::Logistic])
    };
    let model = train(&series, &opts, &|_| {}).unwrap();
    let novelty = model.novelty.clone().expect("trained with a novelty term");
    assert!(novelty.rows >= 50_000, "{}", novelty.rows);
    assert!(model.card.notes.iter().any(|n| n.contains("novelty term")));
    // The term is part of the version and survives a round trip.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.json");
    model.save(&path).unwrap();
    assert_eq!(Model::load(&path).unwrap(), model);
    let mut without = model.clone();
    without.novelty = None;
    assert_ne!(without.compute_version(), model.version);
    // It can only raise a score, its interval included.
    let mut raised = 0;
    for s in &series[..2] {
        let ctx = s.context();
        for i in (0..s.len()).filter(|&i| !s.down[i]) {
            let f = s.features_at(&ctx, i);
            let (x, y) = (model.score(&f), without.score(&f));
            assert!(x.value().get() >= y.value().get(), "second {i}");
            assert!(x.low().get() >= y.low().get() && x.high().get() >= y.high().get());
            raised += usize::from(x.value().get() > y.value().get());
        }
    }
    assert!(raised > 0, "the term never mattered");
    // A signal far beyond anything normal operation shows is surprising whatever it is.
    let mut x = [0.0; shadowsteer::risk::features::N_FEATURES];
    let quiet = novelty.probability(&x);
    let loss = shadowsteer::risk::features::FEATURE_NAMES
        .iter()
        .position(|n| *n == "z60_loss")
        .unwrap();
    x[loss] = 500.0;
    assert!(novelty.surprise(&x) > 4.0, "{}", novelty.surprise(&x));
    assert!(novelty.probability(&x) > quiet);
    // Too little normal data: a clear error, not a term fitted on noise.
    let (_, small) = small_data(11);
    let err = train(&small, &opts, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("novelty term needs"), "{err}");
}

/// Simulates 6 appliances for 3 hours (36 failures per appliance-day) with `seed` into `file`.
fn simulate_small(file: &Path, seed: &str) {
    let (code, out, err) = run(&[
        "simulate",
        "--appliances",
        "6",
        "--hours",
        "3",
        "--seed",
        seed,
        "--out",
        p(file),
        "--failures-per-day",
        "36",
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn simulate_train_evaluate_score_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    for (file, seed) in [(&train_csv, "1"), (&test_csv, "2")] {
        simulate_small(file, seed);
    }
    let model = dir.path().join("m.json");
    let (code, out, err) = run(&[
        "train",
        "--data",
        p(&train_csv),
        "--out",
        p(&model),
        "--members",
        "2",
        "--max-false-alarms",
        "20",
        "--hold",
        "20",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("fitting"), "progress is shown: {err}");
    // The hold is the model's: stored, and named in the card's threshold rule.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(saved["hold_s"], 20);
    // A hold outside 1..=60 s: one line, exit 2, nothing written.
    for bad in ["0", "61", "a minute"] {
        let (code, _, err) = run(&[
            "train",
            "--data",
            p(&train_csv),
            "--out",
            p(&dir.path().join("h.json")),
            "--hold",
            bad,
        ]);
        assert_eq!(code, 2, "--hold {bad}: {err}");
        assert!(err.contains("--hold"), "{err}");
        assert!(!dir.path().join("h.json").exists());
    }
    // A novelty term on too little normal data: one line, exit 2, nothing written.
    let refused = dir.path().join("n.json");
    let (code, _, err) = run(&[
        "train",
        "--data",
        p(&train_csv),
        "--out",
        p(&refused),
        "--novelty",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("novelty term needs"), "{err}");
    assert_eq!(
        err.trim().lines().last().map(|l| l.contains("error")),
        Some(true),
        "{err}"
    );
    assert!(!refused.exists());
    let card = std::fs::read_to_string(dir.path().join("m.md")).unwrap();
    assert!(
        card.contains("Operating threshold") && card.contains("baseline"),
        "{card}"
    );
    assert!(card.contains("held at their highest over 20 s"), "{card}");

    let (code, out, err) = run(&[
        "evaluate",
        "--model",
        p(&model),
        "--data",
        p(&test_csv),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = [
        "recall_at_10s",
        "recall_at_30s",
        "median_lead_s",
        "false_alarms_per_appliance_day",
        "roc_auc",
        "pr_auc",
        "failures",
    ];
    for obj in [&v, &v["precursor"], &v["sudden"], &v["baseline"]] {
        for k in keys {
            assert!(obj.get(k).is_some(), "missing {k} in {obj}");
        }
    }
    assert!(v["failures"].as_u64().unwrap() > 0);
    // Per length of precursor: every failure with a precursor (the simulator labels each
    // one's length) in exactly one group, shortest first.
    let groups = v["by_precursor_length"].as_array().unwrap();
    let in_groups: u64 = groups.iter().map(|g| g["failures"].as_u64().unwrap()).sum();
    assert_eq!(
        in_groups,
        v["precursor"]["failures"].as_u64().unwrap(),
        "{v}"
    );
    let order = [
        "under 30 s",
        "30 s to 2 min",
        "2 to 5 min",
        "5 to 30 min",
        "30 min or more",
    ];
    let pos: Vec<usize> = groups
        .iter()
        .map(|g| order.iter().position(|o| g["kind"] == *o).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{groups:?}");

    let scores = dir.path().join("scores.csv");
    let (code, _, err) = run(&[
        "score",
        "--model",
        p(&model),
        "--data",
        p(&test_csv),
        "--out",
        p(&scores),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&scores).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ts,appliance,risk,risk_low,risk_high"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').skip(2).map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 6 * 3 * 3600);
    assert!(
        rows.iter()
            .all(|r| r[1] <= r[0] && r[0] <= r[2] && (0.0..=1.0).contains(&r[0]))
    );
}

/// Failures per kind in a simulator's failures file.
fn kind_counts(failures_csv: &Path) -> std::collections::BTreeMap<String, usize> {
    let text = std::fs::read_to_string(failures_csv).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().skip(1) {
        let kind = line.split(',').nth(2).unwrap().to_owned();
        *out.entry(kind).or_insert(0) += 1;
    }
    out
}

#[test]
fn leave_one_kind_out_has_a_sane_row_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = ["train1", "train2", "test"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.csv")))
        .collect();
    for (file, seed) in files.iter().zip(["1", "2", "3"]) {
        simulate_small(file, seed);
    }
    let train_arg = format!("{},{}", p(&files[0]), p(&files[1]));
    let (code, out, err) = run(&[
        "evaluate",
        "--leave-one-kind-out",
        "--train-data",
        &train_arg,
        "--data",
        p(&files[2]),
        "--models",
        "forest",
        "--members",
        "2",
        "--max-false-alarms",
        "20",
        "--hold",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("training without"), "progress is shown: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hold_s"], 20, "every model is trained with --hold");
    let rows = v["kinds"].as_array().unwrap();
    let test_kinds = kind_counts(&dir.path().join("test.failures.csv"));
    let train_total: usize = ["train1", "train2"]
        .iter()
        .map(|n| {
            kind_counts(&dir.path().join(format!("{n}.failures.csv")))
                .values()
                .sum::<usize>()
        })
        .sum();
    let names: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        test_kinds.keys().map(String::as_str).collect::<Vec<_>>(),
        "a row per kind in the test data"
    );
    assert!(names.len() >= 4, "{names:?}");
    for r in rows {
        let kind = r["kind"].as_str().unwrap();
        let n = r["failures"].as_u64().unwrap() as usize;
        assert!(n >= 1 && n <= test_kinds[kind], "{r}");
        let trained_on = r["training_failures"].as_u64().unwrap() as usize;
        assert!(
            trained_on > 0 && trained_on < train_total,
            "{kind} was removed: {r}"
        );
        for k in ["recall_at_10s", "recall_at_30s", "threshold"] {
            let x = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} of {kind}: {r}");
        }
        assert!(
            r["recall_at_30s"].as_f64() <= r["recall_at_10s"].as_f64(),
            "{r}"
        );
        let lead = r["median_lead_s"].as_f64().unwrap();
        assert!((0.0..=3600.0).contains(&lead), "{r}");
        let fa = r["false_alarms_per_appliance_day"].as_f64().unwrap();
        assert!(fa.is_finite() && fa >= 0.0, "{r}");
        assert_eq!(
            r["precursor"].as_bool().unwrap(),
            kind != "power_loss" && kind != "regional_outage",
            "{r}"
        );
        // Sudden failures give no warning to learn or catch.
        if kind == "power_loss" {
            assert!(r["recall_at_10s"].as_f64().unwrap() < 0.5, "{r}");
        }
    }
    let days = v["appliance_days"].as_f64().unwrap();
    assert!(days > 0.5 && days <= 6.0 * 3.0 / 24.0, "{days}");

    // Bad input: the same file on both sides; no training data.
    let (code, out, err) = run(&[
        "evaluate",
        "--leave-one-kind-out",
        "--train-data",
        p(&files[2]),
        "--data",
        p(&files[2]),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("both training and test data"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["evaluate", "--leave-one-kind-out", "--data", p(&files[2])]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run(&[
        "evaluate",
        "--leave-one-kind-out",
        "--train-data",
        p(&files[0]),
        "--data",
        p(&files[2]),
        "--hold",
        "61",
    ]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("--hold"), "{err}");
}
