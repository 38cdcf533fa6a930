//! The admin API over real HTTP against `serve` on a real database: scopes, every route, and
//! the inventory rules giving the same reasons as the CLI.

mod api_support;
mod common;
mod serve_harness;

use api_support::Api;
use serde_json::{Value, json};
use serve_harness::{cli, http_get, key};

fn start() -> Api {
    let db = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(api_support::db());
    Api::start(db)
}

#[test]
fn tokens_and_scopes() {
    let api = start();
    // token create defaults to the least privilege.
    let list: Value =
        serde_json::from_str(&cli(&api.db.url, &["token", "list", "--json"])).unwrap();
    let reader = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "reader")
        .unwrap();
    assert_eq!(reader["scope"], "read");

    let (s, e) = api.call(None, "GET", "/api/v1/appliances", None);
    assert_eq!((s, e["code"].as_str()), (401, Some("missing_token")));
    let (s, e) = api.call(Some("sst_not-a-token"), "GET", "/api/v1/appliances", None);
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_token")));
    let (s, e) = api.call(Some("Basic abc"), "GET", "/api/v1/appliances", None);
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_token")));
    let read = api.read.clone();
    let (s, list) = api.call(Some(&read), "GET", "/api/v1/appliances", None);
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Read may not change anything, nor see tokens.
    for (method, path) in [
        ("POST", "/api/v1/appliances/eu-1/drain"),
        ("DELETE", "/api/v1/clients/alice"),
        ("GET", "/api/v1/tokens"),
    ] {
        let (s, e) = api.call(Some(&read), method, path, None);
        assert_eq!(
            (s, e["code"].as_str()),
            (403, Some("insufficient_scope")),
            "{method} {path}"
        );
    }
    assert_eq!(
        http_get(api.addr(), "/metrics", Some(&read)).unwrap().0,
        200
    );
    assert_eq!(http_get(api.addr(), "/metrics", None).unwrap().0, 401);
    // Open routes.
    assert_eq!(http_get(api.addr(), "/healthz", None).unwrap().0, 200);
    let (s, doc) = api.call(None, "GET", "/api/v1/openapi.json", None);
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let (s, e) = api.call(Some(&read), "GET", "/api/v1/nothing-here", None);
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));

    // Tokens over the API: create (read by default), list, revoke.
    let (s, created) = api.admin(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "wall screen"})),
    );
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["scope"], "read");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(Some(&token), "GET", "/api/v1/clients", None).0,
        200
    );
    let (s, all) = api.admin("GET", "/api/v1/tokens", None);
    assert_eq!(s, 200);
    assert!(all.to_string().contains("wall screen") && !all.to_string().contains("sst_"));
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        api.admin("DELETE", &format!("/api/v1/tokens/{}", &id[..8]), None)
            .0,
        204
    );
    assert_eq!(api.admin("DELETE", "/api/v1/tokens/zz", None).0, 400);
    // A revoked token stops working once its cached verdict expires (a few seconds).
    let refused = serve_harness::eventually(std::time::Duration::from_secs(30), || {
        api.call(Some(&token), "GET", "/api/v1/clients", None).0 == 401
    });
    assert!(refused.is_some(), "revoked token still accepted");
    let (s, e) = api.admin(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "x", "scope": "root"})),
    );
    assert_eq!((s, e["field"].as_str()), (400, Some("scope")));
}

/// Runs `args` through the CLI; returns its one-line refusal.
fn cli_refusal(api: &Api, args: &[&str]) -> String {
    let (code, _, err) = common::run_cli(&api.db, args);
    assert_eq!(code, 2, "{args:?}: {err}");
    err.trim().trim_start_matches("error: ").to_owned()
}

/// The API's refusal as the CLI words it (a field is spelt as its flag).
fn as_cli(e: &Value) -> String {
    let message = e["message"].as_str().unwrap();
    match e["field"].as_str() {
        Some(f) => format!("--{}", message.replacen(f, &f.replace('_', "-"), 1)),
        None => message.to_owned(),
    }
}

