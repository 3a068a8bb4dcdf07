//! The `Conversation` actor: one per swarm, the only owner of its [`Store`].
//!
//! It runs in its own one-thread `SyncArbiter`, so libgit2's blocking work
//! never runs on an arbiter that serves other actors, and one slow swarm
//! never stalls another. The store is reopened from disk lazily: after any
//! git error the actor drops it and the next message opens it again, and if
//! the actor itself stops, the arbiter builds a fresh one from the same path
//! (its factory only remembers the path and the signer). Either way a failing
//! conversation recovers from its repository without taking its account down.
//!
//! **Group commit.** An [`Author`] request is staged (signed, validated,
//! written to the store's in-memory staging area) and its reply is held; the
//! actor then sends itself a [`FlushBatch`], which lands in the mailbox behind
//! every request already queued. Those are staged too, so when the flush runs
//! it makes the whole batch durable with one pack fsync and one move of the
//! tips, and only then answers each held request. Under load, requests
//! arriving during a flush form the next batch. Any other request flushes
//! first (but [`Holds`], which reads only the durable tips), so nothing ever
//! reads a tip that is not on disk. A batch holds at most
//! [`BATCH_COMMITS_MAX`] commits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use starling_protocol::swarm::body::{Body, BodyKind, MemberAction};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::state::PROFILE_PATH;
use starling_protocol::{AccountId, DeviceId};

use super::metrics::SwarmMetrics;
use super::recovery::{self, Scope};
use super::sign::DeviceSigner;
use super::store::{BatchPack, FetchReport, Store, StoreError};

/// What went wrong in a conversation.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("conversation {conversation}: {source}")]
    Store {
        conversation: String,
        #[source]
        source: StoreError,
    },
    #[error("conversation actor is gone")]
    Gone,
    #[error(
        "conversation {conversation}: the batch holding this commit was not made durable: {reason}"
    )]
    BatchFailed {
        conversation: String,
        reason: String,
    },
}

/// Authored commits one durable batch holds at most; further requests wait
/// for the next batch.
pub const BATCH_COMMITS_MAX: usize = 256;

/// An account's role in a swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May invite (in admin-only mode), vote and ban.
    Admin,
    /// A member.
    Member,
    /// Invited, not yet joined.
    Invited,
}

/// What the account needs to know of a swarm to route and refuse channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmView {
    /// The conversation id.
    pub id: CommitId,
    /// The tips (sorted): accepted commits nothing accepted descends from.
    pub tips: Vec<CommitId>,
    /// Members, admins and invitees with their roles.
    pub members: BTreeMap<AccountId, Role>,
    /// Devices of current members (not banned): who may sync.
    pub member_devices: BTreeSet<DeviceId>,
    /// The profile's title, if it has one.
    pub title: Option<String>,
}

impl SwarmView {
    /// Whether `account` is invited and not yet a member.
    pub fn is_invited(&self, account: &AccountId) -> bool {
        self.members.get(account) == Some(&Role::Invited)
    }
}

/// One text message as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageItem {
    /// Commit id.
    pub id: String,
    /// Author's account id.
    pub author: Option<AccountId>,
    /// The text.
    pub body: String,
    /// Commit time, seconds since the Unix epoch.
    pub timestamp: i64,
    /// The message it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

type AuthorResult = Result<(CommitId, SwarmView), ConversationError>;

/// A held reply to an [`Author`] request whose commit is staged.
struct Waiter {
    id: CommitId,
    is_text: bool,
    reply: Option<OneshotSender<AuthorResult>>,
}

