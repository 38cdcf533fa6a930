//! The labelled telemetry format: CSV, one row per appliance per second.
//!
//! Columns, found by their header name in any order:
//! `ts,appliance,region,cpu,mem,bw_util,sessions,handshake_failures,rtt_ms,jitter_ms,loss,down`.
//! All twelve must be present; other columns are ignored. Fields may be quoted (RFC 4180, read
//! and written with the `csv` crate). Every field is validated; the reader reports the line,
//! column and column name of each bad field. Metric fields may be empty (missing); `ts`,
//! `appliance`, `region` and `down` may not. Rows may come in any order; two rows for the same
//! appliance and second are an error.
//!
//! Inside the program a missing value is `f64::NAN` (the parser never produces NaN otherwise:
//! the text `NaN` is rejected), which keeps the numeric core free of `Option` unpacking.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};

use csv::ByteRecord;

use crate::domain::{ApplianceId, RegionId};

/// The header line the writer produces (the reader accepts these columns in any order).
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
/// Longest record accepted, in bytes; a real row is about 100.
const MAX_LINE: usize = 4096;
/// Rows between two calls of the progress callback.
const PROGRESS_EVERY: u64 = 1 << 16;

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
    /// 1-based line number (of the line the record starts on).
    pub line: u64,
    /// 1-based column number in the file; 0 when the problem is the line as a whole (a column
    /// missing from the header).
    pub column: usize,
    /// Name of the column, when the error is about a known one.
    pub name: Option<&'static str>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if self.column > 0 {
            write!(f, ", column {}", self.column)?;
        }
        if let Some(name) = self.name {
            write!(f, " ({name})")?;
        }
        write!(f, ": {}", self.message)
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

impl From<csv::Error> for TelemetryError {
    /// I/O errors stay I/O errors; anything else the `csv` crate reports (it is configured so
    /// that only malformed input could cause one) becomes an invalid line.
    fn from(e: csv::Error) -> Self {
        let line = e.position().map_or(1, csv::Position::line);
        let message = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(io) => TelemetryError::Io(io),
            _ => TelemetryError::Invalid(vec![FieldError {
                line,
                column: 1,
                name: None,
                message,
            }]),
        }
    }
}

/// Collects up to [`MAX_ERRORS`] field errors of one CSV file.
#[derive(Debug, Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    /// Appends an error unless the list is full.
    pub(super) fn push(
        &mut self,
        line: u64,
        column: usize,
        name: Option<&'static str>,
        message: String,
    ) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(FieldError {
                line,
                column,
                name,
                message,
            });
        }
    }

    /// Whether the reader should stop.
    pub(super) fn full(&self) -> bool {
        self.0.len() >= MAX_ERRORS
    }

    /// Number collected.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when there were none, else the errors in file order.
    pub(super) fn into_result<T>(mut self, value: T) -> Result<T, TelemetryError> {
        if self.0.is_empty() {
            return Ok(value);
        }
        self.0.sort_by_key(|e| (e.line, e.column));
        Err(TelemetryError::Invalid(self.0))
    }
}

/// A CSV reader as both files are read: the first record is the header, records may have any
/// number of fields (the callers report a wrong count with its line), blank lines are skipped,
/// a UTF-8 byte order mark is dropped.
pub(super) fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input)
}

/// Finds each of `names` in `header` by name. Other columns are ignored. Reports every column
/// that is missing (with the names it did not know, which are often typos) and every name that
/// appears twice.
pub(super) fn locate_columns<const N: usize>(
    header: &ByteRecord,
    names: &[&'static str; N],
) -> Result<[usize; N], TelemetryError> {
    let mut errors = Errors::default();
    if header.is_empty() {
        errors.push(
            1,
            1,
            None,
            format!("empty file; expected the header {:?}", names.join(",")),
        );
        return errors.into_result([0; N]);
    }
    let mut at = [None::<usize>; N];
    let mut unknown = Vec::new();
    for (column, field) in header.iter().enumerate() {
        match names.iter().position(|n| n.as_bytes() == field) {
            Some(i) => match at[i] {
                Some(first) => errors.push(
                    1,
                    column + 1,
                    Some(names[i]),
                    format!(
                        "column {} appears twice (first in column {})",
                        names[i],
                        first + 1
                    ),
                ),
                None => at[i] = Some(column),
            },
            None => unknown.push(format!("{:?}", String::from_utf8_lossy(field))),
        }
    }
    let missing: Vec<&str> = (0..N)
        .filter(|&i| at[i].is_none())
        .map(|i| names[i])
        .collect();
    if !missing.is_empty() {
        let mut message = format!(
            "the header lacks column{} {} (needed, in any order: {})",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            names.join(",")
        );
        if !unknown.is_empty() {
            message.push_str(&format!("; unknown columns: {}", unknown.join(", ")));
        }
        errors.push(1, 0, None, message);
    }
    errors.into_result(at.map(|c| c.unwrap_or(0)))
}

/// The fields of one record, looked up by the column positions from [`locate_columns`].
pub(super) struct Fields<'a, const N: usize> {
    /// The record.
    pub(super) record: &'a ByteRecord,
    /// Position of each expected column.
    pub(super) at: &'a [usize; N],
    /// Names of the expected columns.
    pub(super) names: &'a [&'static str; N],
    /// Line the record starts on.
    pub(super) line: u64,
}

