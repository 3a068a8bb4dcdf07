//! Display order: a topological order of the DAG with a stable tie-break.
//!
//! Commits are ordered by [`OrderKey`]: generation (which every commit
//! carries in its body, checked by validation: one more than its parents'
//! largest), then display time, then commit id. A parent's generation is
//! always smaller than its child's, so the order is topological, and it
//! depends only on the commits themselves: every replica holding the same
//! commits shows them in the same order. Time only breaks ties among
//! concurrent commits of one generation.
//!
//! The display time ([`display_time_secs`]) is the committer time, but no
//! earlier than the parents' committer times: a commit's time is its
//! author's claim, and a clock that runs slow (or a hostile author) must not
//! show a reply as older than the message it answers. It is also the time
//! shown with each message.
//!
//! Loading the newest `n` messages walks back from the tips with a max-heap
//! on that key ([`newest_first`]). Every commit not yet discovered descends
//! from the heap's frontier only through keys smaller than the frontier's, so
//! each pop is the next-newest commit: the walk touches about `n` commits plus
//! the frontier, never the whole history.

use std::collections::{BinaryHeap, HashSet};

use super::ids::CommitId;

/// The sort key of a commit in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    /// Generation from the commit's body.
    pub generation: u64,
    /// Display time ([`display_time_secs`]), seconds since the Unix epoch.
    pub time_secs: i64,
    /// The commit id (last resort, always distinct).
    pub id: CommitId,
}

/// The time a commit is shown at and ordered by within its generation: its
/// committer time, raised to its latest parent's committer time if that is
/// later. Authors already date commits no earlier than their parents
/// (within a bound; `validation::authored_time_secs`); this covers commits
/// whose authors did not, so a reply never shows as older than what it
/// answers. Only the parents are read, so a key costs one step, not a walk.
pub fn display_time_secs(committer_secs: i64, parents_secs: impl IntoIterator<Item = i64>) -> i64 {
    parents_secs.into_iter().fold(committer_secs, i64::max)
}

/// What the walk needs to know of one commit (ordered by its key first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DagEntry {
    /// Its key.
    pub key: OrderKey,
    /// Its parents.
    pub parents: Vec<CommitId>,
    /// Whether it counts towards the page (messages do; merges do not).
    pub shown: bool,
}

/// Looks commits up for the walk (the store reads them from its repository).
pub trait Dag {
    /// Why a lookup failed.
    type Error;
    /// The entry of an accepted commit.
    fn entry(&mut self, id: &CommitId) -> Result<DagEntry, Self::Error>;
}

/// The newest `limit` shown commits reachable from `tips`, newest first.
pub fn newest_first<D: Dag>(
    tips: &[CommitId],
    limit: usize,
    dag: &mut D,
) -> Result<Vec<OrderKey>, D::Error> {
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut heap = BinaryHeap::new();
    let mut seen = HashSet::new();
    for tip in tips {
        if seen.insert(*tip) {
            let first = dag.entry(tip)?;
            heap.push((first.key, first));
        }
    }
    while let Some((key, entry)) = heap.pop() {
        if out.len() >= limit {
            break;
        }
        if entry.shown {
            out.push(key);
        }
        for parent in &entry.parents {
            if seen.insert(*parent) {
                let e = dag.entry(parent)?;
                heap.push((e.key, e));
            }
        }
    }
    Ok(out)
}

/// The same walk as [`newest_first`], one commit at a time, so a caller can
/// look at every commit on the way (edits and reactions newer than a page)
/// and stop whenever it has enough. The caller bounds how far it goes.
#[derive(Debug, Default)]
pub struct NewestFirstWalk {
    heap: BinaryHeap<(OrderKey, DagEntry)>,
    seen: HashSet<CommitId>,
}

impl NewestFirstWalk {
    /// A walk starting at `tips`.
    pub fn new<D: Dag>(tips: &[CommitId], dag: &mut D) -> Result<Self, D::Error> {
        let mut walk = Self::default();
        for tip in tips {
            if walk.seen.insert(*tip) {
                let first = dag.entry(tip)?;
                walk.heap.push((first.key, first));
            }
        }
        Ok(walk)
    }

