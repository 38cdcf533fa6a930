//! Keyset paging: a query asks for one row more than the page holds; that extra row says
//! another page follows, and the last row's key is where it starts.

/// Cuts `items` (fetched with a limit of `limit + 1`) to `limit` and returns the key the next
/// page starts after, or `None` on the last page.
pub fn split<T, K>(items: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> Option<K> {
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let mut v = vec![1, 2, 3];
        assert_eq!(split(&mut v, 2, |x| *x), Some(2));
        assert_eq!(v, [1, 2]);
        let mut v = vec![1, 2];
        assert_eq!(split(&mut v, 2, |x| *x), None);
        assert_eq!(v, [1, 2]);
    }
}
