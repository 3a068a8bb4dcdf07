//! How far this node's clock is from its peers': an estimate from the times
//! peers write into the frames they send.
//!
//! Nothing in the protocol depends on clocks agreeing (validation takes no
//! time; certificate windows get two days of slack), but people read message
//! times and certificates are issued by clocks, so a node tells its owner
//! when its clock is off. Every frame a peer sends carries the sender's clock
//! reading; the receiver's reading when the frame arrives, minus that, is one
//! **sample** of how far ahead the receiver's clock is. The transit time
//! (milliseconds on a network, up to a few seconds under load) adds to every
//! sample, which is noise beside the warning threshold of minutes.
//!
//! [`ClockOffsets`] keeps each peer's newest sample and answers the median
//! over peers: one peer with a wrong clock among several correct ones does
//! not move it, and with a single peer the node can only say that the two
//! clocks disagree (both nodes then warn). Bounded by [`CLOCK_PEERS_MAX`].

use std::collections::BTreeMap;

/// Peers whose samples are kept; samples of further peers are ignored
/// until one of the kept peers is forgotten.
pub const CLOCK_PEERS_MAX: usize = 256;

/// How far from its peers' clocks (the median) a node's clock may be before
/// it warns, in milliseconds (2 minutes).
pub const CLOCK_OFFSET_WARNING_MS: i64 = 2 * 60 * 1000;

/// The estimate: how far this node's clock is ahead of its peers' (negative:
/// behind), and how many peers it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEstimate {
    /// Median over peers of (our clock − theirs), in milliseconds.
    pub offset_ms: i64,
    /// Peers with a sample.
    pub peers: usize,
}

impl ClockEstimate {
    /// Whether the offset is past [`CLOCK_OFFSET_WARNING_MS`] either way.
    pub fn is_skewed(&self) -> bool {
        self.offset_ms.unsigned_abs() > CLOCK_OFFSET_WARNING_MS.unsigned_abs()
    }
}

/// The newest clock sample of each peer (see the module doc).
#[derive(Debug, Clone)]
pub struct ClockOffsets<P> {
    /// Peer → (our clock − its clock) at its newest frame, in milliseconds.
    samples: BTreeMap<P, i64>,
}

impl<P> Default for ClockOffsets<P> {
    fn default() -> Self {
        Self {
            samples: BTreeMap::new(),
        }
    }
}

impl<P: Ord> ClockOffsets<P> {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a frame `peer` stamped `sent_at_ms` (its clock) arrived
    /// at `received_at_ms` (ours). Returns whether the sample was kept (it
    /// is not when [`CLOCK_PEERS_MAX`] other peers have one).
    pub fn observe(&mut self, peer: P, sent_at_ms: i64, received_at_ms: i64) -> bool {
        if self.samples.len() >= CLOCK_PEERS_MAX && !self.samples.contains_key(&peer) {
            return false;
        }
        self.samples
            .insert(peer, received_at_ms.saturating_sub(sent_at_ms));
        true
    }

    /// Drops `peer`'s sample (it disconnected: its clock no longer speaks).
    pub fn forget(&mut self, peer: &P) {
        self.samples.remove(peer);
    }

