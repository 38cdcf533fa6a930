//! Agent-to-agent path probes: small UDP datagrams authenticated with a keyed MAC
//! (HMAC-SHA256, truncated to 16 bytes) under a key the appliances share, so neither requests
//! nor responses can be forged, and per-path summaries (rtt, jitter, loss) over windows.
//!
//! Wire format (at most [`MAX_PROBE`] bytes):
//! `"SSPR" | kind (1 request, 2 response) | 0 0 0 | seq u64 | sent_ns u64 | id_len u8 | id | mac[16]`
//! where `id` is the sending appliance. Pure: the shell owns the socket and the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::domain::{ApplianceId, Fraction};

/// Largest probe datagram.
pub const MAX_PROBE: usize = 4 + 4 + 8 + 8 + 1 + 63 + MAC_LEN;
const MAC_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"SSPR";

/// Request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Sent by the measuring appliance.
    Request = 1,
    /// Sent back by the probed one.
    Response = 2,
}

/// A verified probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Request or response.
    pub kind: ProbeKind,
    /// Sequence number (per measuring appliance and path).
    pub seq: u64,
    /// Send time of the request, as the measuring appliance counts it.
    pub sent_ns: u64,
    /// The appliance that sent this datagram.
    pub from: ApplianceId,
}

/// The shared probe key.
pub struct ProbeKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey([redacted])")
    }
}

impl ProbeKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn keyed(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(data);
        m
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&self.keyed(data).finalize().into_bytes()[..MAC_LEN]);
        out
    }

    /// Writes a probe into `buf`; returns its length.
    pub fn encode(&self, probe: &Probe, buf: &mut [u8; MAX_PROBE]) -> usize {
        let id = probe.from.as_str().as_bytes();
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4] = probe.kind as u8;
        buf[5..8].fill(0);
        buf[8..16].copy_from_slice(&probe.seq.to_be_bytes());
        buf[16..24].copy_from_slice(&probe.sent_ns.to_be_bytes());
        // Ids are DNS labels: at most 63 bytes.
        let id_len = id.len().min(63);
        buf[24] = id_len as u8;
        buf[25..25 + id_len].copy_from_slice(&id[..id_len]);
        let body = 25 + id_len;
        let mac = self.mac(&buf[..body]);
        buf[body..body + MAC_LEN].copy_from_slice(&mac);
        body + MAC_LEN
    }

    /// Verifies and reads a datagram; `None` for anything not a valid probe under this key.
    pub fn decode(&self, datagram: &[u8]) -> Option<Probe> {
        if datagram.len() > MAX_PROBE || datagram.get(..4)? != MAGIC {
            return None;
        }
        let id_len = usize::from(*datagram.get(24)?);
        let body = 25 + id_len;
        if datagram.len() != body + MAC_LEN {
            return None;
        }
        // The MAC's own check, in constant time; the tag is the first MAC_LEN bytes.
        self.keyed(&datagram[..body])
            .verify_truncated_left(&datagram[body..])
            .ok()?;
        let kind = match datagram[4] {
            1 => ProbeKind::Request,
            2 => ProbeKind::Response,
            _ => return None,
        };
        let id = std::str::from_utf8(&datagram[25..body]).ok()?;
        Some(Probe {
            kind,
            seq: u64::from_be_bytes(datagram[8..16].try_into().ok()?),
            sent_ns: u64::from_be_bytes(datagram[16..24].try_into().ok()?),
            from: ApplianceId::new(id).ok()?,
        })
    }
}

/// One path's summary over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSummary {
    /// The probed appliance.
    pub peer: ApplianceId,
    /// Mean rtt; `None` when nothing came back.
    pub rtt_ms: Option<f64>,
    /// Mean absolute difference of consecutive rtts.
    pub jitter_ms: Option<f64>,
    /// Share of probes lost.
    pub loss: Fraction,
    /// Probes sent in the window.
    pub samples: u32,
}

#[derive(Debug, Default, Clone)]
struct WindowStats {
    sent: u32,
    rtts_us: Vec<u64>,
}

/// Probes in flight and window statistics for every probed peer.
///
/// A probe belongs to the window it was sent in; a window is summarised one window after it
/// closes, so every probe gets a full window's time to come back.
#[derive(Debug)]
pub struct PathMeter {
    start: Instant,
    window: Duration,
    next_seq: u64,
    /// Window number of each outstanding probe, by sequence number.
    outstanding: HashMap<u64, (ApplianceId, u64)>,
    /// (window number, peer) -> stats.
    windows: HashMap<(u64, ApplianceId), WindowStats>,
}

/// Outstanding probes kept at most; beyond it the oldest are forgotten (counted lost).
const MAX_OUTSTANDING: usize = 65_536;

impl PathMeter {
    /// A meter with windows of `window`, starting at `now`.
    pub fn new(now: Instant, window: Duration) -> Self {
        Self {
            start: now,
            window: window.max(Duration::from_millis(10)),
            next_seq: 0,
            outstanding: HashMap::new(),
            windows: HashMap::new(),
        }
    }

