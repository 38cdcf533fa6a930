//! The WireGuard packet router (`tunnel::router`), through its public API only, with one real
//! peer whose handshake is done, driven by a real client (`tunnel::peer::Peer` on boringtun).
//! The first byte picks what the rest is:
//! - 0: a raw datagram from the network (rate limiter, MAC checks, routing by index or key);
//! - 1: an inside packet the client encrypts: whatever the router lets inside must be what
//!   the client sent, from the client's own tunnel address (anti-spoofing);
//! - 2: a valid encrypted packet with one byte flipped: never let inside (authentication);
//! - 3: an inside packet routed towards a peer (`route_inside`): what goes out must decrypt at
//!   the client to exactly that packet;
//! - 4: a UDP packet built from fuzzed source, destination and payload, encrypted by the
//!   client: inside only if its source is the client's tunnel address.
//!
//! The session is re-established every few thousand inputs (boringtun sessions expire after
//! 180 s of wall-clock time).
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shadowsteer::domain::{PeerIndex, SecretKey};
use shadowsteer::tunnel::packet::{UdpAddr, build_udp};
use shadowsteer::tunnel::peer::{Action, Peer, PeerSpec};
use shadowsteer::tunnel::router::{Routed, Router};

const CLIENT_IP: &str = "10.77.0.2";

struct World {
    router: Router,
    client: Peer,
    client_addr: SocketAddr,
    inputs: u64,
}

impl World {
    fn new() -> Self {
        let server_key = SecretKey::generate();
        let client_key = SecretKey::generate();
        let mut router = Router::new(server_key, 1_000_000);
        let tunnel_ip: IpAddr = CLIENT_IP.parse().expect("ip");
        router.upsert(PeerSpec {
            index: PeerIndex::new(4242).expect("index"),
            public_key: client_key.public_key(),
            tunnel_ip,
            keepalive: None,
        });
        let client = Peer::new(
            &client_key,
            PeerSpec {
                index: PeerIndex::new(7).expect("index"),
                public_key: router.public_key(),
                tunnel_ip: "10.77.0.1".parse().expect("ip"),
                keepalive: None,
            },
        );
        let mut w = Self {
            router,
            client,
            client_addr: "192.0.2.10:40000".parse().expect("addr"),
            inputs: 0,
        };
        w.handshake();
        w
    }

    /// Runs a handshake initiated by the client through the router.
    fn handshake(&mut self) {
        let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
        let Action::Send(init) = self.client.force_handshake(&mut a) else {
            panic!("no initiation");
        };
        let now = Instant::now();
        let Routed::Send { bytes, .. } =
            self.router
                .handle_datagram(now, self.client_addr, init, &mut b)
        else {
            panic!("the router did not answer the initiation");
        };
        let response = bytes.to_vec();
        let server: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let _ = self.client.handle_datagram(now, server, &response, &mut a);
        while let Action::Send(_) = self.client.flush(&mut a) {}
    }

    /// Encrypts `packet` at the client; `None` if the client refuses it.
    fn seal(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; packet.len() + 64 + 148];
        match self.client.encapsulate(packet, &mut buf) {
            Action::Send(d) if d.first() == Some(&4) => Some(d.to_vec()),
            _ => None,
        }
    }

    /// Hands `datagram` to the router; returns the packet it let inside, if any.
    fn deliver(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; datagram.len() + 32 + 148];
        let routed =
            self.router
                .handle_datagram(Instant::now(), self.client_addr, datagram, &mut out);
        let inside = match routed {
            Routed::Inside { peer, packet } => {
                assert_eq!(peer.get(), 4242, "inside packets come from the one peer");
                Some(packet.to_vec())
            }
            Routed::Send { bytes, .. } => {
                assert!(bytes.len() <= out.len());
                None
            }
            Routed::Done | Routed::Drop(_) => None,
        };
        let mut flush = vec![0u8; 2048];
        for _ in 0..8 {
            if let Routed::Done | Routed::Drop(_) = self
                .router
                .flush(PeerIndex::new(4242).expect("index"), &mut flush)
            {
                break;
            }
        }
        inside
    }
}

/// The source address of an IP packet.
fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

static WORLD: LazyLock<Mutex<World>> = LazyLock::new(|| Mutex::new(World::new()));

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let mut w = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    w.inputs += 1;
    if w.inputs % 20_000 == 0 {
        w.router.reset_rate_limiter();
        w.handshake();
    }
    let client_ip: IpAddr = CLIENT_IP.parse().expect("ip");
    match op % 5 {
        0 => {
            if let Some(p) = w.deliver(rest) {
                assert_eq!(source(&p), Some(client_ip), "spoofed source let inside");
            }
        }
        1 => {
            if let Some(sealed) = w.seal(rest)
                && let Some(p) = w.deliver(&sealed)
            {
                assert!(
                    rest.starts_with(&p),
                    "inside packet differs from the one sent"
                );
                assert_eq!(source(&p), Some(client_ip), "spoofed source let inside");
            }
        }
        2 => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            let Some((&xor, _)) = rest.split_first() else {
                return;
            };
            let mut ip = [0u8; 64];
            let Some(n) = build_udp(
                &mut ip,
                UdpAddr {
                    ip: client_ip,
                    port: 5000,
                },
                UdpAddr {
                    ip: "10.77.0.1".parse().expect("ip"),
                    port: 7,
                },
                b"fuzz",
            ) else {
                return;
            };
            if let Some(mut sealed) = w.seal(&ip[..n]) {
                let i = usize::from(at) % sealed.len();
                sealed[i] ^= xor;
                let inside = w.deliver(&sealed);
                if xor != 0 && i >= 16 {
                    // Header bytes 0..16 are type, reserved, index and counter: a changed
                    // counter fails authentication too, a changed index another peer's
                    // lookup; the ciphertext and tag must never verify.
                    assert!(inside.is_none(), "tampered packet let inside (byte {i})");
                }
            }
        }
        3 => {
            let mut out = vec![0u8; rest.len() + 32 + 148];
            if let Routed::Send { bytes, .. } = w.router.route_inside(rest, &mut out) {
                let datagram = bytes.to_vec();
                let mut buf = vec![0u8; datagram.len() + 148];
                let server: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
                if let Action::Inside(p) =
                    w.client
                        .handle_datagram(Instant::now(), server, &datagram, &mut buf)
                {
                    assert!(
                        rest.starts_with(p),
                        "routed packet differs from the one sent"
                    );
                }
            }
        }
        _ => {
            if rest.len() < 5 {
                return;
            }
            let src = IpAddr::from([10, 77, rest[0], rest[1]]);
            let port = u16::from_be_bytes([rest[2], rest[3]]);
            let mut ip = vec![0u8; rest.len() + 64];
            let Some(n) = build_udp(
                &mut ip,
                UdpAddr { ip: src, port },
                UdpAddr {
                    ip: "10.77.0.1".parse().expect("ip"),
                    port: 7,
                },
                &rest[4..],
            ) else {
                return;
            };
            if let Some(sealed) = w.seal(&ip[..n])
                && let Some(p) = w.deliver(&sealed)
            {
                assert_eq!(src, client_ip, "spoofed source {src} let inside");
                assert_eq!(p, ip[..n], "inside packet differs from the one sent");
            }
        }
    }
});
