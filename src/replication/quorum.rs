//! What "durable on a majority" is, as a number. Pure: no I/O, no time.

/// The highest offset durable on a majority of a replica set of `set_size` nodes, given
/// the owner's own durable offset and the offsets the other replicas reported (a replica
/// that reported nothing counts as 0).
///
/// Every later majority of the same set intersects this one, so a new owner that takes
/// the maximum over any majority never goes below it.
pub fn quorum_offset(own: u64, others: &[u64], set_size: usize) -> u64 {
    let set_size = set_size.max(1);
    let mut offsets: Vec<u64> = std::iter::once(own).chain(others.iter().copied()).collect();
    offsets.resize(set_size.max(offsets.len()), 0);
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    let majority = set_size / 2 + 1;
    offsets[majority - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn three_replicas_need_two() {
        assert_eq!(quorum_offset(100, &[50, 0], 3), 50);
        assert_eq!(
            quorum_offset(100, &[], 3),
            0,
            "missing replicas count as nothing"
        );
        assert_eq!(quorum_offset(10, &[70, 80], 3), 70);
        assert_eq!(
            quorum_offset(7, &[], 1),
            7,
            "a set of one is its own majority"
        );
    }

    #[test]
    fn even_sets_need_more_than_half() {
        assert_eq!(quorum_offset(100, &[90, 80, 70], 4), 80);
        assert_eq!(quorum_offset(100, &[90], 2), 90);
    }

    proptest! {
        /// At least a majority holds the quorum offset, and no larger offset has a majority.
        #[test]
        fn it_is_the_largest_offset_a_majority_holds(own in 0u64..1000, others in prop::collection::vec(0u64..1000, 0..6)) {
            let size = others.len() + 1;
            let q = quorum_offset(own, &others, size);
            let all: Vec<u64> = std::iter::once(own).chain(others.iter().copied()).collect();
            let holding = |x: u64| all.iter().filter(|o| **o >= x).count();
            prop_assert!(holding(q) > size / 2);
            prop_assert!(holding(q + 1) <= size / 2);
        }
    }
}
