//! The tree merge: the membership state of several commits at once.
//!
//! A replica holds several **tips** when members wrote concurrently; the
//! state every rule reads is the merge of the tips' trees, and a commit with
//! several parents has as its tree that same merge plus its own change. So
//! the merge must depend only on the commit graph: [`merge_parents`] folds
//! the parents in commit-id order, each step a three-way [`merge_files`] over
//! the merge base of the parents folded so far and the next one (Git's
//! recursive strategy, with a virtual base for criss-cross histories).
//!
//! **Three-way rule.** A path changed on one side only takes that side;
//! changed on both sides to different contents, the larger content wins
//! (CRLs: the higher CRL number), and a modification beats a deletion. The
//! rule is symmetric, so the order of the two sides does not matter.
//! [`normalize`] then applies the membership rules that a per-path merge
//! cannot see: **ban beats join** (an account in `banned/members/` loses any
//! admin, member or invited file and its devices move to `banned/devices/`),
//! devices and CRLs of accounts that are no longer members go, and votes
//! about accounts no longer eligible go.

use std::sync::Arc;

use super::dag::{best_common_ancestors, CommitGraph};
use super::ids::CommitId;
use super::state::{banned_device_path, crl_path, Files};
use crate::cert::DeviceCert;
use crate::crl::RevocationList;
use crate::id::AccountId;
use std::collections::BTreeSet;

/// How deep the virtual merge base (criss-cross histories) recurses before
/// falling back to the greatest best common ancestor's tree.
pub const MERGE_BASE_RECURSION_MAX: usize = 8;

/// What the merge needs of history: the graph, and each commit's files.
pub trait TreeHistory: CommitGraph {
    /// The files of an accepted (or in-batch, already validated) commit's tree.
    fn files(&mut self, id: &CommitId) -> Result<Arc<Files>, Self::Error>;
}

/// The merged files of `parents` (any order; duplicates ignored): with one
/// parent, its files; otherwise, in ascending commit-id order `P1 < … < Pn`,
/// `V = files(P1)`, then for each next `Pi`: `V` stays when `files(Pi)`
/// equals it, else `V = merge_files(base, V, files(Pi))` where `base` is the
/// virtual merge base of `{P1 … Pi-1}` and `Pi` (empty when they share no
/// ancestor). See `docs/PROTOCOL.md` §9.7.
pub fn merge_parents<H: TreeHistory>(
    history: &mut H,
    parents: &[CommitId],
) -> Result<Arc<Files>, H::Error> {
    let mut sorted = parents.to_vec();
    sorted.sort();
    sorted.dedup();
    let Some((&first, rest)) = sorted.split_first() else {
        return Ok(Arc::new(Files::new()));
    };
    let mut merged = history.files(&first)?;
    let mut so_far = vec![first];
    for &next in rest {
        let theirs = history.files(&next)?;
        if !Arc::ptr_eq(&merged, &theirs) && *merged != *theirs {
            let base = virtual_base(history, &so_far, &next, 0)?.unwrap_or_default();
            merged = Arc::new(merge_files(&base, &merged, &theirs));
        }
        so_far.push(next);
    }
    Ok(merged)
}

/// The files of the merge base of `other` and the (virtual) commit whose
/// parents are `set`: with one best common ancestor, its tree; with several
/// (criss-cross histories), their recursive merge in display-key order.
/// Picking just one of them would make a file the other one had already
/// added (and a later commit removed) look new, and resurrect it.
fn virtual_base<H: TreeHistory>(
    history: &mut H,
    set: &[CommitId],
    other: &CommitId,
    depth: usize,
) -> Result<Option<Arc<Files>>, H::Error> {
    let bases = best_common_ancestors(history, set, other)?;
    let Some((&first, rest)) = bases.split_first() else {
        return Ok(None);
    };
    if depth >= MERGE_BASE_RECURSION_MAX {
        // Bounded work on hostile histories: the greatest base alone.
        let last = *bases.last().expect("bases is not empty");
        return Ok(Some(history.files(&last)?));
    }
    let mut merged = history.files(&first)?;
    let mut so_far = vec![first];
    for &next in rest {
        let inner = virtual_base(history, &so_far, &next, depth + 1)?.unwrap_or_default();
        let theirs = history.files(&next)?;
        merged = Arc::new(merge_files(&inner, &merged, &theirs));
        so_far.push(next);
    }
    Ok(Some(merged))
}

fn pick_conflict(path: &str, a: &[u8], b: &[u8]) -> Vec<u8> {
    if path.starts_with("CRLs/") {
        let number = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| RevocationList::from_pem(t).ok())
                .map(|c| c.number())
        };
        match (number(a), number(b)) {
            (Some(x), Some(y)) if x != y => return if x > y { a.to_vec() } else { b.to_vec() },
            _ => {}
        }
    }
    a.max(b).to_vec()
}

