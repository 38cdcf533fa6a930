//! Load-balancer integration with a real HAProxy: two agents answer HAProxy's agent-check for
//! two backends; as one appliance's risk rises its share of new connections falls, drained it
//! gets none, and undrained it gets traffic again.

mod agent_support;
mod common;

use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_support::{RunningAgent, agent_toml, have, inventory, key_file};
use shadowsteer::domain::SecretKey;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend that answers every connection with its name.
fn backend(name: &'static str, stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(name.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    addr
}

/// Share of `n` new connections through `front` that reach eu-1.
fn eu_share(front: SocketAddr, n: u32) -> f64 {
    let mut eu = 0;
    let mut answered = 0;
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect_timeout(&front, Duration::from_secs(2)) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut name = String::new();
        if s.read_to_string(&mut name).is_ok() && !name.is_empty() {
            answered += 1;
            if name == "eu-1" {
                eu += 1;
            }
        }
    }
    if answered == 0 {
        -1.0
    } else {
        f64::from(eu) / f64::from(answered)
    }
}

/// Polls `eu_share` until `ok` holds; returns the last share.
fn share_until(front: SocketAddr, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = eu_share(front, 100);
        if ok(s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: eu-1 share stayed {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_follows_risk_and_drain() {
    if !have("haproxy") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "haproxy is required under CI (apt-get install haproxy)"
        );
        eprintln!("SKIPPED: haproxy not found; install it (apt-get install haproxy)");
        return;
    }
    let db = common::test_db().await;
    let service = SecretKey::generate();
    inventory(&db, &service, 0);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "service.key", &service);
    let stop = Arc::new(AtomicBool::new(false));
    let (eu_backend, us_backend) = (backend("eu-1", stop.clone()), backend("us-1", stop.clone()));
    let (eu_check, us_check) = (free_port(), free_port());
    let agent = |id: &str, port: u16| {
        agent_toml(
            id,
            "127.0.0.1:0",
            &key,
            &db.url,
            &format!("[lb_check]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"200ms\"\n"),
        )
    };
    let eu = RunningAgent::start(&agent("eu-1", eu_check), dir.path(), "eu").await;
    let us = RunningAgent::start(&agent("us-1", us_check), dir.path(), "us").await;

    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
         frontend fe\n  bind {front}\n  default_backend be\n\
         backend be\n  balance roundrobin\n\
           server eu1 {eu_backend} weight 100 agent-check agent-addr 127.0.0.1 agent-port {eu_check} agent-inter 200ms\n\
           server us1 {us_backend} weight 100 agent-check agent-addr 127.0.0.1 agent-port {us_check} agent-inter 200ms\n"
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );

    let url = db.url.clone();
    let cli = move |args: &[&str]| {
        let out = Command::new(common::bin())
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tokio::task::spawn_blocking(move || {
        // Equal weights: both backends share the connections.
        let even = share_until(front, "equal weights", |s| (0.4..=0.6).contains(&s));
        // eu-1's risk rises to 0.75 (an advisory; the agent combines it as steering does):
        // its weight drops to 25% of us-1's, so it gets about a fifth of new connections.
        cli(&["advisory", "add", "--appliance", "eu-1", "--risk", "0.75"]);
        let risky = share_until(front, "risk 0.75", |s| (0.1..=0.3).contains(&s));
        assert!(risky < even);
        // Drained: none.
        cli(&["appliance", "drain", "eu-1"]);
        share_until(front, "drained", |s| s == 0.0);
        // Undrained (and the advisory still in force): back to its risk-weighted share.
        cli(&["appliance", "undrain", "eu-1"]);
        share_until(front, "undrained", |s| (0.1..=0.3).contains(&s));
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    eu.stop().await;
    us.stop().await;
}
