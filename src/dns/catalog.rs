//! Builds the static part of the zones ([`Statics`]) from the configuration: SOA, NS and glue,
//! the `[[dns.zones.records]]` and an optional RFC 1035 zone file, all rendered to wire form.
//!
//! Records are parsed with hickory's zone-file parser (config records are written as zone-file
//! lines first, so both accept the same syntax). What the server cannot serve correctly is
//! refused here with a clear error rather than answered wrongly: delegations (NS below the
//! apex), wildcards, CNAMEs next to other data, names colliding with steered names.
//! SOA records in a zone file are ignored: the configuration's `[dns.zones.soa]` is the SOA.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use hickory_proto::serialize::txt::Parser;

use super::name::{BuildNameHasher, label_starts, strip_suffix, to_dotted, to_wire};
use super::wire::{CLASS_IN, rtype};
use super::zone::{NameData, RrSet, Statics, Zone};
use crate::config::{DnsSection, ZoneSection};

/// Why the zones cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A name in the configuration is not a domain name.
    #[error("zone {zone}: {what} {name:?} is not a valid domain name")]
    BadName {
        /// The zone.
        zone: String,
        /// Which setting.
        what: &'static str,
        /// The value.
        name: String,
    },
    /// A record (config or zone file) does not parse.
    #[error("zone {zone}: {source_name}: {message}")]
    Parse {
        /// The zone.
        zone: String,
        /// `records[i]` or the zone file path.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// The zone file cannot be read.
    #[error("zone {zone}: cannot read zone file {path}: {source}")]
    Read {
        /// The zone.
        zone: String,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Zone content the server does not support or that conflicts with steered names.
    #[error("zone {zone}: {name}: {message}")]
    Unsupported {
        /// The zone.
        zone: String,
        /// The owner name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A record to place in the zone: owner (lowercase wire), type, TTL, data.
struct Rec {
    owner: Vec<u8>,
    rtype: u16,
    ttl: u32,
    rdata: RData,
}

fn secs(d: crate::config::Duration) -> u32 {
    u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX)
}

/// Completes a relative name with the zone: absolute if it ends with a dot or already ends
/// with the zone's name.
fn complete(name: &str, zone: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name.to_owned()
    } else if lower == zone || lower.ends_with(&format!(".{zone}")) {
        format!("{name}.")
    } else {
        format!("{name}.{zone}.")
    }
}

fn hickory_name(s: &str, zone: &str, what: &'static str) -> Result<Name, CatalogError> {
    Name::from_ascii(s).map_err(|_| CatalogError::BadName {
        zone: zone.to_owned(),
        what,
        name: s.to_owned(),
    })
}

/// Lowercase uncompressed wire form of a hickory name.
fn name_wire(name: &Name) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    // Encoding a valid name into a Vec cannot fail.
    let _ = name.to_lowercase().emit(&mut enc);
    buf
}

/// Appends one record: `owner` is written as given (wire bytes or a compression pointer).
pub(crate) fn push_rr(
    out: &mut Vec<u8>,
    owner: &[u8],
    rtype: u16,
    ttl: u32,
    rdata: &RData,
) -> Result<(), String> {
    let mut data = Vec::new();
    let mut enc = BinEncoder::new(&mut data);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    rdata.emit(&mut enc).map_err(|e| e.to_string())?;
    let rdlen = u16::try_from(data.len()).map_err(|_| "record data too long".to_owned())?;
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&data);
    Ok(())
}