#[test]
fn inventory_refusals_match_the_cli() {
    let api = start();
    let k = key();
    let cases: Vec<(Value, Vec<&str>, u16, &str)> = vec![
        (
            json!({"id": "eu-2", "region": "eu", "endpoint": "203.0.113.11", "public_key": k}),
            vec![
                "appliance",
                "add",
                "--id",
                "eu-2",
                "--region",
                "eu",
                "--endpoint",
                "203.0.113.11",
                "--public-key",
                &k,
            ],
            400,
            "invalid_value",
        ),
        (
            json!({"id": "EU_2", "region": "eu", "endpoint": "203.0.113.11:1", "public_key": k}),
            vec![
                "appliance",
                "add",
                "--id",
                "EU_2",
                "--region",
                "eu",
                "--endpoint",
                "203.0.113.11:1",
                "--public-key",
                &k,
            ],
            400,
            "invalid_value",
        ),
        (
            json!({"id": "eu-9", "region": "eu", "endpoint": "192.0.2.1:51820", "public_key": k}),
            vec![
                "appliance",
                "add",
                "--id",
                "eu-9",
                "--region",
                "eu",
                "--endpoint",
                "192.0.2.1:51820",
                "--public-key",
                &k,
            ],
            409,
            "duplicate",
        ),
        (
            json!({"id": "eu-2", "region": "eu", "endpoint": "203.0.113.11:1", "public_key": k, "capacity": 0}),
            vec![
                "appliance",
                "add",
                "--id",
                "eu-2",
                "--region",
                "eu",
                "--endpoint",
                "203.0.113.11:1",
                "--public-key",
                &k,
                "--capacity",
                "0",
            ],
            400,
            "invalid_value",
        ),
    ];
    for (body, args, status, code) in &cases {
        let (s, e) = api.admin("POST", "/api/v1/appliances", Some(body.clone()));
        assert_eq!(
            (s, e["code"].as_str()),
            (*status, Some(*code)),
            "{body}: {e}"
        );
        assert_eq!(as_cli(&e), cli_refusal(&api, args), "{body}");
    }
    let client = |id: &str, ip: &str, primary: &str, shadow: &str| json!({"id": id, "public_key": k, "tunnel_ip": ip, "primary": primary, "shadow": shadow});
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            client("bob", "10.77.0.3", "ghost", "us-1"),
            400,
            "unknown_appliance",
        ),
        (
            client("bob", "10.77.0.3", "eu-1", "eu-1"),
            400,
            "same_appliance",
        ),
        (client("bob", "10.77.0.2", "eu-1", "us-1"), 409, "duplicate"),
        (
            client("bob", "10.77.0.300", "eu-1", "us-1"),
            400,
            "invalid_value",
        ),
        (
            client("alice", "10.77.0.3", "eu-1", "us-1"),
            409,
            "duplicate",
        ),
    ];
    for (body, status, code) in &cases {
        let (s, e) = api.admin("POST", "/api/v1/clients", Some(body.clone()));
        assert_eq!(
            (s, e["code"].as_str()),
            (*status, Some(*code)),
            "{body}: {e}"
        );
        let args: Vec<String> = ["client", "add"]
            .iter()
            .map(|s| s.to_string())
            .chain(
                ["id", "public_key", "tunnel_ip", "primary", "shadow"]
                    .iter()
                    .flat_map(|f| {
                        [
                            format!("--{}", f.replace('_', "-")),
                            body[f].as_str().unwrap().to_owned(),
                        ]
                    }),
            )
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(as_cli(&e), cli_refusal(&api, &args), "{body}");
    }
    // In use, and not found: the same words too.
    let (s, e) = api.admin("DELETE", "/api/v1/appliances/us-1", None);
    assert_eq!((s, e["code"].as_str()), (409, Some("in_use")));
    assert_eq!(
        as_cli(&e),
        cli_refusal(&api, &["appliance", "remove", "us-1"])
    );
    let (s, e) = api.admin("POST", "/api/v1/appliances/ghost/drain", None);
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
    assert_eq!(
        as_cli(&e),
        cli_refusal(&api, &["appliance", "drain", "ghost"])
    );
    let (s, e) = api.admin(
        "POST",
        "/api/v1/advisories",
        Some(json!({"appliance": "eu-1", "risk": 1.5})),
    );
    assert_eq!((s, e["field"].as_str()), (400, Some("risk")));
    assert_eq!(
        as_cli(&e),
        cli_refusal(
            &api,
            &["advisory", "add", "--appliance", "eu-1", "--risk", "1.5"]
        )
    );
    // Malformed bodies are 400 with the same JSON shape, never a 500.
    for body in ["{", "[]", "{\"id\": 5}", "null"] {
        let (s, e) = serve_harness::http(
            api.addr(),
            "POST",
            "/api/v1/appliances",
            Some(&api.admin),
            Some(body),
        )
        .unwrap();
        assert_eq!(s, 400, "{body}: {e}");
        assert!(e.contains("\"code\":\"bad_request\""), "{e}");
    }
    let big = format!("{{\"note\": \"{}\"}}", "x".repeat(100_000));
    let (s, _) = serve_harness::http(
        api.addr(),
        "POST",
        "/api/v1/advisories",
        Some(&api.admin),
        Some(&big),
    )
    .unwrap();
    assert_eq!(s, 413);
}

