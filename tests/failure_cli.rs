//! `shadowsteer failure add|list` against a real database: a recorded incident is stored in
//! `failure_events` in its appliance's region and listed with filters; every bad input exits
//! with code 2, prints one line, and writes nothing.

mod common;

use common::{TestDb, random_public_key, run_cli};

async fn count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM failure_events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn ok(db: &TestDb, args: &[&str]) -> String {
    let (code, out, err) = run_cli(db, args);
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

fn add_appliance(db: &TestDb, id: &str, region: &str, ip: &str) {
    let key = random_public_key();
    let endpoint = format!("{ip}:51820");
    ok(db, &common::appliance_add(id, region, &endpoint, &key));
}

#[tokio::test]
async fn add_then_list_with_filters() {
    let db = common::test_db().await;
    add_appliance(&db, "eu-1", "eu", "203.0.113.10");
    add_appliance(&db, "us-1", "us", "203.0.113.20");
    let out = ok(
        &db,
        &[
            "failure",
            "add",
            "--appliance",
            "eu-1",
            "--starts",
            "2026-11-30T10:00:00Z",
            "--ends",
            "2026-11-30T10:04:00Z",
            "--kind",
            "power_loss",
            "--precursor",
            "false",
            "--note",
            "PDU tripped",
        ],
    );
    assert!(
        out.contains("recorded power_loss failure of eu-1 (region eu)"),
        "{out}"
    );
    // Open (still down), offset time zone, no note.
    ok(
        &db,
        &[
            "failure",
            "add",
            "--appliance",
            "us-1",
            "--starts",
            "2026-11-30T12:30:00+02:00",
            "--kind",
            "memory_leak",
        ],
    );
    ok(
        &db,
        &[
            "failure",
            "add",
            "--appliance",
            "eu-1",
            "--starts",
            "2026-12-01T08:00:00Z",
            "--ends",
            "2026-12-01T08:00:30Z",
            "--kind",
            "link_flap",
        ],
    );
    assert_eq!(count(&db).await, 3);
    let row: (String, String, Option<bool>, String, i64) = sqlx::query_as(
        "SELECT region, kind, has_precursor, note,
                extract(epoch FROM ended_at - started_at)::bigint
         FROM failure_events WHERE appliance_id = 'eu-1' ORDER BY started_at LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "eu".into(),
            "power_loss".into(),
            Some(false),
            "PDU tripped".into(),
            240
        )
    );

    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["failure", "list", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str::<Vec<serde_json::Value>>(&ok(&db, &all)).unwrap()
    };
    let starts = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|f| f["started_at"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list(&[]);
    assert_eq!(
        starts(&all),
        vec![
            "2026-11-30T10:00:00Z",
            "2026-11-30T10:30:00Z",
            "2026-12-01T08:00:00Z"
        ],
        "oldest first, in UTC"
    );
    assert_eq!(all[1]["ended_at"], serde_json::Value::Null);
    assert_eq!(all[1]["region"], "us");
    assert_eq!(all[1]["precursor"], serde_json::Value::Null);
    assert_eq!(list(&["--appliance", "eu-1"]).len(), 2);
    assert_eq!(list(&["--appliance", "nope-9"]).len(), 0);
    // Overlap with [from, to): the finished 10:00-10:04 event ends before 10:10; the open
    // us-1 event runs on.
    assert_eq!(
        starts(&list(&[
            "--from",
            "2026-11-30T10:10:00Z",
            "--to",
            "2026-12-01T08:00:00Z"
        ])),
        vec!["2026-11-30T10:30:00Z"]
    );
    assert_eq!(
        starts(&list(&[
            "--from",
            "2026-11-30T10:03:59Z",
            "--to",
            "2026-11-30T10:30:00Z"
        ])),
        vec!["2026-11-30T10:00:00Z"]
    );
    // The table.
    let table = ok(&db, &["failure", "list", "--appliance", "eu-1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("APPLIANCE") && lines[0].contains("KIND"),
        "{table}"
    );
    assert!(
        lines[1].contains("eu-1")
            && lines[1].contains("power_loss")
            && lines[1].contains("PDU tripped"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_input_exits_2_and_writes_nothing() {
    let db = common::test_db().await;
    add_appliance(&db, "eu-1", "eu", "203.0.113.10");
    let base = |over: &[(&str, &str)]| -> Vec<String> {
        let mut flags = vec![
            ("--appliance", "eu-1"),
            ("--starts", "2026-11-30T10:00:00Z"),
            ("--ends", "2026-11-30T10:05:00Z"),
            ("--kind", "power_loss"),
        ];
        for (k, v) in over {
            match flags.iter_mut().find(|(f, _)| f == k) {
                Some(slot) => slot.1 = v,
                None => flags.push((k, v)),
            }
        }
        let mut args = vec!["failure".to_owned(), "add".to_owned()];
        for (k, v) in flags {
            args.push(k.to_owned());
            args.push(v.to_owned());
        }
        args
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base(&[("--appliance", "ghost-1")]),
            "unknown appliance ghost-1",
        ),
        (base(&[("--appliance", "Not An Id")]), "--appliance"),
        (
            base(&[("--ends", "2026-11-30T09:59:59Z")]),
            "--ends: 2026-11-30T09:59:59Z is not after --starts",
        ),
        (base(&[("--ends", "2026-11-30T10:00:00Z")]), "is not after"),
        (
            base(&[("--starts", "30/11/2026 10:00")]),
            "--starts: \"30/11/2026 10:00\": not an RFC 3339 time",
        ),
        (base(&[("--ends", "2026-11-31T10:00:00Z")]), "--ends"),
        (
            base(&[
                ("--starts", "2999-01-01T00:00:00Z"),
                ("--ends", "2999-01-01T00:10:00Z"),
            ]),
            "in the future",
        ),
        (base(&[("--kind", "Power Loss")]), "--kind"),
        (base(&[("--note", "a\u{7}b")]), "--note"),
        (base(&[("--precursor", "maybe")]), "--precursor"),
    ];
    for (args, reason) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_cli(&db, &args);
        assert_eq!(code, 2, "{args:?} exited {code}: {out}{err}");
        assert!(out.is_empty(), "{args:?} printed: {out}");
        assert!(err.contains(reason), "{args:?}: {err:?} lacks {reason:?}");
        assert_eq!(count(&db).await, 0, "{args:?} wrote a row");
    }
    // Input errors from our own validation are exactly one line (clap's own usage errors,
    // such as --precursor maybe, add a usage hint).
    for (args, _) in &cases[..cases.len() - 1] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, _, err) = run_cli(&db, &args);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // A duplicate (same appliance and start) is refused and leaves the first alone.
    let good = base(&[("--note", "first")]);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    ok(&db, &good);
    let again = base(&[("--note", "second")]);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&db, &again);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already"), "{err}");
    assert_eq!(count(&db).await, 1);
    let note: String = sqlx::query_scalar("SELECT note FROM failure_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(note, "first");
    // list: malformed or reversed window.
    for (args, reason) in [
        (vec!["failure", "list", "--from", "yesterday"], "--from"),
        (
            vec![
                "failure",
                "list",
                "--from",
                "2026-12-01T00:00:00Z",
                "--to",
                "2026-11-30T00:00:00Z",
            ],
            "--to: is not after --from",
        ),
        (
            vec!["failure", "list", "--appliance", "Not An Id"],
            "--appliance",
        ),
    ] {
        let (code, out, err) = run_cli(&db, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty() && err.contains(reason), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