/// Parses zone-file text with `origin`; returns the records.
fn parse_records(
    text: &str,
    path: Option<&Path>,
    origin: &Name,
    zone: &str,
    source_name: String,
) -> Result<Vec<Rec>, CatalogError> {
    let parsed = Parser::new(text, path.map(Path::to_path_buf), Some(origin.clone()))
        .parse()
        .map_err(|e| CatalogError::Parse {
            zone: zone.to_owned(),
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (_, set) in parsed.1 {
        for r in set.records_without_rrsigs() {
            if r.dns_class != DNSClass::IN {
                return Err(CatalogError::Unsupported {
                    zone: zone.to_owned(),
                    name: r.name.to_string(),
                    message: format!("class {} is not served (only IN)", r.dns_class),
                });
            }
            out.push(Rec {
                owner: name_wire(&r.name),
                rtype: u16::from(r.record_type()),
                ttl: r.ttl,
                rdata: r.data.clone(),
            });
        }
    }
    Ok(out)
}

/// Records grouped by owner, then by RRset (in answer order).
type Grouped<'r> = BTreeMap<Vec<u8>, BTreeMap<(u8, u16), Vec<&'r Rec>>>;

/// Order in which RRsets are kept at a name (the first answers ANY).
fn type_rank(t: u16) -> (u8, u16) {
    match t {
        rtype::SOA => (0, t),
        rtype::NS => (1, t),
        rtype::A => (2, t),
        rtype::AAAA => (3, t),
        _ => (4, t),
    }
}

/// Builds one zone.
fn build_zone(
    z: &ZoneSection,
    serial: u32,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Zone, CatalogError> {
    let zone = z.name.trim_end_matches('.').to_ascii_lowercase();
    let apex = to_wire(&zone).ok_or_else(|| bad_name(&zone, "name", &z.name))?;
    let origin = hickory_name(&format!("{zone}."), &zone, "name")?;
    let at = ZoneAt { zone, apex, origin };
    let static_ttl = secs(z.static_ttl);
    let negative_ttl = secs(z.soa.negative_ttl);

    let (soa, mut recs) = at.apex_records(z, serial)?;
    recs.extend(at.configured_records(z, read)?);

    let client_label = at.label(&z.client_label, "client_label")?;
    let service = at.label(&z.service_name, "service_name")?;
    let by_name = at.servable_rrsets(&recs, &service, &client_label)?;
    let mut names = at.encode_names(&by_name)?;
    // Empty non-terminals: every ancestor of a static name up to the apex exists, and so does
    // the per-client label.
    let client_zone = [client_label.as_slice(), &at.apex].concat();
    let mut ents = Vec::new();
    for owner in by_name.keys().chain(std::iter::once(&client_zone)) {
        for start in label_starts(owner) {
            let ancestor = &owner[start..];
            if ancestor.len() > at.apex.len() && !names.contains_key(ancestor) {
                ents.push(ancestor.to_vec());
            }
        }
        if !names.contains_key(owner.as_slice()) {
            ents.push(owner.clone());
        }
    }
    for e in ents {
        names.entry(e.into_boxed_slice()).or_default();
    }

    let mut soa_negative = Vec::new();
    push_rr(
        &mut soa_negative,
        &at.apex,
        rtype::SOA,
        negative_ttl.min(static_ttl),
        &soa,
    )
    .map_err(|m| at.unsupported(&at.apex, &m))?;
    Ok(Zone {
        ns_glue: at.glue(&recs)?,
        apex: at.apex.into_boxed_slice(),
        names,
        soa_negative: RrSet {
            rtype: rtype::SOA,
            count: 1,
            wire: soa_negative.into_boxed_slice(),
        },
        client_label: client_label.into_boxed_slice(),
        service: service.into_boxed_slice(),
        steered_ttl: secs(z.steered_ttl),
    })
}

fn bad_name(zone: &str, what: &'static str, name: &str) -> CatalogError {
    CatalogError::BadName {
        zone: zone.to_owned(),
        what,
        name: name.to_owned(),
    }
}

/// The zone being built: its name (lowercase, no final dot) and its apex in wire form. Each
/// step of [`build_zone`] is a method, so that errors name the zone.
struct ZoneAt {
    zone: String,
    apex: Vec<u8>,
    /// The apex as a hickory name: the origin of zone-file text.
    origin: Name,
}

impl ZoneAt {
    fn unsupported(&self, name: &[u8], message: &str) -> CatalogError {
        CatalogError::Unsupported {
            zone: self.zone.clone(),
            name: to_dotted(name),
            message: message.to_owned(),
        }
    }

    /// `s`, relative to the zone when it has no final dot, as a hickory name.
    fn name(&self, s: &str, what: &'static str) -> Result<Name, CatalogError> {
        hickory_name(&complete(s, &self.zone), &self.zone, what)
    }

    /// One label (`client_label`, `service_name`) in wire form, without the root.
    fn label(&self, s: &str, what: &'static str) -> Result<Vec<u8>, CatalogError> {
        let mut wire = to_wire(s).ok_or_else(|| bad_name(&self.zone, what, s))?;
        wire.pop();
        Ok(wire)
    }

    /// The SOA (also returned for negative answers), the NS records and their glue.
    fn apex_records(
        &self,
        z: &ZoneSection,
        serial: u32,
    ) -> Result<(RData, Vec<Rec>), CatalogError> {
        let static_ttl = secs(z.static_ttl);
        let as_i32 = |d: crate::config::Duration| i32::try_from(d.0.as_secs()).unwrap_or(i32::MAX);
        let soa = RData::SOA(SOA::new(
            self.name(&z.soa.mname, "soa.mname")?,
            self.name(&z.soa.rname, "soa.rname")?,
            serial,
            as_i32(z.soa.refresh),
            as_i32(z.soa.retry),
            as_i32(z.soa.expire),
            secs(z.soa.negative_ttl),
        ));
        let mut recs = vec![Rec {
            owner: self.apex.clone(),
            rtype: rtype::SOA,
            ttl: static_ttl,
            rdata: soa.clone(),
        }];
        for ns in &z.ns {
            let target = self.name(&ns.name, "ns.name")?;
            let target_wire = name_wire(&target);
            recs.push(Rec {
                owner: self.apex.clone(),
                rtype: rtype::NS,
                ttl: static_ttl,
                rdata: RData::NS(NS(target)),
            });
            let in_zone = strip_suffix(&target_wire, &self.apex).is_some();
            if in_zone && ns.addresses.is_empty() {
                return Err(self.unsupported(
                    &target_wire,
                    "name server inside the zone needs glue addresses",
                ));
            }
            for addr in &ns.addresses {
                let (t, rdata) = match addr {
                    IpAddr::V4(a) => (rtype::A, RData::A(A(*a))),
                    IpAddr::V6(a) => (rtype::AAAA, RData::AAAA(AAAA(*a))),
                };
                recs.push(Rec {
                    owner: target_wire.clone(),
                    rtype: t,
                    ttl: static_ttl,
                    rdata,
                });
            }
        }
        Ok((soa, recs))
    }

    /// The configuration's records (as zone-file lines) and the zone file's, without its SOA.
    fn configured_records(
        &self,
        z: &ZoneSection,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Vec<Rec>, CatalogError> {
        let origin = &self.origin;
        let static_ttl = secs(z.static_ttl);
        let mut recs = Vec::new();
        for (i, r) in z.records.iter().enumerate() {
            let ttl = r.ttl.map(secs).unwrap_or(static_ttl);
            let line = format!("{} {} IN {} {}\n", r.name, ttl, r.rtype, r.data);
            let source = format!("records[{i}]");
            recs.extend(parse_records(&line, None, origin, &self.zone, source)?);
        }
        if let Some(path) = &z.zone_file {
            let text = read(path).map_err(|source| CatalogError::Read {
                zone: self.zone.clone(),
                path: path.display().to_string(),
                source,
            })?;
            let source = path.display().to_string();
            let file_recs = parse_records(&text, Some(path), origin, &self.zone, source)?;
            recs.extend(file_recs.into_iter().filter(|r| r.rtype != rtype::SOA));
        }
        Ok(recs)
    }

    /// The records grouped into RRsets, refusing what we cannot serve: names outside the
    /// zone, wildcards, delegations, and static data at the steered names.
    fn servable_rrsets<'r>(
        &self,
        recs: &'r [Rec],
        service: &[u8],
        client_label: &[u8],
    ) -> Result<Grouped<'r>, CatalogError> {
        let service_name = [service, &self.apex].concat();
        let client_zone = [client_label, &self.apex].concat();
        let mut by_name: Grouped<'_> = BTreeMap::new();
        for r in recs {
            let Some(prefix) = strip_suffix(&r.owner, &self.apex) else {
                return Err(self.unsupported(&r.owner, "is outside the zone"));
            };
            if r.owner.get(..2) == Some(b"\x01*") {
                return Err(self.unsupported(&r.owner, "wildcard records are not supported"));
            }
            if prefix > 0 && r.rtype == rtype::NS {
                return Err(self.unsupported(
                    &r.owner,
                    "delegations (NS below the apex) are not supported",
                ));
            }
            if r.owner == service_name {
                return Err(self.unsupported(
                    &r.owner,
                    "is the steered service name; it cannot hold static records",
                ));
            }
            if r.owner != client_zone && strip_suffix(&r.owner, &client_zone).is_some() {
                return Err(self.unsupported(
                    &r.owner,
                    "lies under the per-client names; it cannot hold static records",
                ));
            }
            by_name
                .entry(r.owner.clone())
                .or_default()
                .entry(type_rank(r.rtype))
                .or_default()
                .push(r);
        }
        Ok(by_name)
    }

    /// Each name's RRsets in wire form, duplicates collapsed.
    fn encode_names(
        &self,
        by_name: &Grouped<'_>,
    ) -> Result<HashMap<Box<[u8]>, NameData, BuildNameHasher>, CatalogError> {
        let mut names: HashMap<Box<[u8]>, NameData, BuildNameHasher> = HashMap::default();
        for (owner, sets) in by_name {
            if sets.keys().any(|(_, t)| *t == rtype::CNAME)
                && (sets.len() > 1 || *owner == self.apex)
            {
                return Err(self.unsupported(
                    owner,
                    "a CNAME cannot coexist with other data or sit at the apex",
                ));
            }
            let mut data = NameData::default();
            for ((_, t), records) in sets {
                let mut wire = Vec::new();
                let mut seen: Vec<Vec<u8>> = Vec::new();
                let mut count = 0u16;
                for r in records {
                    let mut one = Vec::new();
                    push_rr(&mut one, &[0xC0, 0x0C], *t, r.ttl, &r.rdata)
                        .map_err(|m| self.unsupported(owner, &m))?;
                    // Duplicate records (same data) collapse, as in any RRset.
                    if seen
                        .iter()
                        .any(|s| s[6..] == one[6..] && s[..2] == one[..2])
                    {
                        continue;
                    }
                    seen.push(one.clone());
                    wire.extend_from_slice(&one);
                    count += 1;
                }
                data.rrsets.push(RrSet {
                    rtype: *t,
                    count,
                    wire: wire.into_boxed_slice(),
                });
            }
            names.insert(owner.clone().into_boxed_slice(), data);
        }
        Ok(names)
    }

    /// Glue: the in-zone NS targets' addresses, owner written out.
    fn glue(&self, recs: &[Rec]) -> Result<Option<RrSet>, CatalogError> {
        let mut glue = Vec::new();
        let mut glue_count = 0u16;
        for r in recs.iter().filter(|r| r.rtype == rtype::NS) {
            if let RData::NS(NS(target)) = &r.rdata {
                let tw = name_wire(target);
                for g in recs
                    .iter()
                    .filter(|g| g.owner == tw && matches!(g.rtype, rtype::A | rtype::AAAA))
                {
                    push_rr(&mut glue, &tw, g.rtype, g.ttl, &g.rdata)
                        .map_err(|m| self.unsupported(&tw, &m))?;
                    glue_count += 1;
                }
            }
        }
        Ok((glue_count > 0).then(|| RrSet {
            rtype: rtype::A,
            count: glue_count,
            wire: glue.into_boxed_slice(),
        }))
    }
}

/// Builds every configured zone. `serial` is the SOA serial; `read` reads zone files.
pub fn build(
    dns: &DnsSection,
    serial: u32,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Statics, CatalogError> {
    let zones = dns
        .zones
        .iter()
        .map(|z| build_zone(z, serial, read))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Statics {
        zones,
        udp_payload: dns.udp_payload_size,
    })
}

/// The record type's mnemonic, for messages.
pub fn type_name(t: u16) -> String {
    RecordType::from(t).to_string()
}
