//! The pure planner: from the regions wanted and what each region's database holds now, the
//! list of changes that makes replication match. No I/O: the shell ([`super::setup`]) observes
//! the databases, calls [`plan_setup`] or [`plan_remove`], and carries out the actions in the
//! order returned.
//!
//! Rules:
//! - every region has `local_region` set to its own id and one publication
//!   ([`publication_name`]) of its own rows on every table of [`super::TABLES`];
//! - every ordered pair (from, to) of distinct regions has one subscription on `to`
//!   ([`subscription_name`]) to `from`'s publication;
//! - a new subscription copies the existing rows (`copy_data`) unless the subscriber already
//!   holds rows of the publishing region (a subscription re-created after it was dropped): a
//!   second copy would stop on duplicate keys;
//! - a subscription that exists but is disabled is enabled again;
//! - nothing is ever dropped by `setup`: a region the databases know but the command does not
//!   name is an error, and `remove-region` is the only way out.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::RegionId;

/// Prefix of every object this module creates, so it never touches anything else.
pub const PREFIX: &str = "ss_";

/// Longest identifier Postgres keeps (NAMEDATALEN - 1); longer names are truncated silently,
/// which could make two names collide, so they are refused instead.
pub const MAX_NAME: usize = 63;

/// Name of `region`'s publication: `ss_pub_<region>`.
pub fn publication_name(region: &str) -> String {
    format!("{PREFIX}pub_{region}")
}

/// Name of the subscription on `to` to `from`'s publication: `ss_sub_<from>_<to>` (region ids
/// never contain `_`, so the name splits back unambiguously). Its replication slot on `from`
/// has the same name.
pub fn subscription_name(from: &str, to: &str) -> String {
    format!("{PREFIX}sub_{from}_{to}")
}

/// The (from, to) regions of a subscription name made by [`subscription_name`].
pub fn parse_subscription_name(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix("sub_")?;
    let (from, to) = rest.split_once('_')?;
    (RegionId::new(from).is_ok() && RegionId::new(to).is_ok())
        .then(|| (from.to_owned(), to.to_owned()))
}

/// The region of a publication name made by [`publication_name`].
pub fn parse_publication_name(name: &str) -> Option<String> {
    let region = name.strip_prefix(PREFIX)?.strip_prefix("pub_")?;
    RegionId::new(region).is_ok().then(|| region.to_owned())
}

/// A subscription as found on its subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSubscription {
    /// The publishing region (from the name).
    pub from: String,
    /// Whether it is enabled.
    pub enabled: bool,
}

/// What one region's database holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRegion {
    /// Its `local_region`, if set.
    pub local_region: Option<String>,
    /// Tables in its own publication, if the publication exists.
    pub publication_tables: Option<BTreeSet<String>>,
    /// Publications of ours for other regions (never expected; reported).
    pub foreign_publications: Vec<String>,
    /// Our subscriptions on it, by publishing region.
    pub subscriptions: BTreeMap<String, ObservedSubscription>,
    /// Our replication slots on it (subscribers' slots on this publisher), by name.
    pub slots: BTreeSet<String>,
    /// Other regions whose rows it holds in any replicated table.
    pub holds_rows_of: BTreeSet<String>,
}

