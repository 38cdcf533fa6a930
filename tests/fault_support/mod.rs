//! Fault injection for the fault suite: a Postgres cluster that can be stopped, killed with
//! SIGKILL and started again behind a TCP relay (a restarted cluster listens on a new port; the
//! relay keeps the address the server under test was given), and a DNS load generator that
//! classifies every answer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shadowsteer::localpg::{Durability, LocalCluster, temp_cluster_dir};

/// Forwards every TCP connection accepted on its address to `127.0.0.1:<target>`, where the
/// target port can change; connections to a target that is down are closed at once.
pub async fn relay(target: Arc<AtomicU16>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let port = target.load(Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// A cluster of its own with one migrated database, reached through a relay.
pub struct Pg {
    dir: PathBuf,
    cluster: Option<LocalCluster>,
    port: Arc<AtomicU16>,
    relay: SocketAddr,
    url_relayed: String,
}

impl Pg {
    /// Starts a cluster, creates and migrates database `steer`. Durable: an ephemeral
    /// cluster's watchdog deletes the data directory as soon as the server dies, so a
    /// `kill -9` would take the data with it and the restart would find nothing (this made
    /// the kill test fail now and then).
    pub async fn new(prefix: &str) -> Self {
        let dir = temp_cluster_dir(prefix).unwrap();
        let d2 = dir.clone();
        let cluster = tokio::task::spawn_blocking(move || {
            LocalCluster::start(&d2, Durability::Durable).unwrap()
        })
        .await
        .unwrap();
        shadowsteer::store::target::create_database(&cluster.url("postgres"), "steer")
            .await
            .unwrap();
        let url_direct = cluster.url("steer");
        let pool = shadowsteer::store::connect(&url_direct, 1).await.unwrap();
        shadowsteer::store::migrate(&pool).await.unwrap();
        pool.close().await;
        let port = Arc::new(AtomicU16::new(cluster.port()));
        let relay = relay(port.clone()).await;
        let url_relayed = url_direct.replace(
            &format!("127.0.0.1:{}/", cluster.port()),
            &format!("127.0.0.1:{}/", relay.port()),
        );
        Self {
            dir,
            cluster: Some(cluster),
            port,
            relay,
            url_relayed,
        }
    }

    /// The URL through the relay (contains the password: never log it).
    pub fn url(&self) -> String {
        self.url_relayed.clone()
    }

    /// The URL straight to the cluster as it runs now.
    pub fn direct_url(&self) -> String {
        let c = self.cluster.as_ref().expect("running");
        c.url("steer")
    }

    /// Stops the server cleanly. Blocking.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
    }

    /// Kills the postmaster with SIGKILL (its backends exit by themselves). Blocking.
    pub fn kill9(&mut self) {
        let pidfile = self.dir.join("pg").join("postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signalling the test's own Postgres server.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Gone, or a zombie waiting for us to reap it (the handle's drop does).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        };
        while alive() {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Forget the handle without a clean stop (the server is gone).
        if let Some(c) = self.cluster.take() {
            drop(c);
        }
    }

    /// Starts the server again (after crash recovery if it was killed); the relay follows it
    /// to its new port. Blocking.
    pub fn start(&mut self) {
        let mut last = None;
        for _ in 0..50 {
            match LocalCluster::start(&self.dir, Durability::Durable) {
                Ok(c) => {
                    self.port.store(c.port(), Ordering::Relaxed);
                    self.cluster = Some(c);
                    return;
                }
                // Backends of a killed server may still hold its shared memory for a moment.
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Postgres did not start again: {last:?}");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a DNS load generator saw.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Answers with the expected kind of data (NOERROR).
    pub answered: AtomicU64,
    /// NXDOMAIN answers.
    pub nxdomain: AtomicU64,
    /// SERVFAIL answers.
    pub servfail: AtomicU64,
    /// Other answers.
    pub other: AtomicU64,
    /// Queries without an answer within 200 ms.
    pub unanswered: AtomicU64,
}

impl LoadCounts {
    /// One line for the test log.
    pub fn report(&self) -> String {
        format!(
            "answered {}, NXDOMAIN {}, SERVFAIL {}, other {}, unanswered {}",
            self.answered.load(Ordering::Relaxed),
            self.nxdomain.load(Ordering::Relaxed),
            self.servfail.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed)
        )
    }
}

/// Queries `name` (A) against `*target` until `stop`, classifying answers: back to back, or
/// with a pause of `gap` after each answer.
pub fn dns_load(
    target: Arc<Mutex<SocketAddr>>,
    name: &'static str,
    counts: Arc<LoadCounts>,
    stop: Arc<AtomicBool>,
    gap: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut id = 0u16;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            id = id.wrapping_add(1);
            let addr = *target.lock().unwrap();
            let q = crate::serve_harness::query(id, name, 1);
            let _ = sock.send_to(&q.0, addr);
            let started = Instant::now();
            let got = loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if n >= 4 && buf[..2] == id.to_be_bytes() => {
                        break Some(buf[3] & 0xF);
                    }
                    Ok(_) if started.elapsed() < Duration::from_millis(200) => continue,
                    _ => break None,
                }
            };
            let c = match got {
                Some(0) => &counts.answered,
                Some(3) => &counts.nxdomain,
                Some(2) => &counts.servfail,
                Some(_) => &counts.other,
                None => &counts.unanswered,
            };
            c.fetch_add(1, Ordering::Relaxed);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
    })
}
