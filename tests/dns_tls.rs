//! DNS over TLS (RFC 7858) end to end: `serve` with `[dns.tls]` and certificates from a test
//! CA, the client helper's resolver over a real TLS handshake, kdig as an independent DoT
//! client, a certificate renewed on SIGHUP, and the refusals: another CA, another name, a key
//! others can read.

mod common;
mod serve_harness;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serve_harness::*;
use shadowsteer::client::dot::{DotUpstream, Upstream};
use shadowsteer::client::resolve::ResolveError;
use shadowsteer::config::ClientConfig;
use shadowsteer::config::ResolverTls;
use shadowsteer::domain::SecretKey;
use tokio_util::sync::CancellationToken;

const SERVER_NAME: &str = "ns1.vpn.example.net";
const ALICE: &str = "alice.c.vpn.example.net";

/// A CA, written as `<tag>-ca.pem`, that signs server certificates.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, tag: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("shadowsteer test CA {tag}"),
        );
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let file = dir.join(format!("{tag}-ca.pem"));
        std::fs::write(&file, issuer.pem()).unwrap();
        Self { issuer, file }
    }

    /// A certificate for `name` and its key (mode 0600), written over `cert` and `key`.
    fn issue(&self, name: &str, cert: &Path, key: &Path) {
        let key_pair = KeyPair::generate().unwrap();
        let signed = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key_pair, &self.issuer)
            .unwrap();
        std::fs::write(cert, signed.pem()).unwrap();
        std::fs::write(key, key_pair.serialize_pem()).unwrap();
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn tls_config(cert: &Path, key: &Path) -> String {
    let extra = format!(
        "tcp_idle_timeout = \"1s\"\n{NO_RRL}\n[dns.tls]\nlisten = [\"127.0.0.1:0\"]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    config(&extra, "hold_down = \"1s\"")
}

/// The DNS-over-TLS address serve logged.
fn tls_addr(server: &Server) -> SocketAddr {
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("DNS over TLS listening"))
        .unwrap_or_else(|| panic!("no DNS-over-TLS listener in the log:\n{log}"));
    let at = line.find("addr=").expect("addr field") + 5;
    line[at..]
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unreadable address in {line:?}"))
}

fn upstream(addr: SocketAddr, name: &str, ca: &Path) -> DotUpstream {
    DotUpstream::new(
        addr,
        &ResolverTls {
            server_name: name.into(),
            ca_file: ca.to_owned(),
        },
    )
    .expect("a usable CA file")
}

/// kdig over TLS to `addr`, verifying the certificate as [`SERVER_NAME`] against `ca`.
fn kdig_tls(addr: SocketAddr, ca: &Path, args: &[&str]) -> String {
    let ca = format!("+tls-ca={}", ca.display());
    let host = format!("+tls-hostname={SERVER_NAME}");
    let mut all = vec!["+tls", ca.as_str(), host.as_str()];
    all.extend_from_slice(args);
    kdig(addr, &all)
}

