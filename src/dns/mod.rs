//! The authoritative DNS server: answers for the configured zones from an immutable in-memory
//! copy, never waiting on the database.
//!
//! Core (pure): [`wire`] parses queries, [`respond`] answers them from a [`zone::ServedZones`],
//! [`catalog`] builds the static zone data from the configuration, [`rrl`] limits response
//! rates. Shell: [`udp`] (threads with batched system calls), [`tcp`] (tokio), [`stats`]
//! (counters for `/metrics`), [`status`] (the one handle the admin listener holds on the
//! listeners). The served zones are built outside, by [`crate::publish`], which also saves the
//! last good snapshot on local disk for restarts ([`crate::publish::snapshot_file`]).
//!
//! Deliberately left out: DNSSEC signing, zone transfers (AXFR/IXFR are refused), dynamic
//! update, delegations below the zone, wildcards, DNS cookies.

pub mod catalog;
pub mod name;
pub mod respond;
pub mod rrl;
pub mod stats;
pub mod status;
pub mod tcp;
pub mod udp;
pub mod wire;
pub mod zone;

#[cfg(test)]
mod tests;
