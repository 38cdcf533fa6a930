//! What appliances send each other on the WireGuard port, which anyone can reach: group
//! heartbeats and relay messages (`takeover::wire`), path probes (`agent::probe`), and the
//! heartbeat replay guard (`takeover::liveness`). The first byte picks what the rest is:
//! - 0: a raw datagram through every decoder. Whatever one of them authenticates must encode
//!   back to exactly the same bytes: one message, one encoding, nothing malleable;
//! - 1: messages built from fuzzed fields: each decodes to what was encoded, and the same
//!   message with one bit flipped, cut short or under another key is refused;
//! - 2: a run of heartbeats from two peers, with fuzzed boot, sequence, send time and clock
//!   steps: an accepted heartbeat is always newer than the last accepted one of its sender
//!   and sent within the replay window, and a peer declared dead comes back as `Revived`.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shadowsteer::agent::probe::{MAX_PROBE, Probe, ProbeKey, ProbeKind};
use shadowsteer::domain::ApplianceId;
use shadowsteer::takeover::liveness::{Arrival, Liveness, REPLAY_WINDOW, Timing, Verdict};
use shadowsteer::takeover::wire::{GroupKey, Heartbeat, MAX_LEN, Relay, RelayDirection};

const KEY: [u8; 32] = [0x5a; 32];

/// Reads fuzzed fields front to back; short input reads as zeros.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_be_bytes(b)
    }
    /// An appliance id from up to 70 fuzzed bytes, when they make one.
    fn id(&mut self) -> Option<ApplianceId> {
        let n = usize::from(self.u8()) % 71;
        let text = std::str::from_utf8(self.bytes(n)).ok()?;
        ApplianceId::new(text).ok()
    }
}

fn raw(datagram: &[u8]) {
    let group = GroupKey::from_secret(&KEY);
    let probes = ProbeKey::new(KEY);
    if let Ok(hb) = Heartbeat::decode(&group, datagram) {
        let mut out = [0u8; MAX_LEN];
        let n = hb.encode(&group, &mut out);
        assert_eq!(&out[..n], datagram, "a heartbeat has one encoding");
    }
    if let Ok(relay) = Relay::decode(&group, datagram) {
        let mut out = Vec::new();
        relay.encode(&group, &mut out);
        // A v4-mapped v6 client address decodes as v4 and encodes back mapped: same bytes.
        assert_eq!(out, datagram, "a relay message has one encoding");
    }
    if let Some(probe) = probes.decode(datagram) {
        let mut out = [0u8; MAX_PROBE];
        let n = probes.encode(&probe, &mut out);
        assert_eq!(&out[..n], datagram, "a probe has one encoding");
    }
}

/// The bit flip, cut and foreign key that `flip_at` picks must each make `accepts` refuse
/// `msg`, which the caller has just seen decode.
fn refuses_tampering(msg: &[u8], flip_at: usize, accepts: impl Fn(&[u8], &[u8; 32]) -> bool) {
    let mut bad = msg.to_vec();
    let i = flip_at % msg.len();
    bad[i] ^= 1 << (flip_at % 8);
    assert!(!accepts(&bad, &KEY), "byte {i} flipped and still accepted");
    assert!(
        !accepts(&msg[..i], &KEY),
        "cut to {i} bytes and still accepted"
    );
    let mut other = KEY;
    other[flip_at % 32] ^= 1;
    assert!(!accepts(msg, &other), "accepted under another key");
}

