//! Response rate limiting per source prefix (/24 for IPv4, /56 for IPv6 by default), with
//! slip, as NSD and BIND do it: each prefix may receive `rate` responses per second; beyond
//! that, every `slip`-th response goes out empty with TC set (a real client retries over TCP,
//! a spoofed victim receives nothing large) and the rest are dropped. TCP is never limited.
//!
//! Pure: the time (whole seconds) is an argument. One limiter is shared by all UDP workers
//! (the kernel spreads a prefix's packets over the workers' sockets by source port, so per-worker
//! limiters would either loosen the limit for floods or tighten it for one resolver). Each bucket
//! is one atomic word, so sharing costs a compare-and-swap per limited response. Memory is
//! bounded: a fixed table of buckets indexed by a hash of the prefix; prefixes that collide share
//! a bucket within a second, which can only make limiting stricter for that second.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Buckets per limiter: 64k buckets of 8 bytes.
const BUCKETS: usize = 1 << 16;

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

/// A bucket packs the second (upper 32 bits, wrapping) and the count in it (lower 32 bits).
fn pack(second: u64, count: u32) -> u64 {
    ((second & 0xFFFF_FFFF) << 32) | u64::from(count)
}

/// A rate limiter shared by every UDP worker.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    slip: u32,
    v4_mask: u32,
    v6_mask: u128,
    buckets: Vec<AtomicU64>,
    slipped: AtomicU32,
}

impl RateLimiter {
    /// A limiter allowing `rate` responses per second per prefix (0: unlimited).
    pub fn new(rate: u32, slip: u32, v4_prefix: u8, v6_prefix: u8) -> Self {
        let v4_mask = u32::MAX
            .checked_shl(32 - u32::from(v4_prefix.min(32)))
            .unwrap_or(0);
        let v6_mask = u128::MAX
            .checked_shl(128 - u32::from(v6_prefix.min(128)))
            .unwrap_or(0);
        Self {
            rate,
            slip,
            v4_mask,
            v6_mask,
            buckets: if rate == 0 {
                Vec::new()
            } else {
                (0..BUCKETS).map(|_| AtomicU64::new(0)).collect()
            },
            slipped: AtomicU32::new(0),
        }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.rate > 0
    }

    fn key(&self, src: IpAddr) -> u128 {
        match src {
            // IPv4 in its IPv4-mapped IPv6 form, so the families never share a key.
            IpAddr::V4(a) => u128::from(u32::from(a) & self.v4_mask) | (0xFFFFu128 << 32),
            IpAddr::V6(a) => u128::from(a) & self.v6_mask,
        }
    }

    /// Decides one response to `src` at `now` (seconds).
    pub fn check(&self, src: IpAddr, now: u64) -> Verdict {
        if self.rate == 0 {
            return Verdict::Send;
        }
        let key = self.key(src);
        let h = (key as u64 ^ (key >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bucket = &self.buckets[(h >> 48) as usize & (BUCKETS - 1)];
        let second = now & 0xFFFF_FFFF;
        // Prefixes colliding on a bucket in the same second share its count.
        let mut current = bucket.load(Ordering::Relaxed);
        let count = loop {
            let count = if current >> 32 == second {
                (current as u32).saturating_add(1)
            } else {
                1
            };
            match bucket.compare_exchange_weak(
                current,
                pack(second, count),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break count,
                Err(actual) => current = actual,
            }
        };
        if count <= self.rate {
            return Verdict::Send;
        }
        if self.slip == 0 {
            return Verdict::Drop;
        }
        let slipped = self.slipped.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if slipped.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_prefix_with_slip() {
        let rl = RateLimiter::new(5, 2, 24, 56);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_prefix: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| rl.check(if i % 2 == 0 { a } else { same_prefix }, 100))
            .collect();
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(
            verdicts[5..]
                .iter()
                .filter(|v| **v == Verdict::Slip)
                .count(),
            2
        );
        assert!(verdicts[5..].iter().all(|v| *v != Verdict::Send));
        assert_eq!(rl.check(other, 100), Verdict::Send);
        // Next second: a fresh allowance.
        assert_eq!(rl.check(a, 101), Verdict::Send);
    }

    #[test]
    fn v6_prefixes_and_off() {
        let rl = RateLimiter::new(1, 0, 24, 56);
        assert_eq!(
            rl.check("2001:db8:0:1::1".parse().unwrap(), 7),
            Verdict::Send
        );
        assert_eq!(
            rl.check("2001:db8:0:ff::2".parse().unwrap(), 7),
            Verdict::Drop
        );
        assert_eq!(
            rl.check("2001:db8:0:100::1".parse().unwrap(), 7),
            Verdict::Send
        );
        let off = RateLimiter::new(0, 2, 24, 56);
        for _ in 0..100 {
            assert_eq!(off.check("192.0.2.1".parse().unwrap(), 1), Verdict::Send);
        }
    }
}
