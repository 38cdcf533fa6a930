//! Configuration files: TOML parsed with serde into typed structs, then validated.
//!
//! Every error names the file, the key path and what is wrong, e.g.
//! `config/steering.toml: dns.listen[1]: invalid socket address "127.0.0.1:99999"`.
//! Unknown keys are errors (`deny_unknown_fields` everywhere): a misspelt key silently ignored is
//! a setting silently not applied.

mod agent;
mod client;
mod fields;
mod risk;
mod steering;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use agent::{
    AgentConfig, AgentSection, DEFAULT_MAX_THREADS, InsideMode, LbCheckSection, PeerProbe,
    ProbeSection, TelemetrySection, TunnelSection,
};
pub use client::{
    ClientConfig, ClientInside, ClientSection, ClientTunnelSection, ProbeStreamSection, Resolver,
    ResolverTls,
};
pub use fields::{Duration, IpNet, ListenAddr};
pub use risk::RiskSection;
pub use steering::{
    AdminSection, DnsSection, DnsTlsSection, EcsRegion, NsRecord, RateLimitSection,
    ReplicationSection, ServerSection, SoaSection, StaticRecord, SteeringConfig, SteeringSection,
    THRESHOLD_WITHOUT_MODEL, Thresholds, ZoneSection,
};

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `dns.listen[1]`; empty for whole-file problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A problem found while validating a parsed file, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Collects validation problems with their key paths.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(Problem {
            key: key.into(),
            message: message.to_string(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A configuration that can check itself beyond what its types already guarantee.
pub trait Validate {
    /// Records every problem found; cross-field rules belong here.
    fn validate(&self, problems: &mut Problems);
}

/// The kinds of configuration file shadowsteer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// `shadowsteer serve`: has a `[dns]` table.
    Steering,
    /// `shadowsteer agent`: has an `[agent]` table.
    Agent,
    /// `shadowsteer client run`: has a `[client]` table.
    Client,
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Steering => "steering server",
            Self::Agent => "agent",
            Self::Client => "client helper",
        })
    }
}

/// Largest configuration file read; anything bigger is a mistake, not a configuration.
const MAX_FILE_BYTES: u64 = 4 << 20;

fn read(file: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.to_owned(),
        key: String::new(),
        message,
    };
    let meta = std::fs::metadata(file).map_err(|e| err(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!("file is larger than {MAX_FILE_BYTES} bytes")));
    }
    std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))
}

/// Parses `text` (the content of `file`) into `T` and validates it.
pub fn parse<T: DeserializeOwned + Validate>(
    file: &Path,
    text: &str,
) -> Result<T, Vec<ConfigError>> {
    let at = |key: String, message: String| ConfigError {
        file: file.to_owned(),
        key,
        message,
    };
    let de = toml::Deserializer::new(text);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        let mut message = inner.message().to_owned();
        // Syntax errors have no key path; the line number locates them instead.
        if let (true, Some(span)) = (key.is_empty(), inner.span()) {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            message = format!("{message} (line {line})");
        }
        vec![at(key, message)]
    })?;
    let mut problems = Problems::default();
    value.validate(&mut problems);
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(problems
            .0
            .into_iter()
            .map(|p| at(p.key, p.message))
            .collect())
    }
}

/// Reads, parses and validates a file of a known kind.
pub fn load<T: DeserializeOwned + Validate>(file: &Path) -> Result<T, Vec<ConfigError>> {
    let text = read(file).map_err(|e| vec![e])?;
    parse(file, &text)
}