/// Three-way merge of two trees' files over their base, then [`normalize`].
pub fn merge_files(base: &Files, ours: &Files, theirs: &Files) -> Files {
    let paths: BTreeSet<&String> = base
        .keys()
        .chain(ours.keys())
        .chain(theirs.keys())
        .collect();
    let mut merged = Files::new();
    for path in paths {
        let (x, y, z) = (base.get(path), ours.get(path), theirs.get(path));
        let value = if y == z || z == x {
            y.cloned()
        } else if y == x {
            z.cloned()
        } else {
            match (y, z) {
                (Some(a), Some(b)) => Some(pick_conflict(path, a, b)),
                (Some(a), None) | (None, Some(a)) => Some(a.clone()),
                (None, None) => None,
            }
        };
        if let Some(content) = value {
            merged.insert(path.clone(), content);
        }
    }
    normalize(merged)
}

fn account_in(path: &str, dir: &str, suffix: &str) -> Option<AccountId> {
    path.strip_prefix(dir)?.strip_suffix(suffix)?.parse().ok()
}

fn device_owner(content: &[u8]) -> Option<AccountId> {
    let pem = std::str::from_utf8(content).ok()?;
    DeviceCert::from_pem(pem)
        .ok()
        .map(|c| c.claimed_account_id())
}

