//! Failure labels: the kind of each failure and whether it had precursors.
//!
//! The telemetry CSV says *when* an appliance is down; what kind of failure it was lives in a
//! companion file, `NAME.failures.csv` next to `NAME.csv` (the simulator writes it; other data
//! may not have one). Columns, found by header name in any order (others are ignored):
//! `appliance,ts,kind,precursor,precursor_s` where `ts` is the first down second, `precursor` is
//! `1`, `0` or empty (unknown) and `precursor_s` the length of the precursor in seconds (empty
//! when none or unknown). Read and written with the `csv` crate, so fields may be quoted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use csv::ByteRecord;

use crate::domain::ApplianceId;
use crate::risk::data::telemetry::{Errors, Fields, TelemetryError, csv_reader, locate_columns};

/// Header the writer produces (the reader accepts these columns in any order).
pub const FAILURES_HEADER: &str = "appliance,ts,kind,precursor,precursor_s";

/// Column names of the failures file, in the order written.
pub const FAILURE_COLUMNS: [&str; 5] = ["appliance", "ts", "kind", "precursor", "precursor_s"];

/// Column indexes into [`FAILURE_COLUMNS`].
const APPLIANCE: usize = 0;
const TS: usize = 1;
const KIND: usize = 2;
const PRECURSOR: usize = 3;
const PRECURSOR_S: usize = 4;

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

fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Reads a failures file (columns found by name, in any order), validating every field. Stops
/// after ten errors.
pub fn read_failures(input: impl Read) -> Result<FailureLabels, TelemetryError> {
    let mut reader = csv_reader(input);
    let header = reader.byte_headers()?.clone();
    let at = locate_columns(&header, &FAILURE_COLUMNS)?;
    let mut out = FailureLabels::new();
    let mut errors = Errors::default();
    let mut record = ByteRecord::new();
    while !errors.full() && reader.read_byte_record(&mut record)? {
        let f = Fields {
            record: &record,
            at: &at,
            names: &FAILURE_COLUMNS,
            line: record.position().map_or(0, csv::Position::line),
        };
        if !f.check_shape(header.len(), &mut errors) {
            continue;
        }
        if let Some(label) = parse_record(&f, &mut errors) {
            out.insert((label.appliance.clone(), label.ts), label);
        }
    }
    errors.into_result(out)
}

fn parse_record(f: &Fields<'_, 5>, errors: &mut Errors) -> Option<FailureLabel> {
    let appliance = f.get(APPLIANCE, errors).and_then(|s| {
        ApplianceId::new(s)
            .map_err(|e| f.error(APPLIANCE, e.to_string(), errors))
            .ok()
    });
    let ts = f.get(TS, errors).and_then(|s| {
        s.parse::<i64>()
            .map_err(|_| f.error(TS, format!("{s:?} is not unix seconds"), errors))
            .ok()
    });
    let kind = f.get(KIND, errors).and_then(|s| {
        if is_kind(s) {
            Some(s.to_owned())
        } else {
            f.error(
                KIND,
                format!("{s:?} is not a kind (lowercase letters, digits, _ and -)"),
                errors,
            );
            None
        }
    });
    let precursor = f.get(PRECURSOR, errors).and_then(|s| match s {
        "" => Some(None),
        "0" => Some(Some(false)),
        "1" => Some(Some(true)),
        other => {
            f.error(PRECURSOR, format!("{other:?} is not 0, 1 or empty"), errors);
            None
        }
    });
    let precursor_s = f.get(PRECURSOR_S, errors).and_then(|s| match s {
        "" => Some(None),
        s => s
            .parse::<u32>()
            .map(Some)
            .map_err(|_| {
                f.error(
                    PRECURSOR_S,
                    format!("{s:?} is not a number of seconds"),
                    errors,
                )
            })
            .ok(),
    });
    Some(FailureLabel {
        appliance: appliance?,
        ts: ts?,
        kind: kind?,
        precursor: precursor?,
        precursor_s: precursor_s?,
    })
}

/// Writes labels sorted by time, then appliance, with `csv::Writer`.
pub fn write_failures(out: &mut impl Write, labels: &[FailureLabel]) -> Result<(), TelemetryError> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(FAILURE_COLUMNS)?;
    let mut sorted: Vec<&FailureLabel> = labels.iter().collect();
    sorted.sort_by(|a, b| (a.ts, &a.appliance).cmp(&(b.ts, &b.appliance)));
    for l in sorted {
        let precursor = match l.precursor {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        let len = l.precursor_s.map(|s| s.to_string()).unwrap_or_default();
        w.write_record([
            l.appliance.as_str(),
            &l.ts.to_string(),
            &l.kind,
            precursor,
            &len,
        ])?;
    }
    w.flush()?;
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
    fn columns_by_name_and_quoted_fields() {
        let text = "kind,precursor_s,ts,appliance,precursor\n\"memory_leak\",300,100,\"eu-1\",1\n";
        let labels = read_failures(text.as_bytes()).unwrap();
        let l = &labels[&(ApplianceId::new("eu-1").unwrap(), 100)];
        assert_eq!(
            (l.kind.as_str(), l.precursor, l.precursor_s),
            ("memory_leak", Some(true), Some(300))
        );
        let bad = "kind,precursor_s,ts,appliance,precursor\nmemory_leak,300,x,eu-1,1\n";
        let Err(e) = read_failures(bad.as_bytes()) else {
            panic!("accepted")
        };
        assert_eq!(
            e.to_string(),
            "line 2, column 3 (ts): \"x\" is not unix seconds"
        );
        let Err(e) = read_failures("appliance,ts,kind\n".as_bytes()) else {
            panic!("accepted")
        };
        assert!(
            e.to_string()
                .contains("lacks columns precursor, precursor_s"),
            "{e}"
        );
    }

    #[test]
    fn companion_name() {
        assert_eq!(
            companion_path(Path::new("/d/sim.csv")),
            PathBuf::from("/d/sim.failures.csv")
        );
    }
}
