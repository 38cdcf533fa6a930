//! The I/O shell of `db replication setup` and `remove-region`: connect to every region, check
//! everything that can refuse the command before changing anything, migrate, observe, plan
//! ([`super::plan`]) and carry the plan out in order.
//!
//! Every refusal (an unreachable database, an id given twice, a database of another region, a
//! schema this binary does not know, a region not named) happens before the first change, so a
//! refused command leaves every region as it was.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;

use super::plan::{self, Action, ObservedRegion, ObservedSubscription};
use super::{RegionSpec, ReplicationError, TABLES, check_unique, scrub};
use crate::store::target::redact_url;
use crate::store::{self, MIGRATOR};

/// A region's database, connected.
struct Region {
    spec: RegionSpec,
    pool: PgPool,
}

impl Region {
    fn id(&self) -> &str {
        self.spec.id.as_str()
    }

    /// Maps a failed statement to an error naming the region, without any password.
    fn failed(&self, what: impl Into<String>, e: &sqlx::Error) -> ReplicationError {
        ReplicationError::Database {
            region: self.id().to_owned(),
            what: what.into(),
            cause: scrub(
                &e.to_string(),
                &[&self.spec.url, &self.spec.replication_url],
            ),
        }
    }
}

/// Connects to `spec`'s database (an error is an input error: the URL is wrong or the database
/// is away).
async fn connect(spec: &RegionSpec) -> Result<Region, ReplicationError> {
    match store::connect(&spec.url, 2).await {
        Ok(pool) => Ok(Region {
            spec: spec.clone(),
            pool,
        }),
        Err(e) => Err(ReplicationError::Unreachable {
            region: spec.id.to_string(),
            url: redact_url(&spec.url),
            cause: scrub(&e.to_string(), &[&spec.url]),
        }),
    }
}

/// Connects to every region; the first that fails is the error (the others are closed).
async fn connect_all(specs: &[RegionSpec]) -> Result<Vec<Region>, ReplicationError> {
    let mut regions = Vec::with_capacity(specs.len());
    for spec in specs {
        match connect(spec).await {
            Ok(r) => regions.push(r),
            Err(e) => {
                close(regions).await;
                return Err(e);
            }
        }
    }
    Ok(regions)
}

async fn close(regions: Vec<Region>) {
    for r in regions {
        r.pool.close().await;
    }
}

/// Checks that the regions are distinct databases, know no migration this binary lacks, and
/// do not belong to another region. Reads only.
async fn precheck(regions: &[Region]) -> Result<(), ReplicationError> {
    let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let mut identities: Vec<(String, String)> = Vec::new();
    for r in regions {
        // The cluster's identifier and the database: two URLs (through a proxy, by another
        // name) reaching one database must not become two regions.
        let identity: Option<(String,)> = sqlx::query_as(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/' || current_database()",
        )
        .fetch_optional(&r.pool)
        .await
        .ok()
        .flatten();
        if let Some((identity,)) = identity {
            if let Some((other, _)) = identities.iter().find(|(_, i)| *i == identity) {
                return Err(ReplicationError::SameDatabase(
                    other.clone(),
                    r.id().to_owned(),
                ));
            }
            identities.push((r.id().to_owned(), identity));
        }
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&r.pool)
                .await
                .map_err(|e| r.failed("reading the schema version", &e))?;
        if has_table {
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
                    .fetch_all(&r.pool)
                    .await
                    .map_err(|e| r.failed("reading the schema version", &e))?;
            let unknown: Vec<String> = applied
                .iter()
                .filter(|v| !known.contains(v))
                .map(i64::to_string)
                .collect();
            if !unknown.is_empty() {
                return Err(ReplicationError::UnknownMigrations {
                    region: r.id().to_owned(),
                    versions: unknown.join(", "),
                });
            }
        }
        if let Some(actual) = local_region(r).await?
            && actual != r.id()
        {
            return Err(plan::PlanError::ForeignDatabase {
                given: r.id().to_owned(),
                actual,
            }
            .into());
        }
    }
    Ok(())
}

/// The database's `local_region`, if the table exists and holds a row.
async fn local_region(r: &Region) -> Result<Option<String>, ReplicationError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public.local_region') IS NOT NULL")
        .fetch_one(&r.pool)
        .await
        .map_err(|e| r.failed("reading local_region", &e))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT region FROM public.local_region")
        .fetch_optional(&r.pool)
        .await
        .map_err(|e| r.failed("reading local_region", &e))
}

