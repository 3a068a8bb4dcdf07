//! Receiving: validating what a fetch or an inline pack brought, and adding
//! what passes to the history. Nothing here writes a commit.
//!
//! A fetch from a peer lands its tips under `refs/starling/quarantine/
//! <peer>/`; the candidates are the commits reachable from them and not from
//! our tips, validated parents first (signatures on several threads first).
//! Accepted commits join the history and the tips become the maximal ones
//! ([`starling_protocol::swarm::dag::tips_after`]); a rejected commit rejects
//! its descendants, never the valid history beside it.

use std::path::Path;

use git2::{Oid, Repository};
use starling_protocol::swarm::commit::KeyCache;
use starling_protocol::swarm::dag::{tips_after, unknown_commits};
use starling_protocol::swarm::gossip::INLINE_PACK_BYTES_MAX;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::FETCH_COMMITS_MAX;
use starling_protocol::swarm::validation::{
    check_signature_with, validate_batch_checked, BatchVerdict, Candidate, Changes, Rejection,
    SignatureCheck,
};
use starling_protocol::DeviceId;

use super::tips::TIP_REF_PREFIX;
use super::{
    check_peer_name, commit_id, diff_files, durable, oid, read_files, Store, StoreError,
    SIGNATURE_PARALLEL_MIN, SIGNATURE_THREADS_MAX,
};

/// Prefix of fetched, not yet validated tips (`<prefix><peer>/<n>`).
pub const QUARANTINE_REF_PREFIX: &str = "refs/starling/quarantine/";

/// The ref prefix a fetch from `peer` lands under before validation.
pub fn quarantine_prefix(peer: &str) -> String {
    format!("{QUARANTINE_REF_PREFIX}{peer}/")
}

/// The refspec that fetches a replica's tips into `peer`'s quarantine.
pub fn quarantine_refspec(peer: &str) -> String {
    format!("+{TIP_REF_PREFIX}*:{}*", quarantine_prefix(peer))
}

/// The outcome of receiving a peer's tips.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// Commits accepted into history.
    pub accepted: usize,
    /// Commits refused, with reasons.
    pub rejected: Vec<Rejection>,
    /// Our tips afterwards.
    pub tips: Vec<CommitId>,
}

impl Store {
    /// Clones conversation `conversation` from another replica's repository at
    /// `remote` into a new bare repository at `path`, validating every commit.
    /// On failure `path` holds an incomplete repository that [`Store::open`]
    /// refuses; the caller removes it.
    pub fn clone_from(
        remote: &Path,
        path: &Path,
        conversation: CommitId,
        peer: &str,
    ) -> Result<Self, StoreError> {
        check_peer_name(peer)?;
        let repo = durable::init_bare(path)?;
        fetch_into_quarantine(&repo, remote, peer)?;
        Self::adopt_quarantined(repo, conversation, peer)
    }

    /// Finishes a clone whose objects some transport already fetched into
    /// `repo` (a fresh bare repository) under [`quarantine_prefix`]`(peer)`:
    /// validates every commit and, if all of it is valid, makes the fetched
    /// tips ours. On failure the caller removes the repository.
    pub fn adopt_quarantined(
        repo: Repository,
        conversation: CommitId,
        peer: &str,
    ) -> Result<Self, StoreError> {
        check_peer_name(peer)?;
        let theirs = quarantined_tips(&repo, peer)?;
        let mut store = Self::with_repo(repo, conversation)?;
        if theirs.is_empty() {
            return Err(StoreError::NotAConversation(
                "the peer advertised no tips".into(),
            ));
        }
        let candidates = store.candidates(&theirs)?;
        let verdict = store.validate(&candidates);
        store.count_rejections(&verdict.rejected);
        delete_quarantine(&store.repo, peer)?;
        if !verdict.rejected.is_empty() || verdict.accepted.is_empty() {
            return Err(StoreError::Rejected(verdict.rejected));
        }
        // The conversation id is the root: a peer cannot pass off another
        // swarm's history under this id (validation refuses a second root).
        if verdict.accepted[0].id != conversation {
            return Err(StoreError::NotAConversation(format!(
                "fetched history does not start at {conversation}"
            )));
        }
        let tips = store.accept(&verdict)?;
        Self::write_config(&store.repo, conversation)?;
        store.write_tips(tips, "clone")?;
        store.set_head_ref()?;
        Ok(store)
    }

