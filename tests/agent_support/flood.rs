//! Attacker's tools for the flood tests: handshake initiations forged with nothing but public
//! keys, an unpaced sender on a thread of its own, and the kernel's count of datagrams a full
//! socket dropped (the proof that a flood filled it).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blake2::digest::{Digest, FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac};
use boringtun::x25519;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, Payload};
use shadowsteer::domain::PublicKey;

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <hmac::SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// A WireGuard handshake initiation to `responder` that names `named` as its sender's static
/// key, made without `named`'s private key (WireGuard whitepaper §5.4.2). Everything a
/// responder checks before its static-static Diffie-Hellman is genuine: MAC1 (it needs only
/// the responder's public key) and the encrypted static key (it needs only a fresh ephemeral
/// key), so the responder routes it to `named`'s peer. The timestamp is random bytes: it can
/// never decrypt, and the handshake never completes.
pub fn forged_initiation(responder: &PublicKey, named: &PublicKey) -> Vec<u8> {
    let responder = x25519::PublicKey::from(*responder.as_bytes());
    let ephemeral = x25519::StaticSecret::from(rand::random::<[u8; 32]>());
    let ephemeral_public = x25519::PublicKey::from(&ephemeral);
    let mut msg = vec![0u8; 148];
    msg[0] = 1;
    msg[4..8].copy_from_slice(&rand::random::<u32>().to_le_bytes());
    msg[8..40].copy_from_slice(ephemeral_public.as_bytes());

    let ck = hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]);
    let h = hash(&[&ck, b"WireGuard v1 zx2c4 Jason@zx2c4.com"]);
    let h = hash(&[&h, responder.as_bytes()]);
    let h = hash(&[&h, ephemeral_public.as_bytes()]);
    let ck = hmac(&hmac(&ck, &[ephemeral_public.as_bytes()]), &[&[1]]);
    let temp = hmac(&ck, &[ephemeral.diffie_hellman(&responder).as_bytes()]);
    let ck = hmac(&temp, &[&[1]]);
    let key = hmac(&temp, &[&ck, &[2]]);
    let sealed = ChaCha20Poly1305::new_from_slice(&key)
        .unwrap()
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: named.as_bytes(),
                aad: &h,
            },
        )
        .unwrap();
    msg[40..88].copy_from_slice(&sealed);
    msg[88..116].copy_from_slice(&rand::random::<[u8; 28]>());

    let mac1_key = hash(&[b"mac1----", responder.as_bytes()]);
    let mut mac =
        <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&mac1_key).unwrap();
    Mac::update(&mut mac, &msg[..116]);
    let mac1: [u8; 16] = mac.finalize_fixed().into();
    msg[116..132].copy_from_slice(&mac1);
    msg
}

/// Datagrams sent to one target as fast as one thread per source address can, until stopped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
    started: Instant,
}

/// What a flood achieved.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// Datagrams the kernel took from the flooders.
    pub sent: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

impl FloodReport {
    /// Datagrams per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Two loopback sources other than the clients' (127.0.0.1), so that their cookies are not
/// the clients'. Two threads keep a socket full even when the listener drops most of the
/// flood cheaply (one flooder no longer could once cookie replies were bounded per source).
pub fn flood_sources() -> Vec<SocketAddr> {
    vec![
        "127.0.0.2:0".parse().unwrap(),
        "127.0.0.3:0".parse().unwrap(),
    ]
}

impl Flood {
    /// Starts sending `datagrams` round-robin to `target` from each of `sources` (a thread
    /// each), with no pause.
    pub fn start(sources: &[SocketAddr], target: SocketAddr, datagrams: Vec<Vec<u8>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(datagrams);
        let threads = sources
            .iter()
            .map(|from| {
                let socket = UdpSocket::bind(from).expect("bind flooder");
                let flag = Arc::clone(&stop);
                let datagrams = Arc::clone(&datagrams);
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    while !flag.load(Ordering::Relaxed) {
                        for d in datagrams.iter() {
                            if socket.send_to(d, target).is_ok() {
                                sent += 1;
                            }
                        }
                    }
                    sent
                })
            })
            .collect();
        Self {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    /// Stops the flood.
    pub fn stop(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("flooder panicked"))
            .sum();
        FloodReport {
            sent,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Datagrams the kernel dropped because the UDP socket bound to `port` was full (the last
/// column of `/proc/net/udp`).
pub fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let want = format!(":{port:04X}");
    // Several data-plane workers bind the port (SO_REUSEPORT): their drops add up.
    let drops: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(1)?.ends_with(&want) {
                cols.last()?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    (!drops.is_empty()).then(|| drops.iter().sum())
}
