//! Group heartbeats: the datagrams the appliances of a shadow group send each other on their
//! WireGuard port, every 50 ms by default.
//!
//! They share the WireGuard port so that nothing beyond the port clients already reach must be
//! opened between appliances. WireGuard messages start with a type byte 1..=4 followed by three
//! zero bytes; a heartbeat starts with [`MAGIC`], so one look at the first four bytes tells them
//! apart.
//!
//! Layout (big-endian):
//! `MAGIC (4) | boot (8) | seq (8) | sent_unix_ms (8) | id_len (1) | id (id_len) | mac (16)`.
//! The MAC is HMAC-SHA256 over everything before it, truncated to 16 bytes, with a key derived
//! from the group's service key ([`GroupKey::derive`]): only holders of the service key can
//! forge a heartbeat. Replays are refused by the receiver ([`super::liveness`]): `(boot, seq)`
//! must grow, and the send time must be recent.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{ApplianceId, SecretKey};

/// First bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"SSG\x01";

/// Bytes of MAC kept.
const MAC_LEN: usize = 16;

/// Largest heartbeat: fixed part, an id of 63 bytes, the MAC.
pub const MAX_LEN: usize = 4 + 8 + 8 + 8 + 1 + 63 + MAC_LEN;

/// Whether a datagram is a heartbeat rather than WireGuard.
pub fn is_heartbeat(datagram: &[u8]) -> bool {
    datagram.get(..4) == Some(&MAGIC[..])
}

/// The MAC key of a shadow group.
#[derive(Clone)]
pub struct GroupKey([u8; 32]);

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(..)")
    }
}

impl GroupKey {
    /// Derives the heartbeat key from the service's static key, which every appliance of a
    /// shadow group holds: one key file, nothing more to distribute.
    pub fn derive(service: &SecretKey) -> Self {
        Self::from_secret(service.expose_bytes())
    }

    /// From raw key bytes (a key file of its own, or tests).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"shadowsteer group heartbeat v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender.
    pub from: ApplianceId,
    /// The sender's start (unix ms): a restarted sender counts from a higher value.
    pub boot: u64,
    /// Sequence number within one boot.
    pub seq: u64,
    /// Sender's wall clock at sending (unix ms).
    pub sent_unix_ms: u64,
}

/// Why a datagram is not a valid heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short, too long, or the id is not an appliance id.
    #[error("malformed heartbeat")]
    Malformed,
    /// The MAC does not verify.
    #[error("heartbeat MAC does not verify")]
    BadMac,
}

impl Heartbeat {
    /// Encodes into `out`; returns the length.
    pub fn encode(&self, key: &GroupKey, out: &mut [u8; MAX_LEN]) -> usize {
        let id = self.from.as_str().as_bytes();
        let id = &id[..id.len().min(63)];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            out[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        put(&MAGIC);
        put(&self.boot.to_be_bytes());
        put(&self.seq.to_be_bytes());
        put(&self.sent_unix_ms.to_be_bytes());
        put(&[id.len() as u8]);
        put(id);
        let mut mac = key.mac();
        mac.update(&out[..n]);
        let tag = mac.finalize().into_bytes();
        out[n..n + MAC_LEN].copy_from_slice(&tag[..MAC_LEN]);
        n + MAC_LEN
    }

    /// Decodes and authenticates.
    pub fn decode(key: &GroupKey, datagram: &[u8]) -> Result<Self, WireError> {
        if !is_heartbeat(datagram) || datagram.len() < 29 + MAC_LEN || datagram.len() > MAX_LEN {
            return Err(WireError::Malformed);
        }
        let id_len = usize::from(datagram[28]);
        let body = 29 + id_len;
        if datagram.len() != body + MAC_LEN {
            return Err(WireError::Malformed);
        }
        let mut mac = key.mac();
        mac.update(&datagram[..body]);
        mac.verify_truncated_left(&datagram[body..])
            .map_err(|_| WireError::BadMac)?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&datagram[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let id = std::str::from_utf8(&datagram[29..body]).map_err(|_| WireError::Malformed)?;
        Ok(Self {
            from: ApplianceId::new(id.to_owned()).map_err(|_| WireError::Malformed)?,
            boot: u64_at(4),
            seq: u64_at(12),
            sent_unix_ms: u64_at(20),
        })
    }
}

/// First bytes of a relayed WireGuard datagram (see [`Relay`]).
pub const RELAY_MAGIC: [u8; 4] = *b"SSR\x01";

/// Fixed part of a relay message: magic, direction, address (16 + 2), MAC.
const RELAY_OVERHEAD: usize = 4 + 1 + 18 + MAC_LEN;

/// Whether a datagram is a relay message.
pub fn is_relay(datagram: &[u8]) -> bool {
    datagram.get(..4) == Some(&RELAY_MAGIC[..])
}

/// Which way a relayed datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDirection {
    /// From the client, to the appliance whose session it belongs to (the old holder).
    FromClient,
    /// From the old holder, to be sent to the client from the new holder's address.
    ToClient,
    /// From the client, sent to the wrong appliance of the pair: a handshake response to the
    /// other's initiation, or data on the other's session after the client's endpoint
    /// flipped back. The receiver handles it as its own and answers the client directly, so
    /// that the client's endpoint follows.
    Misdirected,
}

/// During a make-before-break move the client may, for about one round trip, still send on
/// the old holder's session to the new holder's address, and the old holder may still owe it
/// replies. Those datagrams travel between the two appliances wrapped in a relay message:
/// `RELAY_MAGIC | direction (1) | client address (16, v6 or v4-mapped) | port (2) |
/// datagram | mac (16)`, the MAC as for heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay<'a> {
    /// Which way.
    pub direction: RelayDirection,
    /// The client's address (source or destination).
    pub client: std::net::SocketAddr,
    /// The WireGuard datagram.
    pub datagram: &'a [u8],
}

