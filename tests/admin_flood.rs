//! Issue 13, item 5: a flood of `sst_...` tokens must not starve the database pool the DNS
//! snapshot loader shares. Each token check used to take a connection of that pool: with the
//! token table slow (here: locked), a flood of requests held every connection, and an
//! inventory change never reached DNS while the flood lasted. A binary of its own: on a
//! server without the fix, the flood also fills the cluster's connection slots.

mod common;
mod serve_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serve_harness::*;

#[test]
fn token_flood_does_not_starve_dns_freshness() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Pools and the lock's transaction may be dropped while a failed assertion unwinds: they
    // need a Tokio context then too.
    let _context = rt.enter();
    let db = rt.block_on(common::test_db());
    basic_inventory(&db.url);
    let token = cli(&db.url, &["token", "create", "--name", "scraper"])
        .trim()
        .to_owned();
    let server = Server::start(
        &config(NO_RRL, "hold_down = \"1s\""),
        &["--database-url", &db.url],
    );
    assert_eq!(answer(server.dns, "alice.c.vpn.example.net"), ["192.0.2.1"]);
    assert_eq!(
        http_get(server.admin, "/metrics", Some(&token)).unwrap().0,
        200
    );

    // The token table is slow: every lookup waits on a lock held by this test.
    let locker = rt.block_on(async {
        let pool = shadowsteer::store::connect(&db.url, 1).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        (pool, tx)
    });

    // The flood: 32 clients sending distinct random tokens as fast as they are answered,
    // bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let admin = server.admin;
    let flood: Vec<_> = (0..32)
        .map(|i| {
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                    n += 1;
                    let fake = format!("sst_flood{i}x{n}{}", "A".repeat(30));
                    if let Some((status, _)) = http_get(admin, "/metrics", Some(&fake)) {
                        assert!(matches!(status, 401 | 503), "a random token got {status}");
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Wait until the flood is under way.
    assert!(
        eventually(Duration::from_secs(30), || answered.load(Ordering::Relaxed)
            >= 32)
        .is_some(),
        "the flood got no answers at all"
    );

    // An operator drains the primary; DNS must follow while the flood goes on.
    cli(&db.url, &["appliance", "drain", "eu-1"]);
    let moved = eventually(Duration::from_secs(20), || {
        answer(server.dns, "alice.c.vpn.example.net") == ["192.0.2.2"]
    });
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().expect("flood thread");
    }
    assert!(
        moved.is_some(),
        "the drain did not reach DNS within 20 s during a token flood; log:\n{}",
        server.log_text()
    );
    rt.block_on(async {
        let (pool, tx) = locker;
        tx.rollback().await.unwrap();
        pool.close().await;
    });
    // Once the table answers again, the real token works (it may have been served from the
    // cache meanwhile) and flood tokens are still refused.
    assert!(
        eventually(Duration::from_secs(20), || {
            http_get(server.admin, "/metrics", Some(&token)).map(|r| r.0) == Some(200)
        })
        .is_some()
    );
    server.stop();
}
