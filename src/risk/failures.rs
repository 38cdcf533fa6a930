//! Failure labels: the kind of each failure and whether it had precursors.
//!
//! The telemetry CSV says *when* an appliance is down; what kind of failure it was lives in a
//! companion file, `NAME.failures.csv` next to `NAME.csv` (the simulator writes it; other data
//! may not have one). Columns: `appliance,ts,kind,precursor,precursor_s` where `ts` is the first
//! down second, `precursor` is `1`, `0` or empty (unknown) and `precursor_s` the length of the
//! precursor in seconds (empty when none or unknown).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::telemetry::{FieldError, TelemetryError};
use crate::domain::ApplianceId;

/// Header of the failures file.
pub const FAILURES_HEADER: &str = "appliance,ts,kind,precursor,precursor_s";

const FAILURE_COLUMNS: usize = 5;

/// What is known about one failure beyond its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureLabel {
    /// The appliance.
    pub appliance: ApplianceId,
    /// First down second.
    pub ts: i64,
    /// Kind, e.g. `memory_leak` or `power_loss`.
    pub kind: String,
    /// Whether it had observable precursors; `None` when unknown.
    pub precursor: Option<bool>,
    /// Length of the precursor in seconds, when known.
    pub precursor_s: Option<u32>,
}

/// Failure labels keyed by (appliance, first down second).
pub type FailureLabels = HashMap<(ApplianceId, i64), FailureLabel>;

/// The companion failures file of a telemetry file: `x.csv` -> `x.failures.csv`.
pub fn companion_path(data: &Path) -> PathBuf {
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    data.with_file_name(format!("{stem}.failures.csv"))
}

fn push_err(errors: &mut Vec<FieldError>, line: u64, column: usize, message: String) {
    errors.push(FieldError {
        line,
        column,
        message,
    });
}

fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Reads a failures file, validating every field.
pub fn read_failures(input: impl BufRead) -> Result<FailureLabels, TelemetryError> {
    let mut out = FailureLabels::new();
    let mut errors = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line_no == 1 {
            if line.trim_start_matches('\u{feff}') != FAILURES_HEADER {
                push_err(
                    &mut errors,
                    1,
                    1,
                    format!("header must be exactly {FAILURES_HEADER:?}"),
                );
                break;
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != FAILURE_COLUMNS {
            push_err(
                &mut errors,
                line_no,
                f.len().min(FAILURE_COLUMNS) + 1,
                format!("expected {FAILURE_COLUMNS} fields, found {}", f.len()),
            );
            continue;
        }
        let appliance =
            ApplianceId::new(f[0]).map_err(|e| push_err(&mut errors, line_no, 1, e.to_string()));
        let ts = f[1].parse::<i64>().map_err(|_| {
            push_err(
                &mut errors,
                line_no,
                2,
                format!("{:?} is not unix seconds", f[1]),
            )
        });
        if !is_kind(f[2]) {
            push_err(
                &mut errors,
                line_no,
                3,
                format!(
                    "{:?} is not a kind (lowercase letters, digits, _ and -)",
                    f[2]
                ),
            );
        }
        let precursor = match f[3] {
            "" => Ok(None),
            "0" => Ok(Some(false)),
            "1" => Ok(Some(true)),
            other => {
                push_err(
                    &mut errors,
                    line_no,
                    4,
                    format!("{other:?} is not 0, 1 or empty"),
                );
                Err(())
            }
        };
        let precursor_s = match f[4] {
            "" => Ok(None),
            s => s.parse::<u32>().map(Some).map_err(|_| {
                push_err(
                    &mut errors,
                    line_no,
                    5,
                    format!("{s:?} is not a number of seconds"),
                )
            }),
        };
        if let (Ok(appliance), Ok(ts), Ok(precursor), Ok(precursor_s), true) =
            (appliance, ts, precursor, precursor_s, is_kind(f[2]))
        {
            out.insert(
                (appliance.clone(), ts),
                FailureLabel {
                    appliance,
                    ts,
                    kind: f[2].to_owned(),
                    precursor,
                    precursor_s,
                },
            );
        }
        if errors.len() >= 10 {
            break;
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(TelemetryError::Invalid(errors))
    }
}

/// Writes labels sorted by time, then appliance.
pub fn write_failures(out: &mut impl Write, labels: &[FailureLabel]) -> std::io::Result<()> {
    writeln!(out, "{FAILURES_HEADER}")?;
    let mut sorted: Vec<&FailureLabel> = labels.iter().collect();
    sorted.sort_by(|a, b| (a.ts, &a.appliance).cmp(&(b.ts, &b.appliance)));
    for l in sorted {
        let precursor = match l.precursor {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        let len = l.precursor_s.map(|s| s.to_string()).unwrap_or_default();
        writeln!(out, "{},{},{},{precursor},{len}", l.appliance, l.ts, l.kind)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let labels = vec![FailureLabel {
            appliance: ApplianceId::new("eu-1").unwrap(),
            ts: 100,
            kind: "memory_leak".into(),
            precursor: Some(true),
            precursor_s: Some(300),
        }];
        let mut buf = Vec::new();
        write_failures(&mut buf, &labels).unwrap();
        let back = read_failures(buf.as_slice()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.values().next().unwrap(), &labels[0]);
        let bad = format!("{FAILURES_HEADER}\neu-1,x,Bad Kind,2,\n");
        let Err(TelemetryError::Invalid(errs)) = read_failures(bad.as_bytes()) else {
            panic!("accepted")
        };
        let at: Vec<_> = errs.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, vec![(2, 2), (2, 3), (2, 4)]);
    }

    #[test]
    fn companion_name() {
        assert_eq!(
            companion_path(Path::new("/d/sim.csv")),
            PathBuf::from("/d/sim.failures.csv")
        );
    }
}
