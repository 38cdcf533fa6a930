//! WireGuard keys: Curve25519 keys in the base64 form `wg` uses.
//!
//! Secret keys never appear in `Debug` output and are wiped from memory when dropped.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Why a string is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid base64, or not 32 bytes once decoded.
    #[error(
        "malformed key: expected 44 characters of base64 encoding 32 bytes (as `wg genkey` prints)"
    )]
    Malformed,
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 44 {
        return Err(KeyError::Malformed);
    }
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::Malformed)?;
    let array: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
    // Reject non-canonical encodings (stray bits in the last character) so that every key has
    // exactly one textual form, which the database's uniqueness constraints rely on.
    if STANDARD.encode(array) != s {
        return Err(KeyError::Malformed);
    }
    Ok(array)
}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The base64 form, as `wg pubkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Deliberately neither `Serialize` nor `Display`: writing it anywhere
/// must be an explicit call to [`SecretKey::expose_base64`].
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// A new random key, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(bytes)
    }

    /// Parses the base64 form (`wg genkey` output). The input string is the caller's to wipe.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(|b| Self(Zeroizing::new(b)))
    }

    /// The raw bytes, for handing to the WireGuard implementation.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The base64 form, for printing a key the user asked to see.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.0))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(*self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trip() {
        let key = SecretKey::generate().public_key();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "",
            "abc",
            &"A".repeat(44),
            &format!("{}=", "A".repeat(42) + "B"),
        ] {
            assert_eq!(
                bad.parse::<PublicKey>(),
                Err(KeyError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // `echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`
        let secret =
            SecretKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            secret.public_key().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }

    #[test]
    fn debug_hides_secret() {
        let secret = SecretKey::generate();
        let shown = format!("{secret:?}");
        assert!(!shown.contains(secret.expose_base64().as_str()));
    }
}