/// One change, carried out on one region's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record the database's region in `local_region` (and its row in `regions`).
    SetLocalRegion {
        /// The region.
        region: String,
    },
    /// Create the region's publication of its own rows.
    CreatePublication {
        /// The region.
        region: String,
    },
    /// Bring the publication's table list up to date (a newer schema added a table).
    SetPublicationTables {
        /// The region.
        region: String,
    },
    /// Create the subscription on `to` to `from`.
    CreateSubscription {
        /// Publishing region.
        from: String,
        /// Subscribing region (where it is created).
        to: String,
        /// Copy the rows `from` holds now (false when `to` has them already).
        copy_data: bool,
    },
    /// Pick up tables added to `from`'s publication.
    RefreshSubscription {
        /// Publishing region.
        from: String,
        /// Subscribing region.
        to: String,
    },
    /// Enable a disabled subscription.
    EnableSubscription {
        /// Publishing region.
        from: String,
        /// Subscribing region.
        to: String,
    },
    /// Drop the subscription on `to` to `from`; when `from` cannot be reached its slot is
    /// detached first (and dropped on `from` by [`Action::DropSlot`] if it is reachable later).
    DropSubscription {
        /// Publishing region.
        from: String,
        /// Subscribing region.
        to: String,
        /// Whether the publisher can be reached (its slot is dropped with the subscription).
        publisher_reachable: bool,
    },
    /// Drop a replication slot left on `on` by a subscriber that is gone.
    DropSlot {
        /// The publishing region holding the slot.
        on: String,
        /// Slot name.
        slot: String,
    },
    /// Drop the region's publication.
    DropPublication {
        /// The region.
        region: String,
    },
}

impl Action {
    /// The region whose database the action changes.
    pub fn region(&self) -> &str {
        match self {
            Self::SetLocalRegion { region }
            | Self::CreatePublication { region }
            | Self::SetPublicationTables { region }
            | Self::DropPublication { region } => region,
            Self::CreateSubscription { to, .. }
            | Self::RefreshSubscription { to, .. }
            | Self::EnableSubscription { to, .. }
            | Self::DropSubscription { to, .. } => to,
            Self::DropSlot { on, .. } => on,
        }
    }

    /// One line saying what the action does (no connection strings).
    pub fn describe(&self) -> String {
        match self {
            Self::SetLocalRegion { region } => {
                format!("{region}: this database belongs to region {region} (local_region)")
            }
            Self::CreatePublication { region } => format!(
                "{region}: create publication {} of region {region}'s rows",
                publication_name(region)
            ),
            Self::SetPublicationTables { region } => format!(
                "{region}: update the table list of publication {}",
                publication_name(region)
            ),
            Self::CreateSubscription {
                from,
                to,
                copy_data,
            } => format!(
                "{to}: create subscription {} to {from}{}",
                subscription_name(from, to),
                if *copy_data {
                    " (copying its existing rows)"
                } else {
                    " (rows already here: no copy)"
                }
            ),
            Self::RefreshSubscription { from, to } => format!(
                "{to}: refresh subscription {} (new tables)",
                subscription_name(from, to)
            ),
            Self::EnableSubscription { from, to } => {
                format!("{to}: enable subscription {}", subscription_name(from, to))
            }
            Self::DropSubscription {
                from,
                to,
                publisher_reachable,
            } => format!(
                "{to}: drop subscription {}{}",
                subscription_name(from, to),
                if *publisher_reachable {
                    ""
                } else {
                    " (publisher unreachable: slot detached)"
                }
            ),
            Self::DropSlot { on, slot } => format!("{on}: drop replication slot {slot}"),
            Self::DropPublication { region } => {
                format!("{region}: drop publication {}", publication_name(region))
            }
        }
    }
}

/// Why a plan cannot be made; nothing has been changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A database already belongs to another region.
    #[error(
        "region {given}: that database already belongs to region {actual} (its local_region); give its own id or another database"
    )]
    ForeignDatabase {
        /// The id given on the command line.
        given: String,
        /// The id the database holds.
        actual: String,
    },
    /// A database replicates from a region the command does not name.
    #[error(
        "region {region} subscribes to region {other}, which is not among --region; name it too, or take it out with `shadowsteer db replication remove-region {other}`"
    )]
    UnlistedRegion {
        /// The region whose database has the subscription.
        region: String,
        /// The region not named.
        other: String,
    },
    /// Names derived from two ids would be longer than Postgres keeps.
    #[error(
        "region ids {from} and {to} are too long together for replication object names (at most {max} characters: {name})"
    )]
    NameTooLong {
        /// Publishing region.
        from: String,
        /// Subscribing region.
        to: String,
        /// The longest name allowed.
        max: usize,
        /// The name that would be made.
        name: String,
    },
}

