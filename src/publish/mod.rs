//! The publisher: turns steering inputs into the [`ServedZones`] DNS answers from. It runs the
//! steering engine on every change of the inputs and whenever the engine asks to be woken
//! (hold-down expiry, advisory edges), builds a new [`ServedZones`], swaps it in atomically,
//! and hands the changed answers to the audit writer without waiting for it.
//!
//! It sits between [`crate::steering`] and [`crate::dns`], apart from both: it runs the engine
//! and reads `[steering]`, which the DNS server never needs; DNS only answers from what it
//! builds.
//!
//! [`snapshot_writer`] saves each publication to local disk, for restarts, in the file format of
//! [`snapshot_file`] (which `serve` also reads back at start).

pub mod snapshot_file;
pub mod snapshot_writer;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{EcsRegion, SteeringSection};
use crate::dns::stats::ApplianceSlots;
use crate::dns::zone::{ClientTable, Endpoint, ServedZones, Service, ServiceSet, Statics};
use crate::domain::{ApplianceState, Probability, RegionId};
use crate::risk::live::reload::ModelSource;
use crate::steering::service::{Candidate, WeightedSet};
use crate::steering::{ApplianceInput, Engine, Inputs, Policy};
use crate::store::audit::AuditQueue;

use snapshot_writer::Published;

/// What the publisher reports to metrics and health checks.
#[derive(Debug, Default)]
pub struct PublishStatus {
    /// Versions of the served zones published from the database.
    generation: AtomicU64,
    /// Clients in the served zones in force.
    clients: AtomicU64,
    /// Answer changes so far.
    changes: AtomicU64,
    /// Whether answers from the database (or restored from disk) are being served.
    loaded: AtomicBool,
    /// Whether the server started from the snapshot saved on disk.
    restored: AtomicBool,
    /// Snapshots saved to disk.
    file_writes: AtomicU64,
    /// Failed attempts to save the snapshot to disk.
    file_failures: AtomicU64,
    /// Size of the last snapshot saved to disk, in bytes.
    file_bytes: AtomicU64,
    /// The steering threshold in force (`f64` bits): the configured one, or the model's.
    steering_threshold: AtomicU64,
}

impl PublishStatus {
    /// Whether answers from the database (or restored from disk) are being served.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Records that this server started from the snapshot saved on disk.
    pub fn mark_restored(&self) {
        self.restored.store(true, Ordering::Relaxed);
    }

    /// The steering threshold in force.
    pub fn steering_threshold(&self) -> f64 {
        f64::from_bits(self.steering_threshold.load(Ordering::Relaxed))
    }

    /// Records the steering threshold in force.
    pub fn set_steering_threshold(&self, threshold: f64) {
        self.steering_threshold
            .store(threshold.to_bits(), Ordering::Relaxed);
    }
}

/// Publication of the served zones and their copy on disk, for `/metrics`.
impl crate::metrics::Collector for PublishStatus {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counter(
            "shadowsteer_snapshots_published",
            "DNS snapshots built and swapped in.",
            self.generation.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "shadowsteer_snapshot_restored",
            "1 when this server started from the snapshot saved on disk.",
            u64::from(self.restored.load(Ordering::Relaxed)),
        )?;
        out.counters(
            "shadowsteer_snapshot_file_writes",
            "Saves of the snapshot to disk, by outcome.",
            "outcome",
            [
                ("ok", self.file_writes.load(Ordering::Relaxed)),
                ("failed", self.file_failures.load(Ordering::Relaxed)),
            ],
        )?;
        out.gauge(
            "shadowsteer_snapshot_file_bytes",
            "Size of the last snapshot saved to disk.",
            self.file_bytes.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "shadowsteer_steered_clients",
            "Clients in the served snapshot.",
            self.clients.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_answer_changes",
            "Changes of a client's answer.",
            self.changes.load(Ordering::Relaxed),
        )
    }
}

/// Builds and publishes the served zones.
pub struct Publisher {
    /// Steering state and the thresholds in force (the service name uses the threshold too).
    pub engine: Engine,
    /// Configuration-derived zone data.
    pub statics: Arc<Statics>,
    /// Client subnets mapped to regions.
    pub ecs_regions: Vec<EcsRegion>,
    /// Metrics slots of appliances.
    pub slots: Arc<Mutex<ApplianceSlots>>,
    /// Where the served zones go.
    pub target: Arc<ArcSwap<ServedZones>>,
    /// Where changes go (the audit writer).
    pub audit: AuditQueue,
    /// Status for metrics.
    pub status: Arc<PublishStatus>,
    /// The last client table with the appliance and client tables it was built from: reused
    /// while no answer changes (start with `None`).
    pub last_table: Option<LastTable>,
    /// Where each publication goes to be saved on disk (see [`snapshot_writer`]), if anywhere.
    pub saved: Option<watch::Sender<Option<Published>>>,
    /// The model whose operating threshold the unset thresholds follow, when one scores.
    pub follow: Option<FollowModel>,
}

