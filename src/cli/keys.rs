//! `shadowsteer keys generate|public`: WireGuard key pairs, interchangeable with `wg genkey` and
//! `wg pubkey`.

use std::io::Read as _;
use std::path::PathBuf;

use clap::Subcommand;
use shadowsteer::domain::SecretKey;
use zeroize::Zeroizing;

use super::{CommandError, CommandResult};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a private key. Without --out, print it (like `wg genkey`); with --out, write it
    /// to a new file with mode 0600 and print the public key.
    Generate {
        /// File to create (never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read a private key on standard input and print its public key (like `wg pubkey`).
    Public,
}

pub fn run(cmd: KeysCommand) -> CommandResult {
    match cmd {
        KeysCommand::Generate { out: None } => {
            let key = SecretKey::generate();
            println!("{}", key.expose_base64().as_str());
            Ok(())
        }
        KeysCommand::Generate { out: Some(path) } => {
            let key = SecretKey::generate();
            shadowsteer::keyfile::write_secret_key(&path, &key)
                .map_err(|e| CommandError::Input(e.to_string()))?;
            println!("{}", key.public_key().to_base64());
            Ok(())
        }
        KeysCommand::Public => {
            let mut text = Zeroizing::new(String::new());
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut text)
                .map_err(|e| CommandError::Input(format!("reading standard input: {e}")))?;
            let key = SecretKey::from_base64(text.trim())
                .map_err(|e| CommandError::Input(e.to_string()))?;
            println!("{}", key.public_key().to_base64());
            Ok(())
        }
    }
}