/// Migrates every region in the order given, then checks they ended at one version.
async fn migrate_all(
    regions: &[Region],
    progress: &mut dyn FnMut(String),
) -> Result<(), ReplicationError> {
    let mut versions = Vec::new();
    for r in regions {
        let applied =
            store::migrate(&r.pool)
                .await
                .map_err(|source| ReplicationError::Migrate {
                    region: r.id().to_owned(),
                    source,
                })?;
        for m in &applied {
            progress(format!(
                "{}: applied migration {} {}",
                r.id(),
                m.version,
                m.description
            ));
        }
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM public._sqlx_migrations WHERE success")
                .fetch_one(&r.pool)
                .await
                .map_err(|e| r.failed("reading the schema version", &e))?;
        versions.push((r.id().to_owned(), latest.unwrap_or(0)));
    }
    if let Some((first, v0)) = versions.first()
        && let Some((other, v)) = versions.iter().find(|(_, v)| v != v0)
    {
        return Err(ReplicationError::SchemaMismatch(
            first.clone(),
            *v0,
            other.clone(),
            *v,
        ));
    }
    Ok(())
}

/// Creates the ownership trigger on every replicated table that lacks it: a table created by a
/// migration numbered before the one that brings the trigger function (risk_history) gets it
/// here. Changes nothing where it exists.
async fn ensure_owner_triggers(r: &Region) -> Result<(), ReplicationError> {
    for table in TABLES {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('public.' || $1) AND tgname = $1 || '_owner')",
        )
        .bind(table)
        .fetch_one(&r.pool)
        .await
        .map_err(|e| r.failed("reading triggers", &e))?;
        if !exists {
            let sql = format!(
                "CREATE TRIGGER {table}_owner BEFORE INSERT OR UPDATE OR DELETE ON public.{table} FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only()"
            );
            exec(r, "creating the ownership trigger", sql).await?;
        }
    }
    Ok(())
}

/// What `r`'s database holds now; `others` are the regions whose rows to look for.
async fn observe(r: &Region, others: &[String]) -> Result<ObservedRegion, ReplicationError> {
    let fail = |e: sqlx::Error| r.failed("reading replication state", &e);
    let local_region = local_region(r).await?;
    let pubs: Vec<(String, Vec<String>)> = sqlx::query_as(
        r"SELECT p.pubname::text,
                 COALESCE(array_agg(pt.tablename::text) FILTER (WHERE pt.tablename IS NOT NULL), '{}')
          FROM pg_publication p
          LEFT JOIN pg_publication_tables pt ON pt.pubname = p.pubname
          WHERE p.pubname LIKE 'ss\_pub\_%'
          GROUP BY p.pubname",
    )
    .fetch_all(&r.pool)
    .await
    .map_err(fail)?;
    let mut observed = ObservedRegion {
        local_region,
        ..ObservedRegion::default()
    };
    for (name, tables) in pubs {
        match plan::parse_publication_name(&name) {
            Some(region) if region == r.id() => {
                observed.publication_tables = Some(tables.into_iter().collect());
            }
            _ => observed.foreign_publications.push(name),
        }
    }
    let subs: Vec<(String, bool)> = sqlx::query_as(
        r"SELECT s.subname::text, s.subenabled
          FROM pg_subscription s
          JOIN pg_database d ON d.oid = s.subdbid AND d.datname = current_database()
          WHERE s.subname LIKE 'ss\_sub\_%'",
    )
    .fetch_all(&r.pool)
    .await
    .map_err(fail)?;
    for (name, enabled) in subs {
        if let Some((from, to)) = plan::parse_subscription_name(&name)
            && to == r.id()
        {
            observed
                .subscriptions
                .insert(from.clone(), ObservedSubscription { from, enabled });
        }
    }
    let slots: Vec<String> = sqlx::query_scalar(
        r"SELECT slot_name::text FROM pg_replication_slots
          WHERE slot_name LIKE 'ss\_sub\_%' AND database = current_database()",
    )
    .fetch_all(&r.pool)
    .await
    .map_err(fail)?;
    observed.slots = slots.into_iter().collect();
    for other in others {
        if other == r.id() {
            continue;
        }
        for table in TABLES {
            // Served by each table's primary key (region first): one index probe.
            let sql = format!("SELECT EXISTS (SELECT 1 FROM public.{table} WHERE region = $1)");
            let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(other)
                .fetch_one(&r.pool)
                .await
                .map_err(fail)?;
            if found {
                observed.holds_rows_of.insert(other.clone());
                break;
            }
        }
    }
    Ok(observed)
}

