//! Walks over a conversation's commit graph, behind [`CommitGraph`].
//!
//! The store answers "what are this commit's parents" and "what is its
//! display key" from its Git repository; everything here is plain graph
//! work, tested on in-memory graphs. Every walk goes from the newest
//! generation down: validation ties an accepted commit's generation to its
//! parents' (the greatest plus one), so once every commit newer than
//! generation `g` has been expanded, every ancestor of generation `g` has
//! been found. libgit2's walks order by commit time instead, which in a busy
//! swarm (many commits in one second) walks far past the fork.
//!
//! A commit that is not accepted yet (a fetched candidate) may lie about its
//! generation in its body; the walks treat an unreadable one as newest, and
//! a lie only changes *when* a candidate is taken, never *whether*.

use std::collections::{BinaryHeap, HashMap, HashSet};

use super::ids::CommitId;
use super::order::OrderKey;

/// Looks commits up for the walks (the store reads them from its repository).
pub trait CommitGraph {
    /// Why a lookup failed.
    type Error;
    /// The commit's parents, in header order.
    fn parents(&mut self, id: &CommitId) -> Result<Vec<CommitId>, Self::Error>;
    /// The commit's display key; its `generation` orders every walk.
    fn key(&mut self, id: &CommitId) -> Result<OrderKey, Self::Error>;
}

/// Why [`unknown_commits`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError<E> {
    /// The graph could not answer.
    #[error("commit graph: {0}")]
    Graph(E),
    /// More unknown commits than the caller allows.
    #[error("more than {max} unknown commits")]
    TooMany {
        /// The caller's bound.
        max: usize,
    },
}

/// The generation of `id`, or `u64::MAX` when its key cannot be read (an
/// unreadable candidate is taken first; validation rejects it).
fn generation_or_newest<G: CommitGraph>(graph: &mut G, id: &CommitId) -> u64 {
    graph.key(id).map_or(u64::MAX, |k| k.generation)
}

/// The ancestors of a set of commits (the set included), found lazily from
/// the newest generation down, so that every question about the same set
/// shares one walk.
#[derive(Debug, Clone)]
pub struct Ancestry {
    tips: Vec<CommitId>,
    found: HashSet<CommitId>,
    /// Found commits whose parents are not yet found, by generation.
    frontier: BinaryHeap<(u64, CommitId)>,
    started: bool,
}

impl Ancestry {
    /// The ancestry of `tips`.
    pub fn new(tips: &[CommitId]) -> Self {
        Self {
            tips: tips.to_vec(),
            found: tips.iter().copied().collect(),
            frontier: BinaryHeap::new(),
            started: false,
        }
    }

    /// Whether `x` is one of the tips or an ancestor of one. A commit whose
    /// key cannot be read is in no accepted history (`false`). On an error
    /// the walk stays as it was, so a later question is still answered right.
    pub fn has<G: CommitGraph>(&mut self, graph: &mut G, x: &CommitId) -> Result<bool, G::Error> {
        if self.found.contains(x) {
            return Ok(true);
        }
        let Ok(floor) = graph.key(x).map(|k| k.generation) else {
            return Ok(false);
        };
        if !self.started {
            // The tips are expanded whatever their generation: their own
            // bodies need not be readable.
            for tip in self.tips.clone() {
                self.expand(graph, &tip)?;
            }
            self.started = true;
        }
        while self.frontier.peek().is_some_and(|&(g, _)| g > floor) {
            let Some((g, id)) = self.frontier.pop() else {
                break;
            };
            if let Err(e) = self.expand(graph, &id) {
                self.frontier.push((g, id));
                return Err(e);
            }
        }
        Ok(self.found.contains(x))
    }

    /// Finds `id`'s parents; on an error finds none of them.
    fn expand<G: CommitGraph>(&mut self, graph: &mut G, id: &CommitId) -> Result<(), G::Error> {
        let mut parents = Vec::new();
        for parent in graph.parents(id)? {
            if !self.found.contains(&parent) {
                parents.push((graph.key(&parent)?.generation, parent));
            }
        }
        for (g, parent) in parents {
            if self.found.insert(parent) {
                self.frontier.push((g, parent));
            }
        }
        Ok(())
    }
}

/// Whether `x` is one of `tips` or an ancestor of one.
pub fn descends<G: CommitGraph>(
    graph: &mut G,
    tips: &[CommitId],
    x: &CommitId,
) -> Result<bool, G::Error> {
    Ancestry::new(tips).has(graph, x)
}