    /// Receives the tips a transport fetched under
    /// [`quarantine_prefix`]`(peer)`, then deletes those refs whatever the
    /// verdict.
    pub fn receive_quarantined(&mut self, peer: &str) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        let theirs = quarantined_tips(&self.repo, peer)?;
        let result = self.receive(&theirs);
        delete_quarantine(&self.repo, peer)?;
        result
    }

    /// Fetches `remote`'s tips (a path to another replica's repository) into
    /// quarantine and receives them as peer `peer`.
    pub fn fetch_from(&mut self, remote: &Path, peer: &str) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        fetch_into_quarantine(&self.repo, remote, peer)?;
        let result = self.receive_quarantined(peer);
        self.consolidate_packs();
        result
    }

    /// Receives `tips` whose objects are in our object database (an inline
    /// pack) under the same rules as fetched ones, from `peer`'s `bases`:
    /// refused, touching nothing, when our history lacks one of them (the
    /// pack would leave commits without their history). When the pack
    /// still lacks something validation needs (a peer that lied about its
    /// bases), it fails, moves nothing and removes the pack again: the
    /// caller then fetches.
    pub fn receive_pack(
        &mut self,
        tips: &[CommitId],
        bases: &[CommitId],
        pack: &[u8],
    ) -> Result<FetchReport, StoreError> {
        if pack.len() > INLINE_PACK_BYTES_MAX {
            return Err(StoreError::TreeBound {
                tree: tips.first().map(|t| t.to_hex()).unwrap_or_default(),
                what: format!("inline pack of {} bytes", pack.len()),
            });
        }
        let held = self.holds(bases)?;
        if let Some((base, _)) = bases.iter().zip(&held).find(|(_, held)| !**held) {
            return Err(StoreError::PackBaseMissing(*base));
        }
        let indexed_before = durable::pack_is_indexed(&self.repo, pack);
        let tips_before = self.tips.clone();
        durable::write_pack(&self.repo, pack)?;
        let result = self.receive(tips);
        if result.is_err() && !indexed_before && self.tips == tips_before {
            // Nothing refers to its objects. Kept, a commit without its
            // history would sit in the object database, and libgit2 never
            // fetches an object it already holds: that tip could not be
            // fetched whole again.
            match durable::remove_pack(&self.repo, pack) {
                // This handle's object database still lists the pack.
                Ok(()) => self.reopen()?,
                Err(e) => tracing::warn!(error = %e, "incomplete inline pack not removed"),
            }
        }
        result
    }

    /// Opens the repository afresh (a new object database: one that only
    /// knows the packs on disk now). Nothing may be staged.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let repo = durable::open_bare(self.repo.path())?;
        self.staging = durable::Staging::attach(&repo)?;
        self.repo = repo;
        Ok(())
    }

    /// Validates `theirs` (tips whose objects are in our object database)
    /// and everything under them we lack, and adds what passes.
    pub fn receive(&mut self, theirs: &[CommitId]) -> Result<FetchReport, StoreError> {
        debug_assert!(
            self.staged.is_none(),
            "staged commits are made durable before a receive"
        );
        self.refresh_tips()?;
        let candidates = self.candidates(theirs)?;
        let verdict = self.validate(&candidates);
        self.count_rejections(&verdict.rejected);
        let tips = self.accept(&verdict)?;
        self.write_tips(tips, "receive")?;
        Ok(FetchReport {
            accepted: verdict.accepted.len(),
            rejected: verdict.rejected,
            tips: self.tips.clone(),
        })
    }

    /// Remembers a verdict's accepted commits; the tips they make.
    fn accept(&mut self, verdict: &BatchVerdict) -> Result<Vec<CommitId>, StoreError> {
        let mut added = Vec::with_capacity(verdict.accepted.len());
        for accepted in &verdict.accepted {
            let id = oid(&accepted.id);
            let tree = self.tree_of(id)?;
            self.remember(id, tree, accepted);
            added.push((accepted.id, accepted.parents.clone()));
        }
        Ok(tips_after(&self.tips, &added))
    }

    /// Validates candidates (parents first) against accepted history. Their
    /// signatures, the costly part, are checked first on up to
    /// [`SIGNATURE_THREADS_MAX`] threads; the rules then run in order here,
    /// with the same verdicts as checking one commit after another.
    fn validate(&mut self, candidates: &[Candidate]) -> BatchVerdict {
        let signatures = check_signatures(candidates);
        let conversation = Some(self.conversation);
        validate_batch_checked(candidates, &signatures, self, conversation)
    }

    /// Commits reachable from `theirs` and not from our tips, parents first.
    fn candidates(&mut self, theirs: &[CommitId]) -> Result<Vec<Candidate>, StoreError> {
        let known = self.tips.clone();
        let ids = unknown_commits(self, theirs, &known, FETCH_COMMITS_MAX)?;
        ids.into_iter().map(|id| self.candidate(oid(&id))).collect()
    }

    /// Parses a commit into the values the rules judge.
    pub fn candidate(&mut self, id: Oid) -> Result<Candidate, StoreError> {
        let (signature, payload) = match self.repo.extract_signature(&id, None) {
            Ok((sig, payload)) => (Some(sig.to_vec()), payload.to_vec()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                let odb = self.repo.odb()?;
                let raw = odb.read(id)?.data().to_vec();
                (None, raw)
            }
            Err(e) => return Err(e.into()),
        };
        let commit = self.repo.find_commit(id)?;
        let tree = commit.tree_id();
        let first_parent = commit.parent_ids().next();
        drop(commit);
        let changes = match first_parent {
            None => read_files(&self.repo, tree)?
                .into_iter()
                .map(|(p, c)| (p, Some(c)))
                .collect(),
            Some(parent) => {
                let parent_tree = self.repo.find_commit(parent)?.tree_id();
                if parent_tree == tree {
                    Changes::new()
                } else {
                    let before = self.files_of_tree(parent_tree)?;
                    let after = read_files(&self.repo, tree)?;
                    diff_files(&before, &after)
                }
            }
        };
        Ok(Candidate {
            id: commit_id(id),
            signature,
            payload,
            changes,
        })
    }
}

