//! Model files (`train` writes them; `serve`, `score` and `evaluate` load them, and `serve`
//! reloads one on SIGHUP or from the admin API): any text through `Model::from_json`. Whatever
//! loads must score without panicking, call no subject healthy where its arithmetic fails,
//! and save and load back as the same model with the same scores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowsteer::risk::features::{Features, N_FEATURES};
use shadowsteer::risk::model::Model;

/// Feature vectors from ordinary to extreme, and one with every feature missing.
fn probes() -> [Features; 5] {
    let mut mixed = [0.0; N_FEATURES];
    for (i, v) in mixed.iter_mut().enumerate() {
        *v = (i as f64 - 20.0) * 0.37;
    }
    [
        [0.0; N_FEATURES],
        mixed,
        [1e12; N_FEATURES],
        [-1e12; N_FEATURES],
        [f64::NAN; N_FEATURES],
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(model) = Model::from_json(text) else {
        return;
    };
    let xs = probes();
    let scores: Vec<_> = xs.iter().map(|x| model.score(x)).collect();
    for (x, s) in xs.iter().zip(&scores) {
        if model.raw_score(x).is_nan() {
            assert_eq!(
                s.value().get(),
                1.0,
                "a score the arithmetic cannot give is high"
            );
        }
    }
    let saved = serde_json::to_string(&model).expect("a loaded model serialises");
    let back = Model::from_json(&saved).expect("a saved model loads again");
    assert_eq!(back.version, model.version);
    let again: Vec<_> = xs.iter().map(|x| back.score(x)).collect();
    assert_eq!(again, scores, "the same model scores the same");
});