/// Where a commit stands in [`unknown_commits`]' walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Reachable from a known commit.
    Known,
    /// Queued, reachable only from the new tips so far.
    Unknown,
    /// Taken from the queue as unknown (found).
    Taken,
}

#[derive(Default)]
struct UnknownWalk {
    marks: HashMap<CommitId, Mark>,
    /// By generation, newest first.
    queue: BinaryHeap<(u64, CommitId)>,
    /// Queued commits marked [`Mark::Unknown`]: the walk ends at zero.
    unknown_queued: usize,
}

impl UnknownWalk {
    fn enqueue(&mut self, id: CommitId, mark: Mark, generation: u64) {
        match self.marks.get_mut(&id) {
            Some(m @ Mark::Unknown) if mark == Mark::Known => {
                *m = Mark::Known;
                self.unknown_queued -= 1;
            }
            // Known stays known; a taken commit stays found (only a
            // candidate that lied about its generation gets here).
            Some(_) => {}
            None => {
                self.marks.insert(id, mark);
                self.queue.push((generation, id));
                if mark == Mark::Unknown {
                    self.unknown_queued += 1;
                }
            }
        }
    }
}

/// The commits reachable from `new` and from none of `known` (accepted
/// commits, typically our tips), parents before children; more than `max`
/// is refused. The walk stops once only known commits are queued.
pub fn unknown_commits<G: CommitGraph>(
    graph: &mut G,
    new: &[CommitId],
    known: &[CommitId],
    max: usize,
) -> Result<Vec<CommitId>, WalkError<G::Error>> {
    let mut walk = UnknownWalk::default();
    for k in known {
        let generation = graph.key(k).map_err(WalkError::Graph)?.generation;
        walk.enqueue(*k, Mark::Known, generation);
    }
    for n in new {
        let generation = generation_or_newest(graph, n);
        walk.enqueue(*n, Mark::Unknown, generation);
    }
    let mut found = Vec::new();
    let mut parents_of: HashMap<CommitId, Vec<CommitId>> = HashMap::new();
    while walk.unknown_queued > 0 {
        let Some((_, id)) = walk.queue.pop() else {
            break;
        };
        let mark = match walk.marks.get_mut(&id) {
            Some(m @ Mark::Unknown) => {
                *m = Mark::Taken;
                walk.unknown_queued -= 1;
                Mark::Unknown
            }
            _ => Mark::Known,
        };
        let parents = graph.parents(&id).map_err(WalkError::Graph)?;
        for parent in &parents {
            let generation = match mark {
                Mark::Known => graph.key(parent).map_err(WalkError::Graph)?.generation,
                _ => generation_or_newest(graph, parent),
            };
            walk.enqueue(*parent, mark, generation);
        }
        if mark == Mark::Unknown {
            found.push(id);
            if found.len() > max {
                return Err(WalkError::TooMany { max });
            }
            parents_of.insert(id, parents);
        }
    }
    Ok(parents_first(&found, &parents_of))
}

/// `ids` ordered so that each comes after those of its parents among them
/// (depth first, from the oldest found); `parents_of` lists each one's
/// parents.
fn parents_first(ids: &[CommitId], parents_of: &HashMap<CommitId, Vec<CommitId>>) -> Vec<CommitId> {
    let mut placed = HashSet::with_capacity(ids.len());
    let mut order = Vec::with_capacity(ids.len());
    // Found newest first: start from the oldest so the order is the
    // generation order whenever generations are honest.
    for &start in ids.iter().rev() {
        if placed.contains(&start) {
            continue;
        }
        // (commit, whether its parents have been pushed)
        let mut stack = vec![(start, false)];
        while let Some((id, expanded)) = stack.pop() {
            if placed.contains(&id) {
                continue;
            }
            if expanded {
                placed.insert(id);
                order.push(id);
                continue;
            }
            stack.push((id, true));
            for parent in parents_of.get(&id).into_iter().flatten() {
                if parents_of.contains_key(parent) && !placed.contains(parent) {
                    stack.push((*parent, false));
                }
            }
        }
    }
    order
}

/// Which side of a common-ancestor walk reached a commit.
const FROM_SET: u8 = 1;
const FROM_OTHER: u8 = 2;
/// Reached from a common ancestor already found: not a best one.
const STALE: u8 = 4;