#[test]
fn inventory_routes() {
    let api = start();
    let k = key();
    let (s, a) = api.admin(
        "POST",
        "/api/v1/appliances",
        Some(json!({"id": "eu-2", "region": "eu", "endpoint": "203.0.113.12:51820", "public_key": k, "capacity": 40})),
    );
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["capacity"], 40);
    assert!(cli(&api.db.url, &["appliance", "list"]).contains("203.0.113.12:51820"));
    let (s, a) = api.admin(
        "PATCH",
        "/api/v1/appliances/eu-2",
        Some(json!({"capacity": 70, "endpoint": "203.0.113.13:51820"})),
    );
    assert_eq!(
        (s, a["capacity"].as_u64(), a["endpoint"].as_str()),
        (200, Some(70), Some("203.0.113.13:51820"))
    );
    let (s, a) = api.admin("POST", "/api/v1/appliances/eu-2/drain", None);
    assert_eq!((s, a["state"].as_str()), (200, Some("draining")));
    let (_, one) = api.admin("GET", "/api/v1/appliances/eu-2", None);
    assert_eq!(one["state"], "draining");
    let (s, a) = api.admin("POST", "/api/v1/appliances/eu-2/undrain", None);
    assert_eq!((s, a["state"].as_str()), (200, Some("active")));
    // Clients: created, paged, filtered, read, configured, removed.
    for (i, id) in ["carol", "dave", "erin"].iter().enumerate() {
        let (s, c) = api.admin(
            "POST",
            "/api/v1/clients",
            Some(json!({"id": id, "public_key": key(), "tunnel_ip": format!("10.77.0.{}", 10 + i), "primary": "eu-2", "shadow": "us-1"})),
        );
        assert_eq!(s, 201, "{c}");
        assert!(c["peer_index"].as_u64().unwrap() > 0);
    }
    let (_, page) = api.admin("GET", "/api/v1/clients?limit=2", None);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "carol"]);
    assert_eq!(page["next"], "carol");
    let (_, page) = api.admin("GET", "/api/v1/clients?limit=2&after=carol", None);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dave", "erin"]);
    assert!(page["next"].is_null());
    let (_, page) = api.admin("GET", "/api/v1/clients?appliance=eu-1", None);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(api.admin("GET", "/api/v1/clients?limit=0", None).0, 400);
    assert_eq!(api.admin("GET", "/api/v1/clients?limit=abc", None).0, 400);
    let (s, c) = api.admin("GET", "/api/v1/clients/dave", None);
    assert_eq!((s, c["primary"].as_str()), (200, Some("eu-2")));
    let (s, text) = serve_harness::http(
        api.addr(),
        "GET",
        "/api/v1/clients/dave/config?port=51999",
        Some(&api.read),
        None,
    )
    .unwrap();
    assert_eq!(s, 200);
    let from_cli = cli(
        &api.db.url,
        &[
            "client",
            "config",
            "dave",
            "--zone",
            "vpn.example.net",
            "--port",
            "51999",
        ],
    );
    assert_eq!(text, from_cli, "the API's wg-quick file is the CLI's");
    assert_eq!(
        api.admin("GET", "/api/v1/clients/nobody/config", None).0,
        404
    );
    assert_eq!(api.admin("DELETE", "/api/v1/clients/dave", None).0, 204);
    assert_eq!(api.admin("GET", "/api/v1/clients/dave", None).0, 404);
    // Advisories: active and all.
    let (s, adv) = api.admin("POST", "/api/v1/advisories", Some(json!({"region": "us", "risk": 0.3, "for": "10m", "kind": "maintenance", "note": "window"})));
    assert_eq!(s, 201, "{adv}");
    assert_eq!(adv["scope"], json!({"scope": "region", "id": "us"}));
    let (s, _) = api.admin(
        "POST",
        "/api/v1/advisories",
        Some(json!({"appliance": "eu-1", "risk": 0.2, "starts": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(s, 201);
    let (_, all) = api.admin("GET", "/api/v1/advisories", None);
    let (_, active) = api.admin("GET", "/api/v1/advisories?active=true", None);
    assert_eq!(
        (
            all.as_array().unwrap().len(),
            active.as_array().unwrap().len()
        ),
        (2, 1)
    );
    let id = adv["id"].as_str().unwrap();
    assert_eq!(
        api.admin("DELETE", &format!("/api/v1/advisories/{id}"), None)
            .0,
        204
    );
    assert_eq!(
        api.admin("DELETE", &format!("/api/v1/advisories/{id}"), None)
            .0,
        404
    );
}

/// The fleet list's cached copy is at most a second old; a write through the API must show in
/// the very next GET anyway. Each step reads the list first, so a copy younger than a second
/// exists when the write happens: without invalidation the read after it would return that
/// copy.
#[test]
fn fleet_list_shows_each_write_through_the_api_at_once() {
    let api = start();
    let fleet = |api: &Api| -> Vec<Value> {
        let (s, list) = api.call(Some(&api.read), "GET", "/api/v1/appliances", None);
        assert_eq!(s, 200, "{list}");
        list.as_array().unwrap().clone()
    };
    let find = |list: &[Value], id: &str| list.iter().find(|a| a["id"] == id).cloned();
    let state = |api: &Api, id: &str| find(&fleet(api), id).map(|a| a["state"].clone());

    assert_eq!(state(&api, "eu-1"), Some(json!("active")));
    assert_eq!(
        api.admin("POST", "/api/v1/appliances/eu-1/drain", None).0,
        200
    );
    assert_eq!(state(&api, "eu-1"), Some(json!("draining")), "drain");
    assert_eq!(state(&api, "eu-1"), Some(json!("draining")));
    assert_eq!(
        api.admin("POST", "/api/v1/appliances/eu-1/undrain", None).0,
        200
    );
    assert_eq!(state(&api, "eu-1"), Some(json!("active")), "undrain");

    assert_eq!(find(&fleet(&api), "eu-1").unwrap()["capacity"], 100);
    let (s, _) = api.admin(
        "PATCH",
        "/api/v1/appliances/eu-1",
        Some(json!({"capacity": 55})),
    );
    assert_eq!(s, 200);
    assert_eq!(
        find(&fleet(&api), "eu-1").unwrap()["capacity"],
        55,
        "update"
    );

    assert!(find(&fleet(&api), "eu-9").is_none());
    let (s, a) = api.admin(
        "POST",
        "/api/v1/appliances",
        Some(json!({"id": "eu-9", "region": "eu", "endpoint": "203.0.113.99:51820", "public_key": key()})),
    );
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        find(&fleet(&api), "eu-9").unwrap()["state"],
        "active",
        "create"
    );

    // A client's create and delete change the counts the list shows.
    assert_eq!(find(&fleet(&api), "eu-9").unwrap()["primary_clients"], 0);
    let (s, c) = api.admin(
        "POST",
        "/api/v1/clients",
        Some(json!({"id": "frank", "public_key": key(), "tunnel_ip": "10.77.1.1", "primary": "eu-9", "shadow": "us-1"})),
    );
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        find(&fleet(&api), "eu-9").unwrap()["primary_clients"],
        1,
        "client create"
    );
    assert_eq!(api.admin("DELETE", "/api/v1/clients/frank", None).0, 204);
    assert_eq!(
        find(&fleet(&api), "eu-9").unwrap()["primary_clients"],
        0,
        "client delete"
    );

    assert_eq!(api.admin("DELETE", "/api/v1/appliances/eu-9", None).0, 204);
    assert!(find(&fleet(&api), "eu-9").is_none(), "delete");
}

/// `shadowsteer_admin_fleet_loads_total` from `/metrics`.
fn fleet_loads(api: &Api) -> u64 {
    let (s, text) = http_get(api.addr(), "/metrics", Some(&api.read)).unwrap();
    assert_eq!(s, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("shadowsteer_admin_fleet_loads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fleet load counter in /metrics"))
}

/// Fifty requests at once for a fleet list that no copy can serve (a write just invalidated
/// it) cause one database read, not fifty (single flight); and reads within the copy's
/// second cause none.
#[test]
fn fifty_concurrent_fleet_reads_cause_one_load() {
    let api = start();
    assert_eq!(
        api.admin("POST", "/api/v1/appliances/us-1/drain", None).0,
        200
    );
    let before = fleet_loads(&api);
    let barrier = std::sync::Barrier::new(50);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    api.call(Some(&api.read), "GET", "/api/v1/appliances", None)
                })
            })
            .collect();
        for h in handles {
            let (s, list) = h.join().unwrap();
            assert_eq!(s, 200, "{list}");
            let us1 = list.as_array().unwrap().iter().find(|a| a["id"] == "us-1");
            assert_eq!(us1.unwrap()["state"], "draining");
        }
    });
    let loads = fleet_loads(&api) - before;
    // One load; a second only if the fifty took longer than the copy's second to arrive.
    assert!(
        (1..=2).contains(&loads),
        "{loads} loads of the fleet view for 50 concurrent requests"
    );
}

