//! DNS counters. Each UDP worker owns one [`Stats`] and is its only writer, so counting costs
//! an uncontended relaxed add; all TCP connections share one (TCP is the slow path, where a
//! contended add costs nothing that matters). The metrics endpoint sums them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::status::HandshakeFailure;
use super::wire::{rcode, rtype};

/// Query types counted by name; everything else is `other`.
pub const QTYPES: [(u16, &str); 10] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::SRV, "SRV"),
    (rtype::SOA, "SOA"),
    (rtype::NS, "NS"),
    (rtype::TXT, "TXT"),
    (rtype::CNAME, "CNAME"),
    (rtype::MX, "MX"),
    (rtype::CAA, "CAA"),
    (rtype::ANY, "ANY"),
];

/// Response codes counted by name; everything else is `other`.
pub const RCODES: [(u16, &str); 7] = [
    (rcode::NOERROR, "NOERROR"),
    (rcode::FORMERR, "FORMERR"),
    (rcode::SERVFAIL, "SERVFAIL"),
    (rcode::NXDOMAIN, "NXDOMAIN"),
    (rcode::NOTIMP, "NOTIMP"),
    (rcode::REFUSED, "REFUSED"),
    (rcode::BADVERS, "BADVERS"),
];

/// Appliances with a counter of their own; slots beyond share the last one.
pub const APPLIANCE_SLOTS: usize = 1024;

/// Upper bounds (microseconds) of the latency histogram buckets.
pub const LATENCY_BOUNDS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Counters of one writer.
#[derive(Debug)]
pub struct Stats {
    /// Queries by type (`QTYPES` order, then other).
    pub qtypes: [AtomicU64; QTYPES.len() + 1],
    /// Responses by code (`RCODES` order, then other).
    pub rcodes: [AtomicU64; RCODES.len() + 1],
    /// Steered answers by appliance slot.
    pub appliances: Box<[AtomicU64]>,
    /// Responses sent truncated because they did not fit.
    pub truncated: AtomicU64,
    /// Responses rate limited and sent truncated (slip).
    pub rrl_slipped: AtomicU64,
    /// Responses rate limited and dropped.
    pub rrl_dropped: AtomicU64,
    /// Packets dropped without an answer (too short, or responses).
    pub dropped: AtomicU64,
    /// Times this UDP worker panicked and was restarted.
    pub restarts: AtomicU64,
    /// Handling time histogram (`LATENCY_BOUNDS_US` order, then +Inf).
    pub latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of handling times in nanoseconds.
    pub latency_sum_ns: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            qtypes: Default::default(),
            rcodes: Default::default(),
            appliances: (0..APPLIANCE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            truncated: AtomicU64::new(0),
            rrl_slipped: AtomicU64::new(0),
            rrl_dropped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            latency: Default::default(),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Counts one answered query.
    pub fn record(&self, outcome: &super::respond::Outcome) {
        if !outcome.send {
            bump(&self.dropped, 1);
            return;
        }
        let qi = QTYPES
            .iter()
            .position(|(t, _)| *t == outcome.qtype)
            .unwrap_or(QTYPES.len());
        bump(&self.qtypes[qi], 1);
        let ri = RCODES
            .iter()
            .position(|(c, _)| *c == outcome.rcode)
            .unwrap_or(RCODES.len());
        bump(&self.rcodes[ri], 1);
        if let Some(slot) = outcome.appliance {
            bump(
                &self.appliances[usize::from(slot).min(APPLIANCE_SLOTS - 1)],
                1,
            );
        }
        if outcome.truncated {
            bump(&self.truncated, 1);
        }
    }

    /// Counts `n` queries that each took `nanos` to handle.
    pub fn record_latency(&self, nanos: u64, n: u64) {
        let us = nanos / 1000;
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        bump(&self.latency[i], n);
        bump(&self.latency_sum_ns, nanos.saturating_mul(n));
    }

    /// Counts a rate-limited response.
    pub fn record_limited(&self, slipped: bool) {
        bump(
            if slipped {
                &self.rrl_slipped
            } else {
                &self.rrl_dropped
            },
            1,
        );
    }
}

/// Reads a counter.
pub fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Stable metrics slots for appliances: an appliance keeps its slot for the life of the
/// process, so its counter survives snapshot swaps. Slot `APPLIANCE_SLOTS - 1` is shared by
/// everything past the first `APPLIANCE_SLOTS - 1` appliances.
#[derive(Debug, Default)]
pub struct ApplianceSlots {
    by_id: std::collections::HashMap<String, u16>,
    names: Vec<String>,
}

impl ApplianceSlots {
    /// The slot of `id`, assigning the next free one on first sight.
    pub fn slot(&mut self, id: &str) -> u16 {
        if let Some(s) = self.by_id.get(id) {
            return *s;
        }
        let s = self.names.len().min(APPLIANCE_SLOTS - 1) as u16;
        if self.names.len() < APPLIANCE_SLOTS - 1 {
            self.names.push(id.to_owned());
        }
        self.by_id.insert(id.to_owned(), s);
        s
    }

