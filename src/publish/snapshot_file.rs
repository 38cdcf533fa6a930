//! The last good snapshot on local disk, so that a restarted `serve` answers every existing
//! client at once, even while the database is unreachable, instead of NXDOMAIN (which resolvers
//! would cache for the negative TTL).
//!
//! What is saved: the steering inputs as last loaded from the database (appliances with their
//! endpoints and state, clients with primary and shadow, model scores, advisories) and every
//! client's current answer (an appliance or none), which seeds the steering state like the
//! audit history does. Nothing secret: ids, public endpoints and risks; the database is named
//! by host, port, user and database name only, never with a password or URL parameters.
//!
//! File format: one header line `shadowsteer-snapshot <format> <body length> <sha256 of body>`
//! and a JSON body. It is written atomically (a temporary file in the same directory, fsync,
//! rename, fsync of the directory), at most once per [`MIN_WRITE_INTERVAL`], and at shutdown.
//! At start it is read only if it is at most [`MAX_FILE_BYTES`], its checksum matches, every
//! value passes the same validation as database rows, it belongs to the same database and
//! zones, and it is not older than `server.snapshot_max_age`.
//!
//! [`encode`] and [`decode`] are pure (the time is an argument); [`restore`] is the shell. The
//! task that saves each publication is [`super::snapshot_writer`], beside this file: it needs the
//! publisher's status, and this file only needs to know the format.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dns::zone::ClientTable;
use crate::domain::{ApplianceId, ApplianceState, ClientId, Probability, RegionId};
use crate::steering::{
    AdvisoryInput, AdvisoryTarget, ApplianceInput, ClientInput, Inputs, PastDecision,
};

/// Version of the file format.
pub const FORMAT: u32 = 1;
/// Largest file read or written: far above a million clients (about 100 bytes each).
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Least time between two writes; changes in between are coalesced into the next one.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
const MAGIC: &str = "shadowsteer-snapshot";

/// Why a snapshot file cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    /// The header line is missing or malformed, or the format is unknown.
    #[error("not a snapshot file of format {FORMAT}: {0}")]
    Header(String),
    /// The body's length or checksum does not match the header (a torn or altered file).
    #[error("checksum or length mismatch")]
    Checksum,
    /// The body is not valid JSON of the expected shape.
    #[error("malformed body: {0}")]
    Body(String),
    /// A value fails validation.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which kind of value.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file was saved for another database or other zones.
    #[error("saved for {0}")]
    OtherOrigin(String),
    /// The file is older than allowed.
    #[error("saved {0} s ago, more than the allowed maximum age")]
    TooOld(i64),
}

/// What the file was saved for: it is used only by a server of the same database and zones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The database, without credentials (see [`database_identity`]).
    pub database: String,
    /// The zone apexes served, lowercase, without a trailing dot.
    pub zones: Vec<String>,
}

/// The contents of a snapshot file.
#[derive(Debug, Clone)]
pub struct Saved {
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// When its data was last confirmed against the database.
    pub confirmed_at: DateTime<Utc>,
    /// What it was saved for.
    pub origin: Origin,
    /// The steering inputs; `history` holds every client's answer at `written_at`.
    pub inputs: Inputs,
}