/// `GET /replication` before replication is set up, then with region us's heartbeat held here
/// as replication delivers it (beaten 0.4 s before it was applied): the server's heartbeat
/// task reads the lag from the database and the route reports it, now and as history.
#[test]
fn replication_status_reports_the_lag_the_server_reads() {
    let api = start();
    let (s, st) = api.call(Some(&api.read), "GET", "/api/v1/replication", None);
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        (&st["local_region"], &st["regions"], &st["history"]),
        (&Value::Null, &json!([]), &json!([]))
    );
    assert_eq!(st["lag_warning_ms"].as_u64(), Some(1000), "{st}");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = shadowsteer::store::connect(&api.db.url, 1).await.unwrap();
        sqlx::query(
            "INSERT INTO replication_heartbeats (region, beat_at, applied_at)
             VALUES ('us', now(), now() + interval '400 milliseconds')",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    let mut st = Value::Null;
    let seen = serve_harness::eventually(std::time::Duration::from_secs(10), || {
        st = api
            .call(Some(&api.read), "GET", "/api/v1/replication", None)
            .1;
        st["history"].as_array().map_or(0, Vec::len) >= 2
    });
    assert!(seen.is_some(), "two lag samples within 10 s: {st}");
    let us = &st["regions"][0];
    assert_eq!(us["from"], "us", "{st}");
    assert!(us["lag_ms"].as_i64().unwrap() >= 400, "{st}");
    // Past the beat gap with no newer beat, the lag grows and crosses the warning threshold.
    assert_eq!(
        us["behind"].as_bool(),
        Some(us["lag_ms"].as_i64().unwrap() > 1000),
        "{st}"
    );
    let h = st["history"].as_array().unwrap();
    assert!(
        h.iter().all(|s| s["lags"]["us"].as_i64() >= Some(400)),
        "{st}"
    );
    assert!(
        h[0]["at"].as_str() < h[1]["at"].as_str(),
        "oldest first: {st}"
    );
    assert_eq!(api.call(None, "GET", "/api/v1/replication", None).0, 401);
}