/// Checks that every object name for `regions` fits.
fn check_names(regions: &[String]) -> Result<(), PlanError> {
    for from in regions {
        for to in regions {
            if from == to {
                continue;
            }
            let name = subscription_name(from, to);
            if name.len() > MAX_NAME {
                return Err(PlanError::NameTooLong {
                    from: from.clone(),
                    to: to.clone(),
                    max: MAX_NAME,
                    name,
                });
            }
        }
    }
    Ok(())
}

/// The actions that make `wanted` regions replicate to each other, given what each of their
/// databases holds (`observed`, keyed by region id; every wanted region must be present).
/// Order: every region's own objects first (local region, publication), then subscriptions,
/// so a publication always exists before anything subscribes to it. Empty: nothing to do.
pub fn plan_setup(
    wanted: &[String],
    observed: &BTreeMap<String, ObservedRegion>,
    tables: &[&str],
) -> Result<Vec<Action>, PlanError> {
    check_names(wanted)?;
    let wanted_set: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    let empty = ObservedRegion::default();
    let obs = |r: &str| observed.get(r).unwrap_or(&empty);
    for region in wanted {
        if let Some(actual) = &obs(region).local_region
            && actual != region
        {
            return Err(PlanError::ForeignDatabase {
                given: region.clone(),
                actual: actual.clone(),
            });
        }
        if let Some(other) = obs(region)
            .subscriptions
            .keys()
            .find(|from| !wanted_set.contains(from.as_str()))
        {
            return Err(PlanError::UnlistedRegion {
                region: region.clone(),
                other: other.clone(),
            });
        }
    }
    let table_set: BTreeSet<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let mut actions = Vec::new();
    let mut republished = BTreeSet::new();
    for region in wanted {
        let o = obs(region);
        if o.local_region.is_none() {
            actions.push(Action::SetLocalRegion {
                region: region.clone(),
            });
        }
        match &o.publication_tables {
            None => actions.push(Action::CreatePublication {
                region: region.clone(),
            }),
            Some(t) if *t != table_set => {
                actions.push(Action::SetPublicationTables {
                    region: region.clone(),
                });
                republished.insert(region.as_str());
            }
            Some(_) => {}
        }
    }
    for to in wanted {
        let o = obs(to);
        for from in wanted {
            if from == to {
                continue;
            }
            match o.subscriptions.get(from) {
                None => actions.push(Action::CreateSubscription {
                    from: from.clone(),
                    to: to.clone(),
                    copy_data: !o.holds_rows_of.contains(from),
                }),
                Some(s) => {
                    if !s.enabled {
                        actions.push(Action::EnableSubscription {
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                    if republished.contains(from.as_str()) {
                        actions.push(Action::RefreshSubscription {
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(actions)
}

/// The actions that take `removed` out of replication. `observed` holds every region the
/// command reached (the removed one too when it is reachable); `unreachable` names those it
/// could not reach. Subscriptions to `removed` are dropped everywhere (with the slot detached
/// when `removed` is unreachable); the removed region's own subscriptions and publication are
/// dropped when it is reachable; slots its subscriptions left on the others are dropped.
/// The removed region's rows stay where they are (read-only copies).
pub fn plan_remove(
    removed: &str,
    observed: &BTreeMap<String, ObservedRegion>,
    unreachable: &BTreeSet<String>,
) -> Vec<Action> {
    let removed_reachable = observed.contains_key(removed);
    let mut actions = Vec::new();
    for (region, o) in observed {
        if region == removed {
            continue;
        }
        if o.subscriptions.contains_key(removed) {
            actions.push(Action::DropSubscription {
                from: removed.to_owned(),
                to: region.clone(),
                publisher_reachable: removed_reachable,
            });
        }
    }
    if let Some(o) = observed.get(removed) {
        for from in o.subscriptions.keys() {
            actions.push(Action::DropSubscription {
                from: from.clone(),
                to: removed.to_owned(),
                publisher_reachable: observed.contains_key(from) && !unreachable.contains(from),
            });
        }
        if o.publication_tables.is_some() {
            actions.push(Action::DropPublication {
                region: removed.to_owned(),
            });
        }
    }
    // Slots of the removed region's subscriptions on the others: dropped with the subscription
    // when it could be dropped from a reachable removed region; otherwise left behind, and they
    // would hold WAL forever.
    for (region, o) in observed {
        if region == removed {
            continue;
        }
        let slot = subscription_name(region, removed);
        let dropped_with_subscription = observed
            .get(removed)
            .is_some_and(|r| r.subscriptions.contains_key(region));
        if o.slots.contains(&slot) && !dropped_with_subscription {
            actions.push(Action::DropSlot {
                on: region.clone(),
                slot,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &[&str] = &["appliances", "clients"];

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn set_up(region: &str, peers: &[&str]) -> ObservedRegion {
        ObservedRegion {
            local_region: Some(region.to_owned()),
            publication_tables: Some(TABLES.iter().map(|t| (*t).to_owned()).collect()),
            subscriptions: peers
                .iter()
                .map(|p| {
                    (
                        (*p).to_owned(),
                        ObservedSubscription {
                            from: (*p).to_owned(),
                            enabled: true,
                        },
                    )
                })
                .collect(),
            holds_rows_of: peers.iter().map(|p| (*p).to_owned()).collect(),
            slots: peers.iter().map(|p| subscription_name(region, p)).collect(),
            ..ObservedRegion::default()
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(subscription_name("eu", "us-east"), "ss_sub_eu_us-east");
        assert_eq!(
            parse_subscription_name("ss_sub_eu_us-east"),
            Some(("eu".into(), "us-east".into()))
        );
        assert_eq!(parse_subscription_name("ss_sub_eu"), None);
        assert_eq!(parse_subscription_name("other_sub"), None);
        assert_eq!(parse_publication_name("ss_pub_ap"), Some("ap".into()));
    }

    #[test]
    fn from_nothing_every_pair_copies() {
        let plan = plan_setup(&ids(&["eu", "us"]), &BTreeMap::new(), TABLES).unwrap();
        assert_eq!(
            plan,
            vec![
                Action::SetLocalRegion {
                    region: "eu".into()
                },
                Action::CreatePublication {
                    region: "eu".into()
                },
                Action::SetLocalRegion {
                    region: "us".into()
                },
                Action::CreatePublication {
                    region: "us".into()
                },
                Action::CreateSubscription {
                    from: "us".into(),
                    to: "eu".into(),
                    copy_data: true
                },
                Action::CreateSubscription {
                    from: "eu".into(),
                    to: "us".into(),
                    copy_data: true
                },
            ]
        );
    }

    #[test]
    fn second_run_is_empty() {
        let observed = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us"])),
            ("us".to_owned(), set_up("us", &["eu"])),
        ]);
        assert!(
            plan_setup(&ids(&["eu", "us"]), &observed, TABLES)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_third_region_touches_only_its_pairs() {
        let observed = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us"])),
            ("us".to_owned(), set_up("us", &["eu"])),
        ]);
        let plan = plan_setup(&ids(&["eu", "us", "ap"]), &observed, TABLES).unwrap();
        assert_eq!(plan.len(), 6, "{plan:#?}");
        for a in &plan {
            match a {
                Action::CreateSubscription {
                    from,
                    to,
                    copy_data,
                } => {
                    assert!(from == "ap" || to == "ap", "{a:?}");
                    assert!(copy_data);
                }
                Action::SetLocalRegion { region } | Action::CreatePublication { region } => {
                    assert_eq!(region, "ap")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_recreated_subscription_does_not_copy_twice_and_disabled_ones_are_enabled() {
        let mut eu = set_up("eu", &["us"]);
        eu.subscriptions.clear();
        let mut us = set_up("us", &["eu"]);
        us.subscriptions.get_mut("eu").unwrap().enabled = false;
        let observed = BTreeMap::from([("eu".to_owned(), eu), ("us".to_owned(), us)]);
        let plan = plan_setup(&ids(&["eu", "us"]), &observed, TABLES).unwrap();
        assert_eq!(
            plan,
            vec![
                Action::CreateSubscription {
                    from: "us".into(),
                    to: "eu".into(),
                    copy_data: false
                },
                Action::EnableSubscription {
                    from: "eu".into(),
                    to: "us".into()
                },
            ]
        );
    }

    #[test]
    fn a_new_table_updates_publications_and_refreshes_subscribers() {
        let mut eu = set_up("eu", &["us"]);
        eu.publication_tables = Some(BTreeSet::from(["appliances".to_owned()]));
        let observed = BTreeMap::from([
            ("eu".to_owned(), eu),
            ("us".to_owned(), set_up("us", &["eu"])),
        ]);
        let plan = plan_setup(&ids(&["eu", "us"]), &observed, TABLES).unwrap();
        assert_eq!(
            plan,
            vec![
                Action::SetPublicationTables {
                    region: "eu".into()
                },
                Action::RefreshSubscription {
                    from: "eu".into(),
                    to: "us".into()
                },
            ]
        );
    }

    #[test]
    fn refusals() {
        let observed = BTreeMap::from([("eu".to_owned(), set_up("us", &[]))]);
        assert!(matches!(
            plan_setup(&ids(&["eu", "ap"]), &observed, TABLES),
            Err(PlanError::ForeignDatabase { .. })
        ));
        let observed = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us", "ap"])),
            ("us".to_owned(), set_up("us", &["eu"])),
        ]);
        let e = plan_setup(&ids(&["eu", "us"]), &observed, TABLES).unwrap_err();
        assert_eq!(
            e,
            PlanError::UnlistedRegion {
                region: "eu".into(),
                other: "ap".into()
            }
        );
        let long = "a".repeat(40);
        assert!(matches!(
            plan_setup(
                &[long.clone(), long.replace('a', "b")],
                &BTreeMap::new(),
                TABLES
            ),
            Err(PlanError::NameTooLong { .. })
        ));
    }

    #[test]
    fn remove_a_reachable_region() {
        let observed = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us", "ap"])),
            ("us".to_owned(), set_up("us", &["eu", "ap"])),
            ("ap".to_owned(), set_up("ap", &["eu", "us"])),
        ]);
        let plan = plan_remove("ap", &observed, &BTreeSet::new());
        assert_eq!(
            plan,
            vec![
                Action::DropSubscription {
                    from: "ap".into(),
                    to: "eu".into(),
                    publisher_reachable: true
                },
                Action::DropSubscription {
                    from: "ap".into(),
                    to: "us".into(),
                    publisher_reachable: true
                },
                Action::DropSubscription {
                    from: "eu".into(),
                    to: "ap".into(),
                    publisher_reachable: true
                },
                Action::DropSubscription {
                    from: "us".into(),
                    to: "ap".into(),
                    publisher_reachable: true
                },
                Action::DropPublication {
                    region: "ap".into()
                },
            ]
        );
    }

    #[test]
    fn remove_an_unreachable_region_detaches_and_drops_its_slots() {
        let observed = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us", "ap"])),
            ("us".to_owned(), set_up("us", &["eu", "ap"])),
        ]);
        let plan = plan_remove("ap", &observed, &BTreeSet::from(["ap".to_owned()]));
        assert_eq!(
            plan,
            vec![
                Action::DropSubscription {
                    from: "ap".into(),
                    to: "eu".into(),
                    publisher_reachable: false
                },
                Action::DropSubscription {
                    from: "ap".into(),
                    to: "us".into(),
                    publisher_reachable: false
                },
                Action::DropSlot {
                    on: "eu".into(),
                    slot: "ss_sub_eu_ap".into()
                },
                Action::DropSlot {
                    on: "us".into(),
                    slot: "ss_sub_us_ap".into()
                },
            ]
        );
        // A second run finds nothing left to do.
        let done = BTreeMap::from([
            ("eu".to_owned(), set_up("eu", &["us"])),
            ("us".to_owned(), set_up("us", &["eu"])),
        ]);
        assert!(plan_remove("ap", &done, &BTreeSet::from(["ap".to_owned()])).is_empty());
    }
}