/// The best common ancestors of `other` and any commit of `set`: common
/// ancestors that are not ancestors of another common ancestor (what
/// `git merge-base --all` lists for two commits), ordered by display key.
/// Both sides are accepted history (validated generations).
pub fn best_common_ancestors<G: CommitGraph>(
    graph: &mut G,
    set: &[CommitId],
    other: &CommitId,
) -> Result<Vec<CommitId>, G::Error> {
    let mut flags: HashMap<CommitId, u8> = HashMap::new();
    let mut queue = BinaryHeap::new();
    for s in set {
        *flags.entry(*s).or_default() |= FROM_SET;
    }
    *flags.entry(*other).or_default() |= FROM_OTHER;
    for (id, _) in flags.clone() {
        queue.push((graph.key(&id)?.generation, id));
    }
    let mut found = Vec::new();
    // Stop once everything queued is stale: nothing below can be best.
    let mut live = queue.len();
    while live > 0 {
        let Some((_, id)) = queue.pop() else {
            break;
        };
        let mut f = flags[&id];
        if f & STALE == 0 {
            live -= 1;
        }
        if f & (FROM_SET | FROM_OTHER) == FROM_SET | FROM_OTHER && f & STALE == 0 {
            found.push(id);
            f |= STALE;
        }
        for parent in graph.parents(&id)? {
            let before = flags.get(&parent).copied();
            let after = before.unwrap_or(0) | f;
            if before == Some(after) {
                continue;
            }
            let was_live = before.is_some_and(|b| b & STALE == 0);
            flags.insert(parent, after);
            match before {
                // Queued already: only its liveness may change.
                Some(_) => {
                    if was_live && after & STALE != 0 {
                        live -= 1;
                    }
                }
                None => {
                    queue.push((graph.key(&parent)?.generation, parent));
                    if after & STALE == 0 {
                        live += 1;
                    }
                }
            }
        }
    }
    // Exact generations make a found commit never an ancestor of another;
    // checked anyway, since the answer feeds a rule every replica must agree on.
    let mut best = Vec::new();
    for x in &found {
        let mut dominated = false;
        for y in &found {
            if x != y && descends(graph, &[*y], x)? {
                dominated = true;
                break;
            }
        }
        if !dominated {
            best.push((graph.key(x)?, *x));
        }
    }
    best.sort();
    Ok(best.into_iter().map(|(_, id)| id).collect())
}

