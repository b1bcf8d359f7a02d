//! Which candidate recording name an admission tries next.
//!
//! Sessions that start in the same second from the same SSH server share a stem, and the
//! names tried for them are `<stem>.cast`, then numbered ones
//! ([`crate::storage::layout::candidate_name`]). Without memory, every admission walked
//! that series from 0: a `stat` per name this node had already used, and concurrent
//! admissions here all proposed the same free name to Raft, where all but one were
//! refused as taken and went round again (3 of 4 claims at 16 clients in the admission
//! bench). [`NameCursor`] hands each admission its own position in the series, so that
//! only another node (which can meet ours only at `<stem>.cast`, the numbered names carry
//! the node) or a file left from an earlier run can make a name taken.
//!
//! Sans-IO: it never looks at the disk or the cluster. Forgetting a position is always
//! safe: names are still checked against the files here and reserved set-wide through
//! the claim, so the worst outcome is the old probing.

use std::collections::HashMap;

/// Positions kept at most; one per (SSH server, second) being admitted. Past it, the
/// positions of other seconds are dropped (a second that has passed gets no new
/// sessions, apart from a few that computed their start just before it ended).
pub const MAX_POSITIONS: usize = 4096;

#[derive(Debug, Default)]
pub struct NameCursor {
    /// (node dir, stem) → the next position in that stem's series not yet handed out.
    next: HashMap<(String, String), u32>,
}

impl NameCursor {
    /// The next position in the name series of `stem` under `node_dir`, never handed out
    /// before for that pair while it is remembered.
    pub fn take(&mut self, node_dir: &str, stem: &str) -> u32 {
        let key = (node_dir.to_string(), stem.to_string());
        if !self.next.contains_key(&key) && self.next.len() >= MAX_POSITIONS {
            self.next.retain(|(_, s), _| s.as_str() == stem);
            if self.next.len() >= MAX_POSITIONS {
                self.next.clear();
            }
        }
        let slot = self.next.entry(key).or_insert(0);
        let position = *slot;
        *slot = slot.saturating_add(1);
        position
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.next.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn one_stem_hands_out_each_position_once_in_order() {
        let mut cursor = NameCursor::default();
        let taken: Vec<u32> = (0..5).map(|_| cursor.take("srv", "T1")).collect();
        assert_eq!(taken, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn servers_and_seconds_have_their_own_series() {
        let mut cursor = NameCursor::default();
        assert_eq!(cursor.take("a", "T1"), 0);
        assert_eq!(cursor.take("b", "T1"), 0);
        assert_eq!(cursor.take("a", "T2"), 0);
        assert_eq!(cursor.take("a", "T1"), 1);
        assert_eq!(cursor.take("b", "T1"), 1);
        // A late start in a second that has passed still gets a fresh position.
        assert_eq!(cursor.take("a", "T1"), 2);
    }

    #[test]
    fn the_bound_drops_other_seconds_first_and_never_repeats_within_the_current_one() {
        let mut cursor = NameCursor::default();
        for dir in 0..MAX_POSITIONS - 1 {
            cursor.take(&format!("old{dir}"), "T1");
        }
        let mut handed = HashSet::new();
        assert!(handed.insert(cursor.take("now", "T2")));
        assert_eq!(cursor.remembered(), MAX_POSITIONS);
        // The next new pair makes room by forgetting T1's positions only.
        assert_eq!(cursor.take("other", "T2"), 0);
        assert_eq!(cursor.remembered(), 2);
        for _ in 0..100 {
            assert!(
                handed.insert(cursor.take("now", "T2")),
                "a position came twice"
            );
        }
    }

    #[test]
    fn a_second_with_more_servers_than_the_bound_starts_over_rather_than_grow() {
        let mut cursor = NameCursor::default();
        for dir in 0..MAX_POSITIONS {
            cursor.take(&format!("srv{dir}"), "T1");
        }
        assert_eq!(cursor.take("one-more", "T1"), 0);
        assert_eq!(cursor.remembered(), 1);
    }
}