/// Thresholds left out of `[steering]` follow the risk model's operating threshold, also after
/// a reload: a model with another threshold means other scores, and steering on the old
/// threshold would move clients too early or too late.
pub struct FollowModel {
    /// The `[steering]` section (its unset thresholds derive from the model's).
    pub steering: SteeringSection,
    /// The model in force.
    pub model: Arc<ModelSource>,
    /// The model threshold the policy in force was built from.
    pub threshold: f64,
}

/// A client table and what it was built from.
pub struct LastTable {
    appliances: Arc<BTreeMap<crate::domain::ApplianceId, ApplianceInput>>,
    clients: Arc<BTreeMap<crate::domain::ClientId, crate::steering::ClientInput>>,
    table: Arc<ClientTable>,
}

fn service_set<'a>(
    appliances: impl Iterator<Item = &'a ApplianceInput>,
    risks: &std::collections::HashMap<crate::domain::ApplianceId, Probability>,
    slots: &mut ApplianceSlots,
    threshold: f64,
) -> ServiceSet {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in appliances.filter(|a| a.state == ApplianceState::Active) {
        let c = Candidate {
            item: Endpoint {
                ip: a.endpoint.ip(),
                port: a.endpoint.port(),
                slot: slots.slot(a.id.as_str()),
            },
            capacity: a.capacity,
            risk: risks.get(&a.id).map_or(0.0, |r| r.get()),
        };
        match a.endpoint.ip() {
            IpAddr::V4(_) => v4.push(c),
            IpAddr::V6(_) => v6.push(c),
        }
    }
    ServiceSet {
        v4: WeightedSet::build(v4, threshold),
        v6: WeightedSet::build(v6, threshold),
    }
}

impl Publisher {
    /// Takes on the thresholds of a reloaded model (see [`FollowModel`]).
    fn follow_model(&mut self) {
        let Some(f) = &mut self.follow else { return };
        let threshold = f.model.current().threshold;
        if threshold == f.threshold {
            return;
        }
        f.threshold = threshold;
        match Policy::from_config(&f.steering, Some(threshold)) {
            Ok(policy) if policy != self.engine.policy() => {
                tracing::info!(
                    model_threshold = threshold,
                    threshold = policy.threshold(),
                    hysteresis = policy.hysteresis(),
                    weight_low = policy.weight_low(),
                    weight_high = policy.weight_high(),
                    "steering policy follows the reloaded model"
                );
                self.engine.set_policy(policy);
                self.status.set_steering_threshold(policy.threshold());
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                model_threshold = threshold,
                error = %e,
                "the reloaded model's threshold makes no valid steering policy with [steering]; the thresholds in force stay"
            ),
        }
    }

