//! Pure lag and state rules for `db replication status` and `serve`'s metrics: times are
//! arguments (milliseconds since the epoch, as read from the databases), nothing here reads a
//! clock.

use serde::Serialize;

/// Longest expected gap between two heartbeats of a live region: writers beat every second,
/// and a beat less than half a second after the last one is skipped (see
/// [`super::heartbeat`]), so a gap up to about 1 s is normal; 1.5 s leaves room for a busy
/// machine.
pub const MAX_BEAT_GAP_MS: i64 = 1_500;

/// Replication lag of the last heartbeat a subscriber holds from a publishing region, in
/// milliseconds:
/// - `applied_at - beat_at`: how late that beat arrived (both clocks are databases' clocks:
///   the publisher's and the subscriber's; on one machine they are the same clock, across
///   machines their skew adds to the figure);
/// - but at least `now - beat_at - MAX_BEAT_GAP_MS`: when the next beat is overdue, the
///   subscriber is at least that far behind (this also grows when no process of the publishing
///   region writes heartbeats, which status says apart).
///
/// `applied_at` is `None` for a row copied by the initial table sync before the first
/// replicated beat: then only the overdue rule applies.
pub fn lag_ms(beat_at_ms: i64, applied_at_ms: Option<i64>, now_ms: i64) -> i64 {
    let arrived = applied_at_ms.map_or(0, |a| a - beat_at_ms);
    let overdue = now_ms - beat_at_ms - MAX_BEAT_GAP_MS;
    arrived.max(overdue).max(0)
}

/// State of one subscription, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Connected, applying changes, lag under the threshold.
    Streaming,
    /// Copying the initial rows, or behind by more than the threshold.
    CatchingUp,
    /// Enabled, but no apply worker runs: the publisher cannot be reached, or applying fails
    /// (and is retried).
    Down,
    /// Disabled (by an operator, or by an error with `disable_on_error`): nothing replicates
    /// until it is enabled again.
    Disabled,
    /// The subscription does not exist on its subscriber.
    Missing,
    /// The subscriber could not be reached, so nothing is known.
    Unknown,
}

impl SubscriptionState {
    /// The word `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::CatchingUp => "catching up",
            Self::Down => "down",
            Self::Disabled => "disabled",
            Self::Missing => "missing",
            Self::Unknown => "unknown",
        }
    }
}

/// What is known of a subscription on its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionFacts {
    /// `pg_subscription.subenabled`.
    pub enabled: bool,
    /// Whether its apply worker runs (`pg_stat_subscription.pid`).
    pub worker_running: bool,
    /// Whether every table finished its initial copy (`pg_subscription_rel` all `r`).
    pub tables_ready: bool,
    /// Lag from heartbeats, if a heartbeat of the publisher is here.
    pub lag_ms: Option<i64>,
    /// WAL the publisher holds that the subscriber has not confirmed, if known.
    pub bytes_behind: Option<i64>,
}

/// The state of a subscription from its facts; behind means lag above `threshold_ms` or more
/// than `bytes_threshold` of WAL unconfirmed.
pub fn state(
    facts: SubscriptionFacts,
    threshold_ms: i64,
    bytes_threshold: i64,
) -> SubscriptionState {
    if !facts.enabled {
        SubscriptionState::Disabled
    } else if !facts.worker_running {
        SubscriptionState::Down
    } else if !facts.tables_ready
        || facts.lag_ms.is_some_and(|l| l > threshold_ms)
        || facts.bytes_behind.is_some_and(|b| b > bytes_threshold)
    {
        SubscriptionState::CatchingUp
    } else {
        SubscriptionState::Streaming
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_arrival_delay_until_the_next_beat_is_overdue() {
        // Arrived 20 ms after it was written, read 300 ms later: 20 ms.
        assert_eq!(lag_ms(1_000, Some(1_020), 1_320), 20);
        // No newer beat for 5 s: at least 5 s - 1.5 s behind.
        assert_eq!(lag_ms(1_000, Some(1_020), 6_000), 3_500);
        // Copied by the initial sync, fresh: 0.
        assert_eq!(lag_ms(1_000, None, 1_100), 0);
        // A subscriber clock behind the publisher's never gives a negative lag.
        assert_eq!(lag_ms(1_000, Some(990), 1_000), 0);
    }

    #[test]
    fn states() {
        let ok = SubscriptionFacts {
            enabled: true,
            worker_running: true,
            tables_ready: true,
            lag_ms: Some(10),
            bytes_behind: Some(100),
        };
        assert_eq!(state(ok, 1000, 1 << 24), SubscriptionState::Streaming);
        let f = |g: fn(&mut SubscriptionFacts)| {
            let mut x = ok;
            g(&mut x);
            state(x, 1000, 1 << 24)
        };
        assert_eq!(f(|x| x.enabled = false), SubscriptionState::Disabled);
        assert_eq!(f(|x| x.worker_running = false), SubscriptionState::Down);
        assert_eq!(f(|x| x.tables_ready = false), SubscriptionState::CatchingUp);
        assert_eq!(f(|x| x.lag_ms = Some(5000)), SubscriptionState::CatchingUp);
        assert_eq!(
            f(|x| x.bytes_behind = Some(1 << 30)),
            SubscriptionState::CatchingUp
        );
        assert_eq!(f(|x| x.lag_ms = None), SubscriptionState::Streaming);
    }
}
