//! Batch scoring: every second of every series, for `score`, `evaluate` and benchmarks.
//!
//! A down second scores 1 (the appliance has failed: steering must treat it as certain); the
//! metrics ignore down seconds anyway. Up seconds get the model's held score
//! ([`crate::risk::model::hold`]), as live scoring does.

use crate::domain::{Probability, RiskScore};
use crate::risk::data::series::Series;
use crate::risk::model::Model;
use crate::risk::model::hold::Hold;

/// Scores every slot of `s`.
pub fn score_series(model: &Model, s: &Series) -> Vec<RiskScore> {
    let ctx = s.context();
    let mut hold = Hold::default();
    (0..s.len())
        .map(|i| {
            if s.down[i] {
                hold.clear();
                RiskScore::exact(Probability::ONE)
            } else {
                hold.push(s.ts(i), model.score(&s.features_at(&ctx, i)), model.hold_s)
            }
        })
        .collect()
}

/// Scores every series on up to `threads` threads; results in series order.
pub fn score_all(model: &Model, series: &[Series], threads: usize) -> Vec<Vec<RiskScore>> {
    let threads = threads.clamp(1, series.len().max(1));
    let mut out: Vec<Vec<RiskScore>> = vec![Vec::new(); series.len()];
    let per = series.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk_out, chunk_in) in out.chunks_mut(per).zip(series.chunks(per)) {
            scope.spawn(move || {
                for (o, s) in chunk_out.iter_mut().zip(chunk_in) {
                    *o = score_series(model, s);
                }
            });
        }
    });
    out
}
