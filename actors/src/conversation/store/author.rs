//! Authoring: creating a conversation, staging commits on every tip, and
//! making a batch durable at once (group commit).
//!
//! A commit names every tip as a parent (ascending), so one commit joins
//! whatever concurrent histories this replica holds; its tree is their
//! merged tree plus exactly its own change. With more than `PARENTS_MAX`
//! tips, the author first folds them in merge commits of its own.

use std::path::Path;

use git2::Oid;
use starling_protocol::swarm::body::{encode_body, Body, BodyKind, Mode};
use starling_protocol::swarm::gossip::INLINE_PACK_BYTES_MAX;
use starling_protocol::swarm::ids::{CommitId, ConversationNonce, CONVERSATION_NONCE_BYTES};
use starling_protocol::swarm::limits::PARENTS_MAX;
use starling_protocol::swarm::state::{
    admin_path, crl_path, device_path, member_path, MODE_PATH, PROFILE_PATH,
};
use starling_protocol::swarm::validation::{
    expected_changes, validate_authored, validate_commit, Changes, Context, Expect, ParentView,
};

use super::trees::staged_candidate;
use super::{
    commit_id, diff_files, oid, tree_with_changes, write_commit_parts, BatchPack, StagedBatch,
    Store, StoreError,
};
use crate::conversation::durable;
use crate::conversation::sign::DeviceSigner;