    /// Evaluates `inputs` at `now`, publishes the result, queues the changes for audit.
    /// Returns when to evaluate again without new inputs.
    pub fn publish(&mut self, inputs: &Inputs, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.follow_model();
        let started = std::time::Instant::now();
        let eval = self.engine.evaluate(inputs, now);
        let evaluated = started.elapsed();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = self.last_table.as_ref().filter(|l| {
            eval.changes.is_empty()
                && Arc::ptr_eq(&l.appliances, &inputs.appliances)
                && Arc::ptr_eq(&l.clients, &inputs.clients)
        });
        let clients = match reusable {
            Some(l) => l.table.clone(),
            None => {
                let table = Arc::new(self.client_table(inputs, &mut slots));
                self.last_table = Some(LastTable {
                    appliances: inputs.appliances.clone(),
                    clients: inputs.clients.clone(),
                    table: table.clone(),
                });
                table
            }
        };
        let threshold = self.engine.policy().threshold();
        let all = service_set(
            inputs.appliances.values(),
            &eval.risks,
            &mut slots,
            threshold,
        );
        let mut region_index: BTreeMap<&RegionId, Option<usize>> = BTreeMap::new();
        let mut regions = Vec::new();
        for e in &self.ecs_regions {
            region_index.entry(&e.region).or_insert_with(|| {
                let set = service_set(
                    inputs.appliances.values().filter(|a| a.region == e.region),
                    &eval.risks,
                    &mut slots,
                    threshold,
                );
                if set.v4.is_empty() && set.v6.is_empty() {
                    None
                } else {
                    regions.push(set);
                    Some(regions.len() - 1)
                }
            });
        }
        let subnets = self
            .ecs_regions
            .iter()
            .map(|e| (e.prefix, region_index.get(&e.region).copied().flatten()))
            .collect();
        drop(slots);
        let served = ServedZones {
            statics: self.statics.clone(),
            clients,
            service: Service {
                all,
                subnets,
                regions,
            },
            loaded: true,
        };
        let n_clients = served.clients.len() as u64;
        if let Some(saved) = &self.saved {
            saved.send_replace(Some(Published {
                inputs: inputs.clone(),
                table: served.clients.clone(),
            }));
        }
        self.target.store(Arc::new(served));
        tracing::debug!(
            clients = n_clients,
            evaluate_us = evaluated.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "snapshot published"
        );
        self.status.generation.fetch_add(1, Ordering::Relaxed);
        self.status.clients.store(n_clients, Ordering::Relaxed);
        self.status.loaded.store(true, Ordering::Relaxed);
        if !eval.changes.is_empty() {
            self.status
                .changes
                .fetch_add(eval.changes.len() as u64, Ordering::Relaxed);
            if eval.changes.len() <= 20 {
                for c in &eval.changes {
                    tracing::info!(client = %c.client, from = ?c.from.as_ref().map(|a| a.as_str()), to = ?c.to.as_ref().map(|a| a.as_str()), reason = %c.reason, "answer changed");
                }
            } else {
                tracing::info!(changes = eval.changes.len(), "answers changed");
            }
        }
        for c in eval.changes {
            self.audit.offer(c);
        }
        eval.next_wakeup
    }

    /// The steered answer of every client. The id index is reused while the set of clients is
    /// the one it was built for; then only the answer vector is new.
    fn client_table(&self, inputs: &Inputs, slots: &mut ApplianceSlots) -> ClientTable {
        let endpoints: std::collections::HashMap<&crate::domain::ApplianceId, Endpoint> = inputs
            .appliances
            .values()
            .map(|a| {
                let ep = Endpoint {
                    ip: a.endpoint.ip(),
                    port: a.endpoint.port(),
                    slot: slots.slot(a.id.as_str()),
                };
                (&a.id, ep)
            })
            .collect();
        // Index i is the client's position in the (ordered) client map.
        let index = match &self.last_table {
            Some(l) if Arc::ptr_eq(&l.clients, &inputs.clients) => l.table.index().clone(),
            _ => Arc::new(
                inputs
                    .clients
                    .keys()
                    .enumerate()
                    .map(|(i, id)| {
                        let i = u32::try_from(i).unwrap_or(u32::MAX);
                        (id.as_str().as_bytes().to_vec().into_boxed_slice(), i)
                    })
                    .collect(),
            ),
        };
        let answers = inputs
            .clients
            .keys()
            .map(|id| {
                self.engine
                    .assignment(id)
                    .and_then(|a| endpoints.get(a))
                    .copied()
            })
            .collect();
        let standby = inputs
            .clients
            .iter()
            .map(|(id, c)| {
                crate::steering::standby(c, self.engine.assignment(id), &inputs.appliances)
                    .and_then(|a| endpoints.get(a))
                    .copied()
            })
            .collect();
        ClientTable::new(index, answers).with_standby(standby)
    }

    /// Publishes every new version of the inputs, and again at each wake-up and each reloaded
    /// model (whose threshold the policy may follow; the reload itself may change no input:
    /// scores that do not move write nothing), until shutdown.
    pub async fn run(
        mut self,
        mut inputs: watch::Receiver<Option<Arc<Inputs>>>,
        shutdown: CancellationToken,
    ) {
        let mut wakeup: Option<DateTime<Utc>> = None;
        let mut models = self.follow.as_ref().map(|f| f.model.subscribe());
        loop {
            let sleep = wakeup.map(|t| {
                (t - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_millis(1)
            });
            let reloaded = async {
                match models.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = inputs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                live = reloaded => {
                    if !live {
                        models = None;
                    }
                }
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
            let current = inputs.borrow_and_update().clone();
            if let Some(current) = current {
                wakeup = self.publish(&current, Utc::now());
            }
        }
    }
}