/// `CREATE PUBLICATION` / `ALTER PUBLICATION ... SET TABLE` list of `region`'s tables, each
/// filtered to its rows. Region ids are validated DNS labels, safe inside a literal.
fn table_list(region: &str) -> String {
    TABLES
        .iter()
        .map(|t| format!("public.{t} WHERE (region = '{region}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn exec(r: &Region, what: &str, sql: String) -> Result<(), ReplicationError> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&r.pool)
        .await
        .map(|_| ())
        .map_err(|e| r.failed(what, &e))
}

/// Carries out one action on its region.
async fn execute(
    action: &Action,
    regions: &BTreeMap<String, &Region>,
) -> Result<(), ReplicationError> {
    let Some(r) = regions.get(action.region()) else {
        // The planner only targets regions it observed.
        return Ok(());
    };
    match action {
        Action::SetLocalRegion { region } => {
            let done = sqlx::query(
                "INSERT INTO public.local_region (region) VALUES ($1) ON CONFLICT (one) DO NOTHING",
            )
            .bind(region)
            .execute(&r.pool)
            .await
            .map_err(|e| r.failed("setting local_region", &e))?;
            if done.rows_affected() == 0 && local_region(r).await?.as_deref() != Some(region) {
                return Err(ReplicationError::Database {
                    region: region.clone(),
                    what: "setting local_region".into(),
                    cause: "another region was set meanwhile".into(),
                });
            }
            sqlx::query("INSERT INTO public.regions (region) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(region)
                .execute(&r.pool)
                .await
                .map_err(|e| r.failed("recording the region", &e))?;
            Ok(())
        }
        Action::CreatePublication { region } => {
            let sql = format!(
                "CREATE PUBLICATION \"{}\" FOR TABLE {} WITH (publish = 'insert, update, delete')",
                plan::publication_name(region),
                table_list(region)
            );
            exec(r, "creating the publication", sql).await
        }
        Action::SetPublicationTables { region } => {
            let sql = format!(
                "ALTER PUBLICATION \"{}\" SET TABLE {}",
                plan::publication_name(region),
                table_list(region)
            );
            exec(r, "updating the publication", sql).await
        }
        Action::CreateSubscription {
            from,
            to,
            copy_data,
        } => {
            let Some(publisher) = regions.get(from.as_str()) else {
                return Ok(());
            };
            // Deliberately without disable_on_error: on Postgres 15 a lost publisher connection
            // is an error too, and would disable the subscription at every partition (README,
            // "Regions"). Errors are retried; status shows them.
            let sql = format!(
                "CREATE SUBSCRIPTION \"{}\" CONNECTION {} PUBLICATION \"{}\" WITH (copy_data = {copy_data}, streaming = on)",
                plan::subscription_name(from, to),
                literal(&publisher.spec.replication_url),
                plan::publication_name(from),
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&r.pool)
                .await
                .map(|_| ())
                .map_err(|e| ReplicationError::Database {
                    region: to.clone(),
                    what: format!("creating subscription to {from}"),
                    cause: scrub(
                        &e.to_string(),
                        &[&publisher.spec.replication_url, &publisher.spec.url],
                    ),
                })
        }
        Action::RefreshSubscription { from, to } => {
            let sql = format!(
                "ALTER SUBSCRIPTION \"{}\" REFRESH PUBLICATION WITH (copy_data = true)",
                plan::subscription_name(from, to)
            );
            exec(r, "refreshing the subscription", sql).await
        }
        Action::EnableSubscription { from, to } => {
            let sql = format!(
                "ALTER SUBSCRIPTION \"{}\" ENABLE",
                plan::subscription_name(from, to)
            );
            exec(r, "enabling the subscription", sql).await
        }
        Action::DropSubscription {
            from,
            to,
            publisher_reachable,
        } => {
            let name = plan::subscription_name(from, to);
            if *publisher_reachable
                && exec(
                    r,
                    "dropping the subscription",
                    format!("DROP SUBSCRIPTION \"{name}\""),
                )
                .await
                .is_ok()
            {
                return Ok(());
            }
            // The publisher cannot be reached from here or from the subscriber: detach the slot
            // (left on the publisher; dropped there by DropSlot when it is reachable).
            exec(
                r,
                "disabling the subscription",
                format!("ALTER SUBSCRIPTION \"{name}\" DISABLE"),
            )
            .await?;
            exec(
                r,
                "detaching the subscription's slot",
                format!("ALTER SUBSCRIPTION \"{name}\" SET (slot_name = NONE)"),
            )
            .await?;
            exec(
                r,
                "dropping the subscription",
                format!("DROP SUBSCRIPTION \"{name}\""),
            )
            .await?;
            if let Some(p) = regions.get(from.as_str()) {
                drop_slot(p, &name).await?;
            }
            Ok(())
        }
        Action::DropSlot { slot, .. } => drop_slot(r, slot).await,
        Action::DropPublication { region } => {
            let sql = format!(
                "DROP PUBLICATION IF EXISTS \"{}\"",
                plan::publication_name(region)
            );
            exec(r, "dropping the publication", sql).await
        }
    }
}

/// Drops a replication slot on `r`, ending the walsender that still uses it first (a removed
/// region's subscriber may still be connected).
async fn drop_slot(r: &Region, slot: &str) -> Result<(), ReplicationError> {
    for _ in 0..50 {
        let active: Option<Option<i32>> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&r.pool)
                .await
                .map_err(|e| r.failed("reading replication slots", &e))?;
        match active {
            None => return Ok(()),
            Some(Some(pid)) => {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&r.pool)
                    .await
                    .map_err(|e| r.failed("ending the slot's walsender", &e))?;
            }
            Some(None) => {
                // An error means it was taken again between the two statements: retry.
                if sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(&r.pool)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(ReplicationError::Database {
        region: r.id().to_owned(),
        what: format!("dropping replication slot {slot}"),
        cause: "it stayed in use for 5 s".into(),
    })
}

/// What `setup` or `remove-region` did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One line per change, in order; empty when nothing had to change.
    pub changes: Vec<String>,
}

/// `db replication setup`: makes every region in `specs` replicate to every other. Reports
/// each migration and change through `progress` as it happens.
pub async fn setup(
    specs: &[RegionSpec],
    progress: &mut dyn FnMut(String),
) -> Result<Outcome, ReplicationError> {
    if specs.is_empty() {
        return Err(ReplicationError::NoRegions);
    }
    check_unique(specs)?;
    let ids: Vec<String> = specs.iter().map(|s| s.id.to_string()).collect();
    // Names are checked before connecting: a refusal changes nothing.
    plan::plan_setup(&ids, &BTreeMap::new(), TABLES)?;
    let regions = connect_all(specs).await?;
    let result = setup_connected(&regions, &ids, progress).await;
    close(regions).await;
    result
}

async fn setup_connected(
    regions: &[Region],
    ids: &[String],
    progress: &mut dyn FnMut(String),
) -> Result<Outcome, ReplicationError> {
    precheck(regions).await?;
    // Refusals the planner finds in what is already set up (a region subscribing to one not
    // named) come before migrating, too.
    let mut observed = BTreeMap::new();
    for r in regions {
        if local_region(r).await?.is_some() {
            observed.insert(r.id().to_owned(), observe(r, ids).await?);
        }
    }
    plan::plan_setup(ids, &observed, TABLES)?;
    migrate_all(regions, progress).await?;
    for r in regions {
        ensure_owner_triggers(r).await?;
    }
    let mut observed = BTreeMap::new();
    for r in regions {
        observed.insert(r.id().to_owned(), observe(r, ids).await?);
    }
    let actions = plan::plan_setup(ids, &observed, TABLES)?;
    run_actions(regions, &actions, progress).await
}

async fn run_actions(
    regions: &[Region],
    actions: &[Action],
    progress: &mut dyn FnMut(String),
) -> Result<Outcome, ReplicationError> {
    let by_id: BTreeMap<String, &Region> = regions.iter().map(|r| (r.id().to_owned(), r)).collect();
    let mut outcome = Outcome::default();
    for action in actions {
        execute(action, &by_id).await?;
        let line = action.describe();
        progress(line.clone());
        outcome.changes.push(line);
    }
    Ok(outcome)
}

/// `db replication remove-region`: takes `removed` out of replication in every region of
/// `specs` (which may include the removed region itself, reachable or not). The removed
/// region's rows stay in the others as read-only copies.
pub async fn remove_region(
    removed: &str,
    specs: &[RegionSpec],
    progress: &mut dyn FnMut(String),
) -> Result<Outcome, ReplicationError> {
    if specs.is_empty() {
        return Err(ReplicationError::NoRegions);
    }
    check_unique(specs)?;
    let mut regions = Vec::new();
    let mut unreachable = BTreeSet::new();
    for spec in specs {
        match connect(spec).await {
            Ok(r) => regions.push(r),
            // The region being removed may be gone for good.
            Err(_) if spec.id.as_str() == removed => {
                unreachable.insert(removed.to_owned());
            }
            Err(e) => {
                close(regions).await;
                return Err(e);
            }
        }
    }
    let result = remove_connected(removed, &regions, &unreachable, progress).await;
    close(regions).await;
    result
}

async fn remove_connected(
    removed: &str,
    regions: &[Region],
    unreachable: &BTreeSet<String>,
    progress: &mut dyn FnMut(String),
) -> Result<Outcome, ReplicationError> {
    let ids: Vec<String> = regions.iter().map(|r| r.id().to_owned()).collect();
    let mut observed = BTreeMap::new();
    for r in regions {
        if local_region(r).await?.is_some() {
            observed.insert(r.id().to_owned(), observe(r, &ids).await?);
        }
    }
    let known = observed.contains_key(removed)
        || observed
            .values()
            .any(|o| o.subscriptions.contains_key(removed));
    if !known {
        // Already removed (a second run), or never set up: nothing to do.
        return Ok(Outcome::default());
    }
    let actions = plan::plan_remove(removed, &observed, unreachable);
    run_actions(regions, &actions, progress).await
}
