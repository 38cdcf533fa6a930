//! What each event of a demo run cost the clients, from their probe timelines. Pure.
//!
//! Definitions (as the client helper's own report):
//! - an event concerns the clients whose primary is the event's appliance; its window runs
//!   from its time to the next event on the same appliance (or the end of the run);
//! - a probe of those clients sent in the window is *lost* when no reply came within the loss
//!   timeout;
//! - the *longest gap* is the longest time between two consecutive replies of one of those
//!   clients whose middle falls in the window (a silence that begins a moment before the event
//!   that caused it is still that event's; a client that never heard again: until the end of
//!   the run);
//! - a client *moved* in the window when its tunnel changed appliance in it;
//! - the run *survived* when every client heard a reply in the last [`ALIVE`] of the run.
//!
//! Totals count every client, whatever its appliance.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::timeline::Recorded;

/// A client is alive at the end when it heard a reply this recently.
pub const ALIVE: Duration = Duration::from_secs(2);

/// One event's cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventReport {
    /// E.g. `crash us-2`.
    pub name: String,
    /// `predicted`, `failure`, `sudden` or `failback`.
    pub kind: String,
    /// Seconds from the start of the run.
    pub at_s: f64,
    /// Clients whose tunnel changed appliance in the window.
    pub clients_moved: usize,
    /// Probes sent in the window and never answered in time.
    pub probes_lost: u64,
    /// Longest silence of one client overlapping the window, in milliseconds.
    pub longest_gap_ms: f64,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Every client heard back at the end.
    pub survived: bool,
    /// Clients that did not (ids).
    pub silent_clients: Vec<String>,
    /// Probes sent in all.
    pub probes_sent: u64,
    /// Probes lost in all.
    pub probes_lost: u64,
    /// Per event, in order.
    pub events: Vec<EventReport>,
}

/// A scheduled event as the report sees it.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Name.
    pub name: String,
    /// Report kind.
    pub kind: String,
    /// The appliance it happened to.
    pub appliance: String,
    /// When it happened.
    pub at: Instant,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One client's run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// Its id.
    pub id: String,
    /// Its primary appliance.
    pub primary: String,
    /// What its probe stream saw.
    pub recorded: Recorded,
}