/// Replies held until their batch is durable. Shared with [`AuthorReply`],
/// which parks each reply here right after its handler returns (actix hands
/// the reply channel to the response, not to the handler).
type Waiters = Arc<Mutex<Vec<Waiter>>>;

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
    // Never poisoned: nothing that holds it can panic.
    waiters
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The conversation actor.
pub struct Conversation {
    path: PathBuf,
    signer: DeviceSigner,
    store: Option<Store>,
    metrics: SwarmMetrics,
    /// Rejections already counted into `metrics`, by reason.
    counted_rejections: BTreeMap<&'static str, u64>,
    waiters: Waiters,
    /// Commits staged in the current batch.
    staged: usize,
    /// Whether a [`FlushBatch`] is in the mailbox.
    flush_queued: bool,
    /// Told of every durable batch before its requests are answered.
    listener: Option<Recipient<BatchDurable>>,
    /// This actor, to queue [`Consolidate`] behind the replies of a write.
    own: Option<Addr<Conversation>>,
    /// Whether a [`Consolidate`] is in the mailbox.
    consolidate_queued: bool,
    /// Set until the first open, which may then recover the repository as
    /// at startup ([`Scope::Startup`]); shared by the instances the arbiter
    /// builds, so a restarted actor recovers only what it alone writes.
    startup_recovery: Arc<AtomicBool>,
    /// Hears when the conversation stops or starts being able to write.
    health_listener: Option<Recipient<HealthChanged>>,
    /// Why the last write or open failed, while it has not succeeded since.
    unhealthy: Option<&'static str>,
}

impl Conversation {
    /// A conversation over the repository at `path` (opened on first use).
    pub fn new(path: PathBuf, signer: DeviceSigner, metrics: SwarmMetrics) -> Self {
        Self {
            path,
            signer,
            store: None,
            metrics,
            counted_rejections: BTreeMap::new(),
            waiters: Arc::new(Mutex::new(Vec::new())),
            staged: 0,
            flush_queued: false,
            listener: None,
            own: None,
            consolidate_queued: false,
            startup_recovery: Arc::new(AtomicBool::new(false)),
            health_listener: None,
            unhealthy: None,
        }
    }

    /// Starts the actor on its own thread; `listeners` hear of every durable
    /// batch (with its pack, to announce inline) before its requests are
    /// answered, and of every change in its health. `first_open` says what
    /// else may touch the repository when the actor first opens it
    /// ([`recovery::recover`]).
    pub fn start_with_listener(
        path: PathBuf,
        signer: DeviceSigner,
        metrics: SwarmMetrics,
        listeners: Listeners,
        first_open: Scope,
    ) -> Addr<Self> {
        let startup_recovery = Arc::new(AtomicBool::new(first_open == Scope::Startup));
        SyncArbiter::start(1, move || {
            let mut conversation = Conversation::new(path.clone(), signer.clone(), metrics.clone());
            conversation.listener = Some(listeners.batches.clone());
            conversation.health_listener = Some(listeners.health.clone());
            conversation.startup_recovery = startup_recovery.clone();
            conversation
        })
    }

    /// Starts the actor on its own thread, recovering the repository as at
    /// startup when it first opens it.
    pub fn start_on_own_thread(
        path: PathBuf,
        signer: DeviceSigner,
        metrics: SwarmMetrics,
    ) -> Addr<Self> {
        let startup_recovery = Arc::new(AtomicBool::new(true));
        SyncArbiter::start(1, move || {
            let mut conversation = Conversation::new(path.clone(), signer.clone(), metrics.clone());
            conversation.startup_recovery = startup_recovery.clone();
            conversation
        })
    }

    /// The store, opened from disk if it is not open. Every open first
    /// recovers the repository from what a crash or a failed write left
    /// (stale locks above all), so a conversation never stays wedged.
    fn store(&mut self) -> Result<&mut Store, StoreError> {
        if self.store.is_none() {
            let scope = if self.startup_recovery.swap(false, Ordering::SeqCst) {
                Scope::Startup
            } else {
                Scope::Runtime
            };
            let recovered = recovery::recover(&self.path, scope)?;
            self.metrics.recovered(&recovered);
            let mut store = Store::open(&self.path)?;
            if let Some(held) = &recovered.rollback {
                // Every tip was lost: validate again what is still held.
                let ids: Vec<CommitId> = held.iter().map(|o| super::store::commit_id(*o)).collect();
                let report = store.receive(&ids)?;
                tracing::warn!(
                    conversation = %self.path.display(),
                    accepted = report.accepted,
                    "rolled back to the first commit and accepted again what was held"
                );
            }
            // A reopened store counts from zero again.
            self.counted_rejections.clear();
            self.store = Some(store);
        }
        Ok(self.store.as_mut().expect("opened just above"))
    }

