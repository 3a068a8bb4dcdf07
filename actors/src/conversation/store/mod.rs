//! The conversation store: one bare Git repository per conversation
//! (format 2, `docs/PROTOCOL.md` §9).
//!
//! Plain synchronous git2 code (the conversation actor runs it off the async
//! arbiters). It turns the repository into the values the rules in
//! `starling_protocol::swarm` judge, and applies their verdicts.
//!
//! **Tips.** The accepted history is the set of commits reachable from the
//! **tips**: accepted commits nothing else accepted descends from, one ref
//! each under `refs/heads/tips/`. Receiving never writes a commit: validated
//! commits join the history and the tips move ([`receive`]). A commit this
//! device authors names every tip as a parent, its tree being the merge of
//! theirs plus its own change ([`author`]). `refs/heads/main` (and `HEAD`)
//! follow the tip with the greatest display key, for stock Git tools.
//! Fetched objects wait under `refs/starling/quarantine/<peer>/` until
//! validated; objects of rejected commits stay unreferenced.
//!
//! Every commit this store authors goes through the same validation as a
//! fetched one before any ref names it, so a replica never publishes a
//! commit its peers would refuse.
//!
//! Durability (see `durable.rs`): objects this store writes are staged in
//! memory and persisted as one fsync'd pack before any ref names them; refs
//! are fsync'd as they move. [`Store::author_staged`] stages a commit, and
//! one [`Store::commit_staged`] makes a whole batch durable (group commit).
//!
//! Modules: [`trees`] (tree and commit I/O), [`tips`] (the tip refs),
//! [`author`] (authoring and batches), [`receive`] (validating fetched
//! objects and inline packs), [`pages`] (history as people read it).

pub mod author;
pub mod pages;
pub mod receive;
pub mod tips;
pub mod trees;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use git2::{Oid, Repository};
use starling_protocol::swarm::body::{parse_body, Body};
use starling_protocol::swarm::dag::{CommitGraph, WalkError};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::merge::{merge_parents, TreeHistory};
use starling_protocol::swarm::order::{display_time_secs, OrderKey};
use starling_protocol::swarm::state::{Files, StateError, SwarmState};
use starling_protocol::swarm::validation::{Accepted, History, ParentView, Rejection};
use starling_protocol::{AccountId, DeviceId};

use super::durable::{self, Staging};

pub use pages::MessageView;
pub use receive::{check_signatures, quarantine_prefix, FetchReport};
pub use tips::{tip_refs, HEAD_REF, TIP_REF_PREFIX};
pub use trees::{
    commit_payload, diff_files, read_files, tree_with_changes, write_commit, write_commit_parts,
    WrittenCommit,
};

/// Deepest directory nesting a conversation tree has (`votes/ban/<t>/<v>`).
pub const TREE_DEPTH_MAX: usize = 4;
/// Most threads that check a fetch's signatures (the rest of validation
/// runs on the conversation's own thread).
pub const SIGNATURE_THREADS_MAX: usize = 4;
/// Fewest commits worth splitting across threads: below it, spawning costs
/// more than the checks.
pub const SIGNATURE_PARALLEL_MIN: usize = 64;
/// Merged states of tip sets kept at once (each is one `Arc` of a state
/// most often shared with a commit's own).
pub const MERGED_STATES_MAX: usize = 64;
/// Trees whose files are kept without a state.
pub const TREE_FILES_CACHED_MAX: usize = 256;
/// The repository format this store reads and writes (`starling.format`).
pub const FORMAT_VERSION: i64 = 2;