impl<'a> Relay<'a> {
    /// Encodes into `out` (cleared first).
    pub fn encode(&self, key: &GroupKey, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&RELAY_MAGIC);
        out.push(match self.direction {
            RelayDirection::FromClient => 1,
            RelayDirection::ToClient => 2,
            RelayDirection::Misdirected => 3,
        });
        let ip = match self.client.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&self.client.port().to_be_bytes());
        out.extend_from_slice(self.datagram);
        let mut mac = key.mac();
        mac.update(out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(&tag[..MAC_LEN]);
    }

    /// Decodes and authenticates.
    pub fn decode(key: &GroupKey, msg: &'a [u8]) -> Result<Self, WireError> {
        if !is_relay(msg) || msg.len() <= RELAY_OVERHEAD {
            return Err(WireError::Malformed);
        }
        let body = msg.len() - MAC_LEN;
        let mut mac = key.mac();
        mac.update(&msg[..body]);
        mac.verify_truncated_left(&msg[body..])
            .map_err(|_| WireError::BadMac)?;
        let direction = match msg[4] {
            1 => RelayDirection::FromClient,
            2 => RelayDirection::ToClient,
            3 => RelayDirection::Misdirected,
            _ => return Err(WireError::Malformed),
        };
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&msg[5..21]);
        let ip = std::net::Ipv6Addr::from(ip);
        let ip = match ip.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(ip),
        };
        let port = u16::from_be_bytes([msg[21], msg[22]]);
        Ok(Self {
            direction,
            client: std::net::SocketAddr::new(ip, port),
            datagram: &msg[23..body],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> Heartbeat {
        Heartbeat {
            from: ApplianceId::new("eu-1".to_owned()).unwrap(),
            boot: 1_700_000_000_000,
            seq: 7,
            sent_unix_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let key = GroupKey::from_secret(&[7; 32]);
        let mut buf = [0u8; MAX_LEN];
        let n = beat().encode(&key, &mut buf);
        assert!(is_heartbeat(&buf[..n]));
        assert_eq!(Heartbeat::decode(&key, &buf[..n]), Ok(beat()));
        let other = GroupKey::from_secret(&[8; 32]);
        assert_eq!(Heartbeat::decode(&other, &buf[..n]), Err(WireError::BadMac));
        for i in 4..n {
            let mut bad = buf;
            bad[i] ^= 1;
            assert!(Heartbeat::decode(&key, &bad[..n]).is_err(), "byte {i}");
        }
        assert_eq!(
            Heartbeat::decode(&key, &buf[..n - 1]),
            Err(WireError::Malformed)
        );
        // A WireGuard initiation is never taken for a heartbeat.
        assert!(!is_heartbeat(&[1, 0, 0, 0, 9, 9]));
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        let key = GroupKey::from_secret(&[1; 32]);
        for len in 0..=MAX_LEN + 4 {
            let mut d = vec![0xffu8; len];
            if len >= 4 {
                d[..4].copy_from_slice(&MAGIC);
            }
            if len > 28 {
                d[28] = 200;
            }
            assert!(Heartbeat::decode(&key, &d).is_err());
        }
    }

    #[test]
    fn relay_messages_round_trip_and_are_authenticated() {
        let key = GroupKey::from_secret(&[3; 32]);
        let mut out = Vec::new();
        for (client, direction) in [
            ("192.0.2.7:40000", RelayDirection::ToClient),
            ("[2001:db8::7]:40001", RelayDirection::FromClient),
            ("192.0.2.8:40002", RelayDirection::Misdirected),
        ] {
            let r = Relay {
                direction,
                client: client.parse().unwrap(),
                datagram: &[4, 0, 0, 0, 1, 2, 3],
            };
            r.encode(&key, &mut out);
            assert!(is_relay(&out) && !is_heartbeat(&out));
            assert_eq!(Relay::decode(&key, &out), Ok(r.clone()));
            let other = GroupKey::from_secret(&[4; 32]);
            assert_eq!(Relay::decode(&other, &out), Err(WireError::BadMac));
            let mut bad = out.clone();
            bad[10] ^= 1;
            assert!(Relay::decode(&key, &bad).is_err());
        }
        assert!(Relay::decode(&key, b"SSR\x01").is_err());
    }
}
