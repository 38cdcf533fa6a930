//! `shadowsteer config check`: every shipped example passes; bad files fail with file, key path
//! and reason.

mod common;

use std::path::Path;
use std::process::Command;

fn check(files: &[&Path]) -> (i32, String, String) {
    let out = Command::new(common::bin())
        .args(["config", "check"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_in_config_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "examples: {examples:?}");
    for file in &examples {
        let (code, out, err) = check(&[file]);
        assert_eq!(code, 0, "{}: {err}", file.display());
        assert!(out.contains("ok"), "{out}");
    }
}

#[test]
fn bad_files_name_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let bad_listen = write(
        "steering.toml",
        "[dns]\nlisten = [\"127.0.0.1:5300\", \"127.0.0.1:99999\"]\n[[dns.zones]]\nname = \"vpn.example.net\"\n",
    );
    let unknown_key = write(
        "agent.toml",
        "[agent]\nappliance = \"eu-1\"\nlisten = \"0.0.0.0:51820\"\nkey_file = \"/k\"\ninsid = \"echo\"\n[tunnel]\nnetwork = \"10.77.0.0/24\"\n",
    );
    let bad_semantics = write(
        "thresholds.toml",
        "[dns]\nlisten = [\"127.0.0.1:5300\"]\n[[dns.zones]]\nname = \"vpn.example.net\"\n[steering]\nthreshold = 1.5\n",
    );
    let unknown_kind = write("what.toml", "[nothing]\n");
    let not_toml = write("broken.toml", "[dns\nlisten = 1\n");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/steering.toml");

    let (code, out, err) = check(&[
        &good,
        &bad_listen,
        &unknown_key,
        &bad_semantics,
        &unknown_kind,
        &not_toml,
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("steering.toml: ok"), "{out}");
    let expect = [
        format!(
            "{}: dns.listen[1]: invalid socket address \"127.0.0.1:99999\"",
            bad_listen.display()
        ),
        format!(
            "{}: agent.insid: unknown field `insid`",
            unknown_key.display()
        ),
        format!(
            "{}: steering.threshold: 1.5 is not in [0, 1]",
            bad_semantics.display()
        ),
        format!("{}: unknown kind of configuration", unknown_kind.display()),
        format!("{}: not valid TOML", not_toml.display()),
    ];
    for e in &expect {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
    let (code, _, err) = check(&[Path::new("/nonexistent.toml")]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.toml: cannot read"), "{err}");
}
