//! A short-lived copy of a read-mostly view shared by every request (the fleet behind
//! `GET /api/v1/appliances`: appliances with client counts, current scores and latest health,
//! three queries), so that N requests a second cost about one load a second rather than N.
//!
//! Rules:
//! - **Fresh for [`FRESH_FOR`]** after the load that made it *started*: served as is.
//! - **Stale while refreshing:** older than that but younger than [`SERVE_STALE_FOR`], the copy
//!   is served at once and one refresh starts in the background.
//! - **Single flight:** at most one load runs at a time; a request that must wait for data
//!   waits for that load instead of starting its own.
//! - **Writes through this process are seen by the next read:** a write calls
//!   [`ViewCache::invalidate`] after it commits; a copy whose load started before the last
//!   invalidation is never served again, so the next request waits for a new load. Writes by
//!   other processes (the CLI, another `serve`) show within [`FRESH_FOR`] plus one load.
//! - A failed load is not cached: the requests that waited for it get its error (one load per
//!   failure, not one per waiting request) and the next request tries again; a stale copy stops
//!   being served after [`SERVE_STALE_FOR`], so a database outage is reported, not hidden.
//!
//! The decision is the pure [`plan`]; [`ViewCache`] is the shell around it (locks, the
//! background task, the clock).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a copy is served without asking the database again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long a copy may still be served while a refresh runs (and while refreshes fail).
pub const SERVE_STALE_FOR: Duration = Duration::from_secs(5);

/// What a read does with the copy it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Serve the copy.
    Serve,
    /// Serve the copy and start a background refresh, unless a load is already running.
    ServeAndRefresh,
    /// No copy may be served: wait for a load that starts after this read arrived.
    Wait,
}

/// The copy's facts as [`plan`] needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFacts {
    /// Time since the load that made it started.
    pub age: Duration,
    /// The invalidation count when that load started.
    pub generation: u64,
}

/// How long copies live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Served as is while younger than this.
    pub fresh_for: Duration,
    /// Served while refreshing while younger than this.
    pub serve_stale_for: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            fresh_for: FRESH_FOR,
            serve_stale_for: SERVE_STALE_FOR,
        }
    }
}

/// Decides what a read does, given the copy (if any) and the number of invalidations so far.
pub fn plan(copy: Option<CopyFacts>, generation: u64, life: Lifetimes) -> Plan {
    let Some(copy) = copy else {
        return Plan::Wait;
    };
    if copy.generation != generation {
        return Plan::Wait;
    }
    let age = copy.age;
    if age < life.fresh_for {
        Plan::Serve
    } else if age < life.serve_stale_for {
        Plan::ServeAndRefresh
    } else {
        Plan::Wait
    }
}

/// The cached value with its facts.
struct Copy<T> {
    value: Arc<T>,
    /// When its load started.
    started: Instant,
    /// The invalidation count when its load started.
    generation: u64,
}

impl<T> Copy<T> {
    fn facts(&self, now: Instant) -> CopyFacts {
        CopyFacts {
            age: now.saturating_duration_since(self.started),
            generation: self.generation,
        }
    }
}

/// What the lock guards.
struct State<T, E> {
    /// The last successful load.
    copy: Option<Copy<T>>,
    /// Invalidations so far.
    generation: u64,
    /// Loads finished so far.
    loads_ended: u64,
    /// The last failed load: its number (in order of ending) and error.
    failure: Option<(u64, E)>,
}

/// A shared copy of one view; see the module doc for the rules.
pub struct ViewCache<T, E> {
    /// Copy, generation and the last failure (held only for short, non-async steps).
    state: Mutex<State<T, E>>,
    /// Held by the one running load (single flight).
    loading: Arc<tokio::sync::Mutex<()>>,
    /// Loads run, for `/metrics` and the tests.
    loads: AtomicU64,
    /// How long copies live.
    life: Lifetimes,
}

