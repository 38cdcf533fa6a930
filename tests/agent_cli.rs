//! The key, client-config and agent commands from the outside.

mod agent_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use std::io::Write as _;

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(common::bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keys_are_interchangeable_with_wg() {
    let (code, private, _) = run(&["keys", "generate"], None);
    assert_eq!(code, 0);
    let private = private.trim();
    assert_eq!(private.len(), 44);
    let (code, public, _) = run(&["keys", "public"], Some(private));
    assert_eq!(code, 0);
    if agent_support::have("wg") {
        let mut wg = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wg.stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = wg.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public.trim());
        // And a key from `wg genkey` is accepted.
        let genkey = Command::new("wg").arg("genkey").output().unwrap();
        let theirs = String::from_utf8_lossy(&genkey.stdout).trim().to_owned();
        let (code, _, err) = run(&["keys", "public"], Some(&theirs));
        assert_eq!(code, 0, "{err}");
    } else {
        eprintln!(
            "SKIPPED (part): wg not installed; install wireguard-tools to compare with wg pubkey"
        );
    }
    let (code, _, err) = run(&["keys", "public"], Some("not a key"));
    assert_eq!(code, 2);
    assert!(err.contains("malformed key"), "{err}");
}

#[test]
fn key_files_are_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.key");
    let p = path.to_str().unwrap();
    let (code, public, _) = run(&["keys", "generate", "--out", p], None);
    assert_eq!(code, 0);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let private = std::fs::read_to_string(&path).unwrap();
    assert!(!public.contains(private.trim()), "private key printed");
    let (_, derived, _) = run(&["keys", "public"], Some(&private));
    assert_eq!(derived, public);
    let (code, _, _) = run(&["keys", "generate", "--out", p], None);
    assert_eq!(code, 2, "an existing key file was overwritten");

    // The agent refuses a key file others can read.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        agent_support::agent_toml("eu-1", "127.0.0.1:0", &path, "postgres://127.0.0.1:1/x", ""),
    )
    .unwrap();
    let (code, _, err) = run(&["agent", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test]
async fn client_config_prints_a_wg_quick_file() {
    let db = common::test_db().await;
    let service = shadowsteer::domain::SecretKey::generate();
    agent_support::inventory(&db, &service, 0);
    agent_support::add_client(&db, "carol", 5, "eu-1", "us-1");
    let (code, out, err) = common::run_cli(
        &db,
        &[
            "client",
            "config",
            "carol",
            "--zone",
            "vpn.example.net.",
            "--port",
            "51999",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "[Interface]",
        "PrivateKey = REPLACE_WITH_CLIENT_PRIVATE_KEY",
        "Address = 10.77.0.7/32",
        "[Peer]",
        &format!("PublicKey = {}", service.public_key()),
        "Endpoint = carol.c.vpn.example.net:51999",
        "AllowedIPs = 10.77.0.0/24",
        "PersistentKeepalive = 25",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let (code, _, err) = common::run_cli(&db, &["client", "config", "nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no client nobody"), "{err}");
}

#[test]
fn example_configs_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(
        &[
            "config",
            "check",
            &format!("{root}/config/agent.toml"),
            &format!("{root}/config/client.toml"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (agent configuration)")
            && out.contains("ok (client helper configuration)"),
        "{out}"
    );
}
