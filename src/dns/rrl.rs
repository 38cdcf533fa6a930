//! Response rate limiting (RRL) as NSD and BIND do it: a bucket per *kind of response* to a
//! source prefix (/24 for IPv4, /56 for IPv6 by default), each allowing a rate per second;
//! beyond it every `slip`-th response of that bucket goes out empty with TC set (a real client
//! retries over TCP, a spoofed victim receives nothing large) and the rest are dropped. TCP is
//! never limited.
//!
//! What makes two responses "the same" (one bucket), by [`ResponseClass`]:
//! - answers and NODATA: the question name and type, so a resolver serving thousands of clients
//!   asks about thousands of names and is limited per name, never as a whole;
//! - NXDOMAIN: the zone, so a random-subdomain flood shares one bucket per prefix;
//! - errors (FORMERR, REFUSED, NOTIMP, SERVFAIL, BADVERS): the class alone.
//!
//! The limiter looks at *responses*: the shell asks it after the query parsed and was answered,
//! so garbage that gets no response spends no budget, and FORMERRs spend only the error budget.
//!
//! Pure: the time (whole seconds since an epoch shared by every caller) is an argument. One
//! limiter is shared by all UDP workers (the kernel spreads a prefix's packets over the
//! workers' sockets by source port). Each bucket is one atomic word (second and count), updated
//! by compare-and-swap; a bucket never goes back in time, so a worker that read the clock a
//! moment before another cannot reset a count the other has started. Memory is bounded: a fixed
//! table of buckets indexed by a keyed hash of (prefix, class, type, name); keys that collide
//! share a bucket within a second, which can only make limiting stricter, and the hash key is
//! random per process, so a remote party cannot aim collisions.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per limiter: 256k buckets of 8 bytes (2 MiB).
const BUCKETS: usize = 1 << 18;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send it empty with TC set.
    Slip,
    /// Send nothing.
    Drop,
}

/// The kind of a response, which decides its rate and what its bucket is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// Records in the answer section (keyed by name and type).
    Answer,
    /// NOERROR without answer records (keyed by name and type).
    NoData,
    /// The name does not exist (keyed by the zone).
    NxDomain,
    /// Any error code (keyed by the class alone).
    Error,
}

/// A response as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseKey {
    /// Its class.
    pub class: ResponseClass,
    /// The question type (answers and NODATA only; 0 otherwise).
    pub qtype: u16,
    /// [`name_hash`] of the name the bucket is keyed by (0 for errors).
    pub name: u64,
}

/// An unkeyed 64-bit hash of a lowercase wire-form name, for [`ResponseKey::name`] (FNV-1a).
/// The limiter mixes it with its secret key and the rest of the bucket key.
pub fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Rates per second by class, slip and source grouping. A rate of 0 leaves that class
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Answers and NODATA per second per name, type and prefix.
    pub responses: u32,
    /// NXDOMAIN per second per zone and prefix.
    pub nxdomains: u32,
    /// Errors per second per prefix.
    pub errors: u32,
    /// Every `slip`-th limited response of a bucket is sent truncated; 0 drops all.
    pub slip: u32,
    /// IPv4 prefix length grouping sources.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length grouping sources.
    pub ipv6_prefix: u8,
}

impl Limits {
    /// The settings of a `[dns.rate_limit]` section; unset rates follow
    /// `responses_per_second`.
    pub fn from_config(rl: &crate::config::RateLimitSection) -> Self {
        Self {
            responses: rl.responses_per_second,
            nxdomains: rl.nxdomains_per_second.unwrap_or(rl.responses_per_second),
            errors: rl.errors_per_second.unwrap_or(rl.responses_per_second),
            slip: rl.slip,
            ipv4_prefix: rl.ipv4_prefix,
            ipv6_prefix: rl.ipv6_prefix,
        }
    }
}

/// A bucket packs the second (upper 32 bits, wrapping) and the count in it (lower 32 bits).
fn pack(second: u32, count: u32) -> u64 {
    (u64::from(second) << 32) | u64::from(count)
}