/// Computes the report of a run that started at `start` and stopped sending at `end`.
pub fn compute(
    clients: &[ClientRun],
    marks: &[Mark],
    start: Instant,
    end: Instant,
    loss_timeout: Duration,
) -> RunReport {
    let windows: Vec<(Instant, Instant)> = marks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let next = marks[i + 1..].iter().find(|n| n.appliance == m.appliance);
            (m.at, next.map_or(end, |n| n.at.min(end)))
        })
        .collect();
    let mut events: Vec<EventReport> = marks
        .iter()
        .map(|m| EventReport {
            name: m.name.clone(),
            kind: m.kind.clone(),
            at_s: (m.at.saturating_duration_since(start).as_secs_f64() * 10.0).round() / 10.0,
            clients_moved: 0,
            probes_lost: 0,
            longest_gap_ms: 0.0,
        })
        .collect();
    let (mut sent_total, mut lost_total) = (0, 0);
    let mut silent = Vec::new();
    for ClientRun {
        id,
        primary,
        recorded: rec,
    } in clients
    {
        let mine = |k: &usize| marks[*k].appliance == *primary;
        let answered: HashSet<Instant> = rec
            .replies
            .iter()
            .filter(|(s, a)| a.saturating_duration_since(*s) <= loss_timeout)
            .map(|(s, _)| *s)
            .collect();
        for s in rec.sent.iter().filter(|s| **s >= start && **s < end) {
            sent_total += 1;
            if answered.contains(s) {
                continue;
            }
            lost_total += 1;
            for k in (0..windows.len()).filter(mine) {
                if *s >= windows[k].0 && *s < windows[k].1 {
                    events[k].probes_lost += 1;
                }
            }
        }
        // Silences: between consecutive arrivals, and from the last one to the end.
        let mut arrivals: Vec<Instant> = rec.replies.iter().map(|r| r.1).collect();
        arrivals.sort_unstable();
        let mut gaps: Vec<(Instant, Instant)> = arrivals.windows(2).map(|w| (w[0], w[1])).collect();
        match arrivals.last() {
            Some(last) if *last < end => gaps.push((*last, end)),
            None => gaps.push((start, end)),
            Some(_) => {}
        }
        for (a, b) in gaps {
            for k in (0..windows.len()).filter(mine) {
                let (ws, we) = windows[k];
                let middle = a + b.saturating_duration_since(a) / 2;
                if middle >= ws && (middle < we || we == end) {
                    let g = ms(b.saturating_duration_since(a));
                    if g > events[k].longest_gap_ms {
                        events[k].longest_gap_ms = g;
                    }
                }
            }
        }
        for (at, _) in rec.moves.iter().skip(1) {
            for k in (0..windows.len()).filter(mine) {
                if *at >= windows[k].0 && *at < windows[k].1 {
                    events[k].clients_moved += 1;
                }
            }
        }
        if arrivals
            .last()
            .is_none_or(|l| end.saturating_duration_since(*l) > ALIVE)
        {
            silent.push(id.clone());
        }
    }
    RunReport {
        survived: silent.is_empty(),
        silent_clients: silent,
        probes_sent: sent_total,
        probes_lost: lost_total,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(20);

    /// A client probing every 20 ms from `t0` for `n` probes, silent during `[from, to)` probes.
    fn client(t0: Instant, n: u32, silent: std::ops::Range<u32>) -> Recorded {
        let mut r = Recorded::default();
        r.moves.push((t0, "127.0.0.11:51820".parse().unwrap()));
        for i in 0..n {
            let s = t0 + TICK * i;
            r.sent.push(s);
            if !silent.contains(&i) {
                r.replies.push((s, s + Duration::from_millis(1)));
            }
        }
        r
    }

    fn marks(t0: Instant) -> Vec<Mark> {
        vec![
            Mark {
                name: "degrade a".into(),
                kind: "predicted".into(),
                appliance: "a".into(),
                at: t0 + Duration::from_secs(1),
            },
            Mark {
                name: "crash b".into(),
                kind: "sudden".into(),
                appliance: "b".into(),
                at: t0 + Duration::from_secs(2),
            },
        ]
    }

    fn run(id: &str, primary: &str, recorded: Recorded) -> ClientRun {
        ClientRun {
            id: id.into(),
            primary: primary.into(),
            recorded,
        }
    }

    #[test]
    fn losses_and_gaps_land_in_their_events_window() {
        let t0 = Instant::now();
        // 150 probes = 3 s; probes 110..120 (2.2 s..2.4 s) unanswered.
        let mut c = client(t0, 150, 110..120);
        c.moves.push((
            t0 + Duration::from_millis(2300),
            "127.0.0.12:51820".parse().unwrap(),
        ));
        let quiet = client(t0, 150, 0..0);
        let end = t0 + Duration::from_secs(3);
        let r = compute(
            &[run("c1", "b", c), run("c2", "a", quiet)],
            &marks(t0),
            t0,
            end,
            Duration::from_secs(1),
        );
        assert!(r.survived);
        assert_eq!(r.probes_sent, 300);
        assert_eq!(r.probes_lost, 10);
        assert_eq!(r.events[0].probes_lost, 0);
        assert_eq!(r.events[0].clients_moved, 0);
        assert_eq!(r.events[1].probes_lost, 10);
        assert_eq!(r.events[1].clients_moved, 1);
        assert!((r.events[1].longest_gap_ms - 220.0).abs() < 1.0, "{r:?}");
        assert!(r.events[0].longest_gap_ms <= 21.0, "{r:?}");
    }

    #[test]
    fn an_event_concerns_only_its_appliances_clients() {
        let t0 = Instant::now();
        // c1 (on a) loses probes after b's crash: counted in the totals, not for b's event.
        let c = client(t0, 150, 110..120);
        let r = compute(
            &[run("c1", "a", c)],
            &marks(t0),
            t0,
            t0 + Duration::from_secs(3),
            Duration::from_secs(1),
        );
        assert_eq!(r.events[1].probes_lost, 0);
        // a's event window runs to the end: its client's loss is a's.
        assert_eq!(r.events[0].probes_lost, 10);
        assert_eq!(r.probes_lost, 10);
    }

    #[test]
    fn a_client_that_never_hears_again_did_not_survive() {
        let t0 = Instant::now();
        let c = client(t0, 150, 100..150);
        let end = t0 + Duration::from_secs(5);
        let r = compute(
            &[run("c1", "b", c)],
            &marks(t0),
            t0,
            end,
            Duration::from_secs(1),
        );
        assert!(!r.survived);
        assert_eq!(r.silent_clients, vec!["c1".to_owned()]);
        assert!(r.events[1].longest_gap_ms > 900.0, "{r:?}");
    }

    #[test]
    fn a_late_reply_is_a_loss() {
        let t0 = Instant::now();
        let mut c = client(t0, 100, 0..0);
        c.replies[60].1 = c.replies[60].0 + Duration::from_millis(1500);
        let r = compute(
            &[run("c1", "a", c)],
            &marks(t0),
            t0,
            t0 + Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert_eq!(r.events[0].probes_lost, 1);
    }
}
