//! The conversation store: one bare Git repository per conversation.
//!
//! Plain synchronous git2 code (the conversation actor will run it off its
//! arbiter). It creates and signs commits, parses commits into the values the
//! rules in `starling_protocol::swarm` judge, validates fetched commits in
//! quarantine, merges, and reads history pages.
//!
//! Refs: `refs/heads/main` is the accepted head (and `HEAD` points at it);
//! `refs/starling/peers/<peer>` is the last head accepted from each peer,
//! which only moves forward (the append-only check); fetched heads land in
//! `refs/starling/quarantine/<peer>` and are deleted after validation.
//! Objects of rejected commits stay unreferenced and are never history.
//! The conversation id is kept in the repository config as
//! `starling.conversation`.
//!
//! Every commit this store authors goes through the same validation as a
//! fetched one before the head moves, so a replica never publishes a commit
//! its peers would refuse.
//!
//! Durability (see `durable.rs`): objects this store writes are staged in
//! memory and persisted as one fsync'd pack before any ref moves to them;
//! refs are fsync'd as they move. [`Store::author_staged`] stages a commit
//! without moving the head, so the conversation actor can stage a batch and
//! make it durable with one [`Store::commit_staged`] (group commit).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use git2::{Oid, Repository};
use starling_protocol::swarm::body::{encode_body, parse_body, Body, BodyKind, Mode};
use starling_protocol::swarm::commit::{sign_payload, KeyCache};
use starling_protocol::swarm::gossip::INLINE_PACK_BYTES_MAX;
use starling_protocol::swarm::ids::{CommitId, ConversationNonce, CONVERSATION_NONCE_BYTES};
use starling_protocol::swarm::limits::{
    FETCH_COMMITS_MAX, PAGE_MESSAGES_MAX, TREE_FILES_MAX, TREE_FILE_BYTES_MAX,
};
use starling_protocol::swarm::merge::{merge_files, plan_head, HeadPlan};
use starling_protocol::swarm::order::{newest_first, Dag, DagEntry, OrderKey};
use starling_protocol::swarm::state::{
    admin_path, crl_path, device_path, member_path, Files, StateError, SwarmState, MODE_PATH,
    PROFILE_PATH,
};
use starling_protocol::swarm::validation::{
    check_signature_with, expected_changes, validate_authored, validate_batch_checked,
    validate_commit, Accepted, BatchVerdict, Candidate, Changes, Context, Expect, History,
    ParentView, Rejection, SignatureCheck,
};
use starling_protocol::{AccountId, DeviceCert, DeviceId};

use super::durable::{self, Staging};
use super::sign::{allowed_signers_line, DeviceSigner};

/// The accepted head.
pub const HEAD_REF: &str = "refs/heads/main";
/// Prefix of per-peer accepted heads.
pub const PEER_REF_PREFIX: &str = "refs/starling/peers/";
/// Prefix of fetched, not yet validated heads.
pub const QUARANTINE_REF_PREFIX: &str = "refs/starling/quarantine/";
/// Deepest directory nesting a conversation tree has (`votes/ban/<t>/<v>`).
pub const TREE_DEPTH_MAX: usize = 4;
/// How deep the recursive merge base (criss-cross histories) recurses before
/// falling back to the greatest best common ancestor.
pub const MERGE_BASE_RECURSION_MAX: usize = 8;
/// How many nested merges the containment test follows before answering
/// "not contained" (which is always safe: it only causes one more merge).
pub const CONTAINS_MERGE_DEPTH_MAX: usize = 64;

/// Most threads that check a fetch's signatures (the rest of validation
/// runs on the conversation's own thread).
pub const SIGNATURE_THREADS_MAX: usize = 4;
/// Fewest commits worth splitting across threads: below it, spawning costs
/// more than the checks.
pub const SIGNATURE_PARALLEL_MIN: usize = 64;

const CONFIG_CONVERSATION: &str = "starling.conversation";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("repository is not a Starling conversation: {0}")]
    NotAConversation(String),
    #[error("stored tree is invalid: {0}")]
    Tree(#[from] StateError),
    #[error("tree {tree} breaks a bound: {what}")]
    TreeBound { tree: String, what: String },
    #[error("refusing to author an invalid commit: {0}")]
    Own(Box<Rejection>),
    #[error("peer {peer} rewrote history: its new head {new} does not contain its old head {old}")]
    HistoryRewrite {
        peer: String,
        old: CommitId,
        new: CommitId,
    },
    #[error("fetched history is invalid: {0:?}")]
    Rejected(Vec<Rejection>),
    #[error("peer name {0:?} is not [A-Za-z0-9_-]{{1,64}}")]
    BadPeerName(String),
    #[error("commit {0} body is unreadable: {1}")]
    Body(CommitId, String),
    #[error("inline pack is relative to {0}, which our head does not contain")]
    PackBaseMissing(CommitId),
}

/// The outcome of receiving a peer's head.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// Commits accepted into history.
    pub accepted: usize,
    /// Commits refused, with reasons.
    pub rejected: Vec<Rejection>,
    /// Our head afterwards.
    pub head: CommitId,
    /// Whether we made a merge commit.
    pub merged: bool,
}

/// The objects of one durable batch, as announced inline (`heads_pack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPack {
    /// The head before the batch: the pack holds every object reachable
    /// from `tip` and not from `base`.
    pub base: CommitId,
    /// The head the batch made.
    pub tip: CommitId,
    /// The pack.
    pub bytes: Vec<u8>,
}

/// One entry of a history page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The commit.
    pub id: CommitId,
    /// Its place in display order.
    pub key: OrderKey,
    /// The signing device.
    pub device: Option<DeviceId>,
    /// Its body.
    pub body: Body,
}

/// Converts a git2 object id to a commit id.
pub fn commit_id(oid: Oid) -> CommitId {
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(oid.as_bytes());
    CommitId::from_bytes(bytes)
}

/// Converts a commit id to a git2 object id.
pub fn oid(id: &CommitId) -> Oid {
    Oid::from_bytes(id.as_bytes()).expect("20 bytes is a SHA-1 object id")
}

fn check_peer_name(peer: &str) -> Result<(), StoreError> {
    let ok = !peer.is_empty()
        && peer.len() <= 64
        && peer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadPeerName(peer.chars().take(80).collect()))
    }
}

/// Commits authored on top of the durable head and not yet durable.
#[derive(Debug, Clone, Copy)]
struct StagedChain {
    /// The newest staged commit.
    head: Oid,
    /// The durable head the chain was built on.
    base: Oid,
}