/// Applies the membership rules a per-path merge cannot see (module doc).
/// Idempotent; a tree produced by valid commits on one branch is unchanged.
pub fn normalize(mut files: Files) -> Files {
    let banned: BTreeSet<AccountId> = files
        .keys()
        .filter_map(|p| account_in(p, "banned/members/", ".crt"))
        .collect();
    for account in &banned {
        files.remove(&super::state::admin_path(account));
        files.remove(&super::state::member_path(account));
        files.remove(&super::state::invited_path(account));
    }
    let holders: BTreeSet<AccountId> = files
        .keys()
        .filter_map(|p| {
            account_in(p, "admins/", ".crt").or_else(|| account_in(p, "members/", ".crt"))
        })
        .collect();
    let invited: BTreeSet<AccountId> = files
        .keys()
        .filter_map(|p| account_in(p, "invited/", ""))
        .collect();
    // Join beats an invitation still pending on the other branch.
    for account in holders.intersection(&invited) {
        files.remove(&super::state::invited_path(account));
    }
    let device_paths: Vec<(String, Vec<u8>)> = files
        .range("devices/".to_owned().."devices0".to_owned())
        .map(|(p, c)| (p.clone(), c.clone()))
        .collect();
    for (path, content) in device_paths {
        let owner = device_owner(&content);
        match owner {
            Some(owner) if banned.contains(&owner) => {
                files.remove(&path);
                if let Some(id) = path
                    .strip_prefix("devices/")
                    .and_then(|p| p.strip_suffix(".crt"))
                    .and_then(|p| p.parse().ok())
                {
                    files.insert(banned_device_path(&id), content);
                }
            }
            Some(owner) if holders.contains(&owner) => {}
            // The owner left or was removed on the other branch.
            _ => {
                files.remove(&path);
            }
        }
    }
    let crl_accounts: Vec<AccountId> = files
        .keys()
        .filter_map(|p| account_in(p, "CRLs/", ".crl"))
        .collect();
    for account in crl_accounts {
        if !holders.contains(&account) {
            files.remove(&crl_path(&account));
        }
    }
    let vote_paths: Vec<String> = files
        .range("votes/".to_owned().."votes0".to_owned())
        .map(|(p, _)| p.clone())
        .collect();
    for path in vote_paths {
        let mut parts = path.split('/').skip(1);
        let (action, target) = (parts.next(), parts.next().and_then(|t| t.parse().ok()));
        let keep = match (action, target) {
            (Some("ban"), Some(t)) => {
                !banned.contains(&t) && (holders.contains(&t) || invited.contains(&t))
            }
            (Some("unban"), Some(t)) => banned.contains(&t),
            _ => true,
        };
        if !keep {
            files.remove(&path);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_way_merge_is_symmetric_and_takes_one_sided_changes() {
        let f = |pairs: &[(&str, &str)]| -> Files {
            pairs
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect()
        };
        let base = f(&[("mode", "public"), ("profile.json", "{}")]);
        let ours = f(&[("mode", "public"), ("profile.json", r#"{"title":"a"}"#)]);
        let theirs = f(&[("mode", "public"), ("profile.json", r#"{"title":"b"}"#)]);
        let one = merge_files(&base, &ours, &theirs);
        assert_eq!(one, merge_files(&base, &theirs, &ours));
        assert_eq!(one["profile.json"], br#"{"title":"b"}"#.to_vec());
        assert_eq!(merge_files(&base, &base, &theirs), theirs);
        assert_eq!(merge_files(&base, &ours, &base), ours);
    }

    fn arbitrary_files() -> impl proptest::strategy::Strategy<Value = Files> {
        use proptest::prelude::*;
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let paths = vec![
            "mode".to_owned(),
            "profile.json".to_owned(),
            format!("invited/{a}"),
            format!("members/{a}.crt"),
            format!("banned/members/{a}.crt"),
            format!("CRLs/{b}.crl"),
            format!("devices/{b}.crt"),
            format!("votes/ban/{a}/{b}"),
            format!("votes/unban/{a}/{b}"),
            "junk/x".to_owned(),
        ];
        proptest::collection::btree_map(
            proptest::sample::select(paths),
            proptest::collection::vec(any::<u8>(), 0..4),
            0..8,
        )
    }

    proptest::proptest! {
        /// The merge is symmetric in its two sides, normalization is
        /// idempotent, and neither panics on any tree.
        #[test]
        fn merge_is_symmetric_and_normalize_idempotent(
            base in arbitrary_files(), ours in arbitrary_files(), theirs in arbitrary_files()
        ) {
            let merged = merge_files(&base, &ours, &theirs);
            proptest::prop_assert_eq!(&merged, &merge_files(&base, &theirs, &ours));
            proptest::prop_assert_eq!(normalize(merged.clone()), merged.clone());
            let _ = super::super::state::SwarmState::from_files(merged);
        }
    }

    /// A memory graph whose commits carry file maps.
    struct FileGraph {
        graph: crate::swarm::dag::tests::MemoryGraph,
        files: std::collections::HashMap<CommitId, Arc<Files>>,
    }

    impl CommitGraph for FileGraph {
        type Error = String;
        fn parents(&mut self, id: &CommitId) -> Result<Vec<CommitId>, String> {
            self.graph.parents(id)
        }
        fn key(&mut self, id: &CommitId) -> Result<crate::swarm::order::OrderKey, String> {
            self.graph.key(id)
        }
    }

    impl TreeHistory for FileGraph {
        fn files(&mut self, id: &CommitId) -> Result<Arc<Files>, String> {
            self.files.get(id).cloned().ok_or_else(|| id.to_string())
        }
    }

    fn files_of(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    /// A file added on a criss-cross's both sides' common history and
    /// removed on one side stays removed: the virtual base remembers it.
    #[test]
    fn a_removal_survives_a_criss_cross_merge_of_many_parents() {
        let mut g = FileGraph {
            graph: Default::default(),
            files: Default::default(),
        };
        let add = |g: &mut FileGraph, parents: &[CommitId], files: Files| {
            let id = g.graph.add(parents);
            g.files.insert(id, Arc::new(files));
            id
        };
        let root = add(&mut g, &[], files_of(&[("mode", "public")]));
        let with = files_of(&[("mode", "public"), ("profile.json", "x")]);
        let a = add(&mut g, &[root], with.clone());
        let b = add(&mut g, &[root], files_of(&[("mode", "public")]));
        // Criss-cross: two merges of a and b, one side then drops the file.
        let m1 = add(&mut g, &[a, b], with.clone());
        let m2 = add(&mut g, &[a, b], with.clone());
        let dropped = add(&mut g, &[m1], files_of(&[("mode", "public")]));
        let other = add(&mut g, &[m2], with.clone());
        let third = add(&mut g, &[root], files_of(&[("mode", "public"), ("z", "1")]));
        let merged = merge_parents(&mut g, &[dropped, other, third]).unwrap();
        assert!(!merged.contains_key("profile.json"), "{merged:?}");
        assert_eq!(merged.get("z").map(Vec::as_slice), Some(&b"1"[..]));
    }

    proptest::proptest! {
        /// The merge of several parents depends on the set, not the order.
        #[test]
        fn merging_parents_does_not_depend_on_their_order(
            picks in proptest::collection::vec((0usize..40, 0usize..40, 0usize..40, proptest::prelude::any::<u8>()), 1..30),
            trees in proptest::collection::vec(arbitrary_files(), 31),
            chosen in proptest::collection::vec(0usize..40, 1..6),
            rotate in 0usize..6,
        ) {
            let graph = crate::swarm::dag::tests::random_graph(&picks);
            let files = graph
                .order
                .iter()
                .zip(trees)
                .map(|(id, f)| (*id, Arc::new(f)))
                .collect();
            let mut g = FileGraph { graph, files };
            let len = g.graph.order.len();
            let parents: Vec<CommitId> = chosen.iter().map(|i| g.graph.order[i % len]).collect();
            let mut turned = parents.clone();
            turned.rotate_left(rotate % parents.len());
            turned.reverse();
            let one = merge_parents(&mut g, &parents).unwrap();
            let two = merge_parents(&mut g, &turned).unwrap();
            proptest::prop_assert_eq!(one, two);
        }
    }
}