const CONFIG_CONVERSATION: &str = "starling.conversation";
const CONFIG_FORMAT: &str = "starling.format";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("repository is not a Starling conversation: {0}")]
    NotAConversation(String),
    #[error(
        "repository was written in Starling's format {found}; this starling reads format \
         {FORMAT_VERSION} only (the data is left untouched; stock git still reads it)"
    )]
    Format { found: i64 },
    #[error("stored tree is invalid: {0}")]
    Tree(#[from] StateError),
    #[error("tree {tree} breaks a bound: {what}")]
    TreeBound { tree: String, what: String },
    #[error("refusing to author an invalid commit: {0}")]
    Own(Box<Rejection>),
    #[error("fetched history is invalid: {0:?}")]
    Rejected(Vec<Rejection>),
    #[error("peer name {0:?} is not [A-Za-z0-9_-]{{1,64}}")]
    BadPeerName(String),
    #[error("commit {0} body is unreadable: {1}")]
    Body(CommitId, String),
    #[error("inline pack is relative to {0}, which our history does not hold")]
    PackBaseMissing(CommitId),
    #[error("the merged state of the tips cannot be built: {0}")]
    Merge(String),
    #[error("recovering the repository: {0}")]
    Recovery(#[from] super::recovery::RecoveryError),
}

impl StoreError {
    /// Why this error leaves the conversation unable to write (`locked`,
    /// `io`, `damaged`, `format`), or `None` when it judges only the input
    /// (a refused commit, a bad pack from a peer) and the store is sound.
    pub fn health_reason(&self) -> Option<&'static str> {
        use super::recovery::RecoveryError;
        match self {
            StoreError::Git(e) if e.code() == git2::ErrorCode::Locked => Some("locked"),
            StoreError::Git(e)
                if matches!(
                    e.class(),
                    git2::ErrorClass::Os | git2::ErrorClass::Filesystem
                ) =>
            {
                Some("io")
            }
            StoreError::Git(e) if e.class() == git2::ErrorClass::Odb => Some("damaged"),
            StoreError::Git(_) => None,
            StoreError::Recovery(RecoveryError::RootLost) => Some("damaged"),
            StoreError::Recovery(_) => Some("io"),
            StoreError::NotAConversation(_) | StoreError::Tree(_) | StoreError::Merge(_) => {
                Some("damaged")
            }
            StoreError::Format { .. } => Some("format"),
            StoreError::TreeBound { .. }
            | StoreError::Own(_)
            | StoreError::Rejected(_)
            | StoreError::BadPeerName(_)
            | StoreError::Body(..)
            | StoreError::PackBaseMissing(_) => None,
        }
    }
}

impl From<WalkError<StoreError>> for StoreError {
    fn from(e: WalkError<StoreError>) -> Self {
        match e {
            WalkError::Graph(e) => e,
            WalkError::TooMany { max } => StoreError::Rejected(vec![Rejection::TooManyCommits {
                found: max + 1,
                max,
            }]),
        }
    }
}

/// The objects of one durable batch, as announced inline (`heads_pack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPack {
    /// The tips before the batch: the pack holds every object reachable
    /// from `tip` and from none of them.
    pub bases: Vec<CommitId>,
    /// The tip the batch made.
    pub tip: CommitId,
    /// The pack.
    pub bytes: Vec<u8>,
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

/// Commits authored on top of the durable tips and not yet durable.
#[derive(Debug, Clone)]
struct StagedBatch {
    /// The newest staged commit: it names, through its staged ancestors,
    /// every durable tip.
    tip: Oid,
    /// Its committer time (the next commit follows it; a staged commit is
    /// not read back).
    tip_time_secs: i64,
    /// The durable tips the batch was built on.
    bases: Vec<CommitId>,
}

/// The merged state at a set of tips, cached.
#[derive(Debug, Clone)]
struct MergedTips {
    state: Arc<SwarmState>,
    /// The tree of that state (written to the staging area if no commit
    /// has it yet).
    tree: Oid,
}

/// A conversation repository on disk.
pub struct Store {
    // Declared before `repo`: the staging area points into its object database.
    staging: Staging,
    /// The commits staged but not yet durable (`None`: nothing staged).
    staged: Option<StagedBatch>,
    /// The pack of the last durable batch, if small enough to announce inline.
    batch_pack: Option<BatchPack>,
    repo: Repository,
    conversation: CommitId,
    /// The durable tips, sorted.
    tips: Vec<CommitId>,
    /// Merged states by sorted tip set: the durable tips', and the parents
    /// of multi-parent commits being validated (at most
    /// [`MERGED_STATES_MAX`]; emptied when full).
    merged: HashMap<Vec<CommitId>, MergedTips>,
    /// Tree id → parsed state (trees are shared by every message commit).
    states: HashMap<Oid, Arc<SwarmState>>,
    /// The state built last: new states reuse what it checked.
    last_state: Option<Arc<SwarmState>>,
    /// Tree id → files, for trees read without a state (merge bases; at
    /// most [`TREE_FILES_CACHED_MAX`], emptied when full).
    files: HashMap<Oid, Arc<Files>>,
    /// Commit id → display key (generation from its body).
    keys: HashMap<CommitId, OrderKey>,
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
            .field("tips", &self.tips)
            .finish()
    }
}