/// A conversation repository on disk.
pub struct Store {
    // Declared before `repo`: the staging area points into its object database.
    staging: Staging,
    /// The commits staged but not yet durable (`None`: nothing staged).
    staged: Option<StagedChain>,
    /// The pack of the last durable batch, if small enough to announce inline.
    batch_pack: Option<BatchPack>,
    repo: Repository,
    conversation: CommitId,
    /// Tree id → parsed state (trees are shared by every message commit).
    states: HashMap<Oid, Arc<SwarmState>>,
    /// Commit id → generation (from its body).
    generations: HashMap<Oid, u64>,
    /// Commit id → tree id (saves reading commits again).
    commit_trees: HashMap<Oid, Oid>,
    /// Rejected commits by reason (`Rejection::reason`), for metrics.
    rejections: BTreeMap<&'static str, u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.repo.path())
            .field("conversation", &self.conversation)
            .finish()
    }
}

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
        let staging = Staging::attach(&repo)?;
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
        let empty = repo.treebuilder(None)?.write()?;
        let tree = tree_with_changes(&repo, empty, &changes)?;
        let mut nonce = [0u8; CONVERSATION_NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let nonce = ConversationNonce::from_bytes(nonce);
        let body = encode_body(0, &BodyKind::Initial { mode, nonce });
        let written = write_commit_parts(&repo, signer, tree, &[], &body, now_secs)?;
        let id = written.id;
        let mut store = Self {
            staging,
            staged: None,
            batch_pack: None,
            repo,
            conversation: commit_id(id),
            states: HashMap::new(),
            generations: HashMap::new(),
            commit_trees: HashMap::new(),
            rejections: BTreeMap::new(),
        };
        // From the bytes in hand: staged objects must not be read back through
        // `extract_signature` (see `staged_candidate`).
        let candidate = staged_candidate(written, changes);
        let accepted = validate_commit(
            &candidate,
            &[],
            &Context {
                conversation: None,
                now_secs,
                merge_base: None,
            },
        )
        .map_err(|r| StoreError::Own(Box::new(r)))?;
        store.remember(id, &accepted)?;
        store.staging.persist(&store.repo)?;
        store
            .repo
            .reference(HEAD_REF, id, true, "create conversation")?;
        store.repo.set_head(HEAD_REF)?;
        store
            .repo
            .config()?
            .set_str(CONFIG_CONVERSATION, &commit_id(id).to_hex())?;
        Ok(store)
    }

    /// Opens an existing conversation repository.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let repo = durable::open_bare(path)?;
        // Repositories made before the setting existed get it here, where
        // the conversation (their one writer) opens them.
        durable::tune_packing(&repo)?;
        let conversation = repo
            .config()?
            .get_string(CONFIG_CONVERSATION)
            .map_err(|_| StoreError::NotAConversation("no starling.conversation".into()))?
            .parse()
            .map_err(|e: starling_protocol::swarm::ids::CommitIdParseError| {
                StoreError::NotAConversation(e.to_string())
            })?;
        repo.refname_to_id(HEAD_REF)?;
        Ok(Self {
            staging: Staging::attach(&repo)?,
            staged: None,
            batch_pack: None,
            repo,
            conversation,
            states: HashMap::new(),
            generations: HashMap::new(),
            commit_trees: HashMap::new(),
            rejections: BTreeMap::new(),
        })
    }

    /// Clones conversation `conversation` from another replica's repository at
    /// `remote` into a new bare repository at `path`, validating every commit.
    /// The fetched head must be valid in full. On failure `path` holds an
    /// incomplete repository that [`Store::open`] refuses; the caller removes it.
    pub fn clone_from(
        remote: &Path,
        path: &Path,
        conversation: CommitId,
        peer: &str,
        now_secs: i64,
    ) -> Result<Self, StoreError> {
        check_peer_name(peer)?;
        let repo = durable::init_bare(path)?;
        fetch_into_quarantine(&repo, remote, peer)?;
        Self::adopt_quarantined(repo, conversation, peer, now_secs)
    }

    /// Finishes a clone whose objects some transport already fetched into
    /// `repo` (a fresh bare repository) under [`quarantine_ref`]`(peer)`:
    /// validates every commit and, if the fetched head is valid in full,
    /// makes it the head. On failure the caller removes the repository.
    pub fn adopt_quarantined(
        repo: Repository,
        conversation: CommitId,
        peer: &str,
        now_secs: i64,
    ) -> Result<Self, StoreError> {
        check_peer_name(peer)?;
        let theirs = repo.refname_to_id(&quarantine_ref(peer))?;
        let mut store = Self {
            staging: Staging::attach(&repo)?,
            staged: None,
            batch_pack: None,
            repo,
            conversation,
            states: HashMap::new(),
            generations: HashMap::new(),
            commit_trees: HashMap::new(),
            rejections: BTreeMap::new(),
        };
        let candidates = store.candidates(theirs)?;
        let verdict = store.validate(&candidates, now_secs);
        store.count_rejections(&verdict.rejected);
        store.repo.find_reference(&quarantine_ref(peer))?.delete()?;
        if !verdict.rejected.is_empty() || verdict.accepted.is_empty() {
            return Err(StoreError::Rejected(verdict.rejected));
        }
        // The conversation id is the root: a peer cannot pass off another
        // swarm's history under this id.
        let root = oid(&conversation);
        if theirs != root && !store.repo.graph_descendant_of(theirs, root)? {
            return Err(StoreError::NotAConversation(format!(
                "fetched history does not start at {conversation}"
            )));
        }
        for accepted in &verdict.accepted {
            store.remember(oid(&accepted.id), accepted)?;
        }
        store.repo.reference(HEAD_REF, theirs, true, "clone")?;
        store
            .repo
            .reference(&peer_ref(peer), theirs, true, "clone")?;
        store.repo.set_head(HEAD_REF)?;
        store
            .repo
            .config()?
            .set_str(CONFIG_CONVERSATION, &conversation.to_hex())?;
        Ok(store)
    }

    /// Receives the head a transport fetched under [`quarantine_ref`]`(peer)`,
    /// then deletes that ref whatever the verdict.
    pub fn receive_quarantined(
        &mut self,
        peer: &str,
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        let theirs = self.repo.refname_to_id(&quarantine_ref(peer))?;
        let result = self.receive(peer, theirs, signer, now_secs);
        if let Ok(mut r) = self.repo.find_reference(&quarantine_ref(peer)) {
            r.delete()?;
        }
        result
    }

    /// Rejected commits so far, by reason (`Rejection::reason`).
    pub fn rejection_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejections
    }

    fn count_rejections(&mut self, rejected: &[Rejection]) {
        for r in rejected {
            *self.rejections.entry(r.reason()).or_default() += 1;
        }
    }

    /// The conversation id.
    pub fn conversation(&self) -> CommitId {
        self.conversation
    }

    /// The repository (for tests and the sync layer's upload-pack).
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The accepted head.
    pub fn head(&self) -> Result<CommitId, StoreError> {
        Ok(commit_id(self.repo.refname_to_id(HEAD_REF)?))
    }

    /// The membership state at the head.
    pub fn state(&mut self) -> Result<Arc<SwarmState>, StoreError> {
        let head = self.repo.refname_to_id(HEAD_REF)?;
        let tree = self.repo.find_commit(head)?.tree_id();
        self.state_of_tree(tree)
    }

    /// Admins and members at the head.
    pub fn members(&mut self) -> Result<BTreeSet<AccountId>, StoreError> {
        Ok(self.state()?.member_ids())
    }

    fn state_of_tree(&mut self, tree: Oid) -> Result<Arc<SwarmState>, StoreError> {
        if let Some(state) = self.states.get(&tree) {
            return Ok(state.clone());
        }
        let files = read_files(&self.repo, tree)?;
        let state = Arc::new(SwarmState::from_files(files)?);
        self.states.insert(tree, state.clone());
        Ok(state)
    }

    fn generation(&mut self, id: Oid) -> Result<u64, StoreError> {
        generation_in(&self.repo, &mut self.generations, id)
    }

    /// Whether `ancestor` is `descendant` or an ancestor of it (see
    /// [`descends`]).
    pub fn descends(&mut self, descendant: Oid, ancestor: Oid) -> Result<bool, StoreError> {
        descends(&self.repo, &mut self.generations, descendant, ancestor)
    }

    fn tree_of(&mut self, id: Oid) -> Result<Oid, StoreError> {
        if let Some(tree) = self.commit_trees.get(&id) {
            return Ok(*tree);
        }
        let tree = self.repo.find_commit(id)?.tree_id();
        self.commit_trees.insert(id, tree);
        Ok(tree)
    }

    fn view_of(&mut self, id: Oid) -> Result<ParentView, StoreError> {
        let tree = self.tree_of(id)?;
        Ok(ParentView {
            id: commit_id(id),
            state: self.state_of_tree(tree)?,
            generation: self.generation(id)?,
        })
    }

    fn remember(&mut self, id: Oid, accepted: &Accepted) -> Result<(), StoreError> {
        let tree = self.tree_of(id)?;
        self.remember_tree(id, tree, accepted);
        Ok(())
    }

    fn remember_tree(&mut self, id: Oid, tree: Oid, accepted: &Accepted) {
        self.commit_trees.insert(id, tree);
        self.states
            .entry(tree)
            .or_insert_with(|| accepted.state.clone());
        self.generations.insert(id, accepted.body.generation());
    }

    /// Parses a commit into the values the rules judge.
    pub fn candidate(&self, id: Oid) -> Result<Candidate, StoreError> {
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

    fn files_of_tree(&self, tree: Oid) -> Result<Arc<Files>, StoreError> {
        if let Some(state) = self.states.get(&tree) {
            return Ok(state.files().clone());
        }
        Ok(Arc::new(read_files(&self.repo, tree)?))
    }

    /// Validates fetched candidates (oldest first) against accepted history.
    /// Their signatures, the costly part, are checked first on up to
    /// [`SIGNATURE_THREADS_MAX`] threads; the rules then run in order here,
    /// with the same verdicts as checking one commit after another.
    fn validate(&mut self, candidates: &[Candidate], now_secs: i64) -> BatchVerdict {
        let signatures = check_signatures(candidates);
        let conversation = Some(self.conversation);
        validate_batch_checked(candidates, &signatures, self, conversation, now_secs)
    }

    /// Commits reachable from `theirs` and not from accepted refs, parents first.
    fn candidates(&mut self, theirs: Oid) -> Result<Vec<Candidate>, StoreError> {
        let mut known = Vec::new();
        if let Ok(head) = self.repo.refname_to_id(HEAD_REF) {
            known.push(head);
        }
        for reference in self.repo.references_glob(&format!("{PEER_REF_PREFIX}*"))? {
            if let Some(target) = reference?.target() {
                known.push(target);
            }
        }
        let ids = self.unknown_commits(theirs, &known)?;
        ids.into_iter().map(|id| self.candidate(id)).collect()
    }

    /// Authors a commit of `kind` on the head and makes it durable (objects,
    /// then the head), with the file changes its type implies (`content`
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

    /// Authors a commit of `kind` on the staged head (the head, plus commits
    /// staged since the last [`Store::commit_staged`]) without making it
    /// durable or moving the head: the next `commit_staged` does both for
    /// every staged commit at once. A refused commit stages nothing.
    pub fn author_staged(
        &mut self,
        signer: &DeviceSigner,
        kind: BodyKind,
        content: Option<Vec<u8>>,
        now_secs: i64,
    ) -> Result<CommitId, StoreError> {
        let (head, base) = match self.staged {
            Some(chain) => (chain.head, chain.base),
            None => {
                let head = self.repo.refname_to_id(HEAD_REF)?;
                (head, head)
            }
        };
        let parent = self.view_of(head)?;
        let generation = parent.generation + 1;
        let body = Body::Known {
            generation,
            kind: kind.clone(),
        };
        let expected = expected_changes(
            commit_id(head),
            &body,
            signer.account_id(),
            signer.device_id(),
            &parent.state,
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
                Expect::Any if path == PROFILE_PATH || path == crl_path(&signer.account_id()) => {
                    content.clone()
                }
                Expect::Any => None,
            };
            changes.insert(path, value);
        }
        let base_tree = self.tree_of(head)?;
        // Peers judge the trees' real difference, so a change that changes
        // nothing (the same profile again) must count as missing here too:
        // otherwise we would accept a commit every peer refuses.
        let before = self.files_of_tree(base_tree)?;
        changes.retain(|path, change| match change {
            Some(content) => before.get(path) != Some(content),
            None => before.contains_key(path),
        });
        let tree = tree_with_changes(&self.repo, base_tree, &changes)?;
        let written = write_commit_parts(
            &self.repo,
            signer,
            tree,
            &[head],
            &encode_body(generation, &kind),
            now_secs,
        )?;
        let id = written.id;
        // Built from the bytes in hand: reading them back would cost a
        // round trip, and staged objects must not be read by `extract_signature`.
        let candidate = staged_candidate(written, changes);
        let accepted = validate_authored(
            &candidate,
            signer.device_id(),
            &[parent],
            &Context {
                conversation: Some(self.conversation),
                now_secs,
                merge_base: None,
            },
        )
        .map_err(|r| StoreError::Own(Box::new(r)))?;
        self.remember_tree(id, tree, &accepted);
        self.staged = Some(StagedChain { head: id, base });
        Ok(commit_id(id))
    }

    /// Whether commits are staged (authored, not yet durable).
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// Makes every staged commit durable: one pack (fsync'd) for all their
    /// objects, then one head move (fsync'd) to the newest. Returns the new
    /// head, or `None` when nothing was staged. On error nothing moved; the
    /// caller drops the store (the staged commits are lost, never half-written).
    pub fn commit_staged(&mut self) -> Result<Option<CommitId>, StoreError> {
        let Some(StagedChain { head: staged, base }) = self.staged else {
            return Ok(None);
        };
        let disk_head = self.repo.refname_to_id(HEAD_REF)?;
        // Compare-and-swap: the head must still be what the staged chain was
        // built on, or moving it would silently drop whatever moved it.
        if disk_head != base {
            return Err(StoreError::NotAConversation(format!(
                "head moved to {disk_head} under staged commits"
            )));
        }
        let pack = self.staging.persist_range(&self.repo, staged, disk_head)?;
        self.repo
            .reference_matching(HEAD_REF, staged, true, disk_head, "author")?;
        self.staged = None;
        self.batch_pack = (pack.len() <= INLINE_PACK_BYTES_MAX).then(|| BatchPack {
            base: commit_id(disk_head),
            tip: commit_id(staged),
            bytes: pack,
        });
        Ok(Some(commit_id(staged)))
    }

    /// The pack of the batch [`Store::commit_staged`] last made durable (its
    /// new objects only), when it fits in a `heads_pack` frame.
    pub fn take_batch_pack(&mut self) -> Option<BatchPack> {
        self.batch_pack.take()
    }

    /// Receives `head` from `peer` with the objects of `pack` (a
    /// `heads_pack` announcement, relative to `base`): indexes the pack,
    /// then validates and merges exactly as [`Store::receive`] does for
    /// fetched objects. Refuses (touching nothing) when our head does not
    /// contain `base`: the pack would leave commits without their history.
    /// When the pack still lacks something validation needs (a peer that
    /// lied about `base`), it fails, moves nothing and removes the pack
    /// again: the caller then fetches.
    pub fn receive_pack(
        &mut self,
        peer: &str,
        head: CommitId,
        base: CommitId,
        pack: &[u8],
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        if pack.len() > INLINE_PACK_BYTES_MAX {
            return Err(StoreError::TreeBound {
                tree: head.to_hex(),
                what: format!("inline pack of {} bytes", pack.len()),
            });
        }
        let ours = self.repo.refname_to_id(HEAD_REF)?;
        let base_id = oid(&base);
        if !self.descends(ours, base_id)? {
            return Err(StoreError::PackBaseMissing(base));
        }
        let indexed_before = durable::pack_is_indexed(&self.repo, pack);
        let peer_head = self.repo.refname_to_id(&peer_ref(peer)).ok();
        durable::write_pack(&self.repo, pack)?;
        let result = self.receive(peer, oid(&head), signer, now_secs);
        let untouched = || {
            self.repo.refname_to_id(HEAD_REF).ok() == Some(ours)
                && self.repo.refname_to_id(&peer_ref(peer)).ok() == peer_head
        };
        if result.is_err() && !indexed_before && untouched() {
            // Nothing refers to its objects. Kept, a commit without its
            // history would sit in the object database, and libgit2 never
            // fetches an object it already holds: that head could not be
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
        self.staging = Staging::attach(&repo)?;
        self.repo = repo;
        Ok(())
    }

    /// Makes objects written through [`Store::repository`] durable (for tests
    /// and benches that craft commits by hand before moving a ref).
    pub fn persist_objects(&mut self) -> Result<(), StoreError> {
        self.staging.persist(&self.repo)?;
        Ok(())
    }

    /// Keeps the pack count bounded; a failure costs only speed, so it is
    /// logged, not returned. Writes that add packs ([`Store::commit_staged`],
    /// [`Store::receive_pack`], fetches) leave this to their caller, so it
    /// can answer first: the conversation actor runs it once its replies
    /// are out ([`Store::author`] and [`Store::fetch_from`] run it
    /// themselves).
    pub fn consolidate_packs(&self) {
        if let Err(e) = durable::consolidate_packs(&self.repo) {
            tracing::warn!(repo = %self.repo.path().display(), error = %e, "pack consolidation failed");
        }
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

    /// Fetches `remote`'s head (a path to another replica's repository) into
    /// quarantine and receives it as peer `peer`.
    pub fn fetch_from(
        &mut self,
        remote: &Path,
        peer: &str,
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        let theirs = fetch_into_quarantine(&self.repo, remote, peer)?;
        let result = self.receive(peer, theirs, signer, now_secs);
        if let Ok(mut r) = self.repo.find_reference(&quarantine_ref(peer)) {
            r.delete()?;
        }
        self.consolidate_packs();
        result
    }

    /// Validates a peer's head whose objects are already in our object
    /// database, then moves our head (fast-forward, adopt, or merge).
    pub fn receive(
        &mut self,
        peer: &str,
        theirs: Oid,
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<FetchReport, StoreError> {
        check_peer_name(peer)?;
        debug_assert!(
            self.staged.is_none(),
            "staged commits are made durable before a receive"
        );
        if let Ok(old) = self.repo.refname_to_id(&peer_ref(peer)) {
            if old != theirs && self.descends(old, theirs)? {
                // A stale announcement: a fetch that started before an
                // inline pack brought a newer head from the same peer.
                // Nothing to do, and no rewrite.
                return Ok(FetchReport {
                    accepted: 0,
                    rejected: Vec::new(),
                    head: self.head()?,
                    merged: false,
                });
            }
            if !self.contains(theirs, old)? {
                *self.rejections.entry("history_rewrite").or_default() += 1;
                return Err(StoreError::HistoryRewrite {
                    peer: peer.to_owned(),
                    old: commit_id(old),
                    new: commit_id(theirs),
                });
            }
        }
        let candidates = self.candidates(theirs)?;
        let verdict = self.validate(&candidates, now_secs);
        self.count_rejections(&verdict.rejected);
        let mut parents_in_batch = HashSet::new();
        for accepted in &verdict.accepted {
            self.remember(oid(&accepted.id), accepted)?;
            parents_in_batch.extend(accepted.parents.iter().copied());
        }
        let mut tips: Vec<CommitId> = verdict
            .accepted
            .iter()
            .map(|a| a.id)
            .filter(|id| !parents_in_batch.contains(id))
            .collect();
        let theirs_accepted =
            candidates.is_empty() || verdict.accepted.iter().any(|a| a.id == commit_id(theirs));
        if theirs_accepted {
            self.repo
                .reference(&peer_ref(peer), theirs, true, "peer head")?;
            if candidates.is_empty() {
                tips.push(commit_id(theirs));
            }
        }
        tips.sort();
        let mut merged = false;
        for tip in tips {
            merged |= self.integrate(oid(&tip), signer, now_secs)?;
        }
        Ok(FetchReport {
            accepted: verdict.accepted.len(),
            rejected: verdict.rejected,
            head: self.head()?,
            merged,
        })
    }

    /// Moves the head to include an accepted commit; returns whether it merged.
    fn integrate(
        &mut self,
        theirs: Oid,
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<bool, StoreError> {
        let ours = self.repo.refname_to_id(HEAD_REF)?;
        let mut containment = Containment::default();
        let plan = plan_head(commit_id(ours), commit_id(theirs), |t, x| {
            containment
                .contains(&self.repo, &mut self.generations, oid(t), oid(x))
                .unwrap_or(false)
        });
        match plan {
            HeadPlan::Keep => Ok(false),
            HeadPlan::Adopt(id) => {
                self.repo
                    .reference_matching(HEAD_REF, oid(&id), true, ours, "adopt")?;
                Ok(false)
            }
            HeadPlan::Merge(a, b) => {
                let id = self.merge(oid(&a), oid(&b), signer, now_secs)?;
                // The merge commit (and tree) must be on disk before the head names it.
                self.staging.persist(&self.repo)?;
                self.repo
                    .reference_matching(HEAD_REF, id, true, ours, "merge")?;
                Ok(true)
            }
        }
    }

    fn order_key(&self, id: Oid) -> Result<OrderKey, StoreError> {
        let commit = self.repo.find_commit(id)?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(commit_id(id), e.to_string()))?;
        let time_secs = commit.committer().when().seconds();
        Ok(OrderKey {
            generation: body.generation(),
            time_secs,
            id: commit_id(id),
        })
    }

    /// The best common ancestors of `b` and any commit of `set` (common
    /// ancestors that are not ancestors of another one), by display key.
    fn best_common_ancestors(&self, set: &[Oid], b: Oid) -> Result<Vec<Oid>, StoreError> {
        let mut found = BTreeSet::new();
        for s in set {
            match self.repo.merge_bases(*s, b) {
                Ok(bases) => found.extend(bases.iter().copied()),
                Err(e) if e.code() == git2::ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut best = Vec::new();
        for x in &found {
            let mut dominated = false;
            for y in &found {
                if x != y && self.repo.graph_descendant_of(*y, *x)? {
                    dominated = true;
                    break;
                }
            }
            if !dominated {
                best.push((self.order_key(*x)?, *x));
            }
        }
        best.sort();
        Ok(best.into_iter().map(|(_, id)| id).collect())
    }

    /// The files of the merge base of the format (§7.1): with one best
    /// common ancestor, its tree; with several (criss-cross histories), their
    /// recursive merge in display-key order, as Git's recursive strategy does.
    /// Picking just one of them would make a file the other one had already
    /// added (and a later commit removed) look new, and resurrect it.
    pub fn merge_base_files_of(
        &mut self,
        a: Oid,
        b: Oid,
    ) -> Result<Option<Arc<Files>>, StoreError> {
        self.virtual_base(&[a], b, 0)
    }

    fn virtual_base(
        &mut self,
        set: &[Oid],
        b: Oid,
        depth: usize,
    ) -> Result<Option<Arc<Files>>, StoreError> {
        let bases = self.best_common_ancestors(set, b)?;
        let Some((&first, rest)) = bases.split_first() else {
            return Ok(None);
        };
        if depth >= MERGE_BASE_RECURSION_MAX {
            // Bounded work on hostile histories: fall back to the greatest base.
            let last = *bases.last().expect("bases is not empty");
            return Ok(Some(self.view_of(last)?.state.files().clone()));
        }
        let mut merged = self.view_of(first)?.state.files().clone();
        let mut so_far = vec![first];
        for &next in rest {
            let inner = self
                .virtual_base(&so_far, next, depth + 1)?
                .unwrap_or_default();
            let theirs = self.view_of(next)?.state.files().clone();
            merged = Arc::new(merge_files(&inner, &merged, &theirs));
            so_far.push(next);
        }
        Ok(Some(merged))
    }

    /// The commits reachable from `tip` and from none of `known` (accepted
    /// commits), parents first: what a receive of `tip` validates when
    /// `known` are our head and peer heads.
    pub fn unknown_commits(&mut self, tip: Oid, known: &[Oid]) -> Result<Vec<Oid>, StoreError> {
        unknown_commits(
            &self.repo,
            &mut self.generations,
            tip,
            known,
            FETCH_COMMITS_MAX,
        )
    }

    /// Content containment (see `starling_protocol::swarm::merge`).
    pub fn contains(&mut self, t: Oid, x: Oid) -> Result<bool, StoreError> {
        Containment::default().contains(&self.repo, &mut self.generations, t, x)
    }

    /// Makes and validates the merge commit of `a` and `b` (ordered by id).
    fn merge(
        &mut self,
        a: Oid,
        b: Oid,
        signer: &DeviceSigner,
        now_secs: i64,
    ) -> Result<Oid, StoreError> {
        let (first, second) = (self.view_of(a)?, self.view_of(b)?);
        let base = if first.state.files() == second.state.files() {
            None
        } else {
            self.merge_base_files_of(a, b)?
        };
        let first_tree = self.repo.find_commit(a)?.tree_id();
        let (tree, changes) = if first.state.files() == second.state.files() {
            (first_tree, Changes::new())
        } else {
            let empty = Files::new();
            let base_files = base.as_deref().unwrap_or(&empty);
            let merged = merge_files(base_files, first.state.files(), second.state.files());
            let changes = diff_files(first.state.files(), &merged);
            (
                tree_with_changes(&self.repo, first_tree, &changes)?,
                changes,
            )
        };
        let generation = first.generation.max(second.generation) + 1;
        let written = write_commit_parts(
            &self.repo,
            signer,
            tree,
            &[a, b],
            &encode_body(generation, &BodyKind::Merge),
            now_secs,
        )?;
        let id = written.id;
        let candidate = staged_candidate(written, changes);
        let accepted = validate_commit(
            &candidate,
            &[first, second],
            &Context {
                conversation: Some(self.conversation),
                now_secs,
                merge_base: base.as_deref(),
            },
        )
        .map_err(|r| StoreError::Own(Box::new(r)))?;
        self.remember(id, &accepted)?;
        Ok(id)
    }

    /// The newest `limit` non-merge commits, newest first (display order).
    pub fn last_messages(&mut self, limit: usize) -> Result<Vec<MessageView>, StoreError> {
        let limit = limit.min(PAGE_MESSAGES_MAX);
        let head = self.head()?;
        let mut dag = StoreDag {
            repo: &self.repo,
            bodies: HashMap::new(),
        };
        let keys = newest_first(head, limit, &mut dag)?;
        keys.into_iter()
            .map(|key| {
                let commit = self.repo.find_commit(oid(&key.id))?;
                let body = dag
                    .bodies
                    .remove(&key.id)
                    .ok_or_else(|| StoreError::Body(key.id, "missing".into()))?;
                let device = match self.repo.extract_signature(&commit.id(), None) {
                    Ok((sig, _)) => signer_device(&sig),
                    Err(_) => None,
                };
                Ok(MessageView {
                    id: key.id,
                    key,
                    device,
                    body,
                })
            })
            .collect()
    }

    /// Every commit reachable from the head, in display order (oldest first).
    /// Walks all history: for tests and exports, not for paging.
    pub fn full_order(&self) -> Result<Vec<CommitId>, StoreError> {
        let mut walk = self.repo.revwalk()?;
        walk.push(self.repo.refname_to_id(HEAD_REF)?)?;
        let mut keys = Vec::new();
        for id in walk {
            let id = id?;
            let commit = self.repo.find_commit(id)?;
            let body = parse_body(commit.message_raw_bytes())
                .map_err(|e| StoreError::Body(commit_id(id), e.to_string()))?;
            keys.push(OrderKey {
                generation: body.generation(),
                time_secs: commit.committer().when().seconds(),
                id: commit_id(id),
            });
        }
        keys.sort();
        Ok(keys.into_iter().map(|k| k.id).collect())
    }

    /// The allowed-signers file for stock `git verify-commit`: every device
    /// certificate that appears in any tree of the accepted history.
    pub fn allowed_signers(&self) -> Result<String, StoreError> {
        let mut walk = self.repo.revwalk()?;
        walk.push(self.repo.refname_to_id(HEAD_REF)?)?;
        let mut trees = HashSet::new();
        let mut lines = BTreeMap::new();
        for id in walk {
            let tree = self.repo.find_commit(id?)?.tree_id();
            if !trees.insert(tree) {
                continue;
            }
            for (path, content) in read_files(&self.repo, tree)? {
                if !(path.starts_with("devices/") || path.starts_with("banned/devices/")) {
                    continue;
                }
                let Ok(pem) = std::str::from_utf8(&content) else {
                    continue;
                };
                if let Ok(cert) = DeviceCert::from_pem(pem) {
                    lines.insert(cert.id(), allowed_signers_line(&cert));
                }
            }
        }
        let mut out = String::new();
        for line in lines.values() {
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }
}

impl History for Store {
    fn view(&mut self, id: &CommitId) -> Option<ParentView> {
        self.view_of(oid(id)).ok()
    }

    fn merge_base_files(&mut self, a: &CommitId, b: &CommitId) -> Option<Arc<Files>> {
        self.merge_base_files_of(oid(a), oid(b)).ok().flatten()
    }
}

struct StoreDag<'r> {
    repo: &'r Repository,
    bodies: HashMap<CommitId, Body>,
}

impl Dag for StoreDag<'_> {
    type Error = StoreError;
    fn entry(&mut self, id: &CommitId) -> Result<DagEntry, StoreError> {
        let commit = self.repo.find_commit(oid(id))?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(*id, e.to_string()))?;
        let shown = !matches!(body.kind(), Some(BodyKind::Merge));
        let entry = DagEntry {
            key: OrderKey {
                generation: body.generation(),
                time_secs: commit.committer().when().seconds(),
                id: *id,
            },
            parents: commit.parent_ids().map(commit_id).collect(),
            shown,
        };
        self.bodies.insert(*id, body);
        Ok(entry)
    }
}

/// [`check_signature`](starling_protocol::swarm::validation::check_signature) of every candidate, in order, split across the
/// machine's cores when the batch is large enough to pay for the threads.
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

pub(crate) fn signer_device(armored: &[u8]) -> Option<DeviceId> {
    let sig = ssh_key::SshSig::from_pem(armored).ok()?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&sig.public_key().ed25519()?.0).ok()?;
    Some(DeviceId::of_key(&key))
}

fn peer_ref(peer: &str) -> String {
    format!("{PEER_REF_PREFIX}{peer}")
}

/// The ref a fetch from `peer` lands under before validation.
pub fn quarantine_ref(peer: &str) -> String {
    format!("{QUARANTINE_REF_PREFIX}{peer}")
}

fn fetch_into_quarantine(repo: &Repository, remote: &Path, peer: &str) -> Result<Oid, StoreError> {
    let url = remote
        .to_str()
        .ok_or_else(|| StoreError::NotAConversation("remote path is not UTF-8".into()))?;
    let mut remote = repo.remote_anonymous(url)?;
    let refspec = format!("+{HEAD_REF}:{}", quarantine_ref(peer));
    remote.fetch(&[refspec.as_str()], None, None)?;
    Ok(repo.refname_to_id(&quarantine_ref(peer))?)
}

/// Whether `ancestor` is `descendant` or one of its ancestors (see
/// [`Ancestry`]). libgit2's `graph_descendant_of` is a merge-base search
/// without generation numbers, which in a swarm's criss-cross history may
/// walk all of it, and it ran for every announced head.
fn descends(
    repo: &Repository,
    generations: &mut HashMap<Oid, u64>,
    descendant: Oid,
    ancestor: Oid,
) -> Result<bool, StoreError> {
    Ancestry::new(descendant).has(repo, generations, ancestor)
}

/// A commit's generation (from its body), through the store's cache.
fn generation_in(
    repo: &Repository,
    generations: &mut HashMap<Oid, u64>,
    id: Oid,
) -> Result<u64, StoreError> {
    if let Some(g) = generations.get(&id) {
        return Ok(*g);
    }
    let commit = repo.find_commit(id)?;
    let body = parse_body(commit.message_raw_bytes())
        .map_err(|e| StoreError::Body(commit_id(id), e.to_string()))?;
    generations.insert(id, body.generation());
    Ok(body.generation())
}

/// The commits reachable from `tip` and from none of `known` (accepted
/// commits), parents before children; more than `max` is refused.
///
/// The walk takes commits from the newest generation down and stops once
/// only known ones are left. Every known commit's generation is its
/// greatest parent's plus one (validation holds accepted commits to it), so
/// a commit is marked known before it is taken whenever it is: a
/// candidate's own body may lie about its generation, which only changes
/// when the candidate is taken, never whether. libgit2's revision walk
/// orders by commit time instead, which in a busy swarm (many commits in the
/// same second) made it walk far past the fork on every receive.
fn unknown_commits(
    repo: &Repository,
    generations: &mut HashMap<Oid, u64>,
    tip: Oid,
    known: &[Oid],
    max: usize,
) -> Result<Vec<Oid>, StoreError> {
    let mut walk = UnknownWalk::default();
    for &k in known {
        let generation = generation_in(repo, generations, k)?;
        walk.enqueue(k, Mark::Known, generation);
    }
    // A candidate's body may be unreadable (validation rejects it then): it
    // is taken first.
    let tip_generation = generation_in(repo, generations, tip).unwrap_or(u64::MAX);
    walk.enqueue(tip, Mark::Unknown, tip_generation);
    let mut found = Vec::new();
    let mut parents_of: HashMap<Oid, Vec<Oid>> = HashMap::new();
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
        let parents: Vec<Oid> = repo.find_commit(id)?.parent_ids().collect();
        for &parent in &parents {
            let generation = match mark {
                Mark::Known => generation_in(repo, generations, parent)?,
                _ => generation_in(repo, generations, parent).unwrap_or(u64::MAX),
            };
            walk.enqueue(parent, mark, generation);
        }
        if mark == Mark::Unknown {
            found.push(id);
            if found.len() > max {
                return Err(StoreError::Rejected(vec![Rejection::TooManyCommits {
                    found: found.len(),
                    max,
                }]));
            }
            parents_of.insert(id, parents);
        }
    }
    Ok(parents_first(&found, &parents_of))
}

