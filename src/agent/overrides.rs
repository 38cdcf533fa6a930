//! Health signals replaced from a file (`[telemetry] overrides_file`): for failure drills and
//! for `shadowsteer demo`, where several appliances share one host and its `/proc` would give
//! them all the same cpu and memory. The file is JSON and re-read before every sample, so a
//! drill changes an appliance's reported health while the agent runs; signals it leaves out
//! keep their measured values. An absent file changes nothing; an unreadable or invalid one
//! changes nothing and is logged once per distinct problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::health::HealthSample;
use crate::domain::Fraction;

/// Largest file read; anything bigger is refused rather than parsed.
const MAX_BYTES: u64 = 4096;

/// The signals a file may set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// CPU use.
    pub cpu: Option<Fraction>,
    /// Memory use.
    pub mem: Option<Fraction>,
    /// Bandwidth utilisation.
    pub bw_util: Option<Fraction>,
    /// Failed handshakes per interval.
    pub handshake_failures: Option<u32>,
    /// Packets dropped per interval.
    pub packets_dropped: Option<u64>,
}

impl Overrides {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The sample with the set signals replaced.
    pub fn apply(&self, mut s: HealthSample) -> HealthSample {
        if let Some(v) = self.cpu {
            s.cpu = v;
        }
        if let Some(v) = self.mem {
            s.mem = v;
        }
        if let Some(v) = self.bw_util {
            s.bw_util = v;
        }
        if let Some(v) = self.handshake_failures {
            s.handshake_failures = v;
        }
        if let Some(v) = self.packets_dropped {
            s.packets_dropped = v;
        }
        s
    }
}

/// Reads the file before each sample and remembers the last problem, to log it once.
#[derive(Debug)]
pub struct OverridesFile {
    path: PathBuf,
    last_problem: Option<String>,
}

impl OverridesFile {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last_problem: None,
        }
    }

    /// The overrides in force now (none when the file is absent or bad).
    pub fn current(&mut self) -> Overrides {
        match read(&self.path) {
            Ok(o) => {
                self.last_problem = None;
                o
            }
            Err(problem) => {
                if self.last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(file = %self.path.display(), "health overrides ignored: {problem}");
                    self.last_problem = Some(problem);
                }
                Overrides::default()
            }
        }
    }
}

fn read(path: &Path) -> Result<Overrides, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES + 1), &mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    if text.trim().is_empty() {
        return Ok(Overrides::default());
    }
    Overrides::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HealthSample {
        HealthSample {
            ts: chrono::Utc::now(),
            cpu: Fraction::saturating(0.1),
            mem: Fraction::saturating(0.2),
            bw_in_bps: 5,
            bw_out_bps: 6,
            bw_util: Fraction::saturating(0.3),
            sessions: 7,
            handshake_failures: 0,
            packets_dropped: 0,
        }
    }

    #[test]
    fn set_signals_replace_and_the_rest_stay_measured() {
        let o = Overrides::parse(r#"{"cpu": 0.97, "handshake_failures": 12}"#).unwrap();
        let s = o.apply(sample());
        assert_eq!(s.cpu.get(), 0.97);
        assert_eq!(s.handshake_failures, 12);
        assert_eq!(s.mem.get(), 0.2);
        assert_eq!(s.sessions, 7);
    }

    #[test]
    fn out_of_range_and_unknown_signals_are_refused() {
        assert!(Overrides::parse(r#"{"cpu": 1.5}"#).is_err());
        assert!(Overrides::parse(r#"{"temperature": 80}"#).is_err());
        assert!(Overrides::parse(r#"{"handshake_failures": -1}"#).is_err());
    }

    #[test]
    fn absent_empty_and_bad_files_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.json");
        let mut f = OverridesFile::new(path.clone());
        assert_eq!(f.current(), Overrides::default());
        std::fs::write(&path, "").unwrap();
        assert_eq!(f.current(), Overrides::default());
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(f.current(), Overrides::default());
        assert!(f.last_problem.is_some());
        std::fs::write(&path, vec![b' '; 5000]).unwrap();
        assert_eq!(f.current(), Overrides::default());
        std::fs::write(&path, r#"{"mem": 0.9}"#).unwrap();
        assert_eq!(f.current().mem, Some(Fraction::saturating(0.9)));
        assert!(f.last_problem.is_none());
    }
}
