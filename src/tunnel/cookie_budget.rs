//! Cookie replies per source address, bounded.
//!
//! Under handshake load every handshake message without a valid MAC2 earns a cookie reply. A
//! flood from one address would make the listener spend a send on each of its datagrams: that
//! halves how fast it drains its socket (so the kernel drops more of the real clients'
//! initiations) and reflects as many replies at whoever the source claims to be. A client needs
//! one cookie per handshake attempt (one per 5 s retransmit); an address shared by many clients
//! (a carrier-grade NAT) needs more, and Linux's WireGuard lets one address complete at most 20
//! handshakes per second under load anyway, so 50 cookie replies per address and second limit
//! no one that could use them. Beyond that the message is dropped unanswered and the client's
//! next attempt gets its cookie. Addresses (IPv4 /32, IPv6 /64) share buckets through a hash keyed at random per
//! process, so an attacker cannot aim at the bucket of a client it does not share an address
//! with.
//!
//! Pure: the caller passes the time.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Cookie replies per source address and second.
pub const PER_SECOND: u32 = 50;

/// Buckets shared by all source addresses.
pub const BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    used: u32,
}

/// How many cookie replies each source address may still get this second.
#[derive(Debug)]
pub struct CookieBudget {
    per_second: u32,
    hasher: RandomState,
    buckets: Box<[Bucket]>,
    epoch: Instant,
}

impl Default for CookieBudget {
    fn default() -> Self {
        Self::new(PER_SECOND, BUCKETS, Instant::now())
    }
}

impl CookieBudget {
    /// `per_second` replies per address and second over `buckets` shared buckets (at least
    /// one); seconds count from `epoch`.
    pub fn new(per_second: u32, buckets: usize, epoch: Instant) -> Self {
        Self {
            per_second,
            hasher: RandomState::new(),
            buckets: vec![Bucket::default(); buckets.max(1)].into_boxed_slice(),
            epoch,
        }
    }

    /// Whether `src` may get a cookie reply at `now`; counts it if so.
    pub fn allow(&mut self, now: Instant, src: IpAddr) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let slot = (self.hasher.hash_one(prefix(src)) as usize) % self.buckets.len();
        let bucket = &mut self.buckets[slot];
        if bucket.second != second {
            *bucket = Bucket { second, used: 0 };
        }
        if bucket.used >= self.per_second {
            return false;
        }
        bucket.used += 1;
        true
    }
}

/// The part of an address one sender controls: an IPv4 address, an IPv6 /64.
fn prefix(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_address_gets_its_budget_every_second() {
        let t0 = Instant::now();
        let mut b = CookieBudget::new(3, 64, t0);
        let flooder: IpAddr = "192.0.2.7".parse().unwrap();
        let allowed = (0..100).filter(|_| b.allow(t0, flooder)).count();
        assert_eq!(allowed, 3);
        assert!(!b.allow(t0 + Duration::from_millis(999), flooder));
        assert!(b.allow(t0 + Duration::from_secs(1), flooder));
    }

    #[test]
    fn a_flooder_does_not_spend_another_address_budget() {
        let t0 = Instant::now();
        // One bucket per address here (hash collisions aside, which a large table makes rare).
        let mut b = CookieBudget::new(2, 1 << 16, t0);
        let flooder: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..1000 {
            b.allow(t0, flooder);
        }
        let client: IpAddr = "198.51.100.20".parse().unwrap();
        assert!(b.allow(t0, client));
        assert!(b.allow(t0, client));
        assert!(!b.allow(t0, client));
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_budget() {
        let t0 = Instant::now();
        let mut b = CookieBudget::new(2, 1 << 16, t0);
        assert!(b.allow(t0, "2001:db8:1:2::1".parse().unwrap()));
        assert!(b.allow(t0, "2001:db8:1:2::ffff".parse().unwrap()));
        assert!(!b.allow(t0, "2001:db8:1:2:abcd::9".parse().unwrap()));
        assert!(b.allow(t0, "2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn a_single_bucket_still_works() {
        let t0 = Instant::now();
        let mut b = CookieBudget::new(1, 0, t0);
        assert!(b.allow(t0, "192.0.2.1".parse().unwrap()));
        assert!(!b.allow(t0, "192.0.2.2".parse().unwrap()));
    }
}
