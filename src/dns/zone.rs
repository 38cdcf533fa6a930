//! What the DNS server answers from: [`ServedZones`], immutable, swapped whole when anything
//! changes.
//!
//! Everything is kept ready in wire form. Static RRsets are rendered once with their owner
//! name as a compression pointer to the question (offset 12), which is always the owner of an
//! exact-match answer and makes the answer echo the query's case for free. Steered answers are
//! one address (16 or 28 bytes) written per query.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::name::{BuildNameHasher, strip_suffix};
use crate::config::IpNet;
use crate::steering::service::WeightedSet;

/// One RRset in wire form: `count` records, each `owner type class ttl rdlength rdata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    /// Record type.
    pub rtype: u16,
    /// Number of records.
    pub count: u16,
    /// The records.
    pub wire: Box<[u8]>,
}

/// The data at one static name; no RRsets means an empty non-terminal (NODATA, not NXDOMAIN).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameData {
    /// RRsets in a fixed order (the first one answers ANY, RFC 8482).
    pub rrsets: Vec<RrSet>,
}

impl NameData {
    /// The RRset of `rtype`.
    pub fn get(&self, rtype: u16) -> Option<&RrSet> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }
}

/// One authoritative zone's fixed part.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Apex, lowercase wire form.
    pub apex: Box<[u8]>,
    /// Static names (lowercase wire form, absolute), including the apex and empty non-terminals.
    pub names: HashMap<Box<[u8]>, NameData, BuildNameHasher>,
    /// The SOA for negative answers, owner written out, TTL the negative TTL.
    pub soa_negative: RrSet,
    /// Glue addresses of in-zone name servers (additional section of NS answers).
    pub ns_glue: Option<RrSet>,
    /// Wire form of the client label (`\x01c`).
    pub client_label: Box<[u8]>,
    /// Wire form of the service name relative to the apex (`\x02gw`).
    pub service: Box<[u8]>,
    /// TTL of steered answers.
    pub steered_ttl: u32,
}

impl Zone {
    /// Length of the part of `qname` before this apex, if `qname` is in this zone.
    pub fn prefix_len(&self, qname: &[u8]) -> Option<usize> {
        strip_suffix(qname, &self.apex)
    }
}

/// The parts that come from configuration and never change while serving.
#[derive(Debug, Clone)]
pub struct Statics {
    /// The zones.
    pub zones: Vec<Zone>,
    /// Largest UDP response sent to EDNS requesters.
    pub udp_payload: u16,
}

impl Statics {
    /// The zone holding `qname` (the longest apex that is a suffix) and the prefix length.
    pub fn find_zone(&self, qname: &[u8]) -> Option<(&Zone, usize)> {
        self.zones
            .iter()
            .filter_map(|z| z.prefix_len(qname).map(|p| (z, p)))
            .min_by_key(|(_, p)| *p)
    }
}

/// An appliance endpoint as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Address for A/AAAA.
    pub ip: IpAddr,
    /// WireGuard port, for SRV.
    pub port: u16,
    /// Metrics slot of the appliance.
    pub slot: u16,
}

/// Weighted answers of the service name, per address family.
#[derive(Debug, Clone, Default)]
pub struct ServiceSet {
    /// IPv4 appliances.
    pub v4: WeightedSet<Endpoint>,
    /// IPv6 appliances.
    pub v6: WeightedSet<Endpoint>,
}

/// The service name's answers: everyone's, and per client subnet the nearest region's.
#[derive(Debug, Clone, Default)]
pub struct Service {
    /// All active appliances.
    pub all: ServiceSet,
    /// Per configured client subnet, the index of its region's set in `regions`; a region
    /// without candidates has no set (the subnet then falls back to `all`).
    pub subnets: Vec<(IpNet, Option<usize>)>,
    /// Region sets.
    pub regions: Vec<ServiceSet>,
}

/// Client id bytes to a dense index. Built once per set of clients and shared by every
/// [`ServedZones`] until a client is added or removed, so that a change of answers only
/// rebuilds the (allocation-free) answer vector.
pub type ClientIndex = HashMap<Box<[u8]>, u32, BuildNameHasher>;

/// Steered answers by client id bytes.
#[derive(Debug, Clone, Default)]
pub struct ClientTable {
    /// Where each client's answer is in `answers`.
    index: Arc<ClientIndex>,
    /// Per client (by index): the appliance endpoint, `None` when no appliance can be chosen.
    answers: Vec<Option<Endpoint>>,
    /// Per client (by index): the appliance to keep a standby session with
    /// (`standby.<client>.c.<zone>`, see [`crate::steering::standby`]); empty: none.
    standby: Vec<Option<Endpoint>>,
}

impl ClientTable {
    /// A table over `index` with one answer per indexed client (missing ones have none).
    pub fn new(index: Arc<ClientIndex>, mut answers: Vec<Option<Endpoint>>) -> Self {
        answers.resize(index.len(), None);
        Self {
            index,
            answers,
            standby: Vec::new(),
        }
    }

    /// The same table with one standby answer per indexed client (missing ones have none).
    pub fn with_standby(mut self, mut standby: Vec<Option<Endpoint>>) -> Self {
        standby.resize(self.index.len(), None);
        self.standby = standby;
        self
    }

    /// A table from (id, answer) pairs, building its own index (tests build [`ServedZones`] by
    /// hand).
    #[cfg(test)]
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Box<[u8]>, Option<Endpoint>)>) -> Self {
        let mut index = ClientIndex::default();
        let mut answers = Vec::new();
        for (id, answer) in pairs {
            let next = u32::try_from(answers.len()).unwrap_or(u32::MAX);
            let i = *index.entry(id).or_insert(next);
            if i == next {
                answers.push(answer);
            } else if let Some(slot) = answers.get_mut(i as usize) {
                *slot = answer;
            }
        }
        Self::new(Arc::new(index), answers)
    }

    /// The answer of a client: `None` for an unknown client, `Some(None)` for a known client
    /// without an appliance.
    pub fn get(&self, id: &[u8]) -> Option<&Option<Endpoint>> {
        self.index
            .get(id)
            .and_then(|&i| self.answers.get(i as usize))
    }

    /// The standby answer of a client: `None` for an unknown client, `Some(None)` for a known
    /// client without a standby appliance.
    pub fn standby(&self, id: &[u8]) -> Option<Option<Endpoint>> {
        self.index
            .get(id)
            .map(|&i| self.standby.get(i as usize).copied().flatten())
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The index shared with later tables over the same clients.
    pub fn index(&self) -> &Arc<ClientIndex> {
        &self.index
    }
}

/// Everything the server answers from: the zones' static records and every steered answer.
/// Immutable; the publisher replaces it whole.
#[derive(Debug, Clone)]
pub struct ServedZones {
    /// Configuration-derived part, shared between versions.
    pub statics: Arc<Statics>,
    /// Steered answer of every client, by client id bytes; `None` when no appliance can be
    /// chosen (the name exists, the answer is empty). Shared between versions while no
    /// answer changes.
    pub clients: Arc<ClientTable>,
    /// The service name.
    pub service: Service,
    /// Whether it was loaded from the database (false: the empty start-up version).
    pub loaded: bool,
}

impl ServedZones {
    /// The static data only, answered before the first database load.
    pub fn empty(statics: Arc<Statics>) -> Self {
        Self {
            statics,
            clients: Arc::default(),
            service: Service::default(),
            loaded: false,
        }
    }
}
