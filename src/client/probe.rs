//! The probe stream: sequenced UDP datagrams to the appliance's echo port, measured exactly.
//!
//! Each probe carries its sequence number and its send time (nanoseconds since the stream
//! started), so a reply alone gives its round-trip time. Pure: `now` is an argument.
//!
//! Definitions (what the report's numbers mean):
//! - a probe is *lost* when no reply arrived within `loss_timeout` of sending it; a reply after
//!   that is *late* (and the probe no longer counts as lost);
//! - the *longest gap* is the longest time between two consecutive replies (by arrival), the
//!   interruption a user of the tunnel would see;
//! - rtt statistics are over every first reply of a probe (duplicates are counted, not used).

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where probes go inside the tunnel: the echo port (RFC 862) of the appliance's tunnel
/// address, which the agent's `echo` inside mode answers (as does any echo service).
pub const ECHO_PORT: u16 = 7;

/// Bytes at the start of every probe: magic, sequence number, send time.
pub const HEADER_LEN: usize = 20;

const MAGIC: [u8; 4] = *b"SSP1";

/// RTT samples kept for exact percentiles (4 bytes each); beyond it percentiles cover the first
/// samples only, which the report says.
const MAX_RTT_SAMPLES: usize = 1 << 22;

/// Sequence numbers tracked (one bit each): at 1000 probes/s, 23 days.
const MAX_SEQ: u64 = 1 << 31;

/// Unsettled probes kept; a caller that never settles settles the oldest implicitly.
const MAX_PENDING: usize = 1 << 20;

/// Lost probes whose send times are reported (16 bytes each): enough to place every loss of a
/// test or a demo in time; a stream that loses more reports the first ones.
const MAX_LOST_LISTED: usize = 10_000;

/// The stream's state.
#[derive(Debug)]
pub struct ProbeStream {
    start: Instant,
    payload: usize,
    loss_timeout: Duration,
    next_seq: u64,
    /// Send times (nanoseconds from start) of the probes not settled yet, oldest first.
    pending: std::collections::VecDeque<u64>,
    /// One bit per sequence number: replied or not.
    received: Vec<u64>,
    settled: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
    received_count: u64,
    last_reply: Option<Instant>,
    longest_gap: Duration,
    run_lost: u64,
    max_run_lost: u64,
    /// (sequence number, send time in nanoseconds from start) of lost probes, by sequence.
    lost_listed: Vec<(u64, u64)>,
    rtt_us: Vec<u32>,
    rtt_sum_us: u128,
    rtt_min_us: u32,
    rtt_max_us: u32,
    window: Window,
}

/// Counters since the last [`ProbeStream::take_window`].
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    sent: u64,
    received: u64,
    rtt_sum_us: u128,
    jitter_sum_us: u128,
    jitter_n: u64,
    last_rtt_us: Option<u32>,
}

/// One window's summary (sent to the appliance as a client report).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct WindowReport {
    /// Probes sent in the window.
    pub sent: u64,
    /// Replies received in the window.
    pub received: u64,
    /// Mean rtt of the window's replies.
    pub rtt_ms: Option<f64>,
    /// Mean absolute difference between consecutive rtts.
    pub jitter_ms: Option<f64>,
}

/// Round-trip statistics in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttStats {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Whether the percentiles cover every sample.
    pub exact: bool,
}

/// The stream's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered (late replies included).
    pub received: u64,
    /// Probes not answered within the loss timeout.
    pub lost: u64,
    /// Replies that came after the loss timeout.
    pub late: u64,
    /// Replies seen more than once.
    pub duplicates: u64,
    /// Probes still within the loss timeout.
    pub in_flight: u64,
    /// `lost / (sent - in_flight)`.
    pub loss_ratio: f64,
    /// Longest time between consecutive replies, in milliseconds.
    pub longest_gap_ms: f64,
    /// Most consecutive probes lost.
    pub max_consecutive_lost: u64,
    /// When each lost probe was sent, in milliseconds from the stream's start (the first
    /// 10,000 losses): which move of the tunnel cost what.
    pub lost_at_ms: Vec<u64>,
    /// Round trips; absent when nothing was answered.
    pub rtt_ms: Option<RttStats>,
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

impl ProbeStream {
    /// A stream of `payload`-byte probes (at least [`HEADER_LEN`]) starting at `now`.
    pub fn new(now: Instant, payload: usize, loss_timeout: Duration) -> Self {
        Self {
            start: now,
            payload: payload.max(HEADER_LEN),
            loss_timeout,
            next_seq: 0,
            pending: std::collections::VecDeque::new(),
            received: Vec::new(),
            settled: 0,
            lost: 0,
            late: 0,
            duplicates: 0,
            received_count: 0,
            last_reply: None,
            longest_gap: Duration::ZERO,
            run_lost: 0,
            max_run_lost: 0,
            lost_listed: Vec::new(),
            rtt_us: Vec::new(),
            rtt_sum_us: 0,
            rtt_min_us: u32::MAX,
            rtt_max_us: 0,
            window: Window::default(),
        }
    }