/// Where a commit stands in [`unknown_commits`]' walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Reachable from a known commit.
    Known,
    /// Queued, reachable only from the tip so far.
    Unknown,
    /// Taken from the queue as unknown (found).
    Taken,
}

#[derive(Default)]
struct UnknownWalk {
    /// Every commit queued so far.
    marks: HashMap<Oid, Mark>,
    /// By generation, newest first.
    queue: std::collections::BinaryHeap<(u64, Oid)>,
    /// Queued commits marked [`Mark::Unknown`]: the walk ends at zero.
    unknown_queued: usize,
}

impl UnknownWalk {
    fn enqueue(&mut self, id: Oid, mark: Mark, generation: u64) {
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

/// `ids` ordered so that each comes after those of its parents among them
/// (depth first, from the oldest found); `parents_of` lists each one's
/// parents.
fn parents_first(ids: &[Oid], parents_of: &HashMap<Oid, Vec<Oid>>) -> Vec<Oid> {
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

/// The ancestors of one commit, found lazily from the newest generation
/// down, so that every ancestry question about the same descendant shares
/// one walk. Validation ties every accepted commit's generation to its
/// parents' (the greatest plus one), so once every found commit newer than
/// generation `g` has been expanded, every ancestor of generation `g` has
/// been found: asking about an older commit only extends the walk.
///
/// A head plan asks about one descendant many times (once per nested merge
/// of the other head); each question used to walk the whole region again,
/// and after a partition healed that was half of every node's CPU.
struct Ancestry {
    tip: Oid,
    /// Commits known to be reachable from `tip`.
    found: HashSet<Oid>,
    /// Found commits whose parents are not yet found, by generation.
    frontier: std::collections::BinaryHeap<(u64, Oid)>,
    /// Whether the tip's parents have been found.
    started: bool,
}

impl Ancestry {
    fn new(tip: Oid) -> Self {
        Self {
            tip,
            found: HashSet::from([tip]),
            frontier: std::collections::BinaryHeap::new(),
            started: false,
        }
    }

    /// Whether `ancestor` is the tip or one of its ancestors. An `ancestor`
    /// whose body cannot be read is in no accepted history. On an error the
    /// walk stays as it was, so a later question is still answered right.
    fn has(
        &mut self,
        repo: &Repository,
        generations: &mut HashMap<Oid, u64>,
        ancestor: Oid,
    ) -> Result<bool, StoreError> {
        if self.found.contains(&ancestor) {
            return Ok(true);
        }
        let Ok(floor) = generation_in(repo, generations, ancestor) else {
            return Ok(false);
        };
        if !self.started {
            // The tip is expanded whatever its generation: its own body
            // need not be readable (a rejected head is asked about too).
            self.expand(repo, generations, self.tip)?;
            self.started = true;
        }
        while self.frontier.peek().is_some_and(|&(g, _)| g > floor) {
            let Some((g, id)) = self.frontier.pop() else {
                break;
            };
            if let Err(e) = self.expand(repo, generations, id) {
                self.frontier.push((g, id));
                return Err(e);
            }
        }
        Ok(self.found.contains(&ancestor))
    }

    /// Finds `id`'s parents; on an error finds none of them.
    fn expand(
        &mut self,
        repo: &Repository,
        generations: &mut HashMap<Oid, u64>,
        id: Oid,
    ) -> Result<(), StoreError> {
        let mut parents = Vec::new();
        for parent in repo.find_commit(id)?.parent_ids() {
            if !self.found.contains(&parent) {
                parents.push((generation_in(repo, generations, parent)?, parent));
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

/// Containment answers for one head plan (or one question): the walk of
/// each `t` asked about, and the answers already known, by `(t, x)`.
#[derive(Default)]
struct Containment {
    ancestries: HashMap<Oid, Ancestry>,
    answers: HashMap<(Oid, Oid), bool>,
}

impl Containment {
    /// `contains(t, x)`: x is t or an ancestor of it, or a merge whose
    /// parents are all contained in t (at most [`CONTAINS_MERGE_DEPTH_MAX`]
    /// merges deep).
    fn contains(
        &mut self,
        repo: &Repository,
        generations: &mut HashMap<Oid, u64>,
        t: Oid,
        x: Oid,
    ) -> Result<bool, StoreError> {
        self.contains_depth(repo, generations, t, x, 0)
    }

    fn contains_depth(
        &mut self,
        repo: &Repository,
        generations: &mut HashMap<Oid, u64>,
        t: Oid,
        x: Oid,
        depth: usize,
    ) -> Result<bool, StoreError> {
        if let Some(answer) = self.answers.get(&(t, x)) {
            return Ok(*answer);
        }
        let ancestry = self.ancestries.entry(t).or_insert_with(|| Ancestry::new(t));
        let answer = if ancestry.has(repo, generations, x)? {
            true
        } else {
            let commit = repo.find_commit(x)?;
            if commit.parent_count() < 2 || depth >= CONTAINS_MERGE_DEPTH_MAX {
                false
            } else {
                let mut all = true;
                for parent in commit.parent_ids() {
                    if !self.contains_depth(repo, generations, t, parent, depth + 1)? {
                        all = false;
                        break;
                    }
                }
                all
            }
        };
        self.answers.insert((t, x), answer);
        Ok(answer)
    }
}

/// Reads every file of a tree, enforcing the tree bounds.
pub fn read_files(repo: &Repository, tree: Oid) -> Result<Files, StoreError> {
    let mut files = Files::new();
    read_dir(repo, tree, "", 0, &mut files)?;
    Ok(files)
}

fn read_dir(
    repo: &Repository,
    tree: Oid,
    prefix: &str,
    depth: usize,
    files: &mut Files,
) -> Result<(), StoreError> {
    let bound = |what: String| StoreError::TreeBound {
        tree: tree.to_string(),
        what,
    };
    if depth > TREE_DEPTH_MAX {
        return Err(bound(format!("deeper than {TREE_DEPTH_MAX}")));
    }
    let tree_obj = repo.find_tree(tree)?;
    for entry in tree_obj.iter() {
        let name = entry
            .name()
            .ok_or_else(|| bound("entry name is not UTF-8".into()))?;
        let path = format!("{prefix}{name}");
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                read_dir(repo, entry.id(), &format!("{path}/"), depth + 1, files)?
            }
            Some(git2::ObjectType::Blob) if entry.filemode() == 0o100644 => {
                let blob = repo.find_blob(entry.id())?;
                if blob.size() > TREE_FILE_BYTES_MAX {
                    return Err(bound(format!("{path} is {} bytes", blob.size())));
                }
                files.insert(path, blob.content().to_vec());
                if files.len() > TREE_FILES_MAX {
                    return Err(bound(format!("more than {TREE_FILES_MAX} files")));
                }
            }
            _ => return Err(bound(format!("{path} is not a regular file or directory"))),
        }
    }
    Ok(())
}

/// The changes that turn `before` into `after`.
pub fn diff_files(before: &Files, after: &Files) -> Changes {
    let mut changes = Changes::new();
    for (path, content) in after {
        if before.get(path) != Some(content) {
            changes.insert(path.clone(), Some(content.clone()));
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            changes.insert(path.clone(), None);
        }
    }
    changes
}

/// Writes the tree `base` with `changes` applied.
pub fn tree_with_changes(
    repo: &Repository,
    base: Oid,
    changes: &Changes,
) -> Result<Oid, StoreError> {
    if changes.is_empty() {
        return Ok(base);
    }
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, change) in changes {
        match change {
            Some(content) => {
                let blob = repo.blob(content)?;
                update.upsert(path.as_str(), blob, git2::FileMode::Blob);
            }
            None => {
                update.remove(path.as_str());
            }
        }
    }
    let base = repo.find_tree(base)?;
    Ok(update.create_updated(repo, &base)?)
}

/// The candidate of a commit this store just wrote, from the bytes in hand.
/// Never `Store::candidate` on a staged commit: libgit2's in-memory backend
/// hands out object data without the NUL terminator `extract_signature`
/// scans for.
fn staged_candidate(written: WrittenCommit, changes: Changes) -> Candidate {
    Candidate {
        id: commit_id(written.id),
        signature: Some(written.signature.into_bytes()),
        payload: written.payload,
        changes,
    }
}

/// A commit as written: its id, the signed payload and the armored signature.
#[derive(Debug, Clone)]
pub struct WrittenCommit {
    /// The new commit's id.
    pub id: Oid,
    /// The commit object without its `gpgsig` header (what was signed).
    pub payload: Vec<u8>,
    /// The armored sshsig stored in the `gpgsig` header.
    pub signature: String,
}

/// The signed payload of a commit: exactly the object Git would write, and
/// what `git verify-commit` hands to `ssh-keygen` (author and committer are
/// the account id and the device id, at `now_secs` UTC).
pub fn commit_payload(
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let ident = format!(
        "{} <{}> {now_secs} +0000",
        signer.account_id(),
        signer.device_id()
    );
    let mut head = format!("tree {tree}\n");
    for parent in parents {
        let _ = writeln!(head, "parent {parent}");
    }
    let _ = write!(head, "author {ident}\ncommitter {ident}\n\n");
    let mut payload = head.into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// Writes a commit signed by `signer`, without reading anything back: the
/// payload is formatted here, signed, and the `gpgsig` header inserted after
/// `committer` with continuation lines, as Git does.
pub fn write_commit_parts(
    repo: &Repository,
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Result<WrittenCommit, StoreError> {
    let payload = commit_payload(signer, tree, parents, body, now_secs);
    let signature = sign_payload(signer.key(), &payload);
    let split = payload
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a payload always has a blank line before its body")
        + 1;
    let mut object = Vec::with_capacity(payload.len() + signature.len() + 16);
    object.extend_from_slice(&payload[..split]);
    object.extend_from_slice(b"gpgsig ");
    object.extend_from_slice(
        signature
            .trim_end_matches('\n')
            .replace('\n', "\n ")
            .as_bytes(),
    );
    object.push(b'\n');
    object.extend_from_slice(&payload[split..]);
    let id = repo.odb()?.write(git2::ObjectType::Commit, &object)?;
    Ok(WrittenCommit {
        id,
        payload,
        signature,
    })
}

/// Writes a commit signed by `signer`; returns its id.
pub fn write_commit(
    repo: &Repository,
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Result<Oid, StoreError> {
    Ok(write_commit_parts(repo, signer, tree, parents, body, now_secs)?.id)
}
