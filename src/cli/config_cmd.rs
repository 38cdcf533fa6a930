//! `shadowsteer config check FILE...`

use std::path::PathBuf;

use clap::Subcommand;

use super::{CommandError, CommandResult};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate configuration files; the kind (steering server, agent) is detected from content.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: ConfigCommand) -> CommandResult {
    match cmd {
        ConfigCommand::Check { files } => {
            let mut errors = Vec::new();
            for file in &files {
                match shadowsteer::config::check_file(file) {
                    Ok(kind) => println!("{}: ok ({kind} configuration)", file.display()),
                    Err(errs) => errors.extend(errs.into_iter().map(|e| e.to_string())),
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(CommandError::Input(errors.join("\n")))
            }
        }
    }
}
