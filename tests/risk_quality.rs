//! The shipped model's quality bar: on a simulated fleet from a seed it was never trained on,
//! it must still catch most failures that have precursors, early enough and without crying
//! wolf. A retrained or changed model that drops below the bar fails here, not in production.
//!
//! The bar is below the numbers in `models/default.md` (0.94 to 0.97 recall@10s, 0.3 to 0.51
//! false alarms per appliance-day on 60 appliances × 12 h) because this fleet is smaller (fewer
//! failures, so each one weighs more), not because the model may get worse. The full
//! leave-one-kind-out evaluation needs a training run per kind (minutes in a release build), so
//! it is measured by `evaluate --leave-one-kind-out` for the card; here, the novelty term alone
//! stands in for it (it was taught by no failure kind, see below).

use shadowsteer::risk::data::failures::FailureLabels;
use shadowsteer::risk::data::series::{self, Series};
use shadowsteer::risk::data::telemetry::Telemetry;
use shadowsteer::risk::evaluate::{self, Report};
use shadowsteer::risk::model::Model;
use shadowsteer::risk::model::hold::hold_values;
use shadowsteer::risk::model::score::score_all;
use shadowsteer::risk::simulate::{SimConfig, Simulator};

/// A seed outside the training seeds 1..=6 (the card's first held-out seed, on a smaller fleet).
const SEED: u64 = 101;
const APPLIANCES: usize = 40;
const HOURS: u64 = 8;
/// What the novelty term alone must catch of every kind with precursors: lower than the
/// card's leave-one-kind-out numbers (0.82 to 1.00) because this fleet has 2 to 11 failures
/// of a kind, so one miss weighs up to half.
const NOVELTY_BAR: f64 = 0.4;

fn held_out_series() -> Vec<Series> {
    let sim = Simulator::new(SimConfig::new(APPLIANCES, HOURS * 3600, SEED));
    let mut t = Telemetry::default();
    let mut labels = FailureLabels::new();
    for i in 0..APPLIANCES {
        let run = sim.appliance(i);
        t.appliances.push(run.info);
        t.rows.extend(run.rows);
        for f in run.failures {
            labels.insert((f.appliance.clone(), f.ts), f);
        }
    }
    series::build(&t, Some(&labels))
}

fn held_out_report(model: &Model) -> Report {
    let series = held_out_series();
    let scores: Vec<Vec<f64>> = score_all(model, &series, 2)
        .into_iter()
        .map(|v| v.into_iter().map(|s| s.value().get()).collect())
        .collect();
    evaluate::report(&series, &scores, model.threshold, model.horizon_s as usize)
}

#[test]
fn the_shipped_model_meets_its_bar_on_a_held_out_seed() {
    let model = Model::builtin().expect("the shipped model loads");
    let r = held_out_report(&model);
    let p = &r.model.precursor;
    let recall = p
        .recall_at_10s
        .expect("the fleet has failures with precursors");
    let false_alarms = p
        .false_alarms_per_appliance_day
        .expect("the fleet has up time");
    eprintln!(
        "seed {SEED}: {} failures with precursors, recall@10s {recall:.3}, {false_alarms:.2} false \
         alarms per appliance-day, median lead {:?} s; baseline recall@10s {:?}",
        p.failures, p.median_lead_s, r.baseline.precursor.recall_at_10s
    );
    assert!(
        p.failures >= 20,
        "too few failures to judge: {}",
        p.failures
    );
    assert!(
        recall >= 0.85,
        "recall@10s {recall:.3} is below the bar of 0.85"
    );
    assert!(
        false_alarms <= 1.0,
        "{false_alarms:.2} false alarms per appliance-day is above the bar of 1"
    );
    // Better than the health-check baseline by a wide margin, or the model is not earning
    // its keep.
    let baseline = r.baseline.precursor.recall_at_10s.unwrap_or(0.0);
    assert!(
        recall >= baseline + 0.3,
        "model {recall:.3} vs baseline {baseline:.3}"
    );
    // Every kind with precursors is caught at least half the time.
    for k in &r.by_kind {
        if !sudden(&k.kind) {
            assert!(
                k.recall_at_10s >= 0.5,
                "{}: recall@10s {:.3} ({} failures)",
                k.kind,
                k.recall_at_10s,
                k.failures
            );
        }
    }
}

/// Kinds without precursors: nothing can predict them.
fn sudden(kind: &str) -> bool {
    kind == "power_loss" || kind == "regional_outage"
}

#[test]
fn the_novelty_term_alone_catches_every_kind_it_was_never_shown() {
    // The novelty term learnt what normal looks like from seconds far from any failure, and
    // its alarm level from false alarms alone: no failure kind taught it anything, so what it
    // catches on its own is what the model keeps catching of a kind nobody listed. (The full
    // leave-one-kind-out table, a training run per kind, is in the model card.)
    let model = Model::builtin().expect("the shipped model loads");
    let novelty = model
        .novelty
        .clone()
        .expect("the shipped model has a novelty term");
    let series = held_out_series();
    let scores: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let ctx = s.context();
            let p: Vec<f64> = (0..s.len())
                .map(|i| {
                    if s.down[i] {
                        0.0
                    } else {
                        novelty.probability(&s.features_at(&ctx, i))
                    }
                })
                .collect();
            hold_values(&p, &s.down, model.hold_s)
        })
        .collect();
    let r = evaluate::report(&series, &scores, model.threshold, model.horizon_s as usize);
    let false_alarms = r
        .model
        .precursor
        .false_alarms_per_appliance_day
        .expect("the fleet has up time");
    for k in &r.by_kind {
        eprintln!(
            "novelty alone, seed {SEED}: {} recall@10s {:.3} ({} failures)",
            k.kind, k.recall_at_10s, k.failures
        );
    }
    eprintln!("novelty alone: {false_alarms:.2} false alarms per appliance-day");
    assert!(
        false_alarms <= 1.0,
        "{false_alarms:.2} false alarms per appliance-day"
    );
    for k in r.by_kind.iter().filter(|k| !sudden(&k.kind)) {
        assert!(
            k.recall_at_10s >= NOVELTY_BAR,
            "{}: recall@10s {:.3} from the novelty term alone ({} failures)",
            k.kind,
            k.recall_at_10s,
            k.failures
        );
    }
}

#[test]
fn a_model_that_ignores_its_input_fails_the_bar() {
    // The bar is not a formality: a constant score at the threshold never alarms.
    let model = Model::constant("blind", 0.01);
    let r = held_out_report(&model);
    assert_eq!(r.model.precursor.recall_at_10s, Some(0.0));
}