/// Whether kdig is here; under CI=true its absence fails the test instead of skipping.
fn kdig_present() -> bool {
    let present = have_kdig();
    assert!(
        present || std::env::var("CI").as_deref() != Ok("true"),
        "kdig is required under CI=true (knot-dnsutils)"
    );
    present
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helper_resolves_over_tls_and_only_trusts_its_ca() {
    let db = common::test_db().await;
    basic_inventory(&db.url);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ours");
    let (cert, key) = (dir.path().join("dns.crt"), dir.path().join("dns.key"));
    ca.issue(SERVER_NAME, &cert, &key);
    let server = tokio::task::spawn_blocking({
        let (url, cfg) = (db.url.clone(), tls_config(&cert, &key));
        move || Server::start(&cfg, &["--database-url", &url])
    })
    .await
    .unwrap();
    let addr = tls_addr(&server);

    // The answer over TLS is the one UDP gives: the primary; the session is kept and reused.
    let dot = upstream(addr, SERVER_NAME, &ca.file);
    for _ in 0..3 {
        let answer = dot.lookup(ALICE).await.expect("an answer over TLS");
        assert_eq!(answer.addrs, [std::net::IpAddr::from([192, 0, 2, 1])]);
        assert_eq!(answer.ttl, Duration::from_secs(10));
    }
    // The server closes a session idle for tcp_idle_timeout (1 s here); the next lookup
    // opens a new one instead of failing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dot.lookup(ALICE)
        .await
        .expect("an answer on a new session after the server closed the idle one");
    // A name the server does not have is NXDOMAIN, as over UDP.
    assert!(matches!(
        dot.lookup("mallory.c.vpn.example.net").await,
        Err(ResolveError::Rcode(r)) if r.contains("Non-Existent") || r.contains("NXDomain")
    ));

    // A move is seen over TLS, on the session kept from before or a new one.
    cli(&db.url, &["appliance", "drain", "eu-1"]);
    let moved = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(a) = dot.lookup(ALICE).await
                && a.addrs == [std::net::IpAddr::from([192, 0, 2, 2])]
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "alice never moved over TLS");

    // Another CA, or another name on the certificate: no answer at all.
    let other = TestCa::new(dir.path(), "other");
    for (name, ca_file) in [
        (SERVER_NAME, &other.file),
        ("ns2.vpn.example.net", &ca.file),
    ] {
        let err = upstream(addr, name, ca_file)
            .lookup(ALICE)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ResolveError::Tls(m) if m.contains("invalid peer certificate")),
            "{name} trusting {}: {err}",
            ca_file.display()
        );
    }
    // Plain DNS over TCP to the TLS port gets no answer.
    let plain = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        use std::io::{Read, Write};
        let q = query(7, ALICE, 1).0;
        let mut frame = (q.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&q);
        s.write_all(&frame).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // A TLS alert at most, never a DNS answer carrying our id.
            Ok(n) => n < 4 || buf[2..4] != 7u16.to_be_bytes(),
            Err(_) => true,
        }
    })
    .await
    .unwrap();
    assert!(plain, "the TLS port answered plain DNS");

    // An independent DoT client verifies the same certificate and gets the same answer.
    if kdig_present() {
        let out = kdig_tls(addr, &ca.file, &["gw.vpn.example.net", "TXT"]);
        assert!(out.contains("NOERROR") || out.contains("NXDOMAIN"), "{out}");
        let out = kdig_tls(addr, &ca.file, &[ALICE, "A", "+short"]);
        assert_eq!(out.trim(), "192.0.2.2", "kdig over TLS");
        let out = kdig_tls(addr, &other.file, &[ALICE, "A", "+short"]);
        assert_eq!(out.trim(), "", "kdig trusted another CA's certificate");
    }

    // Renewed under another CA and reloaded on SIGHUP: new handshakes use the new pair.
    other.issue(SERVER_NAME, &cert, &key);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let renewed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if upstream(addr, SERVER_NAME, &other.file)
                .lookup(ALICE)
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "the renewed certificate is not in use; log:\n{}",
        server.log_text()
    );
    assert!(
        upstream(addr, SERVER_NAME, &ca.file)
            .lookup(ALICE)
            .await
            .is_err(),
        "the old certificate is still served"
    );
    // A torn renewal is refused on SIGHUP and the pair in force stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntorn").unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        while !server
            .log_text()
            .contains("DNS-over-TLS certificate not reloaded")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "no refusal logged:\n{}", server.log_text());
    upstream(addr, SERVER_NAME, &other.file)
        .lookup(ALICE)
        .await
        .expect("the pair in force still answers");

    // Every refused handshake is counted.
    let token = cli(
        &db.url,
        &["token", "create", "--name", "m", "--scope", "read"],
    );
    let failures = |reason: &str| {
        let (code, text) = http_get(server.admin, "/metrics", Some(token.trim())).unwrap();
        assert_eq!(code, 200);
        let series = format!("shadowsteer_dns_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        metric(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let refused = failures("refused");
    assert!(refused >= 3.0, "{refused} refused handshakes counted");

    // Peers that go away are counted apart: one that hangs up without a word, one that hangs
    // up halfway through its hello, and twenty that complete the handshake and reset the
    // connection at once (as `openssl s_time`, scanners and health checks do; the reset can
    // cut the server's session tickets short).
    let closed = failures("closed");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        drop(std::net::TcpStream::connect(addr).unwrap());
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        // A handshake record promising 200 bytes, and the first of a ClientHello.
        half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
            .unwrap();
    })
    .await
    .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(shadowsteer::tls::client_config(&other.file).unwrap());
    for _ in 0..20 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let tls = connector.connect(name, tcp).await.expect("a handshake");
        let (tcp, _) = tls.into_inner();
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let counted = eventually(Duration::from_secs(5), || {
        failures("closed") >= closed + 2.0
    });
    assert!(
        counted.is_some(),
        "the two hang-ups were not counted as closed"
    );
    assert_eq!(
        failures("refused"),
        refused,
        "peers that hung up were counted as refused"
    );

    // The helper itself, configured with `[client.resolver_tls]`, finds its appliance.
    let key_file = dir.path().join("alice.key");
    let alice = SecretKey::generate();
    shadowsteer::keyfile::write_secret_key(&key_file, &alice).unwrap();
    let helper = dir.path().join("client.toml");
    std::fs::write(
        &helper,
        format!(
            r#"
[client]
id = "alice"
key_file = "{}"
service_public_key = "{}"
zone = "vpn.example.net"
resolver = "{addr}"
listen = "127.0.0.1:0"
standby = false

[client.resolver_tls]
server_name = "{SERVER_NAME}"
ca_file = "{}"

[tunnel]
address = "10.77.0.2"
network = "10.77.0.0/24"
"#,
            key_file.display(),
            SecretKey::generate().public_key(),
            other.file.display()
        ),
    )
    .unwrap();
    let cfg: ClientConfig = shadowsteer::config::load(&helper).unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(shadowsteer::client::run::run(cfg, alice, shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    let report = run.await.unwrap().expect("helper ran");
    assert_eq!(report.failed_lookups, 0, "{report:?}");
    assert_eq!(
        report.endpoints.first().map(|e| e.endpoint),
        Some(SocketAddr::from(([192, 0, 2, 2], 51820))),
        "{report:?}"
    );
    // The same upstream type the helper built, shown as operators see it in its log.
    let shown = Upstream::Tls(Arc::new(upstream(addr, SERVER_NAME, &other.file))).to_string();
    assert_eq!(shown, format!("{addr} over TLS"));
    assert_eq!(server.stop(), 0, "clean exit on SIGTERM");
}

#[test]
fn serve_refuses_tls_material_it_cannot_use_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ours");
    let (cert, key) = (dir.path().join("dns.crt"), dir.path().join("dns.key"));
    ca.issue(SERVER_NAME, &cert, &key);
    let cfg_path = dir.path().join("steering.toml");
    let run = |cfg: &str| {
        std::fs::write(&cfg_path, cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            // Never reached: the configuration is refused first.
            .args(["--database-url", "postgres://nobody@127.0.0.1:1/none"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A key others can read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run(&tls_config(&cert, &key));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("dns.tls") && err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A certificate file with no certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (code, err) = run(&tls_config(&empty, &key));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("empty.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    // The key of another certificate.
    let (cert2, key2) = (dir.path().join("b.crt"), dir.path().join("b.key"));
    ca.issue(SERVER_NAME, &cert2, &key2);
    let (code, err) = run(&tls_config(&cert, &key2));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("b.key") && err.contains("dns.crt"), "{err}");
    // No listen address.
    let cfg = tls_config(&cert, &key).replace(
        "listen = [\"127.0.0.1:0\"]\ncertificate",
        "listen = []\ncertificate",
    );
    let (code, err) = run(&cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("dns.tls.listen"), "{err}");
}
