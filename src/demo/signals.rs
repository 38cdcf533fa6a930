//! The health each demo appliance reports, second by second. The appliances share one host,
//! whose `/proc` would give them all the same cpu and memory, so the demo writes each agent's
//! overrides file (`[telemetry] overrides_file`) from this: a per-appliance baseline with
//! small noise, and, while a degrade event runs, precursors that grow over its ramp the way
//! a saturating appliance's do (cpu and memory climb, handshakes start failing, packets drop).
//! Pure: time and appliance in, signals out.

use std::time::Duration;

use super::scenario::{EventKind, Scenario};
use crate::agent::overrides::Overrides;
use crate::domain::Fraction;

/// A stable small number in [0, 1) from a name and a step, for baselines and noise.
fn hash01(name: &str, step: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// How sick `appliance` is at `t` (0 healthy .. 1 at the end of its ramp), per the scenario:
/// the latest degrade or recover event before `t` decides.
pub fn sickness(scenario: &Scenario, appliance: &str, t: Duration) -> f64 {
    let mut u = 0.0;
    for e in scenario
        .events
        .iter()
        .filter(|e| e.appliance == appliance && e.at <= t)
    {
        match e.kind {
            EventKind::Degrade => {
                let ramp = e.ramp.as_secs_f64().max(1.0);
                u = ((t - e.at).as_secs_f64() / ramp).clamp(0.0, 1.0);
            }
            EventKind::Recover => u = 0.0,
            EventKind::Fail | EventKind::Crash => {}
        }
    }
    u
}

/// The signals `appliance` reports at `t`.
pub fn at(scenario: &Scenario, appliance: &str, t: Duration) -> Overrides {
    let step = t.as_secs();
    let base_cpu = 0.15 + 0.2 * hash01(appliance, 0);
    let base_mem = 0.30 + 0.2 * hash01(appliance, 1);
    let noise = |k: u64| 0.04 * (hash01(appliance, step * 4 + k) - 0.5);
    let u = sickness(scenario, appliance, t);
    let cpu = base_cpu + (0.98 - base_cpu) * u.powf(1.2) + noise(2);
    let mem = base_mem + (0.95 - base_mem) * u + noise(3);
    let hsf = (25.0 * u * u).round();
    let drops = (400.0 * u * u).round();
    Overrides {
        cpu: Some(Fraction::saturating(cpu)),
        mem: Some(Fraction::saturating(mem)),
        bw_util: None,
        handshake_failures: Some(hsf as u32),
        packets_dropped: Some(drops as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scenario::built_in;

    #[test]
    fn healthy_before_worse_during_and_healthy_after_recovery() {
        let s = built_in(Duration::from_secs(60), "eu-1", "us-1");
        let degrade = s.events[0].at;
        let before = at(&s, "eu-1", degrade - Duration::from_secs(1));
        let peak = at(&s, "eu-1", degrade + s.events[0].ramp);
        let other = at(&s, "eu-2", degrade + s.events[0].ramp);
        assert!(before.cpu.unwrap().get() < 0.4, "{before:?}");
        assert!(peak.cpu.unwrap().get() > 0.9, "{peak:?}");
        assert!(peak.handshake_failures.unwrap() >= 20);
        assert!(other.cpu.unwrap().get() < 0.4 && other.handshake_failures == Some(0));
        let recovered = s
            .events
            .iter()
            .rfind(|e| e.kind == EventKind::Recover)
            .unwrap();
        let after = at(&s, "eu-1", recovered.at + Duration::from_secs(1));
        assert_eq!(sickness(&s, "eu-1", recovered.at), 0.0);
        assert!(after.cpu.unwrap().get() < 0.4, "{after:?}");
    }

    #[test]
    fn precursors_grow_monotonically_over_the_ramp() {
        let s = built_in(Duration::from_secs(60), "eu-1", "us-1");
        let e = &s.events[0];
        let mut last = -1.0;
        for k in 0..=10 {
            let u = sickness(&s, "eu-1", e.at + e.ramp.mul_f64(f64::from(k) / 10.0));
            assert!(u >= last);
            last = u;
        }
        assert_eq!(last, 1.0);
    }
}
