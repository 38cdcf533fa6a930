//! Key files: one base64 key per file (as `wg genkey` writes it), readable by the owner only.
//!
//! A key file that the group or others can read is refused rather than silently used: the
//! service key is shared by every appliance of a shadow group, and a leak of it lets anyone
//! impersonate all of them.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::domain::{KeyError, SecretKey};

/// Largest key file read: a key and some whitespace.
const MAX_KEY_FILE: u64 = 1024;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "key file {path} has mode {mode:04o}; it must be readable by its owner only (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, or too large to be a key.
    #[error("key file {path} is not a regular file of at most {max_len} bytes")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// The largest size accepted.
        max_len: u64,
    },
    /// The content is not a key.
    #[error("key file {path}: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
}

/// Reads a private key, refusing files readable by group or others.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyFileError> {
    let text = Zeroizing::new(read_owner_only(path, MAX_KEY_FILE)?);
    SecretKey::from_base64(text.trim()).map_err(|source| KeyFileError::Malformed {
        path: path.to_owned(),
        source,
    })
}

/// Reads a secret file of at most `max_len` bytes as text, refusing one that group or others
/// may read (WireGuard keys here, the DNS-over-TLS private key in [`crate::tls`]).
pub fn read_owner_only(path: &Path, max_len: u64) -> Result<String, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > max_len {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            max_len,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Writes a new private key file with mode 0600; an existing file is never overwritten.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // The umask cannot widen 0600, but an inherited ACL default could: set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let mut text = key.expose_base64();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_permission_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = SecretKey::generate();
        write_secret_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_secret_key(&path).unwrap().public_key(),
            key.public_key()
        );
        assert!(write_secret_key(&path, &key).is_err(), "overwrote a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            read_secret_key(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }
}
