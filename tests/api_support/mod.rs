//! Shared by the admin API tests: a running `serve` on a fresh database with the basic
//! inventory and two tokens, and JSON requests against it.
#![allow(dead_code)]

use std::net::SocketAddr;

use crate::common::{self, TestDb};
use crate::serve_harness::{NO_RRL, Server, basic_inventory, cli, config, http};

/// A server with `eu-1` (primary of alice) and `us-1`, and a read and an admin token.
pub struct Api {
    /// The server.
    pub server: Server,
    /// Its database.
    pub db: TestDb,
    /// A token with the default scope (read).
    pub read: String,
    /// An admin token.
    pub admin: String,
}

impl Api {
    /// Starts it (blocking: call from `spawn_blocking` or a plain test).
    pub fn start(db: TestDb) -> Self {
        Self::start_with(db, "")
    }

    /// Starts it with `steering` in the `[steering]` section (e.g. `[risk]` settings).
    pub fn start_with(db: TestDb, steering: &str) -> Self {
        basic_inventory(&db.url);
        let read = cli(&db.url, &["token", "create", "--name", "reader"])
            .trim()
            .to_owned();
        let admin = cli(
            &db.url,
            &["token", "create", "--name", "operator", "--scope", "admin"],
        )
        .trim()
        .to_owned();
        let server = Server::start(&config(NO_RRL, steering), &["--database-url", &db.url]);
        Self {
            server,
            db,
            read,
            admin,
        }
    }

    /// The admin listener.
    pub fn addr(&self) -> SocketAddr {
        self.server.admin
    }

    /// A request with `token`; returns status and parsed JSON (Null for an empty body).
    pub fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(self.addr(), method, path, token, body.as_deref())
            .unwrap_or_else(|| panic!("no answer to {method} {path}"));
        let json = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, json)
    }

    /// As [`call`](Self::call) with the admin token.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let t = self.admin.clone();
        self.call(Some(&t), method, path, body)
    }
}

/// A fresh database (async part of the set-up).
pub async fn db() -> TestDb {
    common::test_db().await
}