fn structured(mut f: Fields<'_>) {
    let flip_at = usize::from(f.u8()) | usize::from(f.u8()) << 8;
    let group = GroupKey::from_secret(&KEY);
    if let Some(from) = f.id() {
        let hb = Heartbeat {
            from,
            boot: f.u64(),
            seq: f.u64(),
            sent_unix_ms: f.u64(),
        };
        let mut buf = [0u8; MAX_LEN];
        let n = hb.encode(&group, &mut buf);
        assert_eq!(Heartbeat::decode(&group, &buf[..n]), Ok(hb.clone()));
        refuses_tampering(&buf[..n], flip_at, |m, k| {
            Heartbeat::decode(&GroupKey::from_secret(k), m).is_ok()
        });
        let probe = Probe {
            kind: if f.u8() % 2 == 0 {
                ProbeKind::Request
            } else {
                ProbeKind::Response
            },
            seq: hb.seq,
            sent_ns: hb.sent_unix_ms,
            from: hb.from,
        };
        let key = ProbeKey::new(KEY);
        let mut buf = [0u8; MAX_PROBE];
        let n = key.encode(&probe, &mut buf);
        assert_eq!(key.decode(&buf[..n]), Some(probe));
        refuses_tampering(&buf[..n], flip_at, |m, k| {
            ProbeKey::new(*k).decode(m).is_some()
        });
    }
    let direction = match f.u8() % 3 {
        0 => RelayDirection::FromClient,
        1 => RelayDirection::ToClient,
        _ => RelayDirection::Misdirected,
    };
    let ip = Ipv6Addr::from(u128::from(f.u64()) << 64 | u128::from(f.u64()));
    // The wire carries v4 as v4-mapped v6, so that is what a mapped address decodes to.
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    let port = u16::from_be_bytes([f.u8(), f.u8()]);
    let datagram = f.0;
    if datagram.is_empty() {
        return;
    }
    let relay = Relay {
        direction,
        client: SocketAddr::new(ip, port),
        datagram,
    };
    let mut out = Vec::new();
    relay.encode(&group, &mut out);
    assert_eq!(Relay::decode(&group, &out), Ok(relay));
    refuses_tampering(&out, flip_at, |m, k| {
        Relay::decode(&GroupKey::from_secret(k), m).is_ok()
    });
}

fn replay_guard(mut f: Fields<'_>) {
    let peers = [
        ApplianceId::new("eu-1").expect("id"),
        ApplianceId::new("us-1").expect("id"),
    ];
    let timing = Timing {
        interval: Duration::from_millis(50),
        misses: 3,
        startup_grace: Duration::from_secs(1),
    };
    let mut now = Instant::now();
    let mut now_ms: u64 = 1_700_000_000_000;
    let mut live = Liveness::new(timing, now);
    live.set_peers(peers.iter().cloned());
    let mut accepted: [Option<(u64, u64)>; 2] = [None, None];
    let mut dead = [false; 2];
    while !f.0.is_empty() {
        let op = f.u8();
        let p = usize::from(op & 1);
        // Clock steps of 0 to 255 ms, both clocks together.
        let step = u64::from(f.u8());
        now += Duration::from_millis(step);
        now_ms += step;
        if op & 2 != 0 {
            for id in live.poll(now) {
                let i = peers.iter().position(|p| *p == id).expect("a known peer");
                assert!(!dead[i], "declared dead twice");
                dead[i] = true;
            }
            continue;
        }
        // Small boots and sequences, so that replays and restarts happen.
        let boot = u64::from(f.u8() % 4);
        let seq = u64::from(f.u8() % 16);
        let skew = i64::from(f.u8() as i8) * 20;
        let sent = now_ms.saturating_add_signed(skew);
        let hb = Heartbeat {
            from: peers[p].clone(),
            boot,
            seq,
            sent_unix_ms: sent,
        };
        match live.on_heartbeat(&hb, now, now_ms) {
            Verdict::Accepted(arrival) => {
                assert!(sent.abs_diff(now_ms) <= REPLAY_WINDOW.as_millis() as u64);
                assert!(
                    accepted[p].is_none_or(|last| (boot, seq) > last),
                    "replay accepted"
                );
                if dead[p] {
                    assert_eq!(arrival, Arrival::Revived);
                } else if let Some((last_boot, _)) = accepted[p]
                    && boot > last_boot
                {
                    assert!(matches!(arrival, Arrival::Restarted { .. }));
                } else {
                    assert_eq!(arrival, Arrival::Steady);
                }
                accepted[p] = Some((boot, seq));
                dead[p] = false;
                assert_eq!(live.last_heard(&peers[p]), Some(now));
            }
            Verdict::Replayed => {
                assert!(accepted[p].is_some_and(|last| (boot, seq) <= last));
            }
            Verdict::Stale => {
                assert!(sent.abs_diff(now_ms) > REPLAY_WINDOW.as_millis() as u64);
            }
            Verdict::Unknown => panic!("both peers are in the group"),
        }
        assert_eq!(live.is_dead(&peers[p]), dead[p]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => raw(rest),
        1 => structured(Fields(rest)),
        _ => replay_guard(Fields(rest)),
    }
});