    fn offset(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_received(&self, seq: u64) -> bool {
        self.received
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Writes the next probe's payload into `buf`; returns its length, or `None` when the
    /// stream is exhausted or `buf` is too small.
    pub fn next_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.next_seq >= MAX_SEQ {
            return None;
        }
        let out = buf.get_mut(..self.payload)?;
        out.fill(0);
        out[0..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.next_seq.to_be_bytes());
        let offset = self.offset(now);
        out[12..20].copy_from_slice(&offset.to_be_bytes());
        if self.pending.len() >= MAX_PENDING {
            self.settle_one();
        }
        self.pending.push_back(offset);
        if self.next_seq.is_multiple_of(64) {
            self.received.push(0);
        }
        self.next_seq += 1;
        self.window.sent += 1;
        Some(self.payload)
    }

    /// When the probe a reply answers was sent (from its header), if it is one of ours.
    pub fn sent_time(&self, payload: &[u8]) -> Option<Instant> {
        let h = payload.get(..HEADER_LEN)?;
        if h[0..4] != MAGIC {
            return None;
        }
        let sent = u64::from_be_bytes(h[12..20].try_into().ok()?);
        self.start.checked_add(Duration::from_nanos(sent))
    }

    /// Takes in a reply payload. Returns whether it was a valid, first reply.
    pub fn handle_reply(&mut self, now: Instant, payload: &[u8]) -> bool {
        let Some(h) = payload.get(..HEADER_LEN) else {
            return false;
        };
        if h[0..4] != MAGIC {
            return false;
        }
        let seq = u64::from_be_bytes(h[4..12].try_into().unwrap_or([0xff; 8]));
        let sent = u64::from_be_bytes(h[12..20].try_into().unwrap_or([0xff; 8]));
        let now_off = self.offset(now);
        if seq >= self.next_seq || sent > now_off {
            return false; // not a probe we sent
        }
        if self.is_received(seq) {
            self.duplicates += 1;
            return false;
        }
        if let Some(w) = self.received.get_mut((seq / 64) as usize) {
            *w |= 1 << (seq % 64);
        }
        self.received_count += 1;
        if seq < self.settled {
            // Counted lost at settlement; it came after all.
            self.late += 1;
            self.lost = self.lost.saturating_sub(1);
            if let Ok(i) = self.lost_listed.binary_search_by_key(&seq, |(s, _)| *s) {
                self.lost_listed.remove(i);
            }
        }
        if let Some(prev) = self.last_reply {
            self.longest_gap = self.longest_gap.max(now.saturating_duration_since(prev));
        }
        self.last_reply = Some(now);
        let rtt_us = u32::try_from((now_off - sent) / 1000).unwrap_or(u32::MAX);
        if self.rtt_us.len() < MAX_RTT_SAMPLES {
            self.rtt_us.push(rtt_us);
        }
        self.rtt_sum_us += u128::from(rtt_us);
        self.rtt_min_us = self.rtt_min_us.min(rtt_us);
        self.rtt_max_us = self.rtt_max_us.max(rtt_us);
        let w = &mut self.window;
        w.received += 1;
        w.rtt_sum_us += u128::from(rtt_us);
        if let Some(last) = w.last_rtt_us {
            w.jitter_sum_us += u128::from(last.abs_diff(rtt_us));
            w.jitter_n += 1;
        }
        w.last_rtt_us = Some(rtt_us);
        true
    }

    fn settle_one(&mut self) {
        let Some(sent) = self.pending.pop_front() else {
            return;
        };
        if self.is_received(self.settled) {
            self.run_lost = 0;
        } else {
            if self.lost_listed.len() < MAX_LOST_LISTED {
                self.lost_listed.push((self.settled, sent));
            }
            self.lost += 1;
            self.run_lost += 1;
            self.max_run_lost = self.max_run_lost.max(self.run_lost);
        }
        self.settled += 1;
    }

    /// Settles probes sent more than the loss timeout before `now` (counts the lost ones).
    /// Call before reporting; cheap to call often.
    pub fn settle(&mut self, now: Instant) {
        let timeout = u64::try_from(self.loss_timeout.as_nanos()).unwrap_or(u64::MAX);
        let Some(deadline) = self.offset(now).checked_sub(timeout) else {
            return;
        };
        while self.pending.front().is_some_and(|sent| *sent <= deadline) {
            self.settle_one();
        }
    }

    /// Settles everything: for the final report, after the last reply had time to come.
    pub fn settle_all(&mut self) {
        while !self.pending.is_empty() {
            self.settle_one();
        }
    }

    /// The counters since the previous call.
    pub fn take_window(&mut self) -> WindowReport {
        let w = std::mem::take(&mut self.window);
        WindowReport {
            sent: w.sent,
            received: w.received,
            rtt_ms: (w.received > 0).then(|| ms(w.rtt_sum_us as f64 / w.received as f64)),
            jitter_ms: (w.jitter_n > 0).then(|| ms(w.jitter_sum_us as f64 / w.jitter_n as f64)),
        }
    }

    /// The totals so far.
    pub fn report(&self) -> StreamReport {
        let sent = self.next_seq;
        let in_flight = sent - self.settled;
        let settled = sent - in_flight;
        let rtt_ms = (self.received_count > 0).then(|| {
            let mut sorted = self.rtt_us.clone();
            sorted.sort_unstable();
            let pct = |p: f64| -> f64 {
                if sorted.is_empty() {
                    return 0.0;
                }
                // Nearest-rank percentile.
                let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                ms(f64::from(sorted[rank - 1]))
            };
            RttStats {
                min: ms(f64::from(self.rtt_min_us)),
                mean: ms(self.rtt_sum_us as f64 / self.received_count as f64),
                p50: pct(0.50),
                p90: pct(0.90),
                p99: pct(0.99),
                max: ms(f64::from(self.rtt_max_us)),
                exact: sorted.len() as u64 == self.received_count,
            }
        });
        StreamReport {
            sent,
            received: self.received_count,
            lost: self.lost,
            late: self.late,
            duplicates: self.duplicates,
            in_flight,
            loss_ratio: if settled == 0 {
                0.0
            } else {
                self.lost as f64 / settled as f64
            },
            longest_gap_ms: self.longest_gap.as_secs_f64() * 1000.0,
            max_consecutive_lost: self.max_run_lost,
            lost_at_ms: self
                .lost_listed
                .iter()
                .map(|(_, sent)| sent / 1_000_000)
                .collect(),
            rtt_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_loss_gap_and_rtt() {
        let t0 = Instant::now();
        let mut s = ProbeStream::new(t0, 32, Duration::from_millis(500));
        let mut buf = [0u8; 64];
        let ms = Duration::from_millis;
        let mut probes = Vec::new();
        // 10 probes 10 ms apart.
        for i in 0..10u64 {
            let n = s.next_probe(t0 + ms(10 * i), &mut buf).unwrap();
            probes.push(buf[..n].to_vec());
        }
        // Replies after 3 ms, except probes 4, 5 and 6 (lost) and 8 (late, 900 ms).
        for i in [0u64, 1, 2, 3, 7, 9] {
            assert!(s.handle_reply(t0 + ms(10 * i + 3), &probes[i as usize]));
        }
        assert!(
            !s.handle_reply(t0 + ms(200), &probes[0]),
            "duplicate accepted"
        );
        assert!(!s.handle_reply(t0 + ms(200), b"garbage that is long enough...."));
        s.settle(t0 + ms(700));
        let r = s.report();
        assert_eq!((r.sent, r.received, r.lost, r.in_flight), (10, 6, 4, 0));
        assert_eq!(r.lost_at_ms, vec![40, 50, 60, 80]);
        assert!(s.handle_reply(t0 + ms(80 + 900), &probes[8]));
        let r = s.report();
        assert_eq!((r.received, r.lost, r.late, r.duplicates), (7, 3, 1, 1));
        assert_eq!(
            r.lost_at_ms,
            vec![40, 50, 60],
            "a late probe is no longer listed"
        );
        assert_eq!(r.max_consecutive_lost, 3);
        // Gaps: 33→73 is 40 ms, 73→93 is 20 ms, 93→980 is 887 ms.
        assert!(
            (r.longest_gap_ms - 887.0).abs() < 1e-6,
            "{}",
            r.longest_gap_ms
        );
        let rtt = r.rtt_ms.unwrap();
        assert_eq!((rtt.min, rtt.p50, rtt.max), (3.0, 3.0, 900.0));
        assert!(rtt.exact);
        let w = s.take_window();
        assert_eq!((w.sent, w.received), (10, 7));
        assert_eq!(s.take_window().sent, 0);
    }

    #[test]
    fn in_flight_until_settled() {
        let t0 = Instant::now();
        let mut s = ProbeStream::new(t0, 20, Duration::from_secs(1));
        let mut buf = [0u8; 20];
        s.next_probe(t0, &mut buf).unwrap();
        s.settle(t0 + Duration::from_millis(10));
        assert_eq!(s.report().in_flight, 1);
        s.settle_all();
        let r = s.report();
        assert_eq!((r.lost, r.in_flight, r.loss_ratio), (1, 0, 1.0));
    }
}
