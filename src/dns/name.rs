//! Domain names in wire form, as the hot path uses them: lowercase label sequences ending in
//! the root label, hashed with a small fast hasher.

use std::hash::{BuildHasherDefault, Hasher};

/// Longest name in wire form (RFC 1035 section 2.3.4).
pub const MAX_NAME: usize = 255;

/// A fast non-cryptographic hasher (the multiply-rotate scheme of rustc's FxHasher). The keys
/// are names from our own configuration and database, so hash flooding by a remote party is
/// not a concern: a query can only look names up, not insert them.
#[derive(Debug, Default, Clone, Copy)]
pub struct NameHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl NameHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

/// `BuildHasher` for maps keyed by names.
pub type BuildNameHasher = BuildHasherDefault<NameHasher>;

/// Wire form of a dotted name (`vpn.example.net`, trailing dot optional), lowercased.
/// `None` when a label is empty or too long, or the name is too long.
pub fn to_wire(dotted: &str) -> Option<Vec<u8>> {
    let trimmed = dotted.trim_end_matches('.');
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Offsets of the labels of a well-formed wire name (each pointing at a length byte),
/// excluding the root label.
pub fn label_starts(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let len = usize::from(*name.get(pos)?);
        if len == 0 {
            return None;
        }
        let here = pos;
        pos += len + 1;
        Some(here)
    })
}

/// If `name` is `suffix` or lies below it (on a label boundary), the length of the part
/// before the suffix.
pub fn strip_suffix(name: &[u8], suffix: &[u8]) -> Option<usize> {
    if name.len() < suffix.len() {
        return None;
    }
    let cut = name.len() - suffix.len();
    if name[cut..] != *suffix {
        return None;
    }
    if cut == 0 || label_starts(name).any(|s| s == cut) {
        Some(cut)
    } else {
        None
    }
}

/// Dotted form of a wire name, for logs and errors.
pub fn to_dotted(name: &[u8]) -> String {
    let mut out = String::new();
    for s in label_starts(name) {
        let len = usize::from(name[s]);
        if let Some(label) = name.get(s + 1..s + 1 + len) {
            out.push_str(&String::from_utf8_lossy(label));
            out.push('.');
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let w = to_wire("Vpn.Example.NET.").unwrap();
        assert_eq!(w, b"\x03vpn\x07example\x03net\x00");
        assert_eq!(to_dotted(&w), "vpn.example.net.");
        assert_eq!(to_wire(".").unwrap(), b"\x00");
        assert!(to_wire("a..b").is_none());
        assert!(to_wire(&"a".repeat(64)).is_none());
    }

    #[test]
    fn suffix_on_label_boundary() {
        let zone = to_wire("example.net").unwrap();
        assert_eq!(
            strip_suffix(&to_wire("a.example.net").unwrap(), &zone),
            Some(2)
        );
        assert_eq!(strip_suffix(&zone, &zone), Some(0));
        assert_eq!(strip_suffix(&to_wire("xexample.net").unwrap(), &zone), None);
        assert_eq!(strip_suffix(&to_wire("net").unwrap(), &zone), None);
    }
}
