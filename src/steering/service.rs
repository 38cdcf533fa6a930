//! The service name (`gw.<zone>`): one appliance per query, chosen at random in proportion to
//! `capacity * (1 - risk)` among the active appliances below the threshold (or, when every
//! candidate is at or above it, among all active ones, so that the name never goes dark while
//! an appliance is up). Draining and down appliances are never candidates.
//!
//! The randomness is an argument ([`WeightedSet::pick`] takes any 32-bit value; the DNS server
//! passes bits of the query id), so answers are reproducible in tests.

/// Weight resolution: a risk-free appliance of capacity 1 weighs this much.
const SCALE: f64 = 1000.0;

/// A candidate for the service name.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<T> {
    /// What is answered (e.g. the appliance's address).
    pub item: T,
    /// Relative capacity (1..=1,000,000).
    pub capacity: u32,
    /// Combined risk in [0, 1].
    pub risk: f64,
}

/// Items with cumulative weights, ready for picking.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSet<T> {
    items: Vec<(T, u64)>,
    total: u64,
}

impl<T> Default for WeightedSet<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            total: 0,
        }
    }
}

impl<T> WeightedSet<T> {
    /// Builds the set from active candidates (the caller filters out draining and down ones).
    pub fn build(candidates: Vec<Candidate<T>>, threshold: f64) -> Self {
        let any_safe = candidates.iter().any(|c| c.risk < threshold);
        let mut items = Vec::with_capacity(candidates.len());
        let mut total = 0u64;
        for c in candidates {
            if any_safe && c.risk >= threshold {
                continue;
            }
            let w = (f64::from(c.capacity) * (1.0 - c.risk.clamp(0.0, 1.0)) * SCALE).round();
            // Every candidate keeps a sliver of weight: a fully at-risk appliance is still
            // better than no answer when nothing else is up.
            let w = (w as u64).max(1);
            total += w;
            items.push((c.item, total));
        }
        Self { items, total }
    }

    /// Whether there is nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item whose weight range contains `entropy` scaled to the total.
    pub fn pick(&self, entropy: u32) -> Option<&T> {
        if self.total == 0 {
            return None;
        }
        let point = ((u128::from(entropy) * u128::from(self.total)) >> 32) as u64;
        let i = self.items.partition_point(|(_, cum)| *cum <= point);
        self.items.get(i).map(|(t, _)| t)
    }

    /// Every item with its share of the total weight.
    pub fn shares(&self) -> impl Iterator<Item = (&T, f64)> {
        let mut prev = 0;
        self.items.iter().map(move |(t, cum)| {
            let w = cum - prev;
            prev = *cum;
            (t, w as f64 / self.total as f64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(item: &'static str, capacity: u32, risk: f64) -> Candidate<&'static str> {
        Candidate {
            item,
            capacity,
            risk,
        }
    }

    #[test]
    fn proportional_to_capacity_and_safety() {
        let set = WeightedSet::build(
            vec![c("a", 100, 0.0), c("b", 300, 0.0), c("x", 500, 0.9)],
            0.7,
        );
        let mut counts = [0u32; 2];
        for e in 0..4096u32 {
            match *set.pick(e << 20).unwrap() {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                other => panic!("at-risk {other} picked"),
            }
        }
        assert_eq!(counts, [1024, 3072]);
    }

    #[test]
    fn all_at_risk_falls_back() {
        let set = WeightedSet::build(vec![c("a", 100, 0.9), c("b", 100, 0.95)], 0.7);
        assert_eq!(set.shares().count(), 2);
        assert!(WeightedSet::<&str>::build(vec![], 0.7).pick(7).is_none());
    }

    /// A case proptest once found (many large capacities, all at zero risk).
    #[test]
    fn pick_with_large_capacities() {
        let caps = [
            337918, 277801, 298876, 279398, 510479, 156380, 817694, 755486, 298210, 710805, 485306,
        ];
        let cands = caps
            .iter()
            .map(|cap| Candidate {
                item: *cap,
                capacity: *cap,
                risk: 0.0,
            })
            .collect();
        let set = WeightedSet::build(cands, 0.7);
        assert!(set.pick(3_742_983_523).is_some());
    }

    proptest! {
        #[test]
        fn pick_always_in_range(caps in proptest::collection::vec((1u32..1_000_000, 0.0..=1.0f64), 1..20), e in any::<u32>()) {
            let cands = caps.iter().map(|(cap, r)| Candidate { item: *cap, capacity: *cap, risk: *r }).collect();
            let set = WeightedSet::build(cands, 0.7);
            prop_assert!(set.pick(e).is_some());
        }
    }
}