    /// Runs `f` on the store; a failure drops the store so the next message
    /// reopens (and recovers) it from disk.
    pub(super) fn with_store<T>(
        &mut self,
        f: impl FnOnce(&mut Store, &DeviceSigner) -> Result<T, StoreError>,
    ) -> Result<T, ConversationError> {
        let signer = self.signer.clone();
        let result = self.store().and_then(|store| f(store, &signer));
        if let Err(e) = &result {
            self.store = None;
            if let Some(reason) = e.health_reason() {
                self.set_health(Some(reason), &e.to_string());
            }
        }
        result.map_err(|source| self.store_error(source))
    }

    /// Records whether the conversation can write, telling the listener
    /// (and the log) when that changes.
    fn set_health(&mut self, unhealthy: Option<&'static str>, detail: &str) {
        if self.unhealthy == unhealthy {
            return;
        }
        match unhealthy {
            Some(reason) => tracing::error!(
                conversation = %self.path.display(),
                reason,
                error = detail,
                "conversation cannot write"
            ),
            None => {
                tracing::info!(conversation = %self.path.display(), "conversation writes again")
            }
        }
        self.unhealthy = unhealthy;
        if let Some(listener) = &self.health_listener {
            listener.do_send(HealthChanged {
                path: self.path.clone(),
                unhealthy,
                detail: detail.to_owned(),
            });
        }
    }

    fn store_error(&self, source: StoreError) -> ConversationError {
        ConversationError::Store {
            conversation: self.path.display().to_string(),
            source,
        }
    }

    /// Makes the staged batch durable and answers its held requests (all
    /// with the same view), or fails them all if it could not.
    fn flush_batch(&mut self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        let staged = std::mem::take(&mut self.staged);
        if waiters.is_empty() && staged == 0 {
            return;
        }
        let result = self.with_store(|store, _| {
            store.commit_staged()?;
            Ok((view_of(store)?, store.take_batch_pack()))
        });
        match result {
            Ok((view, pack)) => {
                self.set_health(None, "");
                self.metrics.batch_commits.observe(staged as f64);
                if let Some(listener) = &self.listener {
                    // Waited for (bounded mailbox, back-pressure): the listener
                    // has seen the batch before any of its requests is answered,
                    // so it announces the batch once, with its pack.
                    let told = BatchDurable {
                        view: view.clone(),
                        pack: pack.map(Arc::new),
                    };
                    if futures::executor::block_on(listener.send(told)).is_err() {
                        tracing::debug!("batch listener is gone");
                    }
                }
                for waiter in waiters {
                    if waiter.is_text {
                        self.metrics.messages_sent.inc();
                    }
                    if let Some(reply) = waiter.reply {
                        let _ = reply.send(Ok((waiter.id, view.clone())));
                    }
                }
                self.consolidate_later();
            }
            Err(e) => {
                tracing::error!(error = %e, commits = staged, "batch not made durable");
                // The failure may have come after some of the batch was on
                // disk (tips moved, `main` locked): what the reopened store
                // holds is acknowledged, the rest fails.
                let ids: Vec<CommitId> = waiters.iter().map(|w| w.id).collect();
                let reopened = self.with_store(|store, _| Ok((held(store, ids)?, view_of(store)?)));
                let (held, view) = match reopened {
                    Ok((held, view)) => (held, Some(view)),
                    Err(_) => (BTreeSet::new(), None),
                };
                let (durable, lost): (Vec<Waiter>, Vec<Waiter>) =
                    waiters.into_iter().partition(|w| held.contains(&w.id));
                if let Some(view) = view {
                    for waiter in durable {
                        if waiter.is_text {
                            self.metrics.messages_sent.inc();
                        }
                        if let Some(reply) = waiter.reply {
                            let _ = reply.send(Ok((waiter.id, view.clone())));
                        }
                    }
                }
                self.fail(lost, &e.to_string());
            }
        }
    }

