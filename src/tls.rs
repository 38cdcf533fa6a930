//! TLS for DNS over TLS (RFC 7858): the steering server's certificate and key, the client
//! helper's trust anchors, both read from PEM files, and one crypto provider (ring) for both.
//!
//! The server's certificate is held by [`ServerCertificate`] so that `serve` can replace it on
//! SIGHUP (certificates are renewed every few months) without dropping a connection; a file
//! that does not load leaves the certificate in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use crate::keyfile::{self, KeyFileError};

/// The ALPN protocol id of DNS over TLS (RFC 7858, IANA "dot").
pub const ALPN_DOT: &[u8] = b"dot";

/// Largest certificate file read: a chain of a few certificates.
const MAX_CERT_FILE: u64 = 1 << 20;
/// Largest private key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or one that does not parse.
    #[error("{path}: {what}")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The private key file is unsafe or unreadable.
    #[error("{0}")]
    KeyFile(#[from] KeyFileError),
    /// The private key file holds no PEM private key.
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the key or the pair (a key of an unsupported type, a key that does not
    /// belong to the certificate).
    #[error("{key} with {certificate}: {source}")]
    Refused {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The crypto provider of every TLS connection we make or accept.
///
/// ring (already built for the rest of the tree) rather than aws-lc-rs, whose C build this
/// project avoids. rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
/// exchange; what DNS over TLS protects here is steering answers that expire within seconds,
/// against forgery above all, which authentication (classical in either provider) decides.
///
/// Key exchange prefers X25519: ring's default list starts with P-384, whose arithmetic in ring
/// is generic code, and a client offering it first made each handshake cost both sides about a
/// millisecond more (measured: 1.97 ms against 0.86 ms for `openssl s_time`, which offers X25519).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    Arc::new(provider)
}

/// Every certificate of a PEM file, in order; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let io = |source| TlsFileError::Io {
        path: path.to_owned(),
        source,
    };
    let bad = |what: String| TlsFileError::Certificates {
        path: path.to_owned(),
        what,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > MAX_CERT_FILE {
        return Err(bad(format!(
            "not a regular file of at most {MAX_CERT_FILE} bytes"
        )));
    }
    let pem = std::fs::read(path).map_err(io)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into()
        ));
    }
    Ok(certs)
}

/// The certificate chain of `certificate` with the private key of `private_key` (mode 0600).
fn certified_key(certificate: &Path, private_key: &Path) -> Result<CertifiedKey, TlsFileError> {
    let chain = read_certificates(certificate)?;
    let pem = Zeroizing::new(keyfile::read_owner_only(private_key, MAX_KEY_FILE)?);
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsFileError::NoKey {
        path: private_key.to_owned(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsFileError::Refused {
        certificate: certificate.to_owned(),
        key: private_key.to_owned(),
        source,
    })
}

/// The server's certificate and key, replaceable while connections use the old pair.
#[derive(Debug)]
pub struct ServerCertificate {
    certificate: PathBuf,
    private_key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ServerCertificate {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Arc<Self>, TlsFileError> {
        let pair = certified_key(certificate, private_key)?;
        Ok(Arc::new(Self {
            certificate: certificate.to_owned(),
            private_key: private_key.to_owned(),
            current: ArcSwap::from_pointee(pair),
        }))
    }

    /// Reads both files again; on an error the pair in force stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let pair = certified_key(&self.certificate, &self.private_key)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    /// A server configuration answering every handshake with the pair in force, ALPN `dot`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_DOT.to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A client configuration trusting exactly the certificates of `ca_file` (the operator's own
/// CA, or the server's self-signed certificate), ALPN `dot`.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots.add(cert).map_err(|e| TlsFileError::Certificates {
            path: ca_file.to_owned(),
            what: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Certificates {
            path: ca_file.to_owned(),
            what: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_DOT.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A self-signed certificate for `name` and its key, written to `dir`.
    fn pair(dir: &Path, tag: &str, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = dir.join(format!("{tag}.crt"));
        let key = dir.join(format!("{tag}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }

    #[test]
    fn a_pair_loads_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a", "dns.test");
        let loaded = ServerCertificate::load(&cert, &key).unwrap();
        loaded.server_config().unwrap();
        client_config(&cert).unwrap();

        // A key readable by others is refused, naming the file and the fix.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServerCertificate::load(&cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A key of another certificate.
        let (_, other_key) = pair(dir.path(), "b", "dns.test");
        let err = ServerCertificate::load(&cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.key") && err.contains("a.crt"), "{err}");

        // Not PEM at all; a key where the certificate should be.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let err = client_config(&junk).unwrap_err().to_string();
        assert!(
            err.contains("junk.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = ServerCertificate::load(&key, &key).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = ServerCertificate::load(&cert, &junk)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM private key"), "{err}");
    }

    #[test]
    fn a_reload_that_fails_keeps_the_pair_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a", "dns.test");
        let loaded = ServerCertificate::load(&cert, &key).unwrap();
        let before = loaded.current.load_full();
        std::fs::write(&cert, "torn").unwrap();
        assert!(loaded.reload().is_err());
        assert!(Arc::ptr_eq(&before, &loaded.current.load_full()));
        // A renewed pair replaces it.
        let (new_cert, new_key) = pair(dir.path(), "b", "dns.test");
        std::fs::rename(new_cert, &cert).unwrap();
        std::fs::rename(new_key, &key).unwrap();
        loaded.reload().unwrap();
        assert_ne!(before.cert, loaded.current.load_full().cert);
    }

    /// Our client and server configurations for a self-signed `dns.test` pair in `dir`.
    fn configs(dir: &Path) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let (cert, key) = pair(dir, "a", "dns.test");
        let server = ServerCertificate::load(&cert, &key).unwrap();
        (
            client_config(&cert).unwrap(),
            server.server_config().unwrap(),
        )
    }

    /// A full exchange between a client and a server connection, in memory.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let name = rustls::pki_types::ServerName::try_from("dns.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
        let mut wire = Vec::new();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            // The server's flight, and after the handshake its session tickets.
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (client, server)
    }

    /// Our client and server agree on X25519 (ring's own default order would pick P-384,
    /// about a millisecond more per handshake on each side).
    #[test]
    fn handshakes_use_x25519() {
        let dir = tempfile::tempdir().unwrap();
        let (client, server) = configs(dir.path());
        let (client, server) = handshake(&client, &server);
        for group in [
            client.negotiated_key_exchange_group(),
            server.negotiated_key_exchange_group(),
        ] {
            assert_eq!(group.map(|g| g.name()), Some(rustls::NamedGroup::X25519));
        }
    }

    /// The server's session tickets let the helper resume after the server closed an idle
    /// session (no certificate to verify, no signature to make); they are why a peer that
    /// resets right after its handshake can cut a flush short (counted as `closed`).
    #[test]
    fn a_second_session_resumes_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (client, server) = configs(dir.path());
        let (first, _) = handshake(&client, &server);
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let (second, _) = handshake(&client, &server);
        assert_eq!(
            second.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }
}
