//! What a probe stream saw, as it happened: every probe sent, every first reply (with the send
//! time of the probe it answers) and every endpoint change. The helper's own report has only
//! totals; a program embedding the helper (the demo) needs the timeline to say what each event
//! of a scenario cost. Recording is a push under a lock, a few per probe.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

/// The record of one client's probe stream.
#[derive(Debug, Default)]
pub struct Timeline {
    inner: Mutex<Recorded>,
}

/// A copy of what was recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// When each probe was sent, in order.
    pub sent: Vec<Instant>,
    /// First replies: (when the probe was sent, when its reply arrived), in arrival order.
    pub replies: Vec<(Instant, Instant)>,
    /// Endpoints adopted, in order (DNS answers and takeovers).
    pub moves: Vec<(Instant, SocketAddr)>,
}

impl Timeline {
    fn with(&self, f: impl FnOnce(&mut Recorded)) {
        // A poisoned lock only means another recorder panicked; the data is still appendable.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g);
    }

    /// A probe went out.
    pub fn sent(&self, at: Instant) {
        self.with(|r| r.sent.push(at));
    }

    /// The first reply to a probe sent at `sent` arrived at `at`.
    pub fn reply(&self, sent: Instant, at: Instant) {
        self.with(|r| r.replies.push((sent, at)));
    }

    /// The tunnel now goes to `to`.
    pub fn moved(&self, at: Instant, to: SocketAddr) {
        self.with(|r| r.moves.push((at, to)));
    }

    /// Everything so far.
    pub fn snapshot(&self) -> Recorded {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The endpoint in use now and the arrival of the last reply (cheap, for live views).
    pub fn now(&self) -> (Option<SocketAddr>, Option<Instant>) {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (g.moves.last().map(|m| m.1), g.replies.last().map(|r| r.1))
    }
}