impl Store {
    fn with_repo(repo: Repository, conversation: CommitId) -> Result<Self, StoreError> {
        Ok(Self {
            staging: Staging::attach(&repo)?,
            staged: None,
            batch_pack: None,
            repo,
            conversation,
            tips: Vec::new(),
            merged: HashMap::new(),
            states: HashMap::new(),
            last_state: None,
            files: HashMap::new(),
            keys: HashMap::new(),
            commit_trees: HashMap::new(),
            rejections: BTreeMap::new(),
        })
    }

    /// Opens an existing conversation repository (format 2; an older format
    /// is refused with [`StoreError::Format`], and left as it is).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let repo = durable::open_bare(path)?;
        let config = repo.config()?;
        let conversation = config
            .get_string(CONFIG_CONVERSATION)
            .map_err(|_| StoreError::NotAConversation("no starling.conversation".into()))?
            .parse()
            .map_err(|e: starling_protocol::swarm::ids::CommitIdParseError| {
                StoreError::NotAConversation(e.to_string())
            })?;
        let format = config.get_i64(CONFIG_FORMAT).unwrap_or(1);
        if format != FORMAT_VERSION {
            return Err(StoreError::Format { found: format });
        }
        drop(config);
        // Repositories made before the setting existed get it here, where
        // the conversation (their one writer) opens them.
        durable::tune_packing(&repo)?;
        let mut store = Self::with_repo(repo, conversation)?;
        store.tips = store.read_tips()?;
        if store.tips.is_empty() {
            return Err(StoreError::NotAConversation("no tips".into()));
        }
        // A crash between moving the tips and `main`, or a recovery that
        // dropped `main`, leaves it behind: stock tools read it.
        store.point_main_at_newest_tip("open")?;
        Ok(store)
    }

    /// Marks a repository as a format-2 conversation `conversation`.
    fn write_config(repo: &Repository, conversation: CommitId) -> Result<(), StoreError> {
        let mut config = repo.config()?;
        config.set_str(CONFIG_CONVERSATION, &conversation.to_hex())?;
        config.set_i64(CONFIG_FORMAT, FORMAT_VERSION)?;
        Ok(())
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

    /// The durable tips, sorted by commit id.
    pub fn tips(&self) -> &[CommitId] {
        &self.tips
    }

    /// The durable tip with the greatest display key (what `HEAD` names).
    pub fn head(&self) -> Result<CommitId, StoreError> {
        Ok(commit_id(self.repo.refname_to_id(HEAD_REF)?))
    }

    /// The membership state at the durable tips (the merge of their trees).
    pub fn state(&mut self) -> Result<Arc<SwarmState>, StoreError> {
        let tips = self.tips.clone();
        Ok(self.merged_at(&tips)?.state)
    }

    /// Admins and members at the tips.
    pub fn members(&mut self) -> Result<std::collections::BTreeSet<AccountId>, StoreError> {
        Ok(self.state()?.member_ids())
    }

    /// The merged state at `tips` (sorted), cached for the last set asked.
    fn merged_at(&mut self, tips: &[CommitId]) -> Result<MergedTips, StoreError> {
        if let Some(m) = self.merged.get(tips) {
            return Ok(m.clone());
        }
        let merged = match tips {
            [only] => {
                let tree = self.tree_of(oid(only))?;
                MergedTips {
                    state: self.state_of_tree(tree)?,
                    tree,
                }
            }
            _ => {
                let files = merge_parents(self, tips)?;
                let first_tree = self.tree_of(oid(&tips[0]))?;
                let first = self.state_of_tree(first_tree)?;
                if **first.files() == *files {
                    MergedTips {
                        state: first,
                        tree: first_tree,
                    }
                } else {
                    let changes = diff_files(first.files(), &files);
                    let tree = tree_with_changes(&self.repo, first_tree, &changes)?;
                    let state = match self.states.get(&tree) {
                        Some(s) => s.clone(),
                        None => {
                            let state = Arc::new(
                                SwarmState::from_shared_like(files.clone(), &first)
                                    .map_err(|e| StoreError::Merge(e.to_string()))?,
                            );
                            self.states.insert(tree, state.clone());
                            state
                        }
                    };
                    MergedTips { state, tree }
                }
            }
        };
        if self.merged.len() >= MERGED_STATES_MAX {
            self.merged.clear();
        }
        self.merged.insert(tips.to_vec(), merged.clone());
        Ok(merged)
    }

    fn state_of_tree(&mut self, tree: Oid) -> Result<Arc<SwarmState>, StoreError> {
        if let Some(state) = self.states.get(&tree) {
            return Ok(state.clone());
        }
        let files = self.files_of_tree(tree)?;
        // Trees of one conversation differ in a few files: what the last
        // state built already parsed and checked is reused.
        let state = Arc::new(match &self.last_state {
            Some(like) => SwarmState::from_shared_like(files, like)?,
            None => SwarmState::from_shared(files)?,
        });
        self.states.insert(tree, state.clone());
        self.last_state = Some(state.clone());
        Ok(state)
    }

    /// A tree's files (cached by tree id; a merge base needs its files, not
    /// its state).
    fn files_of_tree(&mut self, tree: Oid) -> Result<Arc<Files>, StoreError> {
        if let Some(state) = self.states.get(&tree) {
            return Ok(state.files().clone());
        }
        if let Some(files) = self.files.get(&tree) {
            return Ok(files.clone());
        }
        let files = Arc::new(read_files(&self.repo, tree)?);
        if self.files.len() >= TREE_FILES_CACHED_MAX {
            self.files.clear();
        }
        self.files.insert(tree, files.clone());
        Ok(files)
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
            generation: self.order_key(&commit_id(id))?.generation,
        })
    }

    /// Caches what later validation and walks need of an accepted commit.
    fn remember(&mut self, id: Oid, tree: Oid, accepted: &Accepted) {
        self.commit_trees.insert(id, tree);
        self.states
            .entry(tree)
            .or_insert_with(|| accepted.state.clone());
    }

    /// A commit's display key (PROTOCOL.md §9.8): generation from its body,
    /// display time, id.
    pub fn order_key(&mut self, id: &CommitId) -> Result<OrderKey, StoreError> {
        if let Some(key) = self.keys.get(id) {
            return Ok(*key);
        }
        let commit = self.repo.find_commit(oid(id))?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(*id, e.to_string()))?;
        let key = display_key(&self.repo, &commit, body.generation())?;
        self.keys.insert(*id, key);
        Ok(key)
    }

    /// A commit's parsed body.
    pub fn body(&self, id: &CommitId) -> Result<Body, StoreError> {
        let commit = self.repo.find_commit(oid(id))?;
        parse_body(commit.message_raw_bytes()).map_err(|e| StoreError::Body(*id, e.to_string()))
    }

    /// Whether every one of `ids` is in accepted history (reachable from the
    /// durable tips); objects merely in the object database (quarantined,
    /// rejected) do not count. One walk answers all of them.
    pub fn holds(&mut self, ids: &[CommitId]) -> Result<Vec<bool>, StoreError> {
        let mut ancestry = starling_protocol::swarm::dag::Ancestry::new(&self.tips);
        ids.iter().map(|id| ancestry.has(self, id)).collect()
    }
}