#[test]
fn sessions_risk_decisions_model() {
    let api = start();
    let url = api.db.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = shadowsteer::store::connect(&url, 1).await.unwrap();
        for q in [
            "INSERT INTO session_state (region, client_id, holder, role, epoch, endpoint_ip, endpoint_port, peer_index, last_handshake_at, tx_packets, rx_bytes)
             SELECT 'eu', 'alice', 'eu-1', 'primary', 3, '198.51.100.7', 40000, peer_index, now(), 17, 1234 FROM clients WHERE id = 'alice'",
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at)
             VALUES ('us', 'appliance', 'us-1', 0.1, 0.05, 0.2, 'm', now() - interval '20 minutes')",
            "UPDATE risk_scores SET score = 0.4, score_low = 0.3, score_high = 0.5, computed_at = now() - interval '10 minutes' WHERE subject = 'us-1'",
            "INSERT INTO steering_decisions (region, client_id, from_appliance, to_appliance, reason) VALUES ('eu', 'alice', 'eu-1', 'us-1', 'drain'), ('eu', 'bob', NULL, 'us-1', 'first')",
            "INSERT INTO appliance_health (region, appliance_id, ts, cpu, mem, bw_in_bps, bw_out_bps, bw_util, sessions, handshake_failures, packets_dropped)
             SELECT 'us', 'us-1', now() - make_interval(secs => g * 10), 0.5, 0.25, 0, 0, 0.1, g, 0, 0 FROM generate_series(1, 30) g",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(q)).execute(&pool).await.unwrap();
        }
    });
    let (s, page) = api.admin("GET", "/api/v1/sessions", None);
    assert_eq!(s, 200, "{page}");
    let row = &page["items"][0];
    assert_eq!(
        (
            row["holder"].as_str(),
            row["epoch"].as_i64(),
            row["endpoint"].as_str()
        ),
        (Some("eu-1"), Some(3), Some("198.51.100.7:40000"))
    );
    assert_eq!(
        (row["tx_packets"].as_i64(), row["rx_bytes"].as_i64()),
        (Some(17), Some(1234))
    );
    assert_eq!(
        api.admin("GET", "/api/v1/sessions?holder=us-1", None).1["items"],
        json!([])
    );
    assert_eq!(api.admin("GET", "/api/v1/sessions/alice", None).0, 200);
    assert_eq!(api.admin("GET", "/api/v1/sessions/carol", None).0, 404);
    // Risk: current scores, and us-1's history (two stored moves, downsampled).
    let (_, risk) = api.admin("GET", "/api/v1/risk", None);
    assert!(risk["threshold"].as_f64().unwrap() > 0.0);
    assert!(
        risk["scores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subject"] == "us-1")
    );
    let (s, h) = api.admin(
        "GET",
        "/api/v1/risk/appliances/us-1/history?points=50",
        None,
    );
    assert_eq!(s, 200, "{h}");
    let scores: Vec<f64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores, [0.1, 0.4]);
    let (_, h) = api.admin(
        "GET",
        "/api/v1/risk/appliances/us-1/history?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
        None,
    );
    assert_eq!(h["points"], json!([]));
    assert_eq!(
        api.admin("GET", "/api/v1/risk/appliances/us-1/history?points=1", None)
            .0,
        400
    );
    assert_eq!(
        api.admin(
            "GET",
            "/api/v1/risk/appliances/us-1/history?from=yesterday",
            None
        )
        .0,
        400
    );
    let (_, list) = api.admin("GET", "/api/v1/appliances", None);
    let us = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "us-1")
        .unwrap()
        .clone();
    assert_eq!(us["health"]["sessions"], 1, "latest health row");
    let (_, health) = api.admin("GET", "/api/v1/appliances/us-1/health?points=4", None);
    let n = health.as_array().unwrap().len();
    assert!(
        (1..=3).contains(&n),
        "30 rows in at most 3 buckets: {health}"
    );
    // Decisions: filtered and paged, newest first.
    let (_, d) = api.admin("GET", "/api/v1/decisions?client=bob", None);
    assert_eq!(d["items"].as_array().unwrap().len(), 1);
    let (_, d) = api.admin("GET", "/api/v1/decisions?limit=1", None);
    assert_eq!(d["items"][0]["client"], "bob");
    let before = d["next"].as_i64().unwrap();
    let (_, d) = api.admin(
        "GET",
        &format!("/api/v1/decisions?limit=1&before={before}"),
        None,
    );
    assert_eq!(d["items"][0]["client"], "alice");
    let (_, d) = api.admin(
        "GET",
        "/api/v1/decisions?appliance=eu-1&from=2099-01-01T00:00:00Z",
        None,
    );
    assert_eq!(d["items"], json!([]));
    // The running model's card.
    let (s, m) = api.admin("GET", "/api/v1/model", None);
    assert_eq!(s, 200);
    assert!(m["version"].as_str().unwrap().starts_with("default-"));
    assert!(m["card_markdown"].as_str().unwrap().contains('#'));
}

