//! The telemetry CSV import (`telemetry import`, `train`, `evaluate`): any bytes through the
//! public parse entry points of the data file and its failure-label companion. Thin on purpose,
//! so it survives changes of the parser behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowsteer::risk::data::{failures, telemetry};

fuzz_target!(|data: &[u8]| {
    let _ = telemetry::read_csv(data);
    let _ = failures::read_failures(data);
});