impl Store {
    /// Creates a conversation: a new bare repository at `path` with the signed
    /// initial commit (mode, the creator as admin, its device, and a fresh
    /// random nonce, so every creation gets its own conversation id).
    pub fn create(
        path: &Path,
        signer: &DeviceSigner,
        mode: Mode,
        now_secs: i64,
    ) -> Result<Self, StoreError> {
        let repo = durable::init_bare(path)?;
        // Staged first, so the objects below are written to memory and made
        // durable as one fsync'd pack.
        let mut store = Self::with_repo(repo, commit_id(Oid::zero()))?;
        let mut changes = Changes::new();
        changes.insert(MODE_PATH.into(), Some(mode.as_str().as_bytes().to_vec()));
        changes.insert(
            admin_path(&signer.account_id()),
            Some(signer.account_cert().to_pem().into_bytes()),
        );
        changes.insert(
            device_path(&signer.device_id()),
            Some(signer.device_cert().to_pem().into_bytes()),
        );
        let empty = store.repo.treebuilder(None)?.write()?;
        let tree = tree_with_changes(&store.repo, empty, &changes)?;
        let mut nonce = [0u8; CONVERSATION_NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let nonce = ConversationNonce::from_bytes(nonce);
        let body = encode_body(0, &BodyKind::Initial { mode, nonce });
        let time_secs = signer.commit_time_secs(now_secs, &[]);
        let written = write_commit_parts(&store.repo, signer, tree, &[], &body, time_secs)?;
        let id = written.id;
        store.conversation = commit_id(id);
        // From the bytes in hand: staged objects must not be read back through
        // `extract_signature` (see `staged_candidate`).
        let candidate = staged_candidate(written, changes);
        let accepted = validate_commit(
            &candidate,
            &[],
            &Context {
                conversation: None,
                merged: None,
            },
        )
        .map_err(|r| StoreError::Own(Box::new(r)))?;
        store.remember(id, tree, &accepted);
        store.staging.persist(&store.repo)?;
        Self::write_config(&store.repo, commit_id(id))?;
        store.write_tips(vec![commit_id(id)], "create conversation")?;
        store.set_head_ref()?;
        Ok(store)
    }

    /// Authors a commit of `kind` on the tips and makes it durable (objects,
    /// then the tips), with the file changes its type implies (`content`
    /// fills the one file whose content the author chooses: the profile or
    /// the CRL).
    pub fn author(
        &mut self,
        signer: &DeviceSigner,
        kind: BodyKind,
        content: Option<Vec<u8>>,
        now_secs: i64,
    ) -> Result<CommitId, StoreError> {
        let id = self.author_staged(signer, kind, content, now_secs)?;
        self.commit_staged()?;
        self.consolidate_packs();
        Ok(id)
    }

    /// Sends a text message.
    pub fn send_text(
        &mut self,
        signer: &DeviceSigner,
        text: &str,
        now_secs: i64,
    ) -> Result<CommitId, StoreError> {
        self.author(
            signer,
            BodyKind::Text {
                text: text.to_owned(),
                reply_to: None,
                edit_of: None,
            },
            None,
            now_secs,
        )
    }

    /// The tips a new commit builds on: the staged tip, or the durable tips.
    fn authoring_tips(&mut self) -> Result<Vec<CommitId>, StoreError> {
        Ok(match &self.staged {
            Some(batch) => vec![commit_id(batch.tip)],
            None => {
                self.refresh_tips()?;
                self.tips.clone()
            }
        })
    }

    /// Authors a commit of `kind` on the staged tip (or the durable tips)
    /// without making it durable or moving any ref: the next
    /// [`Store::commit_staged`] does both for every staged commit at once. A
    /// refused commit stages nothing (a fold merge it needed stays staged:
    /// it is valid on its own).
    pub fn author_staged(
        &mut self,
        signer: &DeviceSigner,
        kind: BodyKind,
        content: Option<Vec<u8>>,
        now_secs: i64,
    ) -> Result<CommitId, StoreError> {
        let mut parents = self.authoring_tips()?;
        while parents.len() > PARENTS_MAX {
            let folded: Vec<CommitId> = parents.drain(..PARENTS_MAX).collect();
            let merge = self.stage_commit(signer, &folded, BodyKind::Merge, None, now_secs)?;
            parents.push(merge);
            parents.sort();
        }
        self.stage_commit(signer, &parents, kind, content, now_secs)
    }

    /// Signs, validates and stages one commit on `parents` (sorted).
    fn stage_commit(
        &mut self,
        signer: &DeviceSigner,
        parents: &[CommitId],
        kind: BodyKind,
        content: Option<Vec<u8>>,
        now_secs: i64,
    ) -> Result<CommitId, StoreError> {
        let bases = match &self.staged {
            Some(batch) => batch.bases.clone(),
            None => self.tips.clone(),
        };
        let views: Vec<ParentView> = parents
            .iter()
            .map(|p| self.view_of(oid(p)))
            .collect::<Result<_, _>>()?;
        let merged = self.merged_at(parents)?;
        let generation = views.iter().map(|v| v.generation + 1).max().unwrap_or(0);
        let body = Body::Known {
            generation,
            kind: kind.clone(),
        };
        let changes = if matches!(kind, BodyKind::Merge) {
            Changes::new()
        } else {
            let expected = expected_changes(
                commit_id(Oid::zero()),
                &body,
                signer.account_id(),
                signer.device_id(),
                &merged.state,
            )
            .map_err(|r| StoreError::Own(Box::new(r)))?;
            let mut changes = Changes::new();
            for (path, expect) in expected {
                let value = match expect {
                    Expect::Delete => None,
                    Expect::Exact(bytes) => Some(bytes),
                    Expect::Any if path == device_path(&signer.device_id()) => {
                        Some(signer.device_cert().to_pem().into_bytes())
                    }
                    Expect::Any if path == member_path(&signer.account_id()) => {
                        Some(signer.account_cert().to_pem().into_bytes())
                    }
                    Expect::Any
                        if path == PROFILE_PATH || path == crl_path(&signer.account_id()) =>
                    {
                        content.clone()
                    }
                    Expect::Any => None,
                };
                changes.insert(path, value);
            }
            // Peers judge the trees' real difference, so a change that
            // changes nothing (the same profile again) must count as missing
            // here too: otherwise we would accept a commit every peer refuses.
            let before = merged.state.files();
            changes.retain(|path, change| match change {
                Some(content) => before.get(path) != Some(content),
                None => before.contains_key(path),
            });
            changes
        };
        let tree = tree_with_changes(&self.repo, merged.tree, &changes)?;
        let parent_oids: Vec<Oid> = parents.iter().map(oid).collect();
        let mut parents_secs = Vec::with_capacity(parents.len());
        for parent in &parent_oids {
            parents_secs.push(match &self.staged {
                Some(batch) if batch.tip == *parent => batch.tip_time_secs,
                _ => self.repo.find_commit(*parent)?.committer().when().seconds(),
            });
        }
        let written = write_commit_parts(
            &self.repo,
            signer,
            tree,
            &parent_oids,
            &encode_body(generation, &kind),
            signer.commit_time_secs(now_secs, &parents_secs),
        )?;
        let id = written.id;
        // The rules see changes relative to the first parent, as a fetched
        // commit's are computed.
        let first = &views[0];
        let relative = if merged.tree == self.tree_of(oid(&first.id))? {
            changes
        } else {
            let after =
                starling_protocol::swarm::validation::apply_changes(merged.state.files(), &changes);
            diff_files(first.state.files(), &after)
        };
        // Built from the bytes in hand: reading them back would cost a
        // round trip, and staged objects must not be read by `extract_signature`.
        let candidate = staged_candidate(written, relative);
        let accepted = validate_authored(
            &candidate,
            signer.device_id(),
            &views,
            &Context {
                conversation: Some(self.conversation),
                merged: Some(&merged.state),
            },
        )
        .map_err(|r| StoreError::Own(Box::new(r)))?;
        self.remember(id, tree, &accepted);
        self.staged = Some(StagedBatch {
            tip: id,
            tip_time_secs: accepted.time_secs,
            bases,
        });
        Ok(commit_id(id))
    }

    /// Whether commits are staged (authored, not yet durable).
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// Makes every staged commit durable: one pack (fsync'd) for all their
    /// objects, then the tips move (fsync'd) to the newest. Returns it, or
    /// `None` when nothing was staged. On error the tips did not move; the
    /// caller drops the store (the staged commits are lost, never
    /// half-written).
    pub fn commit_staged(&mut self) -> Result<Option<CommitId>, StoreError> {
        let Some(batch) = self.staged.clone() else {
            return Ok(None);
        };
        // Compare-and-swap: the tips must still be what the batch was built
        // on, or moving them would silently drop whatever moved them.
        if batch.bases != self.tips {
            return Err(StoreError::NotAConversation(format!(
                "tips moved to {:?} under staged commits",
                self.tips
            )));
        }
        let bases: Vec<Oid> = batch.bases.iter().map(oid).collect();
        let pack = self.staging.persist_range(&self.repo, batch.tip, &bases)?;
        self.write_tips(vec![commit_id(batch.tip)], "author")?;
        self.staged = None;
        self.batch_pack = (pack.len() <= INLINE_PACK_BYTES_MAX).then(|| BatchPack {
            bases: batch.bases,
            tip: commit_id(batch.tip),
            bytes: pack,
        });
        Ok(Some(commit_id(batch.tip)))
    }

    /// The pack of the batch [`Store::commit_staged`] last made durable (its
    /// new objects only), when it fits in a `heads_pack` frame.
    pub fn take_batch_pack(&mut self) -> Option<BatchPack> {
        self.batch_pack.take()
    }

    /// Makes objects written through [`Store::repository`] durable (for tests
    /// and benches that craft commits by hand before moving a ref).
    pub fn persist_objects(&mut self) -> Result<(), StoreError> {
        self.staging.persist(&self.repo)?;
        Ok(())
    }

    /// Keeps the pack count bounded; a failure costs only speed, so it is
    /// logged, not returned. Writes that add packs ([`Store::commit_staged`],
    /// inline packs, fetches) leave this to their caller, so it can answer
    /// first: the conversation actor runs it once its replies are out
    /// ([`Store::author`] and [`Store::fetch_from`] run it themselves).
    pub fn consolidate_packs(&self) {
        if let Err(e) = durable::consolidate_packs(&self.repo) {
            tracing::warn!(repo = %self.repo.path().display(), error = %e, "pack consolidation failed");
        }
    }
}
