//! The labelled telemetry format: CSV, one row per appliance per second.
//!
//! Columns, in this order (the header must match exactly):
//! `ts,appliance,region,cpu,mem,bw_util,sessions,handshake_failures,rtt_ms,jitter_ms,loss,down`.
//! Every field is validated; the reader reports the line and column of each bad field. Metric
//! fields may be empty (missing); `ts`, `appliance`, `region` and `down` may not. Rows may come
//! in any order; two rows for the same appliance and second are an error.
//!
//! Inside the program a missing value is `f64::NAN` (the parser never produces NaN otherwise:
//! the text `NaN` is rejected), which keeps the numeric core free of `Option` unpacking.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};

use crate::domain::{ApplianceId, RegionId};

/// The header line, exactly.
pub const HEADER: &str =
    "ts,appliance,region,cpu,mem,bw_util,sessions,handshake_failures,rtt_ms,jitter_ms,loss,down";

/// Column names in order.
pub const COLUMNS: [&str; 12] = [
    "ts",
    "appliance",
    "region",
    "cpu",
    "mem",
    "bw_util",
    "sessions",
    "handshake_failures",
    "rtt_ms",
    "jitter_ms",
    "loss",
    "down",
];

/// Number of metric columns (`cpu` to `loss`).
pub const N_METRICS: usize = 8;

/// The metric columns, in file order; `metric as usize` indexes [`Row::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// CPU use, 0–1.
    Cpu = 0,
    /// Memory use, 0–1.
    Mem = 1,
    /// Bandwidth use as a share of capacity, 0–1.
    BwUtil = 2,
    /// Active sessions (integer).
    Sessions = 3,
    /// Failed handshakes in that second (integer).
    HandshakeFailures = 4,
    /// Round-trip time in milliseconds.
    RttMs = 5,
    /// Jitter in milliseconds.
    JitterMs = 6,
    /// Packet loss, 0–1.
    Loss = 7,
}

impl Metric {
    /// All metrics in column order.
    pub const ALL: [Metric; N_METRICS] = [
        Metric::Cpu,
        Metric::Mem,
        Metric::BwUtil,
        Metric::Sessions,
        Metric::HandshakeFailures,
        Metric::RttMs,
        Metric::JitterMs,
        Metric::Loss,
    ];

    /// The column name.
    pub fn name(self) -> &'static str {
        COLUMNS[3 + self as usize]
    }

    fn kind(self) -> FieldKind {
        match self {
            Metric::Cpu | Metric::Mem | Metric::BwUtil | Metric::Loss => FieldKind::Fraction,
            Metric::Sessions | Metric::HandshakeFailures => FieldKind::Count,
            Metric::RttMs | Metric::JitterMs => FieldKind::Millis,
        }
    }
}

#[derive(Clone, Copy)]
enum FieldKind {
    Fraction,
    Count,
    Millis,
}

/// Largest accepted `rtt_ms`/`jitter_ms`: ten minutes is no longer a round trip.
const MAX_MILLIS: f64 = 600_000.0;
/// Accepted `ts` range: 1970 to 2100. Anything else is a unit mistake (milliseconds).
const MAX_TS: i64 = 4_102_444_800;
/// Errors collected before the reader gives up.
const MAX_ERRORS: usize = 10;
/// Longest line accepted; a real row is about 100 bytes.
const MAX_LINE: usize = 4096;

/// One second of one appliance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Unix seconds.
    pub ts: i64,
    /// Index into [`Telemetry::appliances`].
    pub appliance: u32,
    /// Metric values in [`Metric`] order; NaN when missing.
    pub values: [f64; N_METRICS],
    /// The appliance is failed during this second.
    pub down: bool,
}

impl Row {
    /// The value of one metric, `None` when missing.
    pub fn get(&self, m: Metric) -> Option<f64> {
        let v = self.values[m as usize];
        (!v.is_nan()).then_some(v)
    }
}

/// An appliance named in the data, with its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceInfo {
    /// The appliance.
    pub id: ApplianceId,
    /// Its region.
    pub region: RegionId,
}

