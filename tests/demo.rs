//! `shadowsteer demo` end to end, as a user runs it: real clusters, servers, agents and
//! clients on loopback. Each run gets a TMPDIR of its own, so the test can check afterwards
//! that no process of the demo is left (every one of them has that directory on its command
//! line) and that its data is gone.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// The demos of this file run one at a time: each is a whole fleet, and timing is part of
/// what they check.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A TMPDIR the postgres user can enter (clusters switch to it when the tests run as root).
fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ss-demo-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Processes whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}

/// Nothing of the demo is left: no process, no file under its TMPDIR.
fn assert_clean(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert!(
        files.is_empty(),
        "files left behind in {}: {files:?}",
        dir.display()
    );
    let _ = std::fs::remove_dir(dir);
}

/// A failed demo keeps its directory and says where: the tail of each server's and agent's
/// log from it, so that a failure in CI can be read from the test's output alone.
fn logs_of_a_failed_run(stderr: &str) -> String {
    let Some(dir) = stderr
        .lines()
        .find_map(|l| l.split_once("its logs and data are kept in "))
        .map(|(_, d)| PathBuf::from(d.trim()))
    else {
        return "(no directory kept)".into();
    };
    let mut out = String::new();
    for run in ["shadowsteer", "baseline"] {
        let Ok(entries) = std::fs::read_dir(dir.join(run)) else {
            continue;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "\n--- {} (last {} lines)\n",
                log.display(),
                tail.len()
            ));
            out.push_str(&tail.join("\n"));
        }
    }
    out
}

fn demo(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.arg("demo")
        .args(args)
        .env("TMPDIR", dir)
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL");
    cmd
}

#[test]
fn the_demo_survives_a_predicted_failure_and_a_crash_and_leaves_nothing_behind() {
    let _one = serial();
    let dir = tmpdir();
    let out = demo(&dir, &["--duration", "60s", "--clients", "20", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo failed: {stderr}{}",
        logs_of_a_failed_run(&stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["survived"], true);
    let events = report["events"].as_array().unwrap();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let predicted = of("predicted");
    assert_eq!(predicted.len(), 1, "{events:?}");
    assert!(
        predicted[0]["clients_moved"].as_u64().unwrap() > 0,
        "{predicted:?}"
    );
    assert_eq!(predicted[0]["probes_lost"], 0, "{predicted:?}");
    // The failure after the predicted move finds its clients gone already.
    for f in of("failure") {
        assert_eq!(f["probes_lost"], 0, "{f:?}");
    }
    let sudden = of("sudden");
    assert_eq!(sudden.len(), 1, "{events:?}");
    assert!(
        sudden[0]["clients_moved"].as_u64().unwrap() > 0,
        "{sudden:?}"
    );
    assert!(
        sudden[0]["longest_gap_ms"].as_f64().unwrap() < 1000.0,
        "{sudden:?}"
    );
    for e in events {
        for key in [
            "name",
            "kind",
            "clients_moved",
            "probes_lost",
            "longest_gap_ms",
        ] {
            assert!(!e[key].is_null(), "{key} missing in {e}");
        }
    }
    // The baseline ran the same story; health checks only notice the crash seconds later.
    let baseline = report["baseline"]["events"].as_array().unwrap();
    assert_eq!(baseline.len(), events.len());
    let b_sudden = baseline.iter().find(|e| e["kind"] == "sudden").unwrap();
    assert!(
        b_sudden["longest_gap_ms"].as_f64().unwrap()
            > sudden[0]["longest_gap_ms"].as_f64().unwrap(),
        "{b_sudden:?} vs {sudden:?}"
    );
    assert_clean(&dir);
}

#[test]
fn ctrl_c_in_the_middle_stops_everything() {
    let _one = serial();
    let dir = tmpdir();
    // Outside `dir`, which must be left empty.
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = demo(
        &dir,
        &["--duration", "60s", "--clients", "5", "--no-baseline"],
    )
    .stdout(Stdio::piped())
    .stderr(stderr.reopen().unwrap())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Wait until the story runs (agents and clients up), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
                panic!(
                    "the demo never got going: {seen:#?}\nstderr:\n{err}{}",
                    logs_of_a_failed_run(&seen.join("\n"))
                )
            });
        let go = line.contains("degrade eu-1");
        seen.push(line);
        if go {
            break;
        }
    }
    assert!(!processes_under(&dir).is_empty(), "nothing was running");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_clean(&dir);
}

#[test]
fn a_bad_scenario_file_is_refused_with_its_line_before_anything_starts() {
    let dir = tmpdir();
    let cases = [
        (
            "[[event]]\nat = \"10s\"\nkind = \"crash\"\nappliance = \"mars-9\"\n",
            ":4: unknown appliance \"mars-9\"",
        ),
        (
            "[[event]]\nat = \"20s\"\nkind = \"crash\"\nappliance = \"eu-1\"\n\n[[event]]\nat = \"5s\"\nkind = \"recover\"\nappliance = \"eu-1\"\n",
            ":7: event at 5s is in the past",
        ),
        (
            "[[event]]\nat = \"ten seconds\"\nkind = \"crash\"\nappliance = \"eu-1\"\n",
            ":2: ",
        ),
    ];
    for (text, want) in cases {
        let file = dir.join("story.toml");
        std::fs::write(&file, text).unwrap();
        let out = demo(&dir, &["--scenario", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {stderr}");
        assert!(lines[0].contains(want), "{want:?} not in {stderr}");
        assert!(lines[0].contains("story.toml"), "{stderr}");
        std::fs::remove_file(&file).unwrap();
        // Nothing started: no demo directory, no process.
        assert_clean(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn stock_wireguard_go_clients_in_namespaces_survive_the_story() {
    if let Some(why) = shadowsteer::demo::stock::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "under CI=true the stock-client demo must run: {why}"
        );
        eprintln!("SKIPPED stock_wireguard_go_clients_in_namespaces_survive_the_story: {why}");
        return;
    }
    let _one = serial();
    let dir = tmpdir();
    let out = demo(
        &dir,
        &[
            "--stock-clients",
            "--duration",
            "60s",
            "--clients",
            "12",
            "--json",
            "--no-baseline",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo failed: {stderr}{}",
        logs_of_a_failed_run(&stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["survived"], true);
    let events = report["events"].as_array().unwrap();
    let predicted = events.iter().find(|e| e["kind"] == "predicted").unwrap();
    assert!(
        predicted["clients_moved"].as_u64().unwrap() > 0,
        "{predicted}"
    );
    assert_eq!(predicted["probes_lost"], 0, "{predicted}");
    let sudden = events.iter().find(|e| e["kind"] == "sudden").unwrap();
    assert!(sudden["clients_moved"].as_u64().unwrap() > 0, "{sudden}");
    assert!(
        sudden["longest_gap_ms"].as_f64().unwrap() < 1000.0,
        "{sudden}"
    );
    assert_clean(&dir);
    // No namespace, address or wireguard-go of the run is left either.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let lo = Command::new("ip")
        .args(["addr", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&lo.stdout).contains("10.215.0."),
        "appliance addresses left on lo"
    );
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with("sd") && l.contains('c'))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
