//! Reading a conversation's history for people: message pages with edits,
//! deletions and reactions applied, the commits a head move brought (for
//! the account's event stream), the profile, and who signed commits a peer
//! refused (so the account can tell their authors, and learn of its own).
//!
//! These are handlers of the [`Conversation`] actor, kept apart from its
//! write path. The display rules are pure ([`starling_protocol::swarm::timeline`]);
//! this module only reads commits out of git and bounds the walks.

use std::collections::{BTreeSet, HashMap};

use actix::prelude::*;
use git2::{Oid, Repository};
use starling_protocol::swarm::body::{parse_body, BodyKind};
use starling_protocol::swarm::gossip::REJECTED_COMMITS_MAX;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::PAGE_WALK_COMMITS_MAX;
use starling_protocol::swarm::order::{Dag, DagEntry, NewestFirstWalk};
use starling_protocol::swarm::state::{device_path, PROFILE_PATH};
use starling_protocol::swarm::timeline::{PageBuilder, ShownMessage, TimelineCommit};
use starling_protocol::{AccountId, DeviceCert, DeviceId};

use super::actor::{Conversation, ConversationError};
use super::store::{commit_id, display_key, oid, signer_device, StoreError};

/// Commits one head move describes at most; the rest are only counted.
pub const RANGE_COMMITS_MAX: usize = 1_000;

/// Reads commits for the walks, remembering who signed what.
struct HistoryDag<'r> {
    repo: &'r Repository,
    /// Device → account, from certificates met in trees.
    accounts: HashMap<DeviceId, Option<AccountId>>,
}

impl<'r> HistoryDag<'r> {
    fn new(repo: &'r Repository) -> Self {
        Self {
            repo,
            accounts: HashMap::new(),
        }
    }

    /// The account of the device that signed `id`: its certificate is in
    /// the commit's own tree (or, for a leave, its parent's).
    fn author(&mut self, commit: &git2::Commit<'_>) -> Option<AccountId> {
        let (armored, _) = self.repo.extract_signature(&commit.id(), None).ok()?;
        let device = signer_device(&armored)?;
        if let Some(known) = self.accounts.get(&device) {
            return *known;
        }
        let path = device_path(&device);
        let mut trees = vec![commit.tree_id()];
        trees.extend(commit.parents().map(|p| p.tree_id()));
        let account = trees.into_iter().find_map(|tree| {
            let tree = self.repo.find_tree(tree).ok()?;
            let entry = tree.get_path(std::path::Path::new(&path)).ok()?;
            let blob = self.repo.find_blob(entry.id()).ok()?;
            let pem = std::str::from_utf8(blob.content()).ok()?;
            DeviceCert::from_pem(pem)
                .ok()
                .map(|c| c.claimed_account_id())
        });
        self.accounts.insert(device, account);
        account
    }

    fn timeline_commit(&mut self, id: Oid) -> Result<TimelineCommit, StoreError> {
        let commit = self.repo.find_commit(id)?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(commit_id(id), e.to_string()))?;
        let author = self.author(&commit);
        Ok(TimelineCommit {
            key: display_key(self.repo, &commit, body.generation())?,
            author,
            body,
        })
    }
}

impl Dag for HistoryDag<'_> {
    type Error = StoreError;
    fn entry(&mut self, id: &CommitId) -> Result<DagEntry, StoreError> {
        let commit = self.repo.find_commit(oid(id))?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(*id, e.to_string()))?;
        Ok(DagEntry {
            key: display_key(self.repo, &commit, body.generation())?,
            parents: commit.parent_ids().map(commit_id).collect(),
            shown: !matches!(body.kind(), Some(BodyKind::Merge)),
        })
    }
}

/// Why a page could not be built, besides storage errors.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("cursor {0} is not a commit of this conversation's history")]
    UnknownCursor(CommitId),
    #[error("cursor {0} is more than {PAGE_WALK_COMMITS_MAX} commits back; page from a newer one")]
    CursorTooDeep(CommitId),
    #[error("{0}")]
    Conversation(#[from] ConversationError),
}

/// A page of text messages, newest first: at most `limit`, older than
/// `before` (a message id) when given.
#[derive(Message)]
#[rtype(result = "Result<Vec<ShownMessage>, PageError>")]
pub struct MessagePage {
    /// How many at most.
    pub limit: usize,
    /// Only messages older (in display order) than this one.
    pub before: Option<CommitId>,
}

enum PageOutcome {
    Page(Vec<ShownMessage>),
    UnknownCursor,
    TooDeep,
}

impl Handler<MessagePage> for Conversation {
    type Result = Result<Vec<ShownMessage>, PageError>;
    fn handle(&mut self, msg: MessagePage, _: &mut Self::Context) -> Self::Result {
        let outcome = self.with_store(|store, _| {
            let tips = store.tips().to_vec();
            let reachable = match msg.before {
                Some(before) => store.holds(&[before])?[0],
                None => true,
            };
            if !reachable {
                return Ok(PageOutcome::UnknownCursor);
            }
            let repo = store.repository();
            let mut dag = HistoryDag::new(repo);
            let cursor = match msg.before {
                Some(before) => Some(dag.entry(&before)?.key),
                None => None,
            };
            let mut builder = PageBuilder::new(msg.limit, cursor);
            let mut walk = NewestFirstWalk::new(&tips, &mut dag)?;
            let mut walked = 0usize;
            while !builder.is_full() {
                let Some(entry) = walk.next_entry(&mut dag)? else {
                    break;
                };
                walked += 1;
                if walked > PAGE_WALK_COMMITS_MAX {
                    return Ok(PageOutcome::TooDeep);
                }
                if entry.shown {
                    builder.offer(dag.timeline_commit(oid(&entry.key.id))?);
                }
            }
            Ok(PageOutcome::Page(builder.finish()))
        })?;
        match (outcome, msg.before) {
            (PageOutcome::Page(page), _) => Ok(page),
            (PageOutcome::UnknownCursor, Some(c)) => Err(PageError::UnknownCursor(c)),
            (PageOutcome::TooDeep, Some(c)) => Err(PageError::CursorTooDeep(c)),
            (_, None) => Ok(Vec::new()),
        }
    }
}

