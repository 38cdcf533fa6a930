//! The configuration parser: any text as each kind of configuration file. A steering
//! configuration that parses must also build its zones (with zone files unreadable) without
//! panicking; `config check`'s kind detection must not panic either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shadowsteer::config::{self, AgentConfig, ClientConfig, SteeringConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let _ = config::detect_kind(file, text);
    if let Ok(cfg) = config::parse::<SteeringConfig>(file, text) {
        let _ = shadowsteer::dns::catalog::build(&cfg.dns, 1, &|_| {
            Err(std::io::Error::other("no files while fuzzing"))
        });
    }
    let _ = config::parse::<AgentConfig>(file, text);
    let _ = config::parse::<ClientConfig>(file, text);
});