/// Tells the kind of a configuration file from its top-level tables.
pub fn detect_kind(file: &Path, text: &str) -> Result<ConfigKind, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.to_owned(),
        key: String::new(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(format!("not valid TOML: {}", e.message())))?;
    let kinds: Vec<(ConfigKind, &str)> = [
        (ConfigKind::Steering, "dns"),
        (ConfigKind::Agent, "agent"),
        (ConfigKind::Client, "client"),
    ]
    .into_iter()
    .filter(|(_, t)| table.contains_key(*t))
    .collect();
    match kinds.as_slice() {
        [(kind, _)] => Ok(*kind),
        [] => Err(err(
            "unknown kind of configuration: expected a [dns] table (steering server), an [agent] table (agent) or a [client] table (client helper)".into(),
        )),
        many => Err(err(format!(
            "has {} tables; a file configures one program",
            many.iter()
                .map(|(k, t)| format!("[{t}] ({k})"))
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// Checks one file of any kind, as `shadowsteer config check` does.
pub fn check_file(file: &Path) -> Result<ConfigKind, Vec<ConfigError>> {
    let text = read(file).map_err(|e| vec![e])?;
    let kind = detect_kind(file, &text).map_err(|e| vec![e])?;
    match kind {
        ConfigKind::Steering => parse::<SteeringConfig>(file, &text).map(|_| kind),
        ConfigKind::Agent => parse::<AgentConfig>(file, &text).map(|_| kind),
        ConfigKind::Client => parse::<ClientConfig>(file, &text).map(|_| kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<ConfigKind, Vec<String>> {
        let file = Path::new("t.toml");
        let kind = detect_kind(file, text).map_err(|e| vec![e.to_string()])?;
        let r = match kind {
            ConfigKind::Steering => parse::<SteeringConfig>(file, text).map(|_| kind),
            ConfigKind::Agent => parse::<AgentConfig>(file, text).map(|_| kind),
            ConfigKind::Client => parse::<ClientConfig>(file, text).map(|_| kind),
        };
        r.map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn names_file_key_and_problem() {
        let text = r#"
[dns]
listen = ["127.0.0.1:5300", "127.0.0.1:99999"]
[[dns.zones]]
name = "vpn.example.net"
"#;
        let errs = check(text).unwrap_err();
        assert_eq!(
            errs,
            vec![r#"t.toml: dns.listen[1]: invalid socket address "127.0.0.1:99999""#.to_string()]
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let errs = check("[dns]\nlisten = []\nlisen = 1\n").unwrap_err();
        assert!(errs[0].contains("unknown field `lisen`"), "{errs:?}");
    }

    #[test]
    fn example_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        assert_eq!(check_file(&dir.join("agent.toml")), Ok(ConfigKind::Agent));
        assert_eq!(check_file(&dir.join("client.toml")), Ok(ConfigKind::Client));
    }

    #[test]
    fn client_files_are_detected_and_checked() {
        let text = r#"
[client]
id = "alice"
key_file = "/k"
service_public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
zone = "vpn.example.net"
resolver = "127.0.0.1:99999"
[tunnel]
address = "10.78.0.2"
network = "10.77.0.0/24"
"#;
        let errs = check(text).unwrap_err();
        assert!(errs[0].contains("client.resolver"), "{errs:?}");
        let errs = check(&text.replace("127.0.0.1:99999", "system")).unwrap_err();
        assert!(errs[0].contains("tunnel.address"), "{errs:?}");
        assert_eq!(
            check(
                &text
                    .replace("127.0.0.1:99999", "system")
                    .replace("10.78.0.2", "10.77.0.2")
            ),
            Ok(ConfigKind::Client)
        );
        let errs = check("[client]\nx=1\n[agent]\ny=1\n").unwrap_err();
        assert!(errs[0].contains("one program"), "{errs:?}");
    }

    #[test]
    fn dns_over_tls_needs_a_port_of_its_own() {
        let text = r#"
[dns]
listen = ["127.0.0.1:5300"]
[dns.tls]
listen = ["127.0.0.1:853"]
certificate = "/etc/shadowsteer/dns-tls.crt"
private_key = "/etc/shadowsteer/dns-tls.key"
[[dns.zones]]
name = "vpn.example.net"
"#;
        assert_eq!(check(text), Ok(ConfigKind::Steering));
        let errs = check(&text.replace(":853", ":5300")).unwrap_err();
        assert!(
            errs[0].contains("dns.tls.listen[0]") && errs[0].contains("listed twice"),
            "{errs:?}"
        );
        let errs = check(&text.replace("[\"127.0.0.1:853\"]", "[]")).unwrap_err();
        assert!(errs[0].contains("dns.tls.listen"), "{errs:?}");
        let errs = check(&text.replace("private_key", "key")).unwrap_err();
        assert!(errs[0].contains("unknown field `key`"), "{errs:?}");
    }

    #[test]
    fn resolving_over_tls_needs_an_address_and_a_name() {
        let text = r#"
[client]
id = "alice"
key_file = "/k"
service_public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
zone = "vpn.example.net"
resolver = "192.0.2.53:853"
[client.resolver_tls]
server_name = "ns1.vpn.example.net"
ca_file = "/etc/shadowsteer/dns-ca.pem"
[tunnel]
address = "10.77.0.2"
network = "10.77.0.0/24"
"#;
        assert_eq!(check(text), Ok(ConfigKind::Client));
        let errs = check(&text.replace("192.0.2.53:853", "system")).unwrap_err();
        assert!(
            errs[0].contains("client.resolver_tls") && errs[0].contains("not \"system\""),
            "{errs:?}"
        );
        let errs = check(&text.replace("ns1.vpn.example.net", "not a name")).unwrap_err();
        assert!(
            errs[0].contains("client.resolver_tls.server_name"),
            "{errs:?}"
        );
        let errs = check(&text.replace("ca_file", "ca")).unwrap_err();
        assert!(errs[0].contains("unknown field `ca`"), "{errs:?}");
    }

    #[test]
    fn data_plane_threads_are_checked() {
        let text = r#"
[agent]
appliance = "eu-1"
listen = "0.0.0.0:51820"
key_file = "/k"
[tunnel]
network = "10.77.0.0/24"
threads = 0
"#;
        let errs = check(text).unwrap_err();
        assert_eq!(
            errs,
            vec!["t.toml: tunnel.threads: must be between 1 and 32".to_string()]
        );
        let errs = check(&text.replace("threads = 0", "threads = 33")).unwrap_err();
        assert!(errs[0].contains("tunnel.threads"), "{errs:?}");
        assert_eq!(
            check(&text.replace("threads = 0", "threads = 2")),
            Ok(ConfigKind::Agent)
        );
        let parsed: AgentConfig =
            parse(Path::new("t.toml"), &text.replace("threads = 0\n", "")).unwrap();
        let n = parsed.tunnel.data_plane_threads();
        assert!((1..=agent::DEFAULT_MAX_THREADS).contains(&n), "{n}");
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let errs = check("[foo]\nx = 1\n").unwrap_err();
        assert!(errs[0].contains("unknown kind"), "{errs:?}");
    }
}