/// A telemetry data set: appliances (interned) and rows, sorted by appliance then time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// Appliances in order of first appearance.
    pub appliances: Vec<ApplianceInfo>,
    /// Rows sorted by (appliance, ts), no duplicates.
    pub rows: Vec<Row>,
}

/// One bad field (or line) in a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// 1-based line number.
    pub line: u64,
    /// 1-based column number.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = COLUMNS.get(self.column.wrapping_sub(1)).copied();
        match name {
            Some(name) => write!(
                f,
                "line {}, column {} ({name}): {}",
                self.line, self.column, self.message
            ),
            None => write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            ),
        }
    }
}

/// Why telemetry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The data is invalid; up to ten problems, in file order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

/// Appends an error unless the list is full; returns whether the reader should stop.
fn push(errors: &mut Vec<FieldError>, line: u64, column: usize, message: String) -> bool {
    if errors.len() < MAX_ERRORS {
        errors.push(FieldError {
            line,
            column,
            message,
        });
    }
    errors.len() >= MAX_ERRORS
}

fn parse_metric(kind: FieldKind, text: &str) -> Result<f64, String> {
    if text.is_empty() {
        return Ok(f64::NAN);
    }
    match kind {
        FieldKind::Count => text
            .parse::<u32>()
            .map(f64::from)
            .map_err(|_| format!("{text:?} is not a non-negative integer")),
        FieldKind::Fraction | FieldKind::Millis => {
            let v: f64 = text
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("{text:?} is not a number"))?;
            match kind {
                FieldKind::Fraction if !(0.0..=1.0).contains(&v) => {
                    Err(format!("{text} is not in [0, 1]"))
                }
                FieldKind::Millis if !(0.0..=MAX_MILLIS).contains(&v) => {
                    Err(format!("{text} is not in [0, {MAX_MILLIS}] ms"))
                }
                _ => Ok(v),
            }
        }
    }
}

