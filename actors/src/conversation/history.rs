//! Reading a conversation's history for people: message pages with edits,
//! deletions and reactions applied, the commits a head move brought (for
//! the account's event stream), and the profile.
//!
//! These are handlers of the [`Conversation`] actor, kept apart from its
//! write path. The display rules are pure ([`starling_protocol::swarm::timeline`]);
//! this module only reads commits out of git and bounds the walks.

use std::collections::HashMap;

use actix::prelude::*;
use git2::{Oid, Repository};
use starling_protocol::swarm::body::{parse_body, BodyKind};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::PAGE_WALK_COMMITS_MAX;
use starling_protocol::swarm::order::{Dag, DagEntry, NewestFirstWalk, OrderKey};
use starling_protocol::swarm::state::{device_path, PROFILE_PATH};
use starling_protocol::swarm::timeline::{PageBuilder, ShownMessage, TimelineCommit};
use starling_protocol::{AccountId, DeviceCert, DeviceId};

use super::actor::{Conversation, ConversationError};
use super::store::{commit_id, oid, signer_device, StoreError};

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
        let time_secs = commit.committer().when().seconds();
        Ok(TimelineCommit {
            key: OrderKey {
                generation: body.generation(),
                time_secs,
                id: commit_id(id),
            },
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
        let time_secs = commit.committer().when().seconds();
        Ok(DagEntry {
            key: OrderKey {
                generation: body.generation(),
                time_secs,
                id: *id,
            },
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
            let head = store.head()?;
            let repo = store.repository();
            let mut dag = HistoryDag::new(repo);
            let cursor = match msg.before {
                Some(before) => {
                    let reachable = oid(&before) == oid(&head)
                        || (repo.find_commit(oid(&before)).is_ok()
                            && repo
                                .graph_descendant_of(oid(&head), oid(&before))
                                .unwrap_or(false));
                    if !reachable {
                        return Ok(PageOutcome::UnknownCursor);
                    }
                    Some(dag.entry(&before)?.key)
                }
                None => None,
            };
            let mut builder = PageBuilder::new(msg.limit, cursor);
            let mut walk = NewestFirstWalk::new(head, &mut dag)?;
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

/// The commits reachable from `until` and not from `since`: what a head
/// move brought. Oldest first, merges left out, at most
/// [`RANGE_COMMITS_MAX`] (the newest ones).
#[derive(Message)]
#[rtype(result = "Result<HeadMove, ConversationError>")]
pub struct DescribeHeadMove {
    /// The head before.
    pub since: CommitId,
    /// The head after.
    pub until: CommitId,
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
            walk.push(oid(&msg.until))?;
            if repo.find_commit(oid(&msg.since)).is_ok() {
                walk.hide(oid(&msg.since))?;
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