impl<const N: usize> Fields<'_, N> {
    /// Field `i` (index into the expected names) as text; an error names its line and column.
    pub(super) fn get(&self, i: usize, errors: &mut Errors) -> Option<&str> {
        let raw = self.record.get(self.at[i]).unwrap_or_default();
        match std::str::from_utf8(raw) {
            Ok(s) => Some(s),
            Err(_) => {
                self.error(i, "not valid UTF-8".into(), errors);
                None
            }
        }
    }

    /// Records an error in field `i`.
    pub(super) fn error(&self, i: usize, message: String, errors: &mut Errors) {
        errors.push(self.line, self.at[i] + 1, Some(self.names[i]), message);
    }

    /// Checks the record's length: too long to be a real record, or a field count other than the
    /// header's. Returns whether the record can be read.
    pub(super) fn check_shape(&self, width: usize, errors: &mut Errors) -> bool {
        if self.record.as_slice().len() > MAX_LINE {
            errors.push(
                self.line,
                1,
                None,
                format!("record longer than {MAX_LINE} bytes"),
            );
            return false;
        }
        if self.record.len() != width {
            errors.push(
                self.line,
                self.record.len().min(width) + 1,
                None,
                format!("expected {width} fields, found {}", self.record.len()),
            );
            return false;
        }
        true
    }
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
pub fn read_csv(input: impl Read) -> Result<Telemetry, TelemetryError> {
    read_csv_with_progress(input, &mut |_| {})
}

/// [`read_csv`], calling `progress` with the number of bytes read so far every 65,536 rows (for
/// a progress bar; the caller knows the file's size).
pub fn read_csv_with_progress(
    input: impl Read,
    progress: &mut dyn FnMut(u64),
) -> Result<Telemetry, TelemetryError> {
    let mut reader = csv_reader(input);
    let header = reader.byte_headers()?.clone();
    let at = locate_columns(&header, &COLUMNS)?;
    let mut errors = Errors::default();
    let mut interner = Interner::default();
    let mut rows: Vec<Row> = Vec::new();
    // Line of each row, to report duplicates where they are.
    let mut lines: Vec<u64> = Vec::new();
    let mut record = ByteRecord::new();
    let mut seen: u64 = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => match TelemetryError::from(e) {
                TelemetryError::Invalid(v) => {
                    errors.0.extend(v);
                    break;
                }
                io => return Err(io),
            },
        }
        let fields = Fields {
            record: &record,
            at: &at,
            names: &COLUMNS,
            line: record.position().map_or(0, csv::Position::line),
        };
        if !fields.check_shape(header.len(), &mut errors) {
            if errors.full() || record.as_slice().len() > MAX_LINE {
                break;
            }
            continue;
        }
        if let Some(row) = parse_record(&fields, &mut interner, &mut errors) {
            rows.push(row);
            lines.push(fields.line);
        }
        if errors.full() {
            break;
        }
        seen += 1;
        if seen.is_multiple_of(PROGRESS_EVERY) {
            progress(reader.position().byte());
        }
    }
    progress(reader.position().byte());
    if errors.len() > 0 {
        return errors.into_result(Telemetry::default());
    }
    let appliances = interner.appliances;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| (rows[i].appliance, rows[i].ts, lines[i]));
    for pair in order.windows(2) {
        let (a, b) = (&rows[pair[0]], &rows[pair[1]]);
        if a.appliance == b.appliance && a.ts == b.ts {
            errors.push(
                lines[pair[1]],
                at[0] + 1,
                Some(COLUMNS[0]),
                format!(
                    "second row for appliance {} at ts {} (first on line {})",
                    appliances[a.appliance as usize].id, a.ts, lines[pair[0]]
                ),
            );
            if errors.full() {
                break;
            }
        }
    }
    let rows = order.into_iter().map(|i| rows[i]).collect();
    errors.into_result(Telemetry { appliances, rows })
}