/// The tips a fetch from `peer` left in quarantine.
fn quarantined_tips(repo: &Repository, peer: &str) -> Result<Vec<CommitId>, StoreError> {
    let mut tips = Vec::new();
    for reference in repo.references_glob(&format!("{}*", quarantine_prefix(peer)))? {
        if let Some(target) = reference?.target() {
            tips.push(commit_id(target));
        }
    }
    tips.sort();
    tips.dedup();
    Ok(tips)
}

/// Deletes the quarantine refs of `peer`.
fn delete_quarantine(repo: &Repository, peer: &str) -> Result<(), StoreError> {
    let names: Vec<String> = repo
        .references_glob(&format!("{}*", quarantine_prefix(peer)))?
        .filter_map(|r| r.ok().and_then(|r| r.name().map(str::to_owned)))
        .collect();
    for name in names {
        if let Ok(mut reference) = repo.find_reference(&name) {
            reference.delete()?;
        }
    }
    Ok(())
}

/// [`check_signature`](starling_protocol::swarm::validation::check_signature)
/// of every candidate, in order, split across the machine's cores when the
/// batch is large enough to pay for the threads.
pub fn check_signatures(candidates: &[Candidate]) -> Vec<SignatureCheck> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SIGNATURE_THREADS_MAX);
    let check_part = |part: &[Candidate]| {
        let mut keys = KeyCache::default();
        part.iter()
            .map(|c| check_signature_with(c, &mut keys))
            .collect::<Vec<_>>()
    };
    if threads < 2 || candidates.len() < SIGNATURE_PARALLEL_MIN {
        return check_part(candidates);
    }
    let share = candidates.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = candidates
            .chunks(share)
            .map(|part| scope.spawn(move || check_part(part)))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                // A check never panics (it is fuzzed); if one did, the panic
                // belongs to this thread as it would without workers.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The signing device of an armored sshsig, if it parses.
pub(crate) fn signer_device(armored: &[u8]) -> Option<DeviceId> {
    let sig = ssh_key::SshSig::from_pem(armored).ok()?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&sig.public_key().ed25519()?.0).ok()?;
    Some(DeviceId::of_key(&key))
}

/// Fetches every tip of the repository at `remote` (a path) into `peer`'s
/// quarantine.
fn fetch_into_quarantine(repo: &Repository, remote: &Path, peer: &str) -> Result<(), StoreError> {
    let url = remote
        .to_str()
        .ok_or_else(|| StoreError::NotAConversation("remote path is not UTF-8".into()))?;
    let mut remote = repo.remote_anonymous(url)?;
    let refspec = quarantine_refspec(peer);
    remote.fetch(&[refspec.as_str()], None, None)?;
    Ok(())
}
