//! The dashboard in a real headless Chromium, driven through chromedriver's WebDriver HTTP
//! API: the page loads with a token from the URL fragment, its charts hold data points from
//! the database, and a drain done through the API shows on the page. A screenshot is kept
//! in `target/tmp/dashboard.png`.
//!
//! Replication: this test has no second region. It writes region `us`'s heartbeat row the way
//! replication delivers it (beat and apply times), so the server's heartbeat task reads a
//! real lag from the database every second, and checks that the replication panel draws the
//! lag the API reports. `tests/regions.rs` runs real replication between clusters.

mod api_support;
mod common;
mod serve_harness;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::Api;
use base64::Engine as _;
use serde_json::{Value, json};
use serve_harness::http;

struct Driver {
    child: std::process::Child,
    addr: SocketAddr,
    session: String,
}

impl Driver {
    fn start(profile: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ready = serve_harness::eventually(Duration::from_secs(30), || {
            http(addr, "GET", "/status", None, None).is_some_and(|(s, _)| s == 200)
        });
        assert!(ready.is_some(), "chromedriver did not start");
        let mut d = Self {
            child,
            addr,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1300,1400",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            self.addr,
            method,
            path,
            None,
            body.as_deref().or(Some("{}")),
        )
        .unwrap_or_else(|| panic!("chromedriver: no answer to {path}"));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {text}");
        v["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn script(&self, js: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Polls `js` until `ok` accepts its value.
    fn wait(&self, js: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let v = self.script(js);
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: page shows {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                None,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Telemetry and score moves of the last hour, as agents and the live scorer write them.
async fn history(url: &str) {
    let pool = shadowsteer::store::connect(url, 1).await.unwrap();
    for q in [
        "INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped)
         SELECT a.region, a.id, now() - make_interval(secs => g * 30), 0.2 + 0.3 * random(), 0.4, 0, 0, 0.1,
                CASE a.id WHEN 'eu-1' THEN 40 + g % 9 ELSE 12 + g % 4 END, 0, 0
         FROM appliances a CROSS JOIN generate_series(1, 110) g",
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at)
         VALUES ('eu', 'appliance', 'eu-1', 0.01, 0.005, 0.03, 'replay', now() - interval '50 minutes'),
                ('us', 'appliance', 'us-1', 0.02, 0.01, 0.04, 'replay', now() - interval '50 minutes')",
        "UPDATE risk_scores SET score = 0.06, score_low = 0.03, score_high = 0.1, computed_at = now() - interval '25 minutes' WHERE subject = 'eu-1'",
        "UPDATE risk_scores SET score = 0.2, score_low = 0.12, score_high = 0.3, computed_at = now() - interval '8 minutes' WHERE subject = 'eu-1'",
        "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at)
         VALUES ('eu', 'path', 'eu-1>alice', 0.7, 0.6, 0.8, 'replay', now() - interval '1 minute'),
                ('eu', 'path', 'eu-1>us-1', 0.1, 0.05, 0.2, 'replay', now() - interval '1 minute')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q)).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// Region `us`'s heartbeat as a subscriber holds it: beaten 0.3 s before it was applied.
async fn replicated_heartbeat(url: &str) {
    let pool = shadowsteer::store::connect(url, 1).await.unwrap();
    sqlx::query(
        "INSERT INTO replication_heartbeats (region, beat_at, applied_at)
         VALUES ('us', now() - interval '300 milliseconds', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

#[test]
fn dashboard_shows_the_fleet_and_a_drain() {
    if !have("chromium") || !have("chromedriver") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium and chromedriver are required under CI"
        );
        eprintln!(
            "SKIPPED: chromium or chromedriver not found (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(api_support::db());
    // No live scorer (the replayed scores are the only ones) and scores that stay fresh for
    // the test's length.
    let api = Api::start_with(db, "[risk]\nenabled = false\nmax_score_age = \"1h\"");
    rt.block_on(history(&api.db.url));
    rt.block_on(replicated_heartbeat(&api.db.url));
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start(profile.path());
    let page = format!("http://{}/#token={}", api.addr(), api.read);
    driver.session_call("POST", "/url", Some(json!({ "url": page })));

    // The token left the address bar; the page updated from the API.
    let state = driver.wait(
        "return window.sstDashboard || null",
        "page loads and charts get points",
        |v| {
            v["updates"].as_u64() >= Some(1)
                && v["points"]["risk"].as_u64() >= Some(3)
                && v["points"]["health"].as_u64() >= Some(10)
        },
    );
    assert!(state["error"].is_null(), "{state}");
    let href = driver.script("return location.href");
    assert!(!href.as_str().unwrap().contains("token"), "{href}");
    // The charts drew those points: uPlot's data arrays hold them.
    let drawn =
        driver.script("return [...document.querySelectorAll('#risk-charts [data-chart]')].length");
    assert_eq!(drawn, 2);
    let cells = driver.script(
        "return document.querySelector('#fleet tr[data-appliance=\"eu-1\"] td.state').textContent",
    );
    assert_eq!(cells, "active");

    // A drain through the API shows on the page within a poll or two.
    let (s, _) = api.admin("POST", "/api/v1/appliances/eu-1/drain", None);
    assert_eq!(s, 200);
    driver.wait(
        "return document.querySelector('#fleet tr[data-appliance=\"eu-1\"] td.state').textContent",
        "drain shows",
        |v| v == "draining",
    );
    // Replication: the panel's chart gathers the server's lag samples for region us, and its
    // table shows the lag the API reports.
    let page = driver.wait(
        "return window.sstDashboard.replication.regions.us === undefined ? null : window.sstDashboard",
        "replication lag of us shows",
        |v| v["points"]["replication"].as_u64() >= Some(2),
    );
    let (s, status) = api.call(Some(&api.read), "GET", "/api/v1/replication", None);
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["regions"][0]["from"], "us", "{status}");
    let api_lag = status["regions"][0]["lag_ms"].as_i64().unwrap();
    let page_lag = page["replication"]["regions"]["us"].as_i64().unwrap();
    assert!(page_lag >= 300, "page shows {page_lag} ms");
    // The same reading or one a few seconds older (the page polls every 2 s; past the beat
    // gap the lag grows by a second each second).
    assert!(
        api_lag >= page_lag && api_lag - page_lag < 10_000,
        "page {page_lag} ms, API {api_lag} ms"
    );
    let row = driver.script(
        "return document.querySelector('#replication tr[data-region=\"us\"] td.lag').textContent",
    );
    assert!(row.as_str().unwrap().ends_with(" s"), "{row}");
    let plotted =
        driver.script("return document.querySelectorAll('#replication-chart canvas').length");
    assert_eq!(plotted, 1, "a uPlot canvas in the replication panel");

    // The fleet's risk column shows the stored score (0.200 for eu-1), over the threshold.
    let risk = driver.script(
        "return document.querySelector('#fleet tr[data-appliance=\"eu-1\"] td:nth-child(4)').textContent",
    );
    assert_eq!(risk, "0.200");
    // The riskiest paths, riskiest first: alice's path from eu-1, then eu-1's to us-1.
    let paths = driver.script(
        "return [...document.querySelectorAll('#paths tbody tr')].map((r) => [...r.cells].slice(0, 3).map((c) => c.textContent))",
    );
    assert_eq!(
        paths,
        json!([
            ["eu-1", "alice", "0.700"],
            ["eu-1", "us-1 (appliance)", "0.100"]
        ])
    );

    let png = driver.session_call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