/// Appliances by name, numbered in order of first appearance.
#[derive(Default)]
struct Interner {
    /// Name to index into `appliances`.
    index: HashMap<String, u32>,
    /// The appliances seen so far.
    appliances: Vec<ApplianceInfo>,
}

/// Column indexes into [`COLUMNS`].
const TS: usize = 0;
const APPLIANCE: usize = 1;
const REGION: usize = 2;
const DOWN: usize = 11;

fn parse_record(f: &Fields<'_, 12>, interner: &mut Interner, errors: &mut Errors) -> Option<Row> {
    let before = errors.len();
    let ts = f.get(TS, errors).and_then(|s| match s.parse::<i64>() {
        Ok(ts) if (0..=MAX_TS).contains(&ts) => Some(ts),
        Ok(_) => {
            f.error(
                TS,
                format!("{s} is not unix seconds between 1970 and 2100"),
                errors,
            );
            None
        }
        Err(_) => {
            f.error(
                TS,
                format!("{s:?} is not an integer (unix seconds)"),
                errors,
            );
            None
        }
    });
    let appliance = f.get(APPLIANCE, errors).and_then(|s| {
        ApplianceId::new(s)
            .map_err(|e| f.error(APPLIANCE, e.to_string(), errors))
            .ok()
    });
    let region = f.get(REGION, errors).and_then(|s| {
        RegionId::new(s)
            .map_err(|e| f.error(REGION, e.to_string(), errors))
            .ok()
    });
    let mut values = [f64::NAN; N_METRICS];
    for m in Metric::ALL {
        let col = 3 + m as usize;
        if let Some(s) = f.get(col, errors) {
            match parse_metric(m.kind(), s) {
                Ok(v) => values[m as usize] = v,
                Err(msg) => f.error(col, msg, errors),
            }
        }
    }
    let down = f.get(DOWN, errors).and_then(|s| match s {
        "0" => Some(false),
        "1" => Some(true),
        other => {
            f.error(DOWN, format!("{other:?} is not 0 or 1"), errors);
            None
        }
    });
    let (Some(ts), Some(appliance), Some(region), Some(down)) = (ts, appliance, region, down)
    else {
        return None;
    };
    if errors.len() > before {
        return None;
    }
    let idx = match interner.index.get(appliance.as_str()) {
        Some(&i) => {
            let known = &interner.appliances[i as usize].region;
            if *known != region {
                f.error(
                    REGION,
                    format!("appliance {appliance} was in region {known} on an earlier line"),
                    errors,
                );
                return None;
            }
            i
        }
        None => {
            let i = u32::try_from(interner.appliances.len()).ok()?;
            interner.index.insert(appliance.as_str().to_owned(), i);
            interner.appliances.push(ApplianceInfo {
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

/// Writes telemetry CSV with `csv::Writer`: the header when created, then one row per call.
/// Call [`TelemetryWriter::finish`] at the end; dropping it flushes too, but drops errors.
pub struct TelemetryWriter<W: Write> {
    /// The CSV writer (it buffers).
    out: csv::Writer<W>,
    /// Scratch space for formatting one field.
    field: Vec<u8>,
}

impl<W: Write> TelemetryWriter<W> {
    /// Writes the header.
    pub fn new(out: W) -> Result<Self, TelemetryError> {
        let mut out = csv::Writer::from_writer(out);
        out.write_record(COLUMNS)?;
        Ok(Self {
            out,
            field: Vec::with_capacity(32),
        })
    }

    /// Writes one row. Metric values are empty when missing, integers have no fraction, other
    /// numbers take the shortest form that reads back to the same value.
    pub fn write_row(
        &mut self,
        appliances: &[ApplianceInfo],
        r: &Row,
    ) -> Result<(), TelemetryError> {
        let info = appliances.get(r.appliance as usize).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "row names an unknown appliance",
            )
        })?;
        self.field.clear();
        write!(self.field, "{}", r.ts)?;
        self.out.write_field(&self.field)?;
        self.out.write_field(info.id.as_str())?;
        self.out.write_field(info.region.as_str())?;
        for m in Metric::ALL {
            let v = r.values[m as usize];
            self.field.clear();
            if !v.is_nan() {
                match m.kind() {
                    FieldKind::Count => write!(self.field, "{}", v as u64)?,
                    _ => write!(self.field, "{v}")?,
                }
            }
            self.out.write_field(&self.field)?;
        }
        self.out.write_field(if r.down { "1" } else { "0" })?;
        self.out.write_record(None::<&[u8]>)?;
        Ok(())
    }

    /// Flushes and returns the output.
    pub fn finish(self) -> Result<W, TelemetryError> {
        self.out
            .into_inner()
            .map_err(|e| TelemetryError::Io(e.into_error()))
    }
}

/// Writes the header and `rows` (in the given order) as CSV.
pub fn write_csv<'a>(
    out: &mut impl Write,
    appliances: &[ApplianceInfo],
    rows: impl IntoIterator<Item = &'a Row>,
) -> Result<(), TelemetryError> {
    let mut w = TelemetryWriter::new(out)?;
    for r in rows {
        w.write_row(appliances, r)?;
    }
    w.finish()?;
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
        assert_eq!((errs[0].line, errs[0].column), (1, 0));
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

    /// The columns in another order, one unknown column: read by name, errors name the column
    /// where it is in this file.
    #[test]
    fn header_in_another_order_with_an_extra_column() {
        let text = "down,note,region,appliance,ts,loss,jitter_ms,rtt_ms,handshake_failures,\
                    sessions,bw_util,mem,cpu\n\
                    1,x,eu,eu-1,11,0,1,12.5,0,10,0.1,0.25,0.5\n\
                    0,y,eu,eu-1,10,,,,,,,,0.4\n";
        let t = read(text).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!((t.rows[0].ts, t.rows[0].down), (10, false));
        assert_eq!(t.rows[0].get(Metric::Cpu), Some(0.4));
        assert_eq!(t.rows[0].get(Metric::Mem), None);
        assert_eq!(t.rows[1].get(Metric::RttMs), Some(12.5));
        assert_eq!(t.rows[1].get(Metric::Sessions), Some(10.0));
        assert!(t.rows[1].down);
        assert_eq!(t.appliances[0].region.as_str(), "eu");

        let bad = text.replace("0,y,eu,eu-1,10,,,,,,,,0.4", "0,y,eu,eu-1,10,,,-20,,,,,0.4");
        let errs = read(&bad).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "line 3, column 8 (rtt_ms): -20 is not in [0, 600000] ms"
        );
    }

    #[test]
    fn quoted_fields_and_byte_order_mark() {
        let text = format!(
            "\u{feff}\"ts\",{}\n\"10\",\"eu-1\",eu,\"0.5\",,0.1,10,0,12.5,1,0,\"1\"\n",
            &HEADER[3..]
        );
        let t = read(&text).unwrap();
        assert_eq!(t.appliances[0].id.as_str(), "eu-1");
        assert_eq!(t.rows[0].ts, 10);
        assert_eq!(t.rows[0].get(Metric::Cpu), Some(0.5));
        assert!(t.rows[0].down);
        // A quoted comma stays inside its field, where the validator rejects it.
        let text = format!("{HEADER}\n10,\"eu,1\",eu,0.5,,0.1,10,0,12.5,1,0,0\n");
        let errs = read(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].column, errs[0].name),
            (2, 2, Some("appliance"))
        );
    }

    #[test]
    fn missing_and_duplicate_columns_are_named() {
        let header = HEADER.replace(",rtt_ms", "").replace(",down", ",dwn");
        let errs = read(&format!("{header}\n")).unwrap_err();
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.starts_with("line 1: the header lacks columns rtt_ms, down (needed, in any order:"),
            "{msg}"
        );
        assert!(msg.ends_with("; unknown columns: \"dwn\""), "{msg}");
        let errs = read(&format!("{HEADER},cpu\n")).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "line 1, column 13 (cpu): column cpu appears twice (first in column 4)"
        );
    }

    #[test]
    fn a_bad_value_names_line_and_column() {
        let text = format!(
            "{HEADER}\n\n10,eu-1,eu,0.5,0.25,0.1,10,0,12.5,1,0,0\n11,eu-1,eu,0.5,0.25,0.1,ten,0,12.5,1,0,0\n"
        );
        let errs = read(&text).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "line 4, column 7 (sessions): \"ten\" is not a non-negative integer"
        );
        let mut bytes = format!("{HEADER}\n10,eu-1,eu,0.5,,,,,,,,0\n").into_bytes();
        bytes[HEADER.len() + 1 + 8] = 0xff; // the "e" of region "eu"
        let errs = read_csv(bytes.as_slice()).unwrap_err().to_string();
        assert_eq!(errs, "line 2, column 3 (region): not valid UTF-8");
    }

    #[test]
    fn progress_reports_bytes_read() {
        let text = format!("{HEADER}\n10,eu-1,eu,,,,,,,,,0\n");
        let mut seen = Vec::new();
        read_csv_with_progress(text.as_bytes(), &mut |b| seen.push(b)).unwrap();
        assert_eq!(seen.last(), Some(&(text.len() as u64)));
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