    /// The metric label of each slot in use (the shared last slot is `other`).
    pub fn labels(&self) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = self.names.iter().cloned().enumerate().collect();
        if self.by_id.len() > self.names.len() {
            out.push((APPLIANCE_SLOTS - 1, "other".to_owned()));
        }
        out
    }
}

/// The DNS counters of every writer, for `/metrics`: summed over the writers at scrape time,
/// so the hot path never shares a cache line.
#[derive(Debug)]
pub struct DnsMetrics(pub std::sync::Arc<super::status::DnsStatus>);

impl DnsMetrics {
    fn sum(&self, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        self.0.writers().map(|s| read(f(s))).sum()
    }

    fn by_name<const N: usize>(
        &self,
        names: impl Iterator<Item = &'static str>,
        f: impl Fn(&Stats) -> &[AtomicU64; N],
    ) -> Vec<(&'static str, u64)> {
        names
            .chain(["other"])
            .enumerate()
            .map(|(i, name)| (name, self.sum(|s| &f(s)[i])))
            .collect()
    }

    fn latency(&self, out: &mut crate::metrics::Scrape) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .enumerate()
            .map(|(i, b)| (*b as f64 / 1e6, self.sum(|s| &s.latency[i])))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum::<u64>()
            + self.sum(|s| &s.latency[LATENCY_BOUNDS_US.len()]);
        out.histogram(
            "shadowsteer_dns_latency_seconds",
            "Time from receiving a query (batch) to sending its answer.",
            self.sum(|s| &s.latency_sum_ns) as f64 / 1e9,
            count,
            &buckets,
        )
    }
}

impl crate::metrics::Collector for DnsMetrics {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counters(
            "shadowsteer_dns_queries",
            "DNS queries answered, by question type.",
            "qtype",
            self.by_name(QTYPES.iter().map(|(_, n)| *n), |s| &s.qtypes),
        )?;
        out.counters(
            "shadowsteer_dns_responses",
            "DNS responses, by response code.",
            "rcode",
            self.by_name(RCODES.iter().map(|(_, n)| *n), |s| &s.rcodes),
        )?;
        let labels = self.0.appliance_labels();
        let answers: Vec<(&str, u64)> = labels
            .iter()
            .map(|(slot, name)| (name.as_str(), self.sum(|s| &s.appliances[*slot])))
            .collect();
        out.counters(
            "shadowsteer_dns_answers",
            "Steered answers (per-client names, SRV, service name), by appliance.",
            "appliance",
            answers,
        )?;
        out.counters(
            "shadowsteer_dns_rate_limited",
            "Responses hit by response rate limiting, by action.",
            "action",
            [
                ("slip", self.sum(|s| &s.rrl_slipped)),
                ("drop", self.sum(|s| &s.rrl_dropped)),
            ],
        )?;
        out.counter(
            "shadowsteer_dns_truncated",
            "UDP responses sent truncated because they did not fit.",
            self.sum(|s| &s.truncated),
        )?;
        out.counter(
            "shadowsteer_dns_dropped",
            "Packets dropped without an answer (too short, responses, oversized).",
            self.sum(|s| &s.dropped),
        )?;
        out.counter(
            "shadowsteer_dns_udp_worker_restarts",
            "UDP workers restarted after a panic (the datagrams of the batch in hand are lost).",
            self.sum(|s| &s.restarts),
        )?;
        out.gauge(
            "shadowsteer_dns_tcp_connections",
            "Open DNS-over-TCP connections.",
            self.0.tcp_in_use(),
        )?;
        out.counter(
            "shadowsteer_dns_tcp_refused",
            "TCP connections closed at once because the limit was reached.",
            self.0.tcp_refused(),
        )?;
        out.counters(
            "shadowsteer_dns_tls_handshake_failures",
            "DNS-over-TLS handshakes that did not end in a session, by reason: refused (a TLS \
             error, such as a client that does not trust the certificate), closed (the peer \
             went away), timeout (queries over TLS count as TCP).",
            "reason",
            HandshakeFailure::ALL.map(|why| (why.label(), self.0.tls_handshake_failures(why))),
        )?;
        self.latency(&mut out)
    }
}
