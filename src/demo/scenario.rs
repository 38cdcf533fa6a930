//! The demo's story: timed events on named appliances, from a TOML file or built in. Pure:
//! parsing and validation name the line of every problem, so a bad file stops the demo
//! before anything starts.
//!
//! ```toml
//! [[event]]
//! at = "8s"            # from the start of the demo
//! kind = "degrade"     # degrade | fail | crash | recover
//! appliance = "eu-1"
//! ramp = "20s"         # degrade: how long the precursors grow until the appliance is sick
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::Duration as ConfigDuration;

/// What happens to an appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Its health degrades with precursors (cpu, memory, failed handshakes) over `ramp`: the
    /// risk model should see it coming and steering move its clients.
    Degrade,
    /// The degraded appliance stops (its agent is killed).
    Fail,
    /// The appliance's agent is killed without warning (`kill -9`), healthy a moment before.
    Crash,
    /// The appliance comes back healthy (its agent restarts); its clients fail back.
    Recover,
}

impl EventKind {
    /// The report's kind of the event: what it tests.
    pub fn report_kind(self) -> &'static str {
        match self {
            Self::Degrade => "predicted",
            Self::Fail => "failure",
            Self::Crash => "sudden",
            Self::Recover => "failback",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Degrade => "degrade",
            Self::Fail => "fail",
            Self::Crash => "crash",
            Self::Recover => "recover",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// From the start of the demo.
    pub at: Duration,
    /// What happens.
    pub kind: EventKind,
    /// To which appliance.
    pub appliance: String,
    /// How long the precursors grow (degrade only).
    pub ramp: Duration,
}

impl Event {
    /// A short name for reports, e.g. `crash us-2`.
    pub fn name(&self) -> String {
        format!("{} {}", self.kind.name(), self.appliance)
    }
}

/// The events, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Events, sorted by `at`.
    pub events: Vec<Event>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    event: Vec<toml::Spanned<RawEvent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: toml::Spanned<ConfigDuration>,
    kind: EventKind,
    appliance: toml::Spanned<String>,
    #[serde(default)]
    ramp: Option<ConfigDuration>,
}

/// Default precursor growth when a degrade event gives none.
const DEFAULT_RAMP: Duration = Duration::from_secs(20);

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses and checks a scenario file against the fleet's appliances and the demo's length.
/// The error is one line naming the line of the file.
pub fn parse(
    text: &str,
    file: &str,
    appliances: &[String],
    duration: Duration,
) -> Result<Scenario, String> {
    let raw: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        let msg = e.message().replace('\n', " ");
        format!("{file}:{line}: {msg}")
    })?;
    let mut events = Vec::new();
    let mut previous = Duration::ZERO;
    for spanned in raw.event {
        let line = line_of(text, spanned.span().start);
        let r = spanned.into_inner();
        let at = r.at.get_ref().0;
        let at_line = line_of(text, r.at.span().start);
        if at < previous {
            return Err(format!(
                "{file}:{at_line}: event at {} is in the past (the event before it is at {})",
                secs(at),
                secs(previous)
            ));
        }
        if at >= duration {
            return Err(format!(
                "{file}:{at_line}: event at {} is after the end of the demo ({}; see --duration)",
                secs(at),
                secs(duration)
            ));
        }
        let name = r.appliance.get_ref();
        if !appliances.iter().any(|a| a == name) {
            return Err(format!(
                "{file}:{}: unknown appliance {name:?} (the demo's appliances: {})",
                line_of(text, r.appliance.span().start),
                appliances.join(", ")
            ));
        }
        if r.ramp.is_some() && r.kind != EventKind::Degrade {
            return Err(format!("{file}:{line}: only a degrade event has a ramp"));
        }
        previous = at;
        events.push(Event {
            at,
            kind: r.kind,
            appliance: name.clone(),
            ramp: r.ramp.map_or(DEFAULT_RAMP, |d| d.0),
        });
    }
    if events.is_empty() {
        return Err(format!("{file}:1: no [[event]] in the scenario"));
    }
    Ok(Scenario { events })
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The built-in story for a demo of `duration` (at least [`MIN_DURATION`]): `degraded` gets
/// sick and fails, `crashed` dies without warning later, both come back.
pub fn built_in(duration: Duration, degraded: &str, crashed: &str) -> Scenario {
    let d = duration.as_secs_f64();
    let warmup = 8.0;
    let ramp = (0.3 * d).clamp(15.0, 30.0);
    let fail = warmup + ramp + 3.0;
    let crash = fail + (0.12 * d).max(6.0);
    let recover = crash + (0.12 * d).max(6.0);
    let ev = |at: f64, kind, appliance: &str| Event {
        at: Duration::from_secs_f64(at),
        kind,
        appliance: appliance.to_owned(),
        ramp: Duration::from_secs_f64(ramp),
    };
    Scenario {
        events: vec![
            ev(warmup, EventKind::Degrade, degraded),
            ev(fail, EventKind::Fail, degraded),
            ev(crash, EventKind::Crash, crashed),
            ev(recover, EventKind::Recover, crashed),
            ev(recover + 0.5, EventKind::Recover, degraded),
        ],
    }
}