    /// Queues a [`Consolidate`] (once) behind what the mailbox holds.
    fn consolidate_later(&mut self) {
        if self.consolidate_queued {
            return;
        }
        if let Some(own) = &self.own {
            own.do_send(Consolidate);
            self.consolidate_queued = true;
        }
    }

    fn fail(&self, waiters: Vec<Waiter>, reason: &str) {
        for waiter in waiters {
            if let Some(reply) = waiter.reply {
                let _ = reply.send(Err(ConversationError::BatchFailed {
                    conversation: self.path.display().to_string(),
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    fn count_rejections(&mut self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        for (reason, count) in store.rejection_counts() {
            let before = self.counted_rejections.insert(reason, *count).unwrap_or(0);
            if *count > before {
                self.metrics.rejected(reason, count - before);
            }
        }
    }
}

impl Actor for Conversation {
    type Context = SyncContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.own = Some(ctx.address());
    }
}

/// Merges packs past the bound ([`Store::consolidate_packs`]). Queued by a
/// write that added a pack, so the write's replies go out first.
#[derive(Message)]
#[rtype(result = "()")]
struct Consolidate;

impl Handler<Consolidate> for Conversation {
    type Result = ();
    fn handle(&mut self, _: Consolidate, _: &mut Self::Context) {
        self.consolidate_queued = false;
        if let Some(store) = &self.store {
            store.consolidate_packs();
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn view_of(store: &mut Store) -> Result<SwarmView, StoreError> {
    let state = store.state()?;
    let mut members = BTreeMap::new();
    for account in state.member_ids() {
        let role = if state.is_admin(&account) {
            Role::Admin
        } else {
            Role::Member
        };
        members.insert(account, role);
    }
    let mut member_devices = BTreeSet::new();
    for device in state.device_ids() {
        if state.is_banned_device(device) {
            continue;
        }
        if let Some((cert, _)) = state.device(device) {
            if state.is_member(&cert.claimed_account_id()) {
                member_devices.insert(*device);
            }
        }
    }
    for (path, _) in state.files().iter() {
        if let Some(id) = path.strip_prefix("invited/") {
            if let Ok(account) = id.parse::<AccountId>() {
                members.entry(account).or_insert(Role::Invited);
            }
        }
    }
    let title = state
        .files()
        .get(PROFILE_PATH)
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
        .and_then(|profile| profile["title"].as_str().map(str::to_owned));
    Ok(SwarmView {
        id: store.conversation(),
        tips: store.tips().to_vec(),
        members,
        member_devices,
        title,
    })
}

/// Which of `ids` accepted history (reachable from the durable tips) holds.
/// Objects that are merely in the object database (quarantined, rejected)
/// do not count.
fn held(store: &mut Store, ids: Vec<CommitId>) -> Result<BTreeSet<CommitId>, StoreError> {
    let answers = store.holds(&ids)?;
    Ok(ids
        .into_iter()
        .zip(answers)
        .filter_map(|(id, held)| held.then_some(id))
        .collect())
}

/// Asks for the swarm's current [`SwarmView`].
#[derive(Message)]
#[rtype(result = "Result<SwarmView, ConversationError>")]
pub struct GetView;

impl Handler<GetView> for Conversation {
    type Result = Result<SwarmView, ConversationError>;
    fn handle(&mut self, _: GetView, _: &mut Self::Context) -> Self::Result {
        self.flush_batch();
        self.with_store(|store, _| view_of(store))
    }
}

/// Authors a commit (a message, an invitation, a join, a profile) on the tips.
#[derive(Message)]
#[rtype(result = "Result<(CommitId, SwarmView), ConversationError>")]
pub struct Author {
    /// What the commit does.
    pub kind: BodyKind,
    /// The chosen content of the profile or CRL file, when `kind` needs one.
    pub content: Option<Vec<u8>>,
}

impl Handler<Author> for Conversation {
    type Result = AuthorReply;
    fn handle(&mut self, msg: Author, ctx: &mut Self::Context) -> AuthorReply {
        if self.staged >= BATCH_COMMITS_MAX {
            self.flush_batch();
        }
        let is_text = matches!(msg.kind, BodyKind::Text { .. });
        let signer = self.signer.clone();
        let staged = self
            .store()
            .and_then(|store| store.author_staged(&signer, msg.kind, msg.content, now_secs()));
        let conversation = self.path.display().to_string();
        match staged {
            Ok(id) => {
                self.staged += 1;
                if !self.flush_queued {
                    // Queued behind every request already waiting: they join this batch.
                    ctx.address().do_send(FlushBatch);
                    self.flush_queued = true;
                }
                AuthorReply(Reply::Staged {
                    id,
                    is_text,
                    waiters: self.waiters.clone(),
                })
            }
            // A refusal by the rules stages nothing and leaves the store sound.
            Err(source @ StoreError::Own(_)) => {
                AuthorReply(Reply::Now(Err(ConversationError::Store {
                    conversation,
                    source,
                })))
            }
            Err(source) => {
                // The store is reopened from disk; what was staged is gone.
                self.store = None;
                if let Some(reason) = source.health_reason() {
                    self.set_health(Some(reason), &source.to_string());
                }
                self.staged = 0;
                let waiters = std::mem::take(&mut *lock(&self.waiters));
                self.fail(waiters, &source.to_string());
                AuthorReply(Reply::Now(Err(ConversationError::Store {
                    conversation,
                    source,
                })))
            }
        }
    }
}

/// The reply to [`Author`]: an immediate error, or a commit staged whose
/// reply waits for its batch to be durable.
pub struct AuthorReply(Reply);

enum Reply {
    /// Answered now (the commit was refused or the store failed).
    Now(AuthorResult),
    /// Staged; answered by the next flush.
    Staged {
        id: CommitId,
        /// Whether it is a text message (for the metric, counted when durable).
        is_text: bool,
        waiters: Waiters,
    },
}

impl MessageResponse<Conversation, Author> for AuthorReply {
    fn handle(self, _: &mut SyncContext<Conversation>, reply: Option<OneshotSender<AuthorResult>>) {
        match self.0 {
            Reply::Now(result) => {
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Reply::Staged {
                id,
                is_text,
                waiters,
            } => lock(&waiters).push(Waiter { id, is_text, reply }),
        }
    }
}

/// Makes the staged batch durable and answers its requests (the actor sends
/// it to itself; see the module docs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushBatch;

impl Handler<FlushBatch> for Conversation {
    type Result = ();
    fn handle(&mut self, _: FlushBatch, _: &mut Self::Context) {
        self.flush_queued = false;
        self.flush_batch();
    }
}

/// Which of `heads` the repository already holds (as accepted history).
#[derive(Message)]
#[rtype(result = "Result<BTreeSet<CommitId>, ConversationError>")]
pub struct Holds(pub Vec<CommitId>);

impl Handler<Holds> for Conversation {
    type Result = Result<BTreeSet<CommitId>, ConversationError>;
    fn handle(&mut self, msg: Holds, _: &mut Self::Context) -> Self::Result {
        // Answered from the durable tips without flushing the batch being
        // gathered: staged commits are their descendants, never reached from
        // them, and no peer can announce them before they are durable. For
        // the same reason a failure here keeps the store (and the batch).
        let answer = self.store().and_then(|store| held(store, msg.0));
        answer.map_err(|source| self.store_error(source))
    }
}

/// Validates what a fetch from `peer` left in quarantine and adds what
/// passes, then says which of `wanted` are now held.
#[derive(Message)]
#[rtype(result = "Result<Received, ConversationError>")]
pub struct ReceiveQuarantined {
    /// The peer device the objects came from.
    pub peer: DeviceId,
    /// Heads the fetch was meant to bring.
    pub wanted: Vec<CommitId>,
}

/// The result of [`ReceiveQuarantined`].
#[derive(Debug, Clone)]
pub struct Received {
    /// What the store did.
    pub report: FetchReport,
    /// The swarm afterwards.
    pub view: SwarmView,
    /// Which wanted heads are now held.
    pub held: BTreeSet<CommitId>,
}

impl Handler<ReceiveQuarantined> for Conversation {
    type Result = Result<Received, ConversationError>;
    fn handle(&mut self, msg: ReceiveQuarantined, _: &mut Self::Context) -> Self::Result {
        self.flush_batch();
        let peer = msg.peer.to_hex();
        let result = self.with_store(|store, _| {
            let report = store.receive_quarantined(&peer)?;
            let held = held(store, msg.wanted)?;
            Ok(Received {
                view: view_of(store)?,
                report,
                held,
            })
        });
        self.count_rejections();
        if let Ok(received) = &result {
            self.set_health(None, "");
            self.metrics
                .commits_accepted
                .inc_by(received.report.accepted as u64);
        }
        self.consolidate_later();
        result
    }
}

/// Told to the listener of [`Conversation::start_with_listener`] once a batch
/// of authored commits is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BatchDurable {
    /// The swarm after the batch.
    pub view: SwarmView,
    /// The batch's pack (relative to the tips before it), when small
    /// enough to announce inline.
    pub pack: Option<Arc<BatchPack>>,
}

/// Receives `heads` from `peer` with the objects of an inline pack
/// (a `heads_pack` frame): validates and adds them as a fetch would.
#[derive(Message)]
#[rtype(result = "Result<Received, ConversationError>")]
pub struct ReceivePack {
    /// The announcing device.
    pub peer: DeviceId,
    /// The announced tips.
    pub heads: Vec<CommitId>,
    /// The commits the pack is relative to.
    pub bases: Vec<CommitId>,
    /// The pack that came with it.
    pub pack: Arc<Vec<u8>>,
}

impl Handler<ReceivePack> for Conversation {
    type Result = Result<Received, ConversationError>;
    fn handle(&mut self, msg: ReceivePack, _: &mut Self::Context) -> Self::Result {
        // Members pass a pack on, so the same one often comes again from
        // another member, and sometimes to one that lacks its bases. Both are
        // answered from the durable tips, as `Holds` is: without cutting
        // short the batch being gathered, and, reading only, keeping the
        // store (and its caches) on a refusal or failure.
        let answered = self.store().and_then(|store| {
            let heads = held(store, msg.heads.clone())?;
            if heads.len() == msg.heads.len() {
                return Ok(Some(Received {
                    view: view_of(store)?,
                    report: FetchReport {
                        accepted: 0,
                        rejected: Vec::new(),
                        tips: store.tips().to_vec(),
                    },
                    held: heads,
                }));
            }
            let bases = held(store, msg.bases.clone())?;
            if let Some(missing) = msg.bases.iter().find(|b| !bases.contains(b)) {
                return Err(StoreError::PackBaseMissing(*missing));
            }
            Ok(None)
        });
        match answered {
            Ok(Some(received)) => return Ok(received),
            Ok(None) => {}
            Err(source) => return Err(self.store_error(source)),
        }
        // Flushing adds only our own staged commits, which no peer can hold
        // (a batch is announced once durable): the heads are still not held.
        self.flush_batch();
        let result = self.with_store(|store, _| {
            let report = store.receive_pack(&msg.heads, &msg.bases, &msg.pack)?;
            let held = held(store, msg.heads)?;
            Ok(Received {
                view: view_of(store)?,
                report,
                held,
            })
        });
        self.count_rejections();
        if let Ok(received) = &result {
            self.set_health(None, "");
            self.metrics
                .commits_accepted
                .inc_by(received.report.accepted as u64);
        }
        self.consolidate_later();
        result
    }
}

/// The newest `limit` text messages, newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<MessageItem>, ConversationError>")]
pub struct ListMessages {
    /// How many at most.
    pub limit: usize,
}

impl Handler<ListMessages> for Conversation {
    type Result = Result<Vec<MessageItem>, ConversationError>;
    fn handle(&mut self, msg: ListMessages, _: &mut Self::Context) -> Self::Result {
        self.flush_batch();
        self.with_store(|store, _| {
            let state = store.state()?;
            let views = store.last_messages(msg.limit)?;
            Ok(views
                .into_iter()
                .filter_map(|view| {
                    let Body::Known {
                        kind:
                            BodyKind::Text {
                                text,
                                reply_to,
                                edit_of: None,
                            },
                        ..
                    } = view.body
                    else {
                        return None;
                    };
                    let author = view
                        .device
                        .and_then(|d| state.device(&d).map(|(c, _)| c.claimed_account_id()));
                    Some(MessageItem {
                        id: view.id.to_hex(),
                        author,
                        body: text,
                        timestamp: view.key.time_secs,
                        reply_to: reply_to.map(|r| r.to_hex()),
                    })
                })
                .collect())
        })
    }
}

/// The allowed-signers file for `git verify-commit`.
#[derive(Message)]
#[rtype(result = "Result<String, ConversationError>")]
pub struct AllowedSigners;

impl Handler<AllowedSigners> for Conversation {
    type Result = Result<String, ConversationError>;
    fn handle(&mut self, _: AllowedSigners, _: &mut Self::Context) -> Self::Result {
        self.flush_batch();
        self.with_store(|store, _| store.allowed_signers())
    }
}

/// The membership action of a commit kind, for callers building one.
pub fn member(action: MemberAction, account: AccountId) -> BodyKind {
    BodyKind::Member { action, account }
}

/// Where a conversation actor reports.
#[derive(Clone)]
pub struct Listeners {
    /// Hears of every durable batch ([`BatchDurable`]).
    pub batches: Recipient<BatchDurable>,
    /// Hears of every change in health ([`HealthChanged`]).
    pub health: Recipient<HealthChanged>,
}

/// Told to the health listener when a conversation stops being able to
/// write (or open), and when it can again.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct HealthChanged {
    /// The conversation's repository.
    pub path: PathBuf,
    /// Why it cannot write (`locked`, `io`, `damaged`, `format`), or `None`
    /// once it can.
    pub unhealthy: Option<&'static str>,
    /// The error, for people.
    pub detail: String,
}

/// Checks that the conversation can write: reopens its store (recovering
/// the repository first) and moves `main` onto itself, which takes and
/// releases its lock. Replies with the reason it cannot, if it cannot.
#[derive(Message)]
#[rtype(result = "Option<&'static str>")]
pub struct Probe;

impl Handler<Probe> for Conversation {
    type Result = Option<&'static str>;
    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        self.flush_batch();
        self.store = None;
        let probed = self.with_store(|store, _| {
            let repo = store.repository();
            let main = repo.refname_to_id(super::store::HEAD_REF)?;
            repo.reference(super::store::HEAD_REF, main, true, "probe")?;
            Ok(())
        });
        match probed {
            Ok(()) => {
                self.set_health(None, "");
                None
            }
            Err(ConversationError::Store { source, .. }) => source.health_reason().or(Some("io")),
            Err(_) => Some("io"),
        }
    }
}
