//! The tip refs: one `refs/heads/tips/<id>` per tip, and `refs/heads/main`
//! (with `HEAD`) on the tip with the greatest display key.
//!
//! Moving the tips writes the new refs first (each fsync'd by libgit2), then
//! deletes the ones no longer tips, then moves `main`. A crash in between
//! leaves extra refs naming ancestors of other tips; opening prunes them
//! ([`Store::read_tips`]), so the tip set is always exactly the maximal
//! accepted commits.

use git2::Oid;
use starling_protocol::swarm::dag::Ancestry;
use starling_protocol::swarm::ids::CommitId;

use super::{commit_id, oid, Store, StoreError};

/// Where `HEAD` points: the tip with the greatest display key.
pub const HEAD_REF: &str = "refs/heads/main";
/// Prefix of the tip refs (`refs/heads/tips/<40 hex>`): under `refs/heads/`
/// so a stock `git clone` through `starling git-upload-pack` brings every tip.
pub const TIP_REF_PREFIX: &str = "refs/heads/tips/";

/// The tip refs of a repository as they are on disk right now, sorted (for
/// observers reading a replica another thread writes: between a move's
/// steps they may include an ancestor of another tip).
pub fn tip_refs(repo: &git2::Repository) -> Vec<Oid> {
    let mut tips: Vec<Oid> = match repo.references_glob(&format!("{TIP_REF_PREFIX}*")) {
        Ok(refs) => refs.flatten().filter_map(|r| r.target()).collect(),
        Err(_) => Vec::new(),
    };
    tips.sort();
    tips.dedup();
    tips
}

/// The ref of one tip.
pub fn tip_ref(id: &CommitId) -> String {
    format!("{TIP_REF_PREFIX}{id}")
}

impl Store {
    /// The tips on disk, sorted, without any that another one descends from
    /// (left by a crash between writing new tip refs and deleting old ones).
    pub(super) fn read_tips(&mut self) -> Result<Vec<CommitId>, StoreError> {
        let mut found = Vec::new();
        for reference in self.repo.references_glob(&format!("{TIP_REF_PREFIX}*"))? {
            if let Some(target) = reference?.target() {
                found.push(commit_id(target));
            }
        }
        found.sort();
        found.dedup();
        if found.len() < 2 {
            return Ok(found);
        }
        let mut tips = Vec::with_capacity(found.len());
        for (i, candidate) in found.iter().enumerate() {
            let others: Vec<CommitId> = found
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, t)| *t)
                .collect();
            // A walk of the others stops at the candidate's generation.
            let mut ancestry = Ancestry::new(&others);
            if !ancestry.has(self, candidate)? {
                tips.push(*candidate);
            }
        }
        // Their refs go, so a stock clone lists only the tips. A failure
        // leaves an extra ref that the next open prunes again.
        for stale in found.iter().filter(|f| !tips.contains(f)) {
            if let Ok(mut reference) = self.repo.find_reference(&tip_ref(stale)) {
                if let Err(e) = reference.delete() {
                    tracing::debug!(tip = %stale, error = %e, "stale tip ref not removed");
                }
            }
        }
        Ok(tips)
    }

    /// Reads the tips from disk again when they changed under this handle
    /// (by hand, or by a tool an operator ran): the refs are the truth, and
    /// reading one small directory per batch or receive costs little.
    pub(super) fn refresh_tips(&mut self) -> Result<(), StoreError> {
        let on_disk: Vec<CommitId> = tip_refs(&self.repo).into_iter().map(commit_id).collect();
        if on_disk != self.tips && !on_disk.is_empty() {
            self.tips = self.read_tips()?;
        }
        Ok(())
    }

    /// Moves the durable tips from `self.tips` to `new` (sorted), whose
    /// objects are all durable already.
    pub(super) fn write_tips(&mut self, new: Vec<CommitId>, why: &str) -> Result<(), StoreError> {
        debug_assert!(new.windows(2).all(|w| w[0] < w[1]), "tips are sorted");
        debug_assert!(!new.is_empty(), "a conversation always has a tip");
        if new == self.tips {
            return Ok(());
        }
        for tip in new.iter().filter(|t| !self.tips.contains(t)) {
            self.repo.reference(&tip_ref(tip), oid(tip), true, why)?;
        }
        for old in self.tips.iter().filter(|t| !new.contains(t)) {
            if let Ok(mut reference) = self.repo.find_reference(&tip_ref(old)) {
                reference.delete()?;
            }
        }
        self.tips = new;
        self.point_main_at_newest_tip(why)
    }

    /// Moves `main` to the tip with the greatest display key, unless it is
    /// there already.
    pub(super) fn point_main_at_newest_tip(&mut self, why: &str) -> Result<(), StoreError> {
        let mut newest = None;
        for tip in self.tips.clone() {
            let key = self.order_key(&tip)?;
            if newest.is_none_or(|(k, _)| key > k) {
                newest = Some((key, tip));
            }
        }
        let Some((_, main)) = newest else {
            return Ok(());
        };
        if self.repo.refname_to_id(HEAD_REF).ok() != Some(oid(&main)) {
            self.repo.reference(HEAD_REF, oid(&main), true, why)?;
        }
        Ok(())
    }

    /// Makes `tips` (sorted, durable, crafted by hand) the tips without
    /// validating anything: for tests and benches that build history
    /// faster than the rules would, or plant invalid history on purpose.
    /// The node never calls it.
    pub fn replace_tips_unvalidated(&mut self, tips: Vec<CommitId>) -> Result<(), StoreError> {
        self.merged.clear();
        self.write_tips(tips, "crafted")
    }

    /// Points `HEAD` at `refs/heads/main` (a new repository's first tips).
    pub(super) fn set_head_ref(&self) -> Result<(), StoreError> {
        self.repo.set_head(HEAD_REF)?;
        Ok(())
    }

    /// The tip oids, for walks that start from every tip.
    pub(super) fn tip_oids(&self) -> Vec<Oid> {
        self.tips.iter().map(oid).collect()
    }
}