/// Shortest demo the built-in story fits in (with time left for failback).
pub const MIN_DURATION: Duration = Duration::from_secs(55);

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Vec<String> {
        ["eu-1", "eu-2", "us-1"].map(String::from).to_vec()
    }

    const D: Duration = Duration::from_secs(60);

    #[test]
    fn a_good_file_parses_in_order() {
        let s = parse(
            "[[event]]\nat = \"5s\"\nkind = \"degrade\"\nappliance = \"eu-1\"\nramp = \"10s\"\n\n\
             [[event]]\nat = \"20s\"\nkind = \"crash\"\nappliance = \"us-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap();
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.events[0].ramp, Duration::from_secs(10));
        assert_eq!(s.events[1].kind, EventKind::Crash);
        assert_eq!(s.events[1].name(), "crash us-1");
    }

    #[test]
    fn an_unknown_appliance_names_its_line() {
        let e = parse(
            "[[event]]\nat = \"5s\"\nkind = \"crash\"\nappliance = \"mars-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap_err();
        assert!(
            e.starts_with("s.toml:4: unknown appliance \"mars-1\""),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn an_event_in_the_past_names_its_line() {
        let e = parse(
            "[[event]]\nat = \"20s\"\nkind = \"crash\"\nappliance = \"eu-1\"\n\
             [[event]]\nat = \"10s\"\nkind = \"recover\"\nappliance = \"eu-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap_err();
        assert!(
            e.starts_with("s.toml:6: event at 10s is in the past"),
            "{e}"
        );
        let e = parse(
            "[[event]]\nat = \"90s\"\nkind = \"crash\"\nappliance = \"eu-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap_err();
        assert!(
            e.starts_with("s.toml:2: event at 90s is after the end"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_duration_names_its_line() {
        let e = parse(
            "[[event]]\nkind = \"crash\"\nat = \"soon\"\nappliance = \"eu-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap_err();
        assert!(e.starts_with("s.toml:3: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse(
            "[[event]]\nat = \"5s\"\nkind = \"explode\"\nappliance = \"eu-1\"\n",
            "s.toml",
            &fleet(),
            D,
        )
        .unwrap_err();
        assert!(e.starts_with("s.toml:3: "), "{e}");
    }

    #[test]
    fn the_built_in_story_fits_the_shortest_demo() {
        for d in [MIN_DURATION, D, Duration::from_secs(300)] {
            let s = built_in(d, "eu-1", "us-1");
            let last = s.events.last().unwrap().at;
            assert!(last + Duration::from_secs(12) <= d, "{d:?}: {s:?}");
            assert!(s.events.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }
}