    fn offset_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn window_of(&self, now: Instant) -> u64 {
        self.offset_ns(now)
            / u64::try_from(self.window.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
    }

    /// A request to send to `peer` now, from `own`.
    pub fn request(&mut self, now: Instant, own: &ApplianceId, peer: &ApplianceId) -> Probe {
        let seq = self.next_seq;
        self.next_seq += 1;
        let w = self.window_of(now);
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.clear();
        }
        self.outstanding.insert(seq, (peer.clone(), w));
        self.windows.entry((w, peer.clone())).or_default().sent += 1;
        Probe {
            kind: ProbeKind::Request,
            seq,
            sent_ns: self.offset_ns(now),
            from: own.clone(),
        }
    }

    /// Takes in a verified response. Returns the rtt if it answers a probe in flight.
    pub fn handle_response(&mut self, now: Instant, probe: &Probe) -> Option<Duration> {
        if probe.kind != ProbeKind::Response {
            return None;
        }
        let (peer, w) = self.outstanding.get(&probe.seq)?.clone();
        if peer != probe.from {
            return None;
        }
        self.outstanding.remove(&probe.seq);
        let rtt_ns = self.offset_ns(now).checked_sub(probe.sent_ns)?;
        if let Some(stats) = self.windows.get_mut(&(w, peer)) {
            stats.rtts_us.push(rtt_ns / 1000);
        }
        Some(Duration::from_nanos(rtt_ns))
    }

    /// Summaries of every window that closed at least one window before `now`.
    #[must_use]
    pub fn poll_summaries(&mut self, now: Instant) -> Vec<(u64, PathSummary)> {
        let current = self.window_of(now);
        let mut out = Vec::new();
        let ready: Vec<(u64, ApplianceId)> = self
            .windows
            .keys()
            .filter(|(w, _)| w + 1 < current)
            .cloned()
            .collect();
        for key in ready {
            let Some(stats) = self.windows.remove(&key) else {
                continue;
            };
            let n = stats.rtts_us.len();
            let mean = (n > 0).then(|| stats.rtts_us.iter().sum::<u64>() as f64 / n as f64 / 1e3);
            let jitter = (n > 1).then(|| {
                stats
                    .rtts_us
                    .windows(2)
                    .map(|p| p[0].abs_diff(p[1]))
                    .sum::<u64>() as f64
                    / (n - 1) as f64
                    / 1e3
            });
            let loss = if stats.sent == 0 {
                0.0
            } else {
                1.0 - (n as f64 / f64::from(stats.sent)).min(1.0)
            };
            out.push((
                key.0,
                PathSummary {
                    peer: key.1,
                    rtt_ms: mean,
                    jitter_ms: jitter,
                    loss: Fraction::saturating(loss),
                    samples: stats.sent,
                },
            ));
        }
        self.outstanding.retain(|_, (_, w)| *w + 1 >= current);
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.peer.cmp(&b.1.peer)));
        out
    }

    /// Time from the meter's start to the end of window `w`.
    pub fn window_end(&self, w: u64) -> Duration {
        self.window
            .saturating_mul(u32::try_from(w + 1).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ApplianceId {
        ApplianceId::new(s).unwrap()
    }

    #[test]
    fn mac_rejects_forgeries_and_other_keys() {
        let key = ProbeKey::new([7; 32]);
        let p = Probe {
            kind: ProbeKind::Request,
            seq: 9,
            sent_ns: 123,
            from: id("eu-1"),
        };
        let mut buf = [0u8; MAX_PROBE];
        let n = key.encode(&p, &mut buf);
        assert_eq!(key.decode(&buf[..n]), Some(p));
        assert_eq!(ProbeKey::new([8; 32]).decode(&buf[..n]), None);
        for i in 0..n {
            let mut bad = buf;
            bad[i] ^= 1;
            assert_eq!(key.decode(&bad[..n]), None, "byte {i}");
        }
        assert_eq!(key.decode(&buf[..n - 1]), None);
        assert_eq!(key.decode(b"SSPR"), None);
    }

    #[test]
    fn windows_summarise_rtt_jitter_loss() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = PathMeter::new(t0, ms(1000));
        let (me, peer) = (id("eu-1"), id("us-1"));
        let mut responses = Vec::new();
        for i in 0..4u64 {
            let mut p = m.request(t0 + ms(100 + 200 * i), &me, &peer);
            p.kind = ProbeKind::Response;
            p.from = peer.clone();
            responses.push((i, p));
        }
        // Replies after 10, 20 and 40 ms; the fourth is lost.
        for (i, p) in responses.iter().take(3) {
            let rtt = [10u64, 20, 40][*i as usize];
            let got = m.handle_response(t0 + ms(100 + 200 * i + rtt), p);
            assert_eq!(got, Some(ms(rtt)));
        }
        // A response from the wrong appliance does not count.
        let mut wrong = responses[3].1.clone();
        wrong.from = id("ap-9");
        assert_eq!(m.handle_response(t0 + ms(900), &wrong), None);
        assert!(
            m.poll_summaries(t0 + ms(1500)).is_empty(),
            "summarised too early"
        );
        let s = m.poll_summaries(t0 + ms(2100));
        assert_eq!(s.len(), 1);
        let s = &s[0].1;
        assert_eq!(s.samples, 4);
        assert_eq!(s.loss.get(), 0.25);
        assert!((s.rtt_ms.unwrap() - 70.0 / 3.0).abs() < 1e-9);
        assert!((s.jitter_ms.unwrap() - 15.0).abs() < 1e-9);
    }
}