impl CommitGraph for Store {
    type Error = StoreError;

    fn parents(&mut self, id: &CommitId) -> Result<Vec<CommitId>, StoreError> {
        Ok(self
            .repo
            .find_commit(oid(id))?
            .parent_ids()
            .map(commit_id)
            .collect())
    }

    fn key(&mut self, id: &CommitId) -> Result<OrderKey, StoreError> {
        self.order_key(id)
    }
}

impl TreeHistory for Store {
    fn files(&mut self, id: &CommitId) -> Result<Arc<Files>, StoreError> {
        let tree = self.tree_of(oid(id))?;
        self.files_of_tree(tree)
    }
}

impl History for Store {
    fn view(&mut self, id: &CommitId) -> Option<ParentView> {
        self.view_of(oid(id)).ok()
    }

    fn merged_state(&mut self, parents: &[CommitId]) -> Option<Arc<SwarmState>> {
        let mut sorted = parents.to_vec();
        sorted.sort();
        sorted.dedup();
        match self.merged_at(&sorted) {
            Ok(m) => Some(m.state),
            Err(e) => {
                tracing::warn!(error = %e, "merged state of parents");
                None
            }
        }
    }
}

/// The signing device of an armored sshsig, if it parses.
pub(crate) fn signer_device(armored: &[u8]) -> Option<DeviceId> {
    receive::signer_device(armored)
}

/// A commit's display key (PROTOCOL.md §9.8): the generation its body
/// gives, its display time (committer time, no earlier than its parents'),
/// its id.
pub fn display_key(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    generation: u64,
) -> Result<OrderKey, StoreError> {
    let mut parents_secs = Vec::with_capacity(commit.parent_count());
    for parent in commit.parent_ids() {
        parents_secs.push(repo.find_commit(parent)?.committer().when().seconds());
    }
    Ok(OrderKey {
        generation,
        time_secs: display_time_secs(commit.committer().when().seconds(), parents_secs),
        id: commit_id(commit.id()),
    })
}