/// Scores of several regions and path risk, as steering counts them: an appliance's risk is
/// the highest *fresh* score (a region's leftover row does not count, and one with no fresh
/// row shows as stale); `/risk/paths` lists the paths steering counts, riskiest first.
#[test]
fn path_risk_and_scores_of_several_regions() {
    let db = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(api_support::db());
    // No live scorer: the scores below are the only ones.
    let api = Api::start_with(db, "[risk]\nenabled = false\nmax_score_age = \"1h\"");
    let url = api.db.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = shadowsteer::store::connect(&url, 1).await.unwrap();
        sqlx::query(
            "INSERT INTO risk_scores (region, subject_kind, subject, score, score_low, score_high, model_version, computed_at, confirmed_at)
             SELECT r, k, s, sc, sc / 2, least(1, sc * 2), 'm', now() - make_interval(mins => age), now() - make_interval(mins => age)
             FROM (VALUES ('eu', 'appliance', 'eu-1', 0.05, 0),
                          ('us', 'appliance', 'eu-1', 0.9, 120),
                          ('eu', 'appliance', 'us-1', 0.3, 90),
                          ('eu', 'path', 'eu-1>alice', 0.7, 0),
                          ('us', 'path', 'eu-1>alice', 0.2, 0),
                          ('eu', 'path', 'eu-1>us-1', 0.1, 1),
                          ('eu', 'path', 'us-1>bob', 0.95, 61)) AS v(r, k, s, sc, age)",
        )
        .execute(&pool)
        .await
        .unwrap();
    });
    // Appliances: eu-1 counts eu's fresh 0.05, not us's two-hour-old 0.9; us-1 has no fresh
    // score (steering counts it as unknown-high) and shows its last one, not fresh.
    let (s, list) = api.admin("GET", "/api/v1/appliances", None);
    assert_eq!(s, 200, "{list}");
    let risk = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()["risk"]
            .clone()
    };
    assert_eq!(
        (
            risk("eu-1")["score"].as_f64(),
            risk("eu-1")["fresh"].as_bool()
        ),
        (Some(0.05), Some(true))
    );
    assert_eq!(
        (
            risk("us-1")["score"].as_f64(),
            risk("us-1")["fresh"].as_bool()
        ),
        (Some(0.3), Some(false))
    );
    let (_, one) = api.admin("GET", "/api/v1/appliances/eu-1", None);
    assert_eq!(one["risk"]["score"].as_f64(), Some(0.05), "{one}");

    // Path risk: fresh paths, the highest region's score of each, riskiest first.
    let (s, paths) = api.admin("GET", "/api/v1/risk/paths", None);
    assert_eq!(s, 200, "{paths}");
    assert!(paths["threshold"].as_f64().unwrap() > 0.0);
    let rows: Vec<(&str, &str, &str, f64, &str)> = paths["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap(),
                p["to_kind"].as_str().unwrap(),
                p["score"].as_f64().unwrap(),
                p["region"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("eu-1", "alice", "client", 0.7, "eu"),
            ("eu-1", "us-1", "appliance", 0.1, "eu")
        ]
    );
    // One end, a limit, and the stale ones on request (last, and marked).
    let (_, p) = api.admin("GET", "/api/v1/risk/paths?end=alice", None);
    assert_eq!(p["paths"].as_array().unwrap().len(), 1, "{p}");
    let (_, p) = api.admin("GET", "/api/v1/risk/paths?end=us-1", None);
    let subjects: Vec<&str> = p["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["eu-1>us-1"], "{p}");
    let (_, p) = api.admin("GET", "/api/v1/risk/paths?limit=1", None);
    assert_eq!(p["paths"][0]["subject"], "eu-1>alice", "{p}");
    assert_eq!(p["paths"].as_array().unwrap().len(), 1);
    let (_, p) = api.admin("GET", "/api/v1/risk/paths?include_stale=true", None);
    let last = p["paths"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["subject"].as_str(), last["fresh"].as_bool()),
        (Some("us-1>bob"), Some(false)),
        "{p}"
    );
    for bad in [
        "/api/v1/risk/paths?limit=0",
        "/api/v1/risk/paths?limit=1001",
        "/api/v1/risk/paths?end=no%20such%20thing!",
        "/api/v1/risk/paths?include_stale=maybe",
        "/api/v1/risk?kind=paths",
    ] {
        let (s, e) = api.admin("GET", bad, None);
        assert_eq!(s, 400, "{bad}: {e}");
    }
    // `/risk` lists every region's row, each saying whether it is fresh; `kind` filters.
    let (_, r) = api.admin("GET", "/api/v1/risk?kind=appliance", None);
    let rows: Vec<(&str, &str, bool)> = r["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["subject"].as_str().unwrap(),
                s["region"].as_str().unwrap(),
                s["fresh"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("eu-1", "eu", true),
            ("eu-1", "us", false),
            ("us-1", "eu", false)
        ]
    );
    let (_, r) = api.admin("GET", "/api/v1/risk?kind=path", None);
    assert_eq!(r["scores"].as_array().unwrap().len(), 4, "{r}");
    // Reading needs a token.
    assert_eq!(api.call(None, "GET", "/api/v1/risk/paths", None).0, 401);
}