/// Mixes `v` into `h` (the multiply-xorshift finaliser of SplitMix64).
fn mix(h: u64, v: u64) -> u64 {
    let mut z = (h ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A rate limiter shared by every UDP worker.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    v4_mask: u32,
    v6_mask: u128,
    secret: u64,
    buckets: Vec<AtomicU64>,
}

impl RateLimiter {
    /// A limiter for `limits`; `secret` keys the bucket hash (pass a random value).
    pub fn new(limits: Limits, secret: u64) -> Self {
        let v4_mask = u32::MAX
            .checked_shl(32 - u32::from(limits.ipv4_prefix.min(32)))
            .unwrap_or(0);
        let v6_mask = u128::MAX
            .checked_shl(128 - u32::from(limits.ipv6_prefix.min(128)))
            .unwrap_or(0);
        let on = limits.responses > 0 || limits.nxdomains > 0 || limits.errors > 0;
        Self {
            limits,
            v4_mask,
            v6_mask,
            secret,
            buckets: if on {
                (0..BUCKETS).map(|_| AtomicU64::new(0)).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Whether limiting is on for any class.
    pub fn enabled(&self) -> bool {
        !self.buckets.is_empty()
    }

    fn prefix(&self, src: IpAddr) -> u128 {
        match src {
            // IPv4 in its IPv4-mapped IPv6 form, so the families never share a key.
            IpAddr::V4(a) => u128::from(u32::from(a) & self.v4_mask) | (0xFFFFu128 << 32),
            IpAddr::V6(a) => u128::from(a) & self.v6_mask,
        }
    }

    fn rate(&self, class: ResponseClass) -> u32 {
        match class {
            ResponseClass::Answer | ResponseClass::NoData => self.limits.responses,
            ResponseClass::NxDomain => self.limits.nxdomains,
            ResponseClass::Error => self.limits.errors,
        }
    }

    fn bucket(&self, src: IpAddr, key: &ResponseKey) -> &AtomicU64 {
        let prefix = self.prefix(src);
        let (qtype, name) = match key.class {
            ResponseClass::Answer | ResponseClass::NoData => (key.qtype, key.name),
            ResponseClass::NxDomain => (0, key.name),
            ResponseClass::Error => (0, 0),
        };
        let mut h = mix(self.secret, prefix as u64);
        h = mix(h, (prefix >> 64) as u64);
        h = mix(h, (key.class as u64) << 16 | u64::from(qtype));
        h = mix(h, name);
        &self.buckets[(h >> 32) as usize & (BUCKETS - 1)]
    }

    /// Decides one response `key` to `src` at `now` (whole seconds since the epoch every caller
    /// shares).
    pub fn check(&self, src: IpAddr, key: &ResponseKey, now: u64) -> Verdict {
        let rate = self.rate(key.class);
        if rate == 0 || self.buckets.is_empty() {
            return Verdict::Send;
        }
        let bucket = self.bucket(src, key);
        let second = now as u32;
        let mut current = bucket.load(Ordering::Relaxed);
        let count = loop {
            let (seen, n) = ((current >> 32) as u32, current as u32);
            // A bucket from an earlier second starts over; one from this second or (a caller
            // that read the clock just before a tick) a later one keeps counting.
            let next = if (second.wrapping_sub(seen) as i32) > 0 {
                pack(second, 1)
            } else {
                pack(seen, n.saturating_add(1))
            };
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break next as u32,
                Err(actual) => current = actual,
            }
        };
        if count <= rate {
            return Verdict::Send;
        }
        // The slip counter is the bucket's own count past the rate: per key, not global.
        let over = count - rate;
        if self.limits.slip != 0 && over.is_multiple_of(self.limits.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, slip: u32) -> Limits {
        Limits {
            responses: rate,
            nxdomains: rate,
            errors: rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }

    fn answer(name: &str, qtype: u16) -> ResponseKey {
        ResponseKey {
            class: ResponseClass::Answer,
            qtype,
            name: name_hash(name.as_bytes()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_prefix_and_name_with_slip() {
        let rl = RateLimiter::new(limits(5, 2), 1);
        let a = ip("192.0.2.1");
        let same_prefix = ip("192.0.2.200");
        let alice = answer("alice", 1);
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| rl.check(if i % 2 == 0 { a } else { same_prefix }, &alice, 100))
            .collect();
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(
            verdicts[5..],
            [
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop
            ]
        );
        // Another prefix, another name, another type: buckets of their own.
        assert_eq!(rl.check(ip("198.51.100.1"), &alice, 100), Verdict::Send);
        assert_eq!(rl.check(a, &answer("bob", 1), 100), Verdict::Send);
        assert_eq!(rl.check(a, &answer("alice", 28), 100), Verdict::Send);
        // Next second: a fresh allowance.
        assert_eq!(rl.check(a, &alice, 101), Verdict::Send);
    }

    #[test]
    fn slip_is_counted_per_key() {
        // Two flooded keys, interleaved: each one's limited responses alternate drop/slip on
        // their own (a global counter would give one key all the slips).
        let rl = RateLimiter::new(limits(1, 2), 7);
        let src = ip("192.0.2.1");
        let (x, y) = (answer("x", 1), answer("y", 1));
        let mut slips = [0, 0];
        for _ in 0..10 {
            for (i, k) in [x, y].iter().enumerate() {
                if rl.check(src, k, 5) == Verdict::Slip {
                    slips[i] += 1;
                }
            }
        }
        assert_eq!(slips, [4, 4]);
    }

    #[test]
    fn a_resolver_asking_for_many_names_is_not_limited() {
        let rl = RateLimiter::new(limits(200, 2), 3);
        let resolver = ip("203.0.113.53");
        for i in 0..5000 {
            let name = format!("client{i}");
            for qtype in [1, 28] {
                assert_eq!(
                    rl.check(resolver, &answer(&name, qtype), 9),
                    Verdict::Send,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn nxdomain_is_keyed_by_zone_and_errors_by_class() {
        let rl = RateLimiter::new(limits(3, 0), 11);
        let src = ip("192.0.2.9");
        let zone = name_hash(b"\x03vpn\x07example\x03net\x00");
        let nx = ResponseKey {
            class: ResponseClass::NxDomain,
            qtype: 1,
            name: zone,
        };
        // Random names under one zone share the zone's bucket (the qtype does not matter).
        let verdicts: Vec<Verdict> = (0..5)
            .map(|i| rl.check(src, &ResponseKey { qtype: i, ..nx }, 1))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 3);
        // Errors for any name share one bucket, apart from answers.
        let err = |n| ResponseKey {
            class: ResponseClass::Error,
            qtype: 1,
            name: n,
        };
        let verdicts: Vec<Verdict> = (0..5).map(|i| rl.check(src, &err(i), 1)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 3);
        assert_eq!(rl.check(src, &answer("alice", 1), 1), Verdict::Send);
    }

    #[test]
    fn callers_a_tick_apart_do_not_reset_each_other() {
        // Worker A has seen second 11, worker B still reads 10: B's checks count in A's
        // bucket instead of starting it over, so the pair cannot exceed the rate together.
        let rl = RateLimiter::new(limits(10, 0), 5);
        let src = ip("192.0.2.1");
        let k = answer("alice", 1);
        let sent = (0..100)
            .filter(|i| rl.check(src, &k, if i % 2 == 0 { 11 } else { 10 }) == Verdict::Send)
            .count();
        assert_eq!(sent, 10);
    }

    #[test]
    fn v6_prefixes_and_off() {
        let mut l = limits(1, 0);
        l.nxdomains = 0;
        let rl = RateLimiter::new(l, 0);
        let k = answer("a", 1);
        assert_eq!(rl.check(ip("2001:db8:0:1::1"), &k, 7), Verdict::Send);
        assert_eq!(rl.check(ip("2001:db8:0:ff::2"), &k, 7), Verdict::Drop);
        assert_eq!(rl.check(ip("2001:db8:0:100::1"), &k, 7), Verdict::Send);
        // A class with rate 0 is not limited.
        let nx = ResponseKey {
            class: ResponseClass::NxDomain,
            qtype: 0,
            name: 1,
        };
        for _ in 0..100 {
            assert_eq!(rl.check(ip("2001:db8::1"), &nx, 7), Verdict::Send);
        }
        let off = RateLimiter::new(limits(0, 2), 0);
        assert!(!off.enabled());
        for _ in 0..100 {
            assert_eq!(off.check(ip("192.0.2.1"), &k, 1), Verdict::Send);
        }
    }
}