    /// The median offset over peers, or `None` without any sample.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let mut offsets: Vec<i64> = self.samples.values().copied().collect();
        if offsets.is_empty() {
            return None;
        }
        offsets.sort_unstable();
        let middle = offsets.len() / 2;
        let offset_ms = if offsets.len() % 2 == 1 {
            offsets[middle]
        } else {
            // The mean of the two middle samples, without overflow.
            let (low, high) = (offsets[middle - 1], offsets[middle]);
            low / 2 + high / 2 + (low % 2 + high % 2) / 2
        };
        Some(ClockEstimate {
            offset_ms,
            peers: offsets.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE_MS: i64 = 60_000;
    const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
    const NOW_MS: i64 = 1_790_000_000_000;

    #[test]
    fn the_estimate_is_the_median_of_each_peers_newest_sample() {
        let mut clock = ClockOffsets::new();
        assert_eq!(clock.estimate(), None);
        // One peer 20 minutes behind us (it stamped 20 min before our reading).
        clock.observe("a", NOW_MS - 20 * MINUTE_MS, NOW_MS);
        let one = clock.estimate().unwrap();
        assert_eq!((one.offset_ms, one.peers), (20 * MINUTE_MS, 1));
        assert!(one.is_skewed());
        // Two more peers agreeing with us (their frames took 40 ms): the
        // median says our clock is right and the first peer's is off.
        clock.observe("b", NOW_MS - 40, NOW_MS);
        clock.observe("c", NOW_MS - 40, NOW_MS);
        let three = clock.estimate().unwrap();
        assert_eq!((three.offset_ms, three.peers), (40, 3));
        assert!(!three.is_skewed());
        // A peer's newer sample replaces its older one.
        clock.observe("a", NOW_MS, NOW_MS + 10);
        assert_eq!(clock.estimate().unwrap().peers, 3);
        // Even counts take the mean of the middle two.
        clock.forget(&"c");
        let two = clock.estimate().unwrap();
        assert_eq!((two.offset_ms, two.peers), (25, 2));
        clock.forget(&"a");
        clock.forget(&"b");
        assert_eq!(clock.estimate(), None);
    }

    #[test]
    fn a_day_either_way_warns_and_two_minutes_is_the_line() {
        // One row per case: our clock minus the peer's, and whether we warn.
        let rows: [(&str, i64, bool); 6] = [
            ("a day slow", -DAY_MS, true),
            ("20 minutes fast", 20 * MINUTE_MS, true),
            ("just past two minutes", CLOCK_OFFSET_WARNING_MS + 1, true),
            (
                "exactly two minutes behind",
                -CLOCK_OFFSET_WARNING_MS,
                false,
            ),
            ("a second off", 1_000, false),
            ("in step", 0, false),
        ];
        for (name, offset_ms, warns) in rows {
            let mut clock = ClockOffsets::new();
            clock.observe(1u8, NOW_MS - offset_ms, NOW_MS);
            let estimate = clock.estimate().unwrap();
            assert_eq!(estimate.offset_ms, offset_ms, "{name}");
            assert_eq!(estimate.is_skewed(), warns, "{name}");
        }
    }

    #[test]
    fn peers_are_bounded_and_extreme_stamps_never_overflow() {
        let mut clock = ClockOffsets::new();
        for peer in 0..CLOCK_PEERS_MAX {
            assert!(clock.observe(peer, NOW_MS, NOW_MS));
        }
        assert!(!clock.observe(CLOCK_PEERS_MAX, NOW_MS, NOW_MS));
        assert!(clock.observe(0, NOW_MS, NOW_MS + 1), "a kept peer updates");
        assert_eq!(clock.estimate().unwrap().peers, CLOCK_PEERS_MAX);
        let mut hostile = ClockOffsets::new();
        hostile.observe(1, i64::MIN, i64::MAX);
        hostile.observe(2, i64::MAX, i64::MIN);
        let estimate = hostile.estimate().unwrap();
        assert_eq!(estimate.peers, 2);
        assert!(estimate.offset_ms.abs() <= 1, "{estimate:?}");
    }

    proptest! {
        /// A minority of peers with wrong clocks never moves the estimate
        /// outside the range of the honest majority's samples.
        #[test]
        fn a_minority_of_wrong_clocks_does_not_move_the_median(
            honest in prop::collection::vec(-1_000i64..1_000, 3..20),
            wrong in prop::collection::vec(-10 * 365 * DAY_MS..10 * 365 * DAY_MS, 0..20),
        ) {
            let wrong = &wrong[..wrong.len().min((honest.len() - 1) / 2)];
            let mut clock = ClockOffsets::new();
            for (peer, offset) in honest.iter().chain(wrong).enumerate() {
                clock.observe(peer, NOW_MS - offset, NOW_MS);
            }
            let estimate = clock.estimate().unwrap();
            let (low, high) = (*honest.iter().min().unwrap(), *honest.iter().max().unwrap());
            prop_assert!((low..=high).contains(&estimate.offset_ms), "{estimate:?} outside {low}..={high}");
        }
    }
}