/// The tips after accepting `accepted` (commits whose parents are all in
/// accepted history or among themselves) on top of `tips`: whatever a new
/// commit names as a parent stops being a tip. Accepted history is closed
/// under ancestry, so no new commit is an ancestor of an old tip.
pub fn tips_after(tips: &[CommitId], accepted: &[(CommitId, Vec<CommitId>)]) -> Vec<CommitId> {
    let named: HashSet<&CommitId> = accepted.iter().flat_map(|(_, p)| p).collect();
    let mut out: Vec<CommitId> = tips
        .iter()
        .chain(accepted.iter().map(|(id, _)| id))
        .filter(|id| !named.contains(id))
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An in-memory graph: commit i has the given parents; generation is
    /// one more than the greatest parent's; time is i.
    #[derive(Debug, Clone, Default)]
    pub struct MemoryGraph {
        pub parents: HashMap<CommitId, Vec<CommitId>>,
        pub generations: HashMap<CommitId, u64>,
        pub order: Vec<CommitId>,
    }

    pub fn id(n: usize) -> CommitId {
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        CommitId::from_bytes(bytes)
    }

    impl MemoryGraph {
        pub fn add(&mut self, parents: &[CommitId]) -> CommitId {
            let c = id(self.order.len());
            let generation = parents
                .iter()
                .map(|p| self.generations[p] + 1)
                .max()
                .unwrap_or(0);
            self.parents.insert(c, parents.to_vec());
            self.generations.insert(c, generation);
            self.order.push(c);
            c
        }

        /// Naive ancestry: every commit reachable from `tips`.
        pub fn reachable(&self, tips: &[CommitId]) -> HashSet<CommitId> {
            let mut seen: HashSet<CommitId> = HashSet::new();
            let mut stack = tips.to_vec();
            while let Some(c) = stack.pop() {
                if seen.insert(c) {
                    stack.extend(self.parents[&c].iter().copied());
                }
            }
            seen
        }
    }

    impl CommitGraph for MemoryGraph {
        type Error = String;
        fn parents(&mut self, c: &CommitId) -> Result<Vec<CommitId>, String> {
            self.parents.get(c).cloned().ok_or_else(|| format!("{c}"))
        }
        fn key(&mut self, c: &CommitId) -> Result<OrderKey, String> {
            let generation = *self.generations.get(c).ok_or_else(|| format!("{c}"))?;
            let time = self.order.iter().position(|x| x == c).unwrap_or(0) as i64;
            Ok(OrderKey {
                generation,
                time_secs: time,
                id: *c,
            })
        }
    }

    /// A random DAG: each new commit takes 1–3 random earlier commits as
    /// parents (after the root).
    pub fn random_graph(picks: &[(usize, usize, usize, u8)]) -> MemoryGraph {
        let mut g = MemoryGraph::default();
        g.add(&[]);
        for &(a, b, c, n) in picks {
            let len = g.order.len();
            let mut parents: Vec<CommitId> = [a, b, c]
                .iter()
                .take(1 + usize::from(n % 3))
                .map(|x| g.order[x % len])
                .collect();
            parents.sort();
            parents.dedup();
            g.add(&parents);
        }
        g
    }

    /// Naive best common ancestors: common ancestors that no other common
    /// ancestor descends from.
    fn naive_best(g: &MemoryGraph, set: &[CommitId], other: CommitId) -> HashSet<CommitId> {
        let a = g.reachable(set);
        let b = g.reachable(&[other]);
        let common: HashSet<CommitId> = a.intersection(&b).copied().collect();
        common
            .iter()
            .filter(|x| {
                !common
                    .iter()
                    .any(|y| y != *x && g.reachable(&[*y]).contains(*x))
            })
            .copied()
            .collect()
    }

    proptest! {
        #[test]
        fn walks_agree_with_naive_reachability(
            picks in proptest::collection::vec((0usize..100, 0usize..100, 0usize..100, any::<u8>()), 1..60),
            a in 0usize..100, b in 0usize..100, c in 0usize..100,
        ) {
            let mut g = random_graph(&picks);
            let len = g.order.len();
            let (a, b, c) = (g.order[a % len], g.order[b % len], g.order[c % len]);

            // descends
            let reach = g.reachable(&[a, b]);
            for x in g.order.clone() {
                prop_assert_eq!(descends(&mut g, &[a, b], &x).unwrap(), reach.contains(&x));
            }

            // unknown_commits: exactly the difference, parents first
            let known = [c];
            let unknown = unknown_commits(&mut g, &[a, b], &known, 10_000).unwrap();
            let expected: HashSet<CommitId> =
                reach.difference(&g.reachable(&known)).copied().collect();
            prop_assert_eq!(unknown.iter().copied().collect::<HashSet<_>>(), expected);
            let position: HashMap<CommitId, usize> =
                unknown.iter().enumerate().map(|(i, x)| (*x, i)).collect();
            for x in &unknown {
                for p in &g.parents[x] {
                    if let Some(pp) = position.get(p) {
                        prop_assert!(*pp < position[x], "parent after child");
                    }
                }
            }

            // best common ancestors
            let best = best_common_ancestors(&mut g, &[a, c], &b).unwrap();
            prop_assert_eq!(best.iter().copied().collect::<HashSet<_>>(), naive_best(&g, &[a, c], b));
            let mut sorted = best.clone();
            sorted.sort_by_key(|x| g.key(x).unwrap());
            prop_assert_eq!(sorted, best);

            // tips: the maximal elements of everything reachable
            let all: Vec<(CommitId, Vec<CommitId>)> =
                g.order.iter().map(|x| (*x, g.parents[x].clone())).collect();
            let tips = tips_after(&[], &all);
            for x in &g.order {
                let is_tip = !g.order.iter().any(|y| g.parents[y].contains(x));
                prop_assert_eq!(tips.contains(x), is_tip);
            }
            prop_assert_eq!(g.reachable(&tips).len(), g.order.len());
        }
    }

    #[test]
    fn the_unknown_walk_is_bounded() {
        let mut g = MemoryGraph::default();
        let mut last = g.add(&[]);
        for _ in 0..10 {
            last = g.add(&[last]);
        }
        let root = g.order[0];
        assert_eq!(
            unknown_commits(&mut g, &[last], &[root], 5),
            Err(WalkError::TooMany { max: 5 })
        );
        assert_eq!(
            unknown_commits(&mut g, &[last], &[root], 10).unwrap().len(),
            10
        );
    }

    #[test]
    fn new_commits_replace_the_tips_they_name() {
        let (a, b, c, d) = (id(1), id(2), id(3), id(4));
        assert_eq!(tips_after(&[a, b], &[(c, vec![a, b])]), vec![c]);
        assert_eq!(tips_after(&[a, b], &[(c, vec![a])]), vec![b, c]);
        assert_eq!(tips_after(&[a], &[(c, vec![a]), (d, vec![c])]), vec![d]);
    }
}
