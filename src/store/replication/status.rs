//! `db replication status`: every subscription between the regions given, from their catalogs
//! (state, workers, initial copy), their replication slots (bytes behind) and the replicated
//! heartbeats (lag). Reads only. A region that cannot be reached is reported, not fatal.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use super::lag::{self, SubscriptionFacts, SubscriptionState};
use super::{RegionSpec, ReplicationError, check_unique, plan, scrub};
use crate::store::{self, target::redact_url};

/// Lag above which a subscription counts as catching up, in `status`.
pub const LAG_THRESHOLD_MS: i64 = 1_000;
/// Unconfirmed WAL above which a subscription counts as catching up, in `status`.
pub const BYTES_THRESHOLD: i64 = 16 * 1024 * 1024;

/// One subscription, as `status --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Subscription name (also its slot's name on the publisher).
    pub name: String,
    /// Publishing region.
    pub from: String,
    /// Subscribing region.
    pub to: String,
    /// What it is doing.
    pub state: SubscriptionState,
    /// Lag from heartbeats in milliseconds; `None` without a heartbeat of `from` at `to`.
    pub lag_ms: Option<i64>,
    /// WAL the publisher holds that the subscriber has not confirmed; `None` when the
    /// publisher or the slot cannot be read.
    pub bytes_behind: Option<i64>,
    /// Why it is not streaming, when that is known.
    pub last_error: Option<String>,
    /// The exact command that repairs it, for a disabled or missing subscription.
    pub repair: Option<String>,
    /// Anything else worth knowing (e.g. no heartbeats from the publisher).
    pub note: Option<String>,
}

/// One region, as `status --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RegionStatus {
    /// The region.
    pub id: String,
    /// Whether its database answered.
    pub reachable: bool,
    /// Its `local_region` (None: never set up).
    pub local_region: Option<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Every region given.
    pub regions: Vec<RegionStatus>,
    /// Every subscription between them (expected ones that do not exist are `missing`).
    pub subscriptions: Vec<SubscriptionStatus>,
}

impl Status {
    /// Whether every region answered and every subscription streams or catches up.
    pub fn healthy(&self) -> bool {
        self.regions.iter().all(|r| r.reachable)
            && self.subscriptions.iter().all(|s| {
                matches!(
                    s.state,
                    SubscriptionState::Streaming | SubscriptionState::CatchingUp
                )
            })
    }
}

/// A subscription row of the subscriber's catalogs.
#[derive(Debug, sqlx::FromRow)]
struct SubRow {
    name: String,
    enabled: bool,
    running: bool,
    ready: bool,
    apply_errors: i64,
    sync_errors: i64,
}

/// What one reachable region's database says.
#[derive(Debug, Default)]
struct RegionFacts {
    local_region: Option<String>,
    subs: Vec<SubRow>,
    /// Slot name -> unconfirmed bytes.
    slots: BTreeMap<String, i64>,
    /// Publishing region -> lag.
    lags: BTreeMap<String, i64>,
}