/// The commits reachable from the tips `until` and from none of `since`:
/// what a move of the tips brought. Oldest first, merges left out, at most
/// [`RANGE_COMMITS_MAX`] (the newest ones).
#[derive(Message)]
#[rtype(result = "Result<HeadMove, ConversationError>")]
pub struct DescribeHeadMove {
    /// The tips before.
    pub since: Vec<CommitId>,
    /// The tips after.
    pub until: Vec<CommitId>,
}

/// The answer to [`DescribeHeadMove`].
#[derive(Debug, Clone, Default)]
pub struct HeadMove {
    /// The new commits, oldest first.
    pub commits: Vec<TimelineCommit>,
    /// New commits beyond [`RANGE_COMMITS_MAX`], not described.
    pub omitted: usize,
}

impl Handler<DescribeHeadMove> for Conversation {
    type Result = Result<HeadMove, ConversationError>;
    fn handle(&mut self, msg: DescribeHeadMove, _: &mut Self::Context) -> Self::Result {
        self.with_store(|store, _| {
            let repo = store.repository();
            let mut walk = repo.revwalk()?;
            for tip in &msg.until {
                walk.push(oid(tip))?;
            }
            for tip in &msg.since {
                if repo.find_commit(oid(tip)).is_ok() {
                    walk.hide(oid(tip))?;
                }
            }
            let mut dag = HistoryDag::new(repo);
            let mut out = HeadMove::default();
            for id in walk {
                let id = id?;
                if out.commits.len() >= RANGE_COMMITS_MAX {
                    out.omitted += 1;
                    continue;
                }
                let commit = dag.timeline_commit(id)?;
                if !matches!(commit.body.kind(), Some(BodyKind::Merge)) {
                    out.commits.push(commit);
                }
            }
            out.commits.sort_by_key(|c| c.key);
            Ok(out)
        })
    }
}

/// The devices that signed `ids` (at most [`REJECTED_COMMITS_MAX`]), of
/// those whose objects this replica has, accepted or refused: whom to tell
/// that they were refused.
#[derive(Message)]
#[rtype(result = "Result<BTreeSet<DeviceId>, ConversationError>")]
pub struct SignersOf(pub Vec<CommitId>);

impl Handler<SignersOf> for Conversation {
    type Result = Result<BTreeSet<DeviceId>, ConversationError>;
    fn handle(&mut self, msg: SignersOf, _: &mut Self::Context) -> Self::Result {
        self.with_store(|store, _| {
            let repo = store.repository();
            Ok(msg
                .0
                .iter()
                .take(REJECTED_COMMITS_MAX)
                .filter_map(|id| signer_of(repo, id))
                .collect())
        })
    }
}

/// Which of `ids` (at most [`REJECTED_COMMITS_MAX`]) this device signed and
/// holds in its accepted history: its own commits, among those a peer says
/// it refused. Staged commits are never announced, so only the durable
/// tips are read.
#[derive(Message)]
#[rtype(result = "Result<BTreeSet<CommitId>, ConversationError>")]
pub struct OwnAccepted(pub Vec<CommitId>);

impl Handler<OwnAccepted> for Conversation {
    type Result = Result<BTreeSet<CommitId>, ConversationError>;
    fn handle(&mut self, msg: OwnAccepted, _: &mut Self::Context) -> Self::Result {
        self.with_store(|store, signer| {
            let ours: Vec<CommitId> = msg
                .0
                .iter()
                .take(REJECTED_COMMITS_MAX)
                .filter(|id| signer_of(store.repository(), id) == Some(signer.device_id()))
                .copied()
                .collect();
            // `holds` answers false for a commit we lack.
            let held = store.holds(&ours)?;
            Ok(ours
                .into_iter()
                .zip(held)
                .filter_map(|(id, held)| held.then_some(id))
                .collect())
        })
    }
}

/// The device whose key signed commit `id`, if this replica has it.
fn signer_of(repo: &Repository, id: &CommitId) -> Option<DeviceId> {
    let (armored, _) = repo.extract_signature(&oid(id), None).ok()?;
    signer_device(&armored)
}

/// The conversation's profile (`profile.json`), `{}` when it has none.
#[derive(Message)]
#[rtype(result = "Result<serde_json::Map<String, serde_json::Value>, ConversationError>")]
pub struct GetProfile;

impl Handler<GetProfile> for Conversation {
    type Result = Result<serde_json::Map<String, serde_json::Value>, ConversationError>;
    fn handle(&mut self, _: GetProfile, _: &mut Self::Context) -> Self::Result {
        self.with_store(|store, _| {
            let state = store.state()?;
            Ok(state
                .files()
                .get(PROFILE_PATH)
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
                .and_then(|v| match v {
                    serde_json::Value::Object(map) => Some(map),
                    _ => None,
                })
                .unwrap_or_default())
        })
    }
}