impl<T, E> std::fmt::Debug for ViewCache<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCache")
            .field("loads", &self.loads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T, E> Default for ViewCache<T, E> {
    fn default() -> Self {
        Self::new(Lifetimes::default())
    }
}

impl<T, E> ViewCache<T, E> {
    /// An empty cache whose copies live as `life` says.
    pub fn new(life: Lifetimes) -> Self {
        Self {
            state: Mutex::new(State {
                copy: None,
                generation: 0,
                loads_ended: 0,
                failure: None,
            }),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            loads: AtomicU64::new(0),
            life,
        }
    }
}

impl<T, E> ViewCache<T, E>
where
    T: Send + Sync + 'static,
    E: Clone + std::fmt::Display + Send + 'static,
{
    /// Loads run so far (each a database read of the whole view).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Forgets the copy: the next read waits for a load that starts after this call. Call it
    /// after every write that changes the view has committed.
    pub fn invalidate(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.copy = None;
    }

    /// The view, from the copy or from `load` (run at most once at a time across all callers;
    /// it may run in the background after this call returns, hence `'static`).
    pub async fn get<F, Fut>(self: &Arc<Self>, load: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (plan, copy, arrived_after) = {
            let s = self.lock();
            let now = Instant::now();
            let facts = s.copy.as_ref().map(|c| c.facts(now));
            let value = s.copy.as_ref().map(|c| Arc::clone(&c.value));
            (plan(facts, s.generation, self.life), value, s.loads_ended)
        };
        match (plan, copy) {
            (Plan::Serve, Some(value)) => Ok(value),
            (Plan::ServeAndRefresh, Some(value)) => {
                if let Ok(guard) = Arc::clone(&self.loading).try_lock_owned() {
                    let me = Arc::clone(self);
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = me.load_now(load).await {
                            tracing::warn!(error = %e, "background refresh of a cached view failed");
                        }
                    });
                }
                Ok(value)
            }
            _ => self.wait_for_load(load, arrived_after).await,
        }
    }

    /// Waits for the running load (if any), then serves what it made if the plan allows, or
    /// its error if it failed after this read arrived (`arrived_after` loads had ended then);
    /// otherwise loads.
    async fn wait_for_load<F, Fut>(&self, load: F, arrived_after: u64) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _guard = self.loading.lock().await;
        {
            let s = self.lock();
            if let Some(c) = &s.copy
                && plan(Some(c.facts(Instant::now())), s.generation, self.life) != Plan::Wait
            {
                return Ok(Arc::clone(&c.value));
            }
            // A load failed while this read waited: that is the answer (a failure is never
            // stale data), rather than one more load per waiting request.
            if let Some((n, e)) = &s.failure
                && *n > arrived_after
            {
                return Err(e.clone());
            }
        }
        self.load_now(load).await
    }

    /// Runs `load` (the caller holds `loading`) and stores the result.
    async fn load_now<F, Fut>(&self, load: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let generation = self.lock().generation;
        let started = Instant::now();
        self.loads.fetch_add(1, Ordering::Relaxed);
        let result = load().await;
        let mut s = self.lock();
        s.loads_ended += 1;
        match result {
            Ok(value) => {
                let value = Arc::new(value);
                s.failure = None;
                // Invalidated while loading: the result may predate the write, so it is
                // returned to this caller (who arrived before the write) but not kept.
                if s.generation == generation {
                    s.copy = Some(Copy {
                        value: Arc::clone(&value),
                        started,
                        generation,
                    });
                }
                Ok(value)
            }
            Err(e) => {
                s.failure = Some((s.loads_ended, e.clone()));
                Err(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T, E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let facts = |ms: u64, generation: u64| {
            Some(CopyFacts {
                age: Duration::from_millis(ms),
                generation,
            })
        };
        let fresh = FRESH_FOR.as_millis() as u64;
        let stale = SERVE_STALE_FOR.as_millis() as u64;
        let life = Lifetimes::default();
        let plan = |copy, generation| plan(copy, generation, life);
        assert_eq!(plan(None, 0), Plan::Wait);
        assert_eq!(plan(facts(0, 3), 3), Plan::Serve);
        assert_eq!(plan(facts(fresh - 1, 3), 3), Plan::Serve);
        assert_eq!(plan(facts(fresh, 3), 3), Plan::ServeAndRefresh);
        assert_eq!(plan(facts(stale - 1, 3), 3), Plan::ServeAndRefresh);
        assert_eq!(plan(facts(stale, 3), 3), Plan::Wait);
        // Invalidated since the load started: never served, however young.
        assert_eq!(plan(facts(0, 3), 4), Plan::Wait);
    }

    type Cache = ViewCache<u64, String>;

    /// A load that counts itself and takes `ms` milliseconds.
    fn slow_load(
        counter: &Arc<AtomicU64>,
        ms: u64,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>
    + Send
    + 'static {
        let counter = Arc::clone(counter);
        move || {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(counter.fetch_add(1, Ordering::SeqCst) + 1)
            })
        }
    }

    #[tokio::test]
    async fn fifty_concurrent_reads_cause_one_load() {
        let cache = Arc::new(Cache::default());
        let counter = Arc::new(AtomicU64::new(0));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let cache = Arc::clone(&cache);
            let load = slow_load(&counter, 50);
            reads.spawn(async move { cache.get(load).await });
        }
        while let Some(r) = reads.join_next().await {
            assert_eq!(*r.unwrap().unwrap(), 1);
        }
        assert_eq!(counter.load(Ordering::SeqCst), 1);
        assert_eq!(cache.loads(), 1);
    }

    #[tokio::test]
    async fn invalidation_makes_the_next_read_load() {
        let cache = Arc::new(Cache::default());
        let counter = Arc::new(AtomicU64::new(0));
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 1);
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 1);
        cache.invalidate();
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_write_is_not_kept() {
        let cache = Arc::new(Cache::default());
        let counter = Arc::new(AtomicU64::new(0));
        let first = {
            let cache = Arc::clone(&cache);
            let load = slow_load(&counter, 100);
            tokio::spawn(async move { cache.get(load).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.invalidate();
        // The read that arrived before the write gets the load it waited for...
        assert_eq!(*first.await.unwrap().unwrap(), 1);
        // ...but the next read does not.
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn stale_copies_are_served_while_one_refresh_runs() {
        let life = Lifetimes {
            fresh_for: Duration::from_millis(20),
            serve_stale_for: Duration::from_secs(60),
        };
        let cache = Arc::new(Cache::new(life));
        let counter = Arc::new(AtomicU64::new(0));
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 1);
        tokio::time::sleep(life.fresh_for).await;
        for _ in 0..20 {
            // Served at once from the stale copy; one refresh starts.
            assert_eq!(*cache.get(slow_load(&counter, 100)).await.unwrap(), 1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*cache.get(slow_load(&counter, 0)).await.unwrap(), 2);
        assert_eq!(cache.loads(), 2);
    }

    #[tokio::test]
    async fn waiters_share_one_failure() {
        let cache = Arc::new(ViewCache::<u64, String>::default());
        let loads = Arc::new(AtomicU64::new(0));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let cache = Arc::clone(&cache);
            let loads = Arc::clone(&loads);
            reads.spawn(async move {
                cache
                    .get(move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u64, _>("database down".to_owned())
                    })
                    .await
            });
        }
        while let Some(r) = reads.join_next().await {
            assert_eq!(r.unwrap().unwrap_err(), "database down");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
