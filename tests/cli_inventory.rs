//! Inventory commands end to end against a real database, including every rejection path:
//! bad input exits with code 2, prints one line, and writes nothing.

mod common;

use common::{TestDb, random_public_key, run_cli};

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Runs a command that must be rejected as bad input.
fn rejected(db: &TestDb, args: &[&str], reason: &str) {
    let (code, out, err) = run_cli(db, args);
    assert_eq!(code, 2, "{args:?} exited {code}: {out}{err}");
    assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(
        line.contains(reason),
        "{args:?}: {line:?} does not mention {reason:?}"
    );
}

fn ok(db: &TestDb, args: &[&str]) -> String {
    let (code, out, err) = run_cli(db, args);
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

async fn two_regions(db: &TestDb) -> String {
    let key = random_public_key();
    ok(
        db,
        &[
            "appliance",
            "add",
            "--id",
            "eu-1",
            "--region",
            "eu",
            "--endpoint",
            "203.0.113.10:51820",
            "--public-key",
            &key,
        ],
    );
    ok(
        db,
        &[
            "appliance",
            "add",
            "--id",
            "us-1",
            "--region",
            "us",
            "--endpoint",
            "198.51.100.20:51820",
            "--public-key",
            &key,
            "--capacity",
            "50",
        ],
    );
    key
}

#[tokio::test]
async fn appliances_add_list_drain_remove() {
    let db = common::test_db().await;
    let key = two_regions(&db).await;
    let table = ok(&db, &["appliance", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("eu-1") && table.contains("203.0.113.10:51820") && table.contains("active"),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&db, &["appliance", "list", "--json"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["id"], "us-1");
    assert_eq!(list[1]["capacity"], 50);
    assert_eq!(list[1]["public_key"], key.as_str());

    ok(&db, &["appliance", "drain", "eu-1"]);
    let state: String = sqlx::query_scalar("SELECT state FROM appliances WHERE id = 'eu-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(state, "draining");
    ok(&db, &["appliance", "undrain", "eu-1"]);
    let state: String = sqlx::query_scalar("SELECT state FROM appliances WHERE id = 'eu-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(state, "active");
    ok(&db, &["appliance", "remove", "us-1"]);
    assert_eq!(count(&db, "appliances").await, 1);
}

#[tokio::test]
async fn appliance_rejections_write_nothing() {
    let db = common::test_db().await;
    let key = two_regions(&db).await;
    let add = |id: &'static str, endpoint: &'static str, k: &str| -> Vec<String> {
        [
            "appliance",
            "add",
            "--id",
            id,
            "--region",
            "eu",
            "--endpoint",
            endpoint,
            "--public-key",
            k,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (add("eu-1", "203.0.113.11:51820", &key), "already in use"),
        (
            add("eu-2", "203.0.113.10:51820", &key),
            "endpoint 203.0.113.10:51820 is already in use",
        ),
        (
            add("eu-2", "203.0.113.11:51820", "bm90LWEta2V5"),
            "malformed key",
        ),
        (add("EU_2", "203.0.113.11:51820", &key), "DNS label"),
        (add("eu-2", "203.0.113.11", &key), "invalid endpoint"),
        (add("eu-2", "203.0.113.11:0", &key), "port"),
    ];
    for (args, reason) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rejected(&db, &args, reason);
    }
    rejected(
        &db,
        &[
            "appliance",
            "add",
            "--id",
            "eu-2",
            "--region",
            "eu",
            "--endpoint",
            "203.0.113.11:1",
            "--public-key",
            &key,
            "--capacity",
            "0",
        ],
        "capacity",
    );
    rejected(
        &db,
        &["appliance", "drain", "nowhere"],
        "no appliance nowhere",
    );
    rejected(
        &db,
        &["appliance", "remove", "nowhere"],
        "no appliance nowhere",
    );
    assert_eq!(count(&db, "appliances").await, 2);
    assert_eq!(count(&db, "regions").await, 2);
}

#[tokio::test]
async fn clients_add_list_remove_and_rejections() {
    let db = common::test_db().await;
    two_regions(&db).await;
    ok(
        &db,
        &[
            "appliance",
            "add",
            "--id",
            "eu-2",
            "--region",
            "eu",
            "--endpoint",
            "203.0.113.12:51820",
            "--public-key",
            &random_public_key(),
        ],
    );
    let alice_key = random_public_key();
    let out = ok(
        &db,
        &[
            "client",
            "add",
            "--id",
            "alice",
            "--public-key",
            &alice_key,
            "--tunnel-ip",
            "10.77.0.2",
            "--primary",
            "eu-1",
            "--shadow",
            "us-1",
        ],
    );
    assert!(out.contains("peer index"), "{out}");

    let fresh = random_public_key();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "ghost",
                "--shadow",
                "us-1",
            ],
            "unknown appliance ghost",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "ghost",
            ],
            "unknown appliance ghost",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "eu-2",
            ],
            "same as primary",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "eu-1",
            ],
            "different appliances",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                "abc",
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "malformed key",
        ),
        (
            vec![
                "--id",
                "alice",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "client id alice is already in use",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &alice_key,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "public key",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.2",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "tunnel ip 10.77.0.2 is already in use",
        ),
        (
            vec![
                "--id",
                "bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.300",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "invalid tunnel ip",
        ),
        (
            vec![
                "--id",
                "Bob",
                "--public-key",
                &fresh,
                "--tunnel-ip",
                "10.77.0.3",
                "--primary",
                "eu-1",
                "--shadow",
                "us-1",
            ],
            "DNS label",
        ),
    ];
    for (args, reason) in &cases {
        let mut full = vec!["client", "add"];
        full.extend(args);
        rejected(&db, &full, reason);
    }
    assert_eq!(count(&db, "clients").await, 1);

    let json: serde_json::Value =
        serde_json::from_str(&ok(&db, &["client", "list", "--json"])).unwrap();
    let alice = &json[0];
    assert_eq!(alice["id"], "alice");
    assert_eq!(
        alice["region"], "eu",
        "a client belongs to its primary's region"
    );
    assert_eq!(alice["primary"], "eu-1");
    assert_eq!(alice["shadow"], "us-1");
    let index = alice["peer_index"].as_u64().unwrap();
    assert!((1..1 << 24).contains(&index));
    assert!(ok(&db, &["client", "list"]).contains("10.77.0.2"));

    // An appliance in use cannot be removed; nothing changes.
    rejected(&db, &["appliance", "remove", "us-1"], "alice");
    assert_eq!(count(&db, "appliances").await, 3);

    ok(&db, &["client", "remove", "alice"]);
    rejected(&db, &["client", "remove", "alice"], "no client alice");
    assert_eq!(count(&db, "clients").await, 0);
}

#[tokio::test]
async fn advisories_add_list_remove_and_rejections() {
    let db = common::test_db().await;
    two_regions(&db).await;
    let out = ok(
        &db,
        &[
            "advisory",
            "add",
            "--appliance",
            "eu-1",
            "--risk",
            "0.9",
            "--for",
            "10m",
            "--kind",
            "environmental",
            "--note",
            "storm warning",
        ],
    );
    let id = out.trim().rsplit(' ').next().unwrap().to_owned();
    ok(
        &db,
        &[
            "advisory",
            "add",
            "--region",
            "us",
            "--risk",
            "0.2",
            "--starts",
            "2030-01-01T00:00:00Z",
            "--kind",
            "maintenance",
        ],
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&db, &["advisory", "list", "--json"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let storm = list.iter().find(|a| a["id"] == id.as_str()).unwrap();
    assert_eq!(storm["scope"]["id"], "eu-1");
    assert_eq!(storm["risk"], 0.9);
    let window = chrono::DateTime::parse_from_rfc3339(storm["ends_at"].as_str().unwrap()).unwrap()
        - chrono::DateTime::parse_from_rfc3339(storm["starts_at"].as_str().unwrap()).unwrap();
    assert_eq!(window.num_seconds(), 600);
    let table = ok(&db, &["advisory", "list"]);
    assert!(
        table.contains("storm warning") && table.contains("region us"),
        "{table}"
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--appliance",
                "ghost",
                "--risk",
                "0.9",
                "--kind",
                "environmental",
            ],
            "unknown appliance ghost",
        ),
        (
            vec![
                "--appliance",
                "eu-1",
                "--risk",
                "1.5",
                "--kind",
                "environmental",
            ],
            "not a probability",
        ),
        (
            vec!["--appliance", "eu-1", "--risk", "0.5", "--kind", "weather"],
            "unknown advisory kind",
        ),
        (
            vec![
                "--appliance",
                "eu-1",
                "--risk",
                "0.5",
                "--kind",
                "environmental",
                "--for",
                "soon",
            ],
            "--for",
        ),
        (
            vec![
                "--appliance",
                "eu-1",
                "--risk",
                "0.5",
                "--kind",
                "environmental",
                "--starts",
                "tomorrow",
            ],
            "RFC 3339",
        ),
        (
            vec![
                "--region",
                "mars",
                "--risk",
                "0.5",
                "--kind",
                "environmental",
            ],
            "no region mars",
        ),
    ];
    for (args, reason) in &cases {
        let mut full = vec!["advisory", "add"];
        full.extend(args);
        rejected(&db, &full, reason);
    }
    assert_eq!(count(&db, "advisories").await, 2);

    rejected(&db, &["advisory", "remove", "zz"], "uuid or a prefix");
    rejected(
        &db,
        &["advisory", "remove", "00000000-0000-0000-0000-000000000000"],
        "no advisory",
    );
    ok(&db, &["advisory", "remove", &id[..8]]);
    assert_eq!(count(&db, "advisories").await, 1);
}

#[test]
fn embedded_database_needs_no_connection_string() {
    let dir = shadowsteer::localpg::temp_cluster_dir("shadowsteer-test-embedded").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let key = random_public_key();
    run(&[
        "appliance",
        "add",
        "--id",
        "eu-1",
        "--region",
        "eu",
        "--endpoint",
        "127.0.0.1:51820",
        "--public-key",
        &key,
    ]);
    // A second command finds the same cluster and data, and no server is left running.
    assert!(run(&["appliance", "list"]).contains("eu-1"));
    let pid_file = dir.join("pg/postmaster.pid");
    assert!(!pid_file.exists(), "the command left the server running");
    let _ = std::fs::remove_dir_all(&dir);
}