#[test]
fn every_route_is_documented() {
    let api = start();
    let (_, doc) = api.call(None, "GET", "/api/v1/openapi.json", None);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/appliances", &["get", "post"][..]),
        ("/api/v1/appliances/{id}", &["get", "patch", "delete"]),
        ("/api/v1/appliances/{id}/drain", &["post"]),
        ("/api/v1/appliances/{id}/undrain", &["post"]),
        ("/api/v1/appliances/{id}/health", &["get"]),
        ("/api/v1/clients", &["get", "post"]),
        ("/api/v1/clients/{id}", &["get", "delete"]),
        ("/api/v1/clients/{id}/config", &["get"]),
        ("/api/v1/advisories", &["get", "post"]),
        ("/api/v1/advisories/{id}", &["delete"]),
        ("/api/v1/sessions", &["get"]),
        ("/api/v1/sessions/{client}", &["get"]),
        ("/api/v1/risk", &["get"]),
        ("/api/v1/risk/paths", &["get"]),
        ("/api/v1/risk/appliances/{id}/history", &["get"]),
        ("/api/v1/decisions", &["get"]),
        ("/api/v1/model", &["get"]),
        ("/api/v1/model/reload", &["post"]),
        ("/api/v1/replication", &["get"]),
        ("/api/v1/tokens", &["get", "post"]),
        ("/api/v1/tokens/{id}", &["delete"]),
    ] {
        for m in methods {
            let op = &paths[path][m];
            assert!(op.is_object(), "{m} {path} undocumented");
            for code in ["400", "401", "403"] {
                assert!(op["responses"][code].is_object(), "{m} {path}: no {code}");
            }
        }
    }
    assert_eq!(
        paths.len(),
        21,
        "a route not listed in this test: {:?}",
        paths.keys()
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