async fn read_facts(pool: &PgPool) -> Result<RegionFacts, sqlx::Error> {
    let local_region: Option<String> =
        if sqlx::query_scalar::<_, bool>("SELECT to_regclass('public.local_region') IS NOT NULL")
            .fetch_one(pool)
            .await?
        {
            sqlx::query_scalar("SELECT region FROM public.local_region")
                .fetch_optional(pool)
                .await?
        } else {
            None
        };
    let subs: Vec<SubRow> = sqlx::query_as(
        r"SELECT s.subname::text AS name, s.subenabled AS enabled,
                 EXISTS (SELECT 1 FROM pg_stat_subscription st
                         WHERE st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL) AS running,
                 NOT EXISTS (SELECT 1 FROM pg_subscription_rel r
                             WHERE r.srsubid = s.oid AND r.srsubstate <> 'r') AS ready,
                 COALESCE(ss.apply_error_count, 0) AS apply_errors,
                 COALESCE(ss.sync_error_count, 0) AS sync_errors
          FROM pg_subscription s
          JOIN pg_database d ON d.oid = s.subdbid AND d.datname = current_database()
          LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid
          WHERE s.subname LIKE 'ss\_sub\_%'
          ORDER BY s.subname",
    )
    .fetch_all(pool)
    .await?;
    let slots: Vec<(String, Option<i64>)> = sqlx::query_as(
        r"SELECT slot_name::text,
                 pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
          FROM pg_replication_slots
          WHERE slot_name LIKE 'ss\_sub\_%' AND database = current_database()",
    )
    .fetch_all(pool)
    .await?;
    let lags = if local_region.is_some() {
        super::heartbeat::lags(pool)
            .await?
            .into_iter()
            .map(|l| (l.region, l.lag_ms))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(RegionFacts {
        local_region,
        subs,
        slots: slots
            .into_iter()
            .map(|(n, b)| (n, b.unwrap_or(0).max(0)))
            .collect(),
        lags,
    })
}

/// Reads the status of replication between the regions of `specs`.
pub async fn status(specs: &[RegionSpec]) -> Result<Status, ReplicationError> {
    if specs.is_empty() {
        return Err(ReplicationError::NoRegions);
    }
    check_unique(specs)?;
    let mut regions = Vec::new();
    let mut facts: BTreeMap<String, RegionFacts> = BTreeMap::new();
    for spec in specs {
        let id = spec.id.to_string();
        let read = match store::connect(&spec.url, 1).await {
            Ok(pool) => {
                let f = read_facts(&pool).await;
                pool.close().await;
                f.map_err(|e| scrub(&e.to_string(), &[&spec.url]))
            }
            Err(e) => Err(format!(
                "cannot connect to {}: {}",
                redact_url(&spec.url),
                scrub(&e.to_string(), &[&spec.url])
            )),
        };
        match read {
            Ok(f) => {
                regions.push(RegionStatus {
                    id: id.clone(),
                    reachable: true,
                    local_region: f.local_region.clone(),
                    error: None,
                });
                facts.insert(id, f);
            }
            Err(error) => regions.push(RegionStatus {
                id,
                reachable: false,
                local_region: None,
                error: Some(error),
            }),
        }
    }
    let ids: Vec<String> = specs.iter().map(|s| s.id.to_string()).collect();
    Ok(Status {
        subscriptions: subscriptions(&ids, &facts),
        regions,
    })
}

/// Every subscription on the reachable regions, and every expected pair among `ids` missing.
fn subscriptions(ids: &[String], facts: &BTreeMap<String, RegionFacts>) -> Vec<SubscriptionStatus> {
    let mut out = Vec::new();
    for to in ids {
        let Some(f) = facts.get(to) else {
            for from in ids.iter().filter(|f| *f != to) {
                out.push(blank(from, to, SubscriptionState::Unknown, None));
            }
            continue;
        };
        let mut seen = Vec::new();
        for sub in &f.subs {
            let Some((from, sub_to)) = plan::parse_subscription_name(&sub.name) else {
                continue;
            };
            if &sub_to != to {
                continue;
            }
            seen.push(from.clone());
            out.push(one(sub, &from, to, f, facts.get(&from)));
        }
        for from in ids.iter().filter(|x| *x != to && !seen.contains(x)) {
            out.push(blank(
                from,
                to,
                SubscriptionState::Missing,
                Some(
                    "run `shadowsteer db replication setup` with every region's --region"
                        .to_owned(),
                ),
            ));
        }
    }
    out
}

fn blank(
    from: &str,
    to: &str,
    state: SubscriptionState,
    repair: Option<String>,
) -> SubscriptionStatus {
    SubscriptionStatus {
        name: plan::subscription_name(from, to),
        from: from.to_owned(),
        to: to.to_owned(),
        state,
        lag_ms: None,
        bytes_behind: None,
        last_error: (state == SubscriptionState::Unknown)
            .then(|| format!("region {to} cannot be reached")),
        repair,
        note: None,
    }
}

fn one(
    sub: &SubRow,
    from: &str,
    to: &str,
    subscriber: &RegionFacts,
    publisher: Option<&RegionFacts>,
) -> SubscriptionStatus {
    let lag_ms = subscriber.lags.get(from).copied();
    let bytes_behind = publisher.and_then(|p| p.slots.get(&sub.name).copied());
    let state = lag::state(
        SubscriptionFacts {
            enabled: sub.enabled,
            worker_running: sub.running,
            tables_ready: sub.ready,
            lag_ms,
            bytes_behind,
        },
        LAG_THRESHOLD_MS,
        BYTES_THRESHOLD,
    );
    let errors = (sub.apply_errors > 0 || sub.sync_errors > 0).then(|| {
        format!(
            "{} apply and {} initial-copy errors counted (Postgres keeps the messages in region {to}'s server log)",
            sub.apply_errors, sub.sync_errors
        )
    });
    let last_error = match state {
        SubscriptionState::Down => Some(errors.unwrap_or_else(|| {
            format!("no apply worker is running: region {to} cannot reach region {from}'s database, or is retrying")
        })),
        SubscriptionState::Disabled => errors.or_else(|| Some("disabled".to_owned())),
        _ => None,
    };
    let repair = (state == SubscriptionState::Disabled).then(|| {
        format!(
            "on region {to}: ALTER SUBSCRIPTION \"{}\" ENABLE; (or rerun `shadowsteer db replication setup` with every region's --region)",
            sub.name
        )
    });
    let note = lag_ms.is_none().then(|| {
        format!(
            "no heartbeat from region {from} here yet: is a `serve` or an agent of {from} running?"
        )
    });
    SubscriptionStatus {
        name: sub.name.clone(),
        from: from.to_owned(),
        to: to.to_owned(),
        state,
        lag_ms,
        bytes_behind,
        last_error,
        repair,
        note,
    }
}