    /// The next-newest commit (merges included; see `DagEntry::shown`), or
    /// `None` when history is exhausted.
    pub fn next_entry<D: Dag>(&mut self, dag: &mut D) -> Result<Option<DagEntry>, D::Error> {
        let Some((_, entry)) = self.heap.pop() else {
            return Ok(None);
        };
        for parent in &entry.parents {
            if self.seen.insert(*parent) {
                let e = dag.entry(parent)?;
                self.heap.push((e.key, e));
            }
        }
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    struct MapDag(HashMap<CommitId, DagEntry>, usize);

    impl Dag for MapDag {
        type Error = ();
        fn entry(&mut self, id: &CommitId) -> Result<DagEntry, ()> {
            self.1 += 1;
            self.0.get(id).cloned().ok_or(())
        }
    }

    fn id(n: usize) -> CommitId {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&(n as u64).to_be_bytes());
        CommitId::from_bytes(b)
    }

    proptest! {
        /// The heap walk returns exactly the tail of the full sorted order.
        #[test]
        fn walk_matches_full_sort(
            parent_picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<bool>(), 0i64..5), 1..60),
            limit in 1usize..30,
        ) {
            let mut map = HashMap::new();
            map.insert(id(0), DagEntry { key: OrderKey { generation: 0, time_secs: 0, id: id(0) }, parents: vec![], shown: true });
            for (i, (a, b, two, t)) in parent_picks.iter().enumerate() {
                let n = i + 1;
                let mut parents = vec![id(a.index(n))];
                if *two && b.index(n) != a.index(n) { parents.push(id(b.index(n))); }
                let generation = parents.iter().map(|p| map[p].key.generation + 1).max().unwrap();
                map.insert(id(n), DagEntry { key: OrderKey { generation, time_secs: *t, id: id(n) }, parents, shown: n % 3 != 0 });
            }
            // A head merging everything that is not yet an ancestor would be the
            // usual case; here the newest commit is the head and we compare on its ancestors.
            let head = id(parent_picks.len());
            let mut ancestors = HashSet::new();
            let mut stack = vec![head];
            while let Some(c) = stack.pop() {
                if ancestors.insert(c) { stack.extend(map[&c].parents.iter().copied()); }
            }
            let mut all: Vec<OrderKey> = ancestors.iter().filter(|c| map[c].shown).map(|c| map[c].key).collect();
            all.sort();
            all.reverse();
            all.truncate(limit);
            let mut dag = MapDag(map, 0);
            prop_assert_eq!(newest_first(&[head], limit, &mut dag).unwrap(), all);
        }
    }

    #[test]
    fn display_time_is_never_before_a_parent() {
        // One row per case: committer time, parents' times, display time.
        let rows: [(&str, i64, &[i64], i64); 5] = [
            ("a root", 100, &[], 100),
            ("later than its parent", 100, &[90], 100),
            ("dated before its parent", 100, &[3_000], 3_000),
            (
                "a merge follows its latest parent",
                100,
                &[90, 3_000],
                3_000,
            ),
            ("equal times", 100, &[100], 100),
        ];
        for (name, own, parents, expected) in rows {
            assert_eq!(
                display_time_secs(own, parents.iter().copied()),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn long_linear_history_touches_only_the_tail() {
        let n = 10_000;
        let mut map = HashMap::new();
        for i in 0..n {
            let parents = if i == 0 { vec![] } else { vec![id(i - 1)] };
            map.insert(
                id(i),
                DagEntry {
                    key: OrderKey {
                        generation: i as u64,
                        time_secs: 0,
                        id: id(i),
                    },
                    parents,
                    shown: true,
                },
            );
        }
        let mut dag = MapDag(map, 0);
        let page = newest_first(&[id(n - 1)], 50, &mut dag).unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(page[0].id, id(n - 1));
        assert!(dag.1 <= 52, "walk read {} commits", dag.1);
    }

    #[test]
    fn step_walk_yields_the_same_order_as_newest_first() {
        let mut map = HashMap::new();
        // 0 <- 1 <- 2, 0 <- 3, merge 4 of 2 and 3 (not shown).
        let parents: [&[usize]; 5] = [&[], &[0], &[1], &[0], &[2, 3]];
        for (n, ps) in parents.iter().enumerate() {
            let generation = ps.iter().map(|p| *p as u64 + 1).max().unwrap_or(0);
            map.insert(
                id(n),
                DagEntry {
                    key: OrderKey {
                        generation,
                        time_secs: n as i64,
                        id: id(n),
                    },
                    parents: ps.iter().map(|p| id(*p)).collect(),
                    shown: n != 4,
                },
            );
        }
        let mut dag = MapDag(map, 0);
        let expected = newest_first(&[id(4)], 10, &mut dag).unwrap();
        let mut walk = NewestFirstWalk::new(&[id(4)], &mut dag).unwrap();
        let mut got = Vec::new();
        while let Some(entry) = walk.next_entry(&mut dag).unwrap() {
            if entry.shown {
                got.push(entry.key);
            }
        }
        assert_eq!(got, expected);
    }
}