/// The database part of an [`Origin`]: `scheme://user@host:port/database` of a URL with its
/// password and parameters removed, or the embedded cluster's data directory.
pub fn database_identity(target: &crate::store::DatabaseTarget) -> String {
    match target {
        crate::store::DatabaseTarget::Url(url) => {
            let url = url.split(['?', '#']).next().unwrap_or_default();
            match url.split_once("://") {
                Some((scheme, rest)) => {
                    let (auth, host) = rest.rsplit_once('@').unwrap_or(("", rest));
                    let user = auth.split(':').next().unwrap_or_default();
                    if user.is_empty() {
                        format!("{scheme}://{host}")
                    } else {
                        format!("{scheme}://{user}@{host}")
                    }
                }
                None => "(unparsed URL)".to_owned(),
            }
        }
        crate::store::DatabaseTarget::Embedded(dir) => format!("embedded:{}", dir.display()),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    written_at: DateTime<Utc>,
    confirmed_at: DateTime<Utc>,
    origin: Origin,
    appliances: Vec<ApplianceRow>,
    clients: Vec<ClientRow>,
    scores: Vec<ScoreRow>,
    advisories: Vec<AdvisoryRow>,
    answers: Vec<AnswerRow>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplianceRow {
    id: String,
    region: String,
    endpoint: SocketAddr,
    state: ApplianceState,
    capacity: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRow {
    id: String,
    primary: String,
    shadow: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRow {
    appliance: String,
    score: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvisoryRow {
    appliance: Option<String>,
    region: Option<String>,
    risk: f64,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerRow {
    client: String,
    appliance: Option<String>,
}

/// Every client's current answer in `table` (built from `inputs`), as appliance ids.
pub fn answers(inputs: &Inputs, table: &ClientTable) -> HashMap<ClientId, Option<ApplianceId>> {
    let by_endpoint: HashMap<(IpAddr, u16), &ApplianceId> = inputs
        .appliances
        .values()
        .map(|a| ((a.endpoint.ip(), a.endpoint.port()), &a.id))
        .collect();
    inputs
        .clients
        .keys()
        .filter_map(|id| {
            let answer = table.get(id.as_str().as_bytes())?;
            let appliance = match answer {
                None => None,
                Some(ep) => Some((*by_endpoint.get(&(ep.ip, ep.port))?).clone()),
            };
            Some((id.clone(), appliance))
        })
        .collect()
}

/// The file's bytes for `inputs` with `answers` at `written_at`.
pub fn encode(
    inputs: &Inputs,
    answers: &HashMap<ClientId, Option<ApplianceId>>,
    origin: &Origin,
    written_at: DateTime<Utc>,
    confirmed_at: DateTime<Utc>,
) -> Result<Vec<u8>, SnapshotFileError> {
    let text = |s: &str| s.to_owned();
    let body = Body {
        written_at,
        confirmed_at,
        origin: origin.clone(),
        appliances: inputs
            .appliances
            .values()
            .map(|a| ApplianceRow {
                id: text(a.id.as_str()),
                region: text(a.region.as_str()),
                endpoint: a.endpoint,
                state: a.state,
                capacity: a.capacity,
            })
            .collect(),
        clients: inputs
            .clients
            .iter()
            .map(|(id, c)| ClientRow {
                id: text(id.as_str()),
                primary: text(c.primary.as_str()),
                shadow: text(c.shadow.as_str()),
            })
            .collect(),
        scores: inputs
            .model_scores
            .iter()
            .map(|(id, p)| ScoreRow {
                appliance: text(id.as_str()),
                score: p.get(),
            })
            .collect(),
        advisories: inputs
            .advisories
            .iter()
            .map(|a| {
                let (appliance, region) = match &a.target {
                    AdvisoryTarget::Appliance(id) => (Some(text(id.as_str())), None),
                    AdvisoryTarget::Region(r) => (None, Some(text(r.as_str()))),
                };
                AdvisoryRow {
                    appliance,
                    region,
                    risk: a.risk.get(),
                    starts_at: a.starts_at,
                    ends_at: a.ends_at,
                }
            })
            .collect(),
        answers: answers
            .iter()
            .map(|(c, a)| AnswerRow {
                client: text(c.as_str()),
                appliance: a.as_ref().map(|a| text(a.as_str())),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&body).map_err(|e| SnapshotFileError::Body(e.to_string()))?;
    let header = format!(
        "{MAGIC} {FORMAT} {} {}\n",
        json.len(),
        hex(&Sha256::digest(&json))
    );
    let mut out = header.into_bytes();
    out.extend_from_slice(&json);
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(SnapshotFileError::TooLarge);
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid(what: &'static str) -> impl Fn(String) -> SnapshotFileError {
    move |message| SnapshotFileError::Invalid { what, message }
}

/// Checks the header line and returns the body.
fn body_of(bytes: &[u8]) -> Result<&[u8], SnapshotFileError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SnapshotFileError::TooLarge);
    }
    let nl = bytes
        .iter()
        .take(200)
        .position(|b| *b == b'\n')
        .ok_or_else(|| SnapshotFileError::Header("no header line".into()))?;
    let header = std::str::from_utf8(&bytes[..nl])
        .map_err(|_| SnapshotFileError::Header("not text".into()))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, format, len, sum] = fields[..] else {
        return Err(SnapshotFileError::Header(header.into()));
    };
    if magic != MAGIC || format != FORMAT.to_string() {
        return Err(SnapshotFileError::Header(header.into()));
    }
    let body = &bytes[nl + 1..];
    if len.parse::<usize>().ok() != Some(body.len()) || hex(&Sha256::digest(body)) != sum {
        return Err(SnapshotFileError::Checksum);
    }
    Ok(body)
}

/// Reads a snapshot file's bytes, validated, for a server of `origin` at `now`; files older
/// than `max_age` are refused.
pub fn decode(
    bytes: &[u8],
    origin: &Origin,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Saved, SnapshotFileError> {
    let body: Body = serde_json::from_slice(body_of(bytes)?)
        .map_err(|e| SnapshotFileError::Body(e.to_string()))?;
    if body.origin != *origin {
        return Err(SnapshotFileError::OtherOrigin(format!(
            "{} (zones {})",
            body.origin.database,
            body.origin.zones.join(", ")
        )));
    }
    let age = (now - body.written_at).num_seconds();
    if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
        return Err(SnapshotFileError::TooOld(age));
    }
    let appliance_id =
        |s: String| ApplianceId::new(s).map_err(|e| invalid("appliance id")(e.to_string()));
    let mut appliances = BTreeMap::new();
    for a in body.appliances {
        let id = appliance_id(a.id)?;
        let input = ApplianceInput {
            id: id.clone(),
            region: RegionId::new(a.region).map_err(|e| invalid("region")(e.to_string()))?,
            endpoint: a.endpoint,
            state: a.state,
            capacity: a.capacity,
        };
        appliances.insert(id, input);
    }
    let mut clients = BTreeMap::new();
    for c in body.clients {
        let id = ClientId::new(c.id).map_err(|e| invalid("client id")(e.to_string()))?;
        let input = ClientInput {
            primary: appliance_id(c.primary)?,
            shadow: appliance_id(c.shadow)?,
        };
        clients.insert(id, input);
    }
    let probability =
        |v: f64| Probability::new(v).map_err(|e| invalid("probability")(e.to_string()));
    let mut scores = HashMap::new();
    for s in body.scores {
        scores.insert(appliance_id(s.appliance)?, probability(s.score)?);
    }
    let mut advisories = Vec::new();
    for a in body.advisories {
        let target = match (a.appliance, a.region) {
            (Some(id), None) => AdvisoryTarget::Appliance(appliance_id(id)?),
            (None, Some(r)) => AdvisoryTarget::Region(
                RegionId::new(r).map_err(|e| invalid("region")(e.to_string()))?,
            ),
            _ => return Err(invalid("advisory")("not exactly one scope".into())),
        };
        advisories.push(AdvisoryInput {
            target,
            risk: probability(a.risk)?,
            starts_at: a.starts_at,
            ends_at: a.ends_at,
        });
    }
    let mut history = HashMap::new();
    for a in body.answers {
        let client = ClientId::new(a.client).map_err(|e| invalid("client id")(e.to_string()))?;
        let appliance = a.appliance.map(appliance_id).transpose()?;
        history.insert(
            client,
            PastDecision {
                appliance,
                at: body.written_at,
            },
        );
    }
    Ok(Saved {
        written_at: body.written_at,
        confirmed_at: body.confirmed_at,
        origin: body.origin,
        inputs: Inputs {
            appliances: Arc::new(appliances),
            clients: Arc::new(clients),
            model_scores: Arc::new(scores),
            // Not saved: staleness is judged against the database's clock once it is back.
            stale_scores: Arc::default(),
            // Not saved either: path scores are only used while fresh, and freshness is the
            // database's to say (a restart without it steers on appliance risk alone).
            path_scores: Arc::default(),
            advisories: Arc::new(advisories),
            history: Arc::new(history),
        },
    })
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, never a
/// torn one, also after a crash or power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_error(path))
}

/// Reads at most [`MAX_FILE_BYTES`] of `path`; `None` when there is no file.
pub fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, SnapshotFileError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SnapshotFileError::TooLarge);
    }
    Ok(Some(bytes))
}

/// The snapshot saved at `path` for `origin`, if there is a usable one. Blocking.
pub fn restore(
    path: &Path,
    origin: &Origin,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Option<Saved>, SnapshotFileError> {
    match read_bounded(path)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes, origin, now, max_age).map(Some),
    }
}

/// [`restore`] for `serve`'s start: logs what it found and why a file is not used.
pub fn restore_at_start(path: &Path, origin: &Origin, max_age: Duration) -> Option<Saved> {
    let now = Utc::now();
    match restore(path, origin, now, max_age) {
        Ok(Some(saved)) => {
            tracing::info!(
                file = %path.display(),
                saved_s_ago = (now - saved.written_at).num_seconds(),
                appliances = saved.inputs.appliances.len(),
                clients = saved.inputs.clients.len(),
                "serving the snapshot saved on disk until the database answers"
            );
            Some(saved)
        }
        Ok(None) => {
            tracing::info!(file = %path.display(), "no saved snapshot; client names get SERVFAIL until the first database load");
            None
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the saved snapshot is not used; client names get SERVFAIL until the first database load");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{ClientIndex, Endpoint};

    fn origin() -> Origin {
        Origin {
            database: "postgres://steer@db:5432/steer".into(),
            zones: vec!["vpn.example.net".into()],
        }
    }

    fn inputs() -> Inputs {
        let a = |id: &str, region: &str, ep: &str, state| ApplianceInput {
            id: ApplianceId::new(id.to_owned()).unwrap(),
            region: RegionId::new(region.to_owned()).unwrap(),
            endpoint: ep.parse().unwrap(),
            state,
            capacity: 100,
        };
        let eu = a("eu-1", "eu", "192.0.2.1:51820", ApplianceState::Active);
        let us = a(
            "us-1",
            "us",
            "[2001:db8::2]:51821",
            ApplianceState::Draining,
        );
        let client = |p: &ApplianceInput, s: &ApplianceInput| ClientInput {
            primary: p.id.clone(),
            shadow: s.id.clone(),
        };
        let clients = BTreeMap::from([
            (ClientId::new("alice".to_owned()).unwrap(), client(&eu, &us)),
            (ClientId::new("bob".to_owned()).unwrap(), client(&us, &eu)),
        ]);
        Inputs {
            clients: Arc::new(clients),
            model_scores: Arc::new(HashMap::from([(
                eu.id.clone(),
                Probability::new(0.25).unwrap(),
            )])),
            advisories: Arc::new(vec![AdvisoryInput {
                target: AdvisoryTarget::Region(RegionId::new("us".to_owned()).unwrap()),
                risk: Probability::new(0.5).unwrap(),
                starts_at: DateTime::from_timestamp(1_000, 0).unwrap(),
                ends_at: None,
            }]),
            appliances: Arc::new(BTreeMap::from([(eu.id.clone(), eu), (us.id.clone(), us)])),
            stale_scores: Arc::default(),
            path_scores: Arc::default(),
            history: Arc::default(),
        }
    }

    fn table() -> ClientTable {
        let mut index = ClientIndex::default();
        index.insert(b"alice".to_vec().into_boxed_slice(), 0);
        index.insert(b"bob".to_vec().into_boxed_slice(), 1);
        let ep = Endpoint {
            ip: "192.0.2.1".parse().unwrap(),
            port: 51820,
            slot: 0,
        };
        ClientTable::new(Arc::new(index), vec![Some(ep), None])
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn round_trip_keeps_inputs_and_answers() {
        let inputs = inputs();
        let answers = answers(&inputs, &table());
        assert_eq!(answers.len(), 2);
        let bytes = encode(&inputs, &answers, &origin(), t(5_000), t(4_999)).unwrap();
        let saved = decode(&bytes, &origin(), t(5_010), Duration::from_secs(60)).unwrap();
        assert_eq!(saved.inputs.appliances, inputs.appliances);
        assert_eq!(saved.inputs.clients, inputs.clients);
        assert_eq!(saved.inputs.model_scores, inputs.model_scores);
        assert_eq!(saved.inputs.advisories, inputs.advisories);
        assert_eq!(saved.confirmed_at, t(4_999));
        let alice = &saved.inputs.history[&ClientId::new("alice".to_owned()).unwrap()];
        assert_eq!(alice.appliance.as_ref().map(|a| a.as_str()), Some("eu-1"));
        assert_eq!(alice.at, t(5_000));
        let bob = &saved.inputs.history[&ClientId::new("bob".to_owned()).unwrap()];
        assert_eq!(bob.appliance, None);
    }

    #[test]
    fn refuses_torn_altered_foreign_old_and_invalid_files() {
        let inputs = inputs();
        let bytes = encode(
            &inputs,
            &answers(&inputs, &table()),
            &origin(),
            t(5_000),
            t(5_000),
        )
        .unwrap();
        let load = |b: &[u8]| decode(b, &origin(), t(5_010), Duration::from_secs(60));
        assert!(matches!(
            load(&bytes[..bytes.len() - 1]),
            Err(SnapshotFileError::Checksum)
        ));
        let mut altered = bytes.clone();
        let at = altered.len() - 20;
        altered[at] ^= 1;
        assert!(matches!(load(&altered), Err(SnapshotFileError::Checksum)));
        assert!(matches!(load(b"{}"), Err(SnapshotFileError::Header(_))));
        assert!(matches!(
            load(b"shadowsteer-snapshot 2 2 x\n{}"),
            Err(SnapshotFileError::Header(_))
        ));
        let other = Origin {
            database: "postgres://steer@other:5432/steer".into(),
            ..origin()
        };
        assert!(matches!(
            decode(&bytes, &other, t(5_010), Duration::from_secs(60)),
            Err(SnapshotFileError::OtherOrigin(_))
        ));
        assert!(matches!(
            decode(&bytes, &origin(), t(9_000), Duration::from_secs(60)),
            Err(SnapshotFileError::TooOld(4_000))
        ));
        // A body with a checksum that matches but a value no database row could hold.
        let body = String::from_utf8(
            bytes[bytes.iter().position(|b| *b == b'\n').unwrap() + 1..].to_vec(),
        )
        .unwrap()
        .replace("\"score\":0.25", "\"score\":7.0");
        let forged = format!(
            "{MAGIC} {FORMAT} {} {}\n{body}",
            body.len(),
            hex(&Sha256::digest(body.as_bytes()))
        );
        assert!(matches!(
            load(forged.as_bytes()),
            Err(SnapshotFileError::Invalid {
                what: "probability",
                ..
            })
        ));
    }

    #[test]
    fn identity_has_no_credentials() {
        use crate::store::DatabaseTarget;
        let id = database_identity(&DatabaseTarget::Url(
            "postgres://steer:s3cret@db.example.net:5432/steer?sslmode=require&password=x".into(),
        ));
        assert_eq!(id, "postgres://steer@db.example.net:5432/steer");
        assert!(!id.contains("s3cret"));
        assert_eq!(
            database_identity(&DatabaseTarget::Embedded("/var/lib/ss".into())),
            "embedded:/var/lib/ss"
        );
    }

    #[test]
    fn writes_atomically_and_reads_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("last-snapshot");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read_bounded(&path).unwrap().unwrap(), b"two");
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert!(read_bounded(&dir.path().join("none")).unwrap().is_none());
    }
}
