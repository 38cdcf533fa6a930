//! Postgres stopped under a running `serve` for a long while (issue 13: ten minutes), under a
//! steady stream of DNS queries for an existing client. Reports what was lost (answers turned
//! NXDOMAIN or SERVFAIL, queries unanswered) and how fast the server follows the database again
//! once it is back: from the moment Postgres accepts connections to (a) `/readyz` saying
//! `database_up`, and (b) a change committed right then answered over DNS. Run by
//! `benches/postgres_outage.sh`; standalone: `cargo bench --bench postgres_outage -- SECONDS`.
//! Without arguments (as `cargo test --all-targets` runs it) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fault_support/mod.rs"]
mod fault_support;
#[path = "../tests/serve_harness/mod.rs"]
mod serve_harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_support::{LoadCounts, Pg, dns_load};
use serve_harness::*;

const ALICE: &str = "alice.c.vpn.example.net";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(seconds) = args.first() else {
        eprintln!("usage: postgres_outage SECONDS (a helper of benches/postgres_outage.sh)");
        return;
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        eprintln!("error: SECONDS: cannot parse {seconds:?}");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(Duration::from_secs(seconds)));
}

async fn run(outage: Duration) {
    let mut pg = Pg::new("ss-bench-outage").await;
    let url = pg.url();
    basic_inventory(&url);
    let data = tempfile::tempdir().expect("temp dir");
    let d = data.path().display().to_string();
    let cfg = config(NO_RRL, "hold_down = \"0s\"");
    let u = url.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_env(
            &cfg,
            &["--database-url", &u],
            &[("SHADOWSTEER_DATA_DIR", &d)],
        )
    })
    .await
    .expect("start serve");
    let (dns, admin) = (server.dns, server.admin);
    let counts = Arc::new(LoadCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = dns_load(
        Arc::new(Mutex::new(dns)),
        ALICE,
        counts.clone(),
        stop.clone(),
        // About 1,000 queries a second: steady, without taking a core of a shared machine.
        Duration::from_millis(1),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = counts.report();
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop");
    eprintln!("Postgres stopped; waiting {outage:?}");
    let t0 = Instant::now();
    while t0.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(60).min(outage)).await;
        eprintln!("  {:>4} s: {}", t0.elapsed().as_secs(), counts.report());
    }
    let during = counts.report();
    let (pg, back) = tokio::task::spawn_blocking(move || {
        pg.start();
        let back = Instant::now();
        (pg, back)
    })
    .await
    .expect("start");
    let direct = pg.direct_url();
    let change = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadowsteer"))
            .args(["advisory", "add", "--appliance", "eu-1", "--risk", "0.95"])
            .env("DATABASE_URL", &direct)
            .output()
            .expect("run the CLI");
        assert!(out.status.success());
        let committed = back.elapsed();
        let mut ready = None;
        let mut answered = None;
        while back.elapsed() < Duration::from_secs(60) && (ready.is_none() || answered.is_none()) {
            if ready.is_none()
                && http_get(admin, "/readyz", None)
                    .is_some_and(|(_, b)| b.contains("\"database_up\":true"))
            {
                ready = Some(back.elapsed());
            }
            if answered.is_none() && answer(dns, ALICE) == ["192.0.2.2"] {
                answered = Some(back.elapsed());
            }
        }
        (committed, ready, answered)
    })
    .await
    .expect("measure recovery");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    println!(
        "Postgres stopped for {outage:?} under a running serve (UDP queries for one client, 1 ms apart):"
    );
    println!("  before the outage: {before}");
    println!("  at the end of the outage: {during}");
    println!("  total: {}", counts.report());
    println!(
        "  after Postgres accepted connections again: change committed at {:?}, /readyz database_up at {:?}, change answered over DNS at {:?}",
        change.0, change.1, change.2
    );
    drop(server);
    drop(pg);
}
