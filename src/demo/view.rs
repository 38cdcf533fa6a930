//! The live terminal view: a table redrawn in place on a terminal, a plain line every few
//! seconds otherwise (logs, CI). Pure rendering: rows in, text out.

use std::fmt::Write as _;

/// One appliance's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Id.
    pub id: String,
    /// Region.
    pub region: String,
    /// Agent process running.
    pub running: bool,
    /// State in the inventory (`active`, `down`, ...).
    pub state: String,
    /// Risk and its interval.
    pub risk: Option<(f64, f64, f64)>,
    /// Clients whose tunnel is on it now.
    pub clients: usize,
}

/// What happened so far, one line per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Happened {
    /// Seconds from the start.
    pub at_s: f64,
    /// E.g. `crash us-2`.
    pub name: String,
    /// Clients moved since, probes lost since, longest gap since (ms).
    pub moved: usize,
    /// Probes lost since the event.
    pub lost: u64,
    /// Longest gap since the event.
    pub gap_ms: f64,
}

fn risk_text(risk: Option<(f64, f64, f64)>) -> String {
    risk.map_or_else(
        || "-".to_owned(),
        |(s, l, h)| format!("{s:.3} [{l:.3}, {h:.3}]"),
    )
}

/// The table.
pub fn table(title: &str, lines: &[Line], events: &[Happened]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{:<8} {:<6} {:<8} {:<26} {:>7}",
        "APPLIANCE", "REGION", "STATE", "RISK [INTERVAL]", "CLIENTS"
    );
    for l in lines {
        let state = if l.running {
            l.state.as_str()
        } else {
            "stopped"
        };
        let _ = writeln!(
            out,
            "{:<8} {:<6} {:<8} {:<26} {:>7}",
            l.id,
            l.region,
            state,
            risk_text(l.risk),
            l.clients
        );
    }
    if !events.is_empty() {
        let _ = writeln!(out, "EVENTS");
        for e in events {
            let _ = writeln!(
                out,
                "  {:>5.1}s {:<16} moved {:>3}  lost {:>4}  longest gap {:>7.0} ms",
                e.at_s, e.name, e.moved, e.lost, e.gap_ms
            );
        }
    }
    out
}

/// The one-line form.
pub fn plain(t_s: f64, lines: &[Line]) -> String {
    let mut out = format!("t={t_s:>5.1}s");
    for l in lines {
        let state = if l.running {
            l.state.as_str()
        } else {
            "stopped"
        };
        let risk = l
            .risk
            .map_or_else(|| "-".to_owned(), |(s, _, _)| format!("{s:.2}"));
        let _ = write!(out, " | {} {state} risk {risk} clients {}", l.id, l.clients);
    }
    out
}

/// Moves the cursor back over `lines` printed lines and clears below (ANSI).
pub fn rewind(lines: usize) -> String {
    if lines == 0 {
        String::new()
    } else {
        format!("\x1b[{lines}A\x1b[J")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_state_risk_and_events() {
        let lines = [
            Line {
                id: "eu-1".into(),
                region: "eu".into(),
                running: true,
                state: "active".into(),
                risk: Some((0.5, 0.4, 0.6)),
                clients: 3,
            },
            Line {
                id: "us-1".into(),
                region: "us".into(),
                running: false,
                state: "active".into(),
                risk: None,
                clients: 0,
            },
        ];
        let t = table(
            "t",
            &lines,
            &[Happened {
                at_s: 8.0,
                name: "degrade eu-1".into(),
                moved: 3,
                lost: 0,
                gap_ms: 40.0,
            }],
        );
        assert!(t.contains("0.500 [0.400, 0.600]"), "{t}");
        assert!(t.contains("stopped"), "{t}");
        assert!(t.contains("degrade eu-1"), "{t}");
        let p = plain(1.0, &lines);
        assert!(p.contains("eu-1 active risk 0.50 clients 3"), "{p}");
        assert_eq!(rewind(0), "");
    }
}
