//! Merging diverged histories, and choosing the head, without oscillation.
//!
//! **Tree merge.** A merge commit has exactly two parents, ordered by commit
//! id (smaller first), and its tree is [`merge_files`] of the two parents'
//! trees over their merge base. It is a three-way merge per path: a path
//! changed on one side only takes that side; changed on both sides to
//! different contents, the larger content wins (CRLs: the higher CRL number),
//! and a modification beats a deletion. The rule is symmetric, so both orders
//! of the parents give the same tree. [`normalize`] then applies the
//! membership rules that a per-path merge cannot see: **ban beats join** (an
//! account in `banned/members/` loses any admin, member or invited file and its
//! devices move to `banned/devices/`), devices and CRLs of accounts that are
//! no longer members go, and votes about accounts no longer eligible go.
//!
//! **Head choice.** Merge commits carry no content, and two devices that merge
//! the same heads make two different commits (each signs its own). Merging
//! those merges again would go on forever. So heads are compared by
//! *content containment*: `contains(t, x)` holds when `x` is `t` or an
//! ancestor of `t`, or when `x` is a merge whose parents are all contained in
//! `t` (so `x` adds nothing `t` lacks). [`plan_head`] then keeps, adopts or
//! merges; when each head contains the other (equivalent merges), the smaller
//! commit id wins on every replica. After the last write, one full exchange
//! gives every replica a head containing all content; a second one makes every
//! pair of heads equivalent, and all adopt the smallest id — the same head,
//! in at most three rounds, with no merge of merges.

use super::ids::CommitId;
use super::state::{banned_device_path, crl_path, Files};
use crate::cert::DeviceCert;
use crate::crl::RevocationList;
use crate::id::AccountId;
use std::collections::BTreeSet;

/// What a replica does with its head when it learns of another valid head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPlan {
    /// Our head already contains theirs (or wins the tie).
    Keep,
    /// Their head contains ours (fast-forward, or an equivalent merge with a smaller id).
    Adopt(CommitId),
    /// Neither contains the other: merge, parents in this order.
    Merge(CommitId, CommitId),
}

/// Decides between our head and theirs; `contains(t, x)` is content containment
/// (see the module doc), supplied by the store that can walk the graph.
pub fn plan_head(
    ours: CommitId,
    theirs: CommitId,
    mut contains: impl FnMut(&CommitId, &CommitId) -> bool,
) -> HeadPlan {
    if ours == theirs {
        return HeadPlan::Keep;
    }
    let ours_has_theirs = contains(&ours, &theirs);
    let theirs_has_ours = contains(&theirs, &ours);
    match (ours_has_theirs, theirs_has_ours) {
        (true, true) if theirs < ours => HeadPlan::Adopt(theirs),
        (true, _) => HeadPlan::Keep,
        (false, true) => HeadPlan::Adopt(theirs),
        (false, false) => HeadPlan::Merge(ours.min(theirs), ours.max(theirs)),
    }
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

    fn id(n: u8) -> CommitId {
        CommitId::from_bytes([n; 20])
    }

    #[test]
    fn plan_head_cases() {
        // One row per case: containment (ours has theirs, theirs has ours) → plan.
        let rows = [
            ((true, false), HeadPlan::Keep),
            ((false, true), HeadPlan::Adopt(id(2))),
            ((false, false), HeadPlan::Merge(id(1), id(2))),
            ((true, true), HeadPlan::Keep), // ours (1) is smaller
        ];
        for ((a, b), expected) in rows {
            let plan = plan_head(id(1), id(2), |t, _| if *t == id(1) { a } else { b });
            assert_eq!(plan, expected);
        }
        let plan = plan_head(id(3), id(2), |_, _| true);
        assert_eq!(
            plan,
            HeadPlan::Adopt(id(2)),
            "equivalent heads: smaller id wins"
        );
        assert_eq!(plan_head(id(3), id(3), |_, _| false), HeadPlan::Keep);
    }

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
}
