//! Uuid rows named by a prefix of their id (`advisory remove 3f2a`, `token revoke 3f2a`): the
//! rule for a usable prefix and what a lookup found. One piece of code for every table; the
//! tables' own queries stay compile-checked.

use uuid::Uuid;

/// Shortest prefix accepted.
pub const MIN_LEN: usize = 4;

/// The normalised prefix (lowercase, trimmed) if `id` is a uuid or a prefix of one with at
/// least [`MIN_LEN`] characters; `None` otherwise.
pub fn parse(id: &str) -> Option<String> {
    let prefix = id.trim().to_ascii_lowercase();
    let ok = (MIN_LEN..=36).contains(&prefix.len())
        && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    ok.then_some(prefix)
}

/// What a prefix lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No row.
    None,
    /// Exactly one row.
    One(Uuid),
    /// Several rows: the prefix is ambiguous.
    Many,
}

/// Classifies the ids a prefix matched.
pub fn pick(matches: &[Uuid]) -> Found {
    match matches {
        [] => Found::None,
        [one] => Found::One(*one),
        _ => Found::Many,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(parse(" 3F2A ").as_deref(), Some("3f2a"));
        assert_eq!(parse("zz"), None);
        assert_eq!(parse("3f2"), None);
        assert_eq!(parse("3f2g"), None);
        assert_eq!(parse(&"a".repeat(37)), None);
        let a = Uuid::new_v4();
        assert_eq!(pick(&[]), Found::None);
        assert_eq!(pick(&[a]), Found::One(a));
        assert_eq!(pick(&[a, a]), Found::Many);
    }
}
