//! Item categories as sets: an item may have several (one per row of an items table, or
//! several in one cell split by a separator such as `|`). The diversity plugin and
//! `recd eval` both read and compare categories through these, so a list is judged by the
//! rules it was built with.

use std::collections::HashMap;

/// Each item's categories, sorted and distinct, from `(item, cell)` rows: an item listed on
/// several rows has every row's categories; with `separator`, a cell holds several.
/// Categories are trimmed; empty ones, and rows with no item or no cell, are skipped (an
/// item without a category has no entry).
pub fn collect(
    rows: impl IntoIterator<Item = (Option<String>, Option<String>)>,
    separator: Option<&str>,
) -> HashMap<String, Vec<String>> {
    let mut sets: HashMap<String, Vec<String>> = HashMap::new();
    for (item, cell) in rows {
        let (Some(item), Some(cell)) = (item, cell) else { continue };
        let entry = sets.entry(item).or_default();
        let parts: Box<dyn Iterator<Item = &str>> = match separator {
            Some(sep) => Box::new(cell.split(sep)),
            None => Box::new(std::iter::once(cell.as_str())),
        };
        entry.extend(parts.map(str::trim).filter(|c| !c.is_empty()).map(String::from));
    }
    sets.retain(|_, cats| {
        cats.sort_unstable();
        cats.dedup();
        !cats.is_empty()
    });
    sets
}

/// Jaccard similarity of two sorted, distinct category sets: shared / all, in [0, 1]; 1 for
/// the same single category, 0 when either has none.
pub fn jaccard(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared as f64 / (a.len() + b.len() - shared) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(item: &str, cell: &str) -> (Option<String>, Option<String>) {
        (Some(item.into()), Some(cell.into()))
    }

    #[test]
    fn rows_and_separated_cells_add_up_to_one_sorted_set_per_item() {
        let rows =
            [row("m1", "Drama | Comedy"), row("m1", "Comedy "), row("m2", "War"), row("m3", " | "), row("m4", " ")];
        let sets = collect(rows.clone(), Some("|"));
        assert_eq!(sets["m1"], ["Comedy", "Drama"]);
        assert_eq!(sets["m2"], ["War"]);
        assert!(!sets.contains_key("m3") && !sets.contains_key("m4"), "no category at all is no entry");
        let plain = collect(rows, None);
        assert_eq!(plain["m1"], ["Comedy", "Drama | Comedy"]);
        assert_eq!(plain["m3"], ["|"]);
        assert!(!plain.contains_key("m4"), "an empty cell is no category");
        assert_eq!(collect([(None, Some("x".into())), (Some("a".into()), None)], None).len(), 0);
    }

    #[test]
    fn jaccard_is_shared_over_all() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(jaccard(&s(&["a"]), &s(&["a"])), 1.0);
        assert_eq!(jaccard(&s(&["a"]), &s(&["b"])), 0.0);
        assert_eq!(jaccard(&s(&["a", "b"]), &s(&["b", "c"])), 1.0 / 3.0);
        assert_eq!(jaccard(&s(&["a", "b", "c"]), &s(&["b"])), 1.0 / 3.0);
        assert_eq!(jaccard(&[], &s(&["a"])), 0.0);
    }
}