/// Reads and validates CSV telemetry. Stops after ten errors.
pub fn read_csv(mut input: impl BufRead) -> Result<Telemetry, TelemetryError> {
    let mut errors = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut appliances: Vec<ApplianceInfo> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    // Line of each row, to report duplicates where they are.
    let mut lines: Vec<u64> = Vec::new();
    let mut saw_header = false;
    let mut buf = String::new();
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let n = std::io::Read::take(&mut input, MAX_LINE as u64 + 1)
            .read_line(&mut buf)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => TelemetryError::Invalid(vec![FieldError {
                    line: line_no + 1,
                    column: 1,
                    message: "not valid UTF-8".into(),
                }]),
                _ => TelemetryError::Io(e),
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_LINE {
            push(
                &mut errors,
                line_no,
                1,
                format!("line longer than {MAX_LINE} bytes"),
            );
            break;
        }
        let line = buf.trim_end_matches(['\n', '\r']);
        if !saw_header {
            saw_header = true;
            let line = line.trim_start_matches('\u{feff}');
            if line != HEADER {
                let fields: Vec<&str> = line.split(',').collect();
                let column = COLUMNS
                    .iter()
                    .zip(fields.iter().chain(std::iter::repeat(&"")))
                    .position(|(want, got)| want != got)
                    .unwrap_or(COLUMNS.len())
                    + 1;
                errors.push(FieldError {
                    line: 1,
                    column,
                    message: format!("header must be exactly {HEADER:?}"),
                });
                break;
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(row) = parse_line(line, line_no, &mut index, &mut appliances, &mut errors) {
            rows.push(row);
            lines.push(line_no);
        }
        if errors.len() >= MAX_ERRORS {
            break;
        }
    }
    if !saw_header {
        errors.push(FieldError {
            line: 1,
            column: 1,
            message: format!("empty file; expected the header {HEADER:?}"),
        });
    }
    if errors.is_empty() {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by_key(|&i| (rows[i].appliance, rows[i].ts, lines[i]));
        for pair in order.windows(2) {
            let (a, b) = (&rows[pair[0]], &rows[pair[1]]);
            if a.appliance == b.appliance && a.ts == b.ts {
                let stop = push(
                    &mut errors,
                    lines[pair[1]],
                    1,
                    format!(
                        "second row for appliance {} at ts {} (first on line {})",
                        appliances[a.appliance as usize].id, a.ts, lines[pair[0]]
                    ),
                );
                if stop {
                    break;
                }
            }
        }
        if errors.is_empty() {
            let rows = order.into_iter().map(|i| rows[i]).collect();
            return Ok(Telemetry { appliances, rows });
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Err(TelemetryError::Invalid(errors))
}

fn parse_line(
    line: &str,
    line_no: u64,
    index: &mut HashMap<String, u32>,
    appliances: &mut Vec<ApplianceInfo>,
    errors: &mut Vec<FieldError>,
) -> Option<Row> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != COLUMNS.len() {
        let column = fields.len().min(COLUMNS.len()) + 1;
        push(
            errors,
            line_no,
            column,
            format!("expected {} fields, found {}", COLUMNS.len(), fields.len()),
        );
        return None;
    }
    let before = errors.len();
    let ts = match fields[0].parse::<i64>() {
        Ok(ts) if (0..=MAX_TS).contains(&ts) => ts,
        Ok(_) => {
            push(
                errors,
                line_no,
                1,
                format!("{} is not unix seconds between 1970 and 2100", fields[0]),
            );
            0
        }
        Err(_) => {
            push(
                errors,
                line_no,
                1,
                format!("{:?} is not an integer (unix seconds)", fields[0]),
            );
            0
        }
    };
    let appliance =
        ApplianceId::new(fields[1]).map_err(|e| push(errors, line_no, 2, e.to_string()));
    let region = RegionId::new(fields[2]).map_err(|e| push(errors, line_no, 3, e.to_string()));
    let mut values = [f64::NAN; N_METRICS];
    for m in Metric::ALL {
        let col = 3 + m as usize;
        match parse_metric(m.kind(), fields[col]) {
            Ok(v) => values[m as usize] = v,
            Err(msg) => {
                push(errors, line_no, col + 1, msg);
            }
        }
    }
    let down = match fields[11] {
        "0" => false,
        "1" => true,
        other => {
            push(errors, line_no, 12, format!("{other:?} is not 0 or 1"));
            false
        }
    };
    let (Ok(appliance), Ok(region)) = (appliance, region) else {
        return None;
    };
    if errors.len() > before {
        return None;
    }
    let idx = match index.get(appliance.as_str()) {
        Some(&i) => {
            let known = &appliances[i as usize].region;
            if *known != region {
                push(
                    errors,
                    line_no,
                    3,
                    format!("appliance {appliance} was in region {known} on an earlier line"),
                );
                return None;
            }
            i
        }
        None => {
            let i = u32::try_from(appliances.len()).ok()?;
            index.insert(appliance.as_str().to_owned(), i);
            appliances.push(ApplianceInfo {
                id: appliance,
                region,
            });
            i
        }
    };
    Some(Row {
        ts,
        appliance: idx,
        values,
        down,
    })
}

/// Writes one metric value: empty when missing, integers without a fraction, others in the
/// shortest form that reads back to the same number.
fn write_value(out: &mut impl Write, m: Metric, v: f64) -> std::io::Result<()> {
    if v.is_nan() {
        return Ok(());
    }
    match m.kind() {
        FieldKind::Count => write!(out, "{}", v as u64),
        _ => write!(out, "{v}"),
    }
}

/// Writes the header and `rows` (in the given order) as CSV.
pub fn write_csv<'a>(
    out: &mut impl Write,
    appliances: &[ApplianceInfo],
    rows: impl IntoIterator<Item = &'a Row>,
) -> Result<(), TelemetryError> {
    writeln!(out, "{HEADER}")?;
    for r in rows {
        write_row(out, appliances, r)?;
    }
    Ok(())
}

/// Writes one row (no header).
pub fn write_row(
    out: &mut impl Write,
    appliances: &[ApplianceInfo],
    r: &Row,
) -> Result<(), TelemetryError> {
    let info = appliances.get(r.appliance as usize).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "row names an unknown appliance",
        )
    })?;
    write!(out, "{},{},{}", r.ts, info.id, info.region)?;
    for m in Metric::ALL {
        out.write_all(b",")?;
        write_value(out, m, r.values[m as usize])?;
    }
    writeln!(out, ",{}", u8::from(r.down))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Telemetry, Vec<FieldError>> {
        read_csv(text.as_bytes()).map_err(|e| match e {
            TelemetryError::Invalid(v) => v,
            TelemetryError::Io(e) => panic!("{e}"),
        })
    }

    #[test]
    fn reads_good_rows_unsorted_with_missing_values() {
        let text = format!(
            "{HEADER}\n\
             11,eu-1,eu,0.5,0.25,0.1,10,0,12.5,1,0,0\n\
             10,eu-1,eu,0.4,,0.1,10,2,,,1,1\r\n\
             \n\
             10,us-1,us,1,1,1,0,0,0,0,0,0\n"
        );
        let t = read(&text).unwrap();
        assert_eq!(t.appliances.len(), 2);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].ts, 10);
        assert_eq!(t.rows[0].get(Metric::Mem), None);
        assert_eq!(t.rows[0].get(Metric::HandshakeFailures), Some(2.0));
        assert!(t.rows[0].down);
        assert_eq!(t.rows[1].ts, 11);
        assert_eq!(t.rows[1].get(Metric::RttMs), Some(12.5));
        assert_eq!(
            t.appliances[t.rows[2].appliance as usize].id.as_str(),
            "us-1"
        );
    }

    #[test]
    fn reports_line_and_column() {
        let text = format!(
            "{HEADER}\n\
             10,eu-1,eu,0.5,0.25,0.1,10,0,12.5,1,0,0\n\
             11,eu-1,eu,1.5,0.25,0.1,10,0,12.5,1,0,0\n\
             12,eu-1,eu,0.5,0.25,0.1,-3,0,12.5,1,0,2\n"
        );
        let errs = read(&text).unwrap_err();
        assert_eq!(
            errs.iter().map(|e| (e.line, e.column)).collect::<Vec<_>>(),
            vec![(3, 4), (4, 7), (4, 12)]
        );
        assert_eq!(
            errs[0].to_string(),
            "line 3, column 4 (cpu): 1.5 is not in [0, 1]"
        );
    }

    #[test]
    fn rejects_bad_ids_counts_nan_and_field_counts() {
        let text = format!(
            "{HEADER}\n\
             x,EU-1,eu,NaN,0.25,0.1,1.5,0,12.5,1,0,0\n\
             10,eu-1,eu,0.5\n\
             10,eu-1,eu,0.5,0.25,0.1,10,0,12.5,1,0,0,7\n"
        );
        let errs = read(&text).unwrap_err();
        let at: Vec<_> = errs.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, vec![(2, 1), (2, 2), (2, 4), (2, 7), (3, 5), (4, 13)]);
        assert!(errs[4].message.contains("expected 12 fields, found 4"));
    }

    #[test]
    fn header_duplicates_and_region_changes() {
        let errs = read("ts,appliance,zone\n").unwrap_err();
        assert_eq!((errs[0].line, errs[0].column), (1, 3));
        assert_eq!((read("").unwrap_err()[0].line), 1);
        let text =
            format!("{HEADER}\n10,eu-1,eu,,,,,,,,,0\n10,eu-1,eu,,,,,,,,,0\n11,eu-1,us,,,,,,,,,0\n");
        let errs = read(&text).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column), (4, 3));
        let text = format!("{HEADER}\n10,eu-1,eu,,,,,,,,,0\n10,eu-1,eu,,,,,,,,,0\n");
        let errs = read(&text).unwrap_err();
        assert_eq!((errs[0].line, errs[0].column), (3, 1));
        assert!(errs[0].message.contains("first on line 2"), "{}", errs[0]);
    }

    #[test]
    fn write_then_read_round_trips() {
        let text = format!(
            "{HEADER}\n10,eu-1,eu,0.1234,,0.5,12,3,40.25,0.5,0.01,0\n11,eu-1,eu,,,,,,,,1,1\n"
        );
        let t = read(&text).unwrap();
        let mut out = Vec::new();
        write_csv(&mut out, &t.appliances, &t.rows).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text);
    }
}
