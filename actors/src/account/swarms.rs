//! The account's conversation registry and swarm sync.
//!
//! Each swarm the account is in has a `Conversation` actor (its own thread,
//! owning the repository under `DATA_DIR/swarms/<id>.git`) and an entry here
//! with the last [`SwarmView`] it reported (head, members, member devices)
//! and a [`FetchScheduler`]. From those the account decides, without touching
//! git, who may open `swarm/<id>` and `git/<id>` and whom to tell about new
//! heads.
//!
//! Sync, as specified in `docs/PROTOCOL.md` §10:
//! - every change of the tips (authored or fetched) is announced in a
//!   `heads` frame on a fresh `swarm/<id>` channel to each connected member
//!   device, once per tip set; a durable batch of authored commits is
//!   announced as `heads_pack`, carrying the batch's pack, so receivers that
//!   hold its bases validate it without a fetch (and fetch otherwise);
//! - on every connection up, and every [`ANTI_ENTROPY_INTERVAL`], tips are
//!   announced again (anti-entropy), so a device that was offline catches up
//!   from any member device;
//! - an announcement of a tip we lack goes to the scheduler, which picks one
//!   peer per tip; the fetch runs libgit2 over `git/<id>` into the
//!   quarantine refs of that peer, and the conversation validates and adds;
//! - an invitation is authored into the repository and told, in an `invite`
//!   frame, to the invitee's connected devices (again on every connection
//!   up); the invitee joins by cloning over `git/<id>` from a device that
//!   told it, validating the whole history, then authoring its join.
//!
//! Access: `git/<id>` is open to member devices and to devices of invited
//! accounts (to join); `swarm/<id>` of a known swarm to member devices; a
//! `swarm/<id>` of an unknown swarm may only carry an invitation. Everything
//! else is refused with a reason and counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use starling_protocol::channel::{ChannelName, ChannelPattern};
use starling_protocol::fetch_schedule::{FetchScheduler, StartFetch};
use starling_protocol::swarm::body::{BodyKind, MemberAction, Mode};
use starling_protocol::swarm::gossip::{SwarmFrame, ANNOUNCED_HEADS_MAX, INVITE_TITLE_BYTES_MAX};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::TEXT_BYTES_MAX;
use starling_protocol::{AccountId, AccountIdentity, DeviceId, VerifiedDevice};

use super::channel_io::{fetch_git_watched, receive_frame, send_frame_with, serve_git};
use super::clock::ClockWatch;
use super::conversation_health::ConversationHealth;
use super::events::{ConnectionState, Event, EventBus, SyncState};
use super::rejections::{rejections_reported, tell_rejections, RejectionNotices};
use super::Account;
use crate::conversation::actor::{
    AllowedSigners, Author, BatchDurable, GetView, Holds, ListMessages, ReceivePack,
    ReceiveQuarantined, Received,
};
use crate::conversation::history::DescribeHeadMove;
use crate::conversation::recovery::Scope;
use crate::conversation::{
    BatchPack, Conversation, ConversationError, DeviceSigner, HealthChanged, Listeners,
    MessageItem, Role, Store, StoreError, SwarmMetrics, SwarmView,
};
use crate::git_wire::client::FetchWatch;
use crate::transport::{
    ConnectionEvent, ExpectedPeer, IncomingChannel, OpenChannel, PeerState, RegisterChannel,
    SubscribeEvents, Transport, UpdateRevocations, WantPeer,
};

/// How often heads are exchanged with every connected member device.
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a fetch (channel open, then the pack's transfer) may go without
/// reading a byte before it counts as failed, is abandoned, and another
/// announcer is tried. Progress, not total time: under load, a catch-up
/// of a thousand commits may take longer than this and still be the only
/// way to get them.
pub const FETCH_STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Pending invitations kept; further ones are dropped and counted.
pub const INVITATIONS_MAX: usize = 256;
/// Conversations one account holds.
pub const CONVERSATIONS_MAX: usize = 4_096;
/// Devices that told us of one invitation, kept.
pub const INVITERS_PER_INVITATION_MAX: usize = 16;
/// How long a head announced without its objects (a plain `heads` frame)
/// and not held waits before it is fetched. Members re-announce a head
/// they take to each other, and such a re-announcement often overtakes the
/// author's own inline pack of that head; asked again a moment later, the
/// pack has landed and nothing is fetched.
pub const ANNOUNCED_HEAD_GRACE: Duration = Duration::from_millis(50);
/// Announcements of one conversation waiting out that grace at once; past
/// this, unknown heads are fetched without waiting.
pub const ANNOUNCEMENTS_WAITING_MAX: usize = 64;

/// What the account needs to sync swarms.
pub struct SwarmConfig {
    /// The transport to open and accept channels on.
    pub transport: Addr<Transport>,
    /// Where repositories live (`<dir>/<conversation>.git`).
    pub dir: PathBuf,
    /// The node's swarm metrics.
    pub metrics: SwarmMetrics,
}

/// Knobs on sync timing and fault injection. [`Default`] is production
/// behaviour; the simulator shortens timers and plants faults through it.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    /// How often heads are exchanged with every connected member device
    /// (and the fetch scheduler's timers ticked).
    pub anti_entropy_interval: Duration,
    /// Whether anti-entropy re-announces heads at all; `false` leaves only
    /// announcements of new heads and of heads on connection up.
    pub anti_entropy: bool,
    /// Fault injection (simulator only): announce no head at all, neither
    /// new ones, nor on connection up, nor by anti-entropy. Peers then
    /// never learn this node's commits; the no-loss checker must notice.
    pub drop_announcements: bool,
}

impl Default for SyncTuning {
    fn default() -> Self {
        Self {
            anti_entropy_interval: ANTI_ENTROPY_INTERVAL,
            anti_entropy: true,
            drop_announcements: false,
        }
    }
}

/// Why a swarm request failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("this account has no swarm sync (no transport)")]
    NoSync,
    #[error("unknown conversation {0}")]
    NotFound(CommitId),
    #[error("no invitation to conversation {0}; ask a member to invite this account")]
    NotInvited(CommitId),
    #[error("no device that invited us to {0} is connected; add it with `starling peer add`")]
    InviterOffline(CommitId),
    #[error("already a member of {0}")]
    AlreadyMember(CommitId),
    #[error("conversation {0} already exists on this device")]
    AlreadyExists(CommitId),
    #[error("text of {found} bytes exceeds the limit of {TEXT_BYTES_MAX}")]
    TooLarge { found: usize },
    #[error("the swarm's rules refuse this: {0}")]
    Refused(String),
    #[error("this account holds its maximum of {CONVERSATIONS_MAX} conversations")]
    TooManyConversations,
    #[error("{0}")]
    Conversation(ConversationError),
    #[error("storage: {0}")]
    Io(String),
    #[error("network: {0}")]
    Network(String),
    #[error("device signer: {0}")]
    Signer(#[from] crate::conversation::SignerError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Busy(String),
}

impl From<ConversationError> for SwarmError {
    fn from(e: ConversationError) -> Self {
        match e {
            ConversationError::Store {
                source: StoreError::Own(rejection),
                ..
            } => SwarmError::Refused(rejection.to_string()),
            other => SwarmError::Conversation(other),
        }
    }
}

pub(super) fn mailbox(e: MailboxError) -> SwarmError {
    tracing::warn!(error = %e, "conversation mailbox");
    SwarmError::Conversation(ConversationError::Gone)
}

struct SwarmEntry {
    addr: Addr<Conversation>,
    view: SwarmView,
    path: PathBuf,
    scheduler: FetchScheduler<DeviceId, CommitId>,
    /// The last tips announced to connected members, and whether a pack
    /// went along (each tip set once, or twice when the pack came later;
    /// anti-entropy and connection-up repeat it regardless).
    announced: Option<(Vec<CommitId>, bool)>,
    /// Announcements waiting out [`ANNOUNCED_HEAD_GRACE`].
    announcements_waiting: usize,
}

struct Invitation {
    title: String,
    /// Devices that told us, with their accounts.
    from: BTreeMap<DeviceId, AccountId>,
}

/// The account's swarm state (a part of the `Account` actor).
pub struct Swarms {
    transport: Addr<Transport>,
    dir: PathBuf,
    pub(super) metrics: SwarmMetrics,
    signer: DeviceSigner,
    local_device: DeviceId,
    registry: HashMap<CommitId, SwarmEntry>,
    /// Conversations being created or joined (not yet in the registry).
    joining: BTreeSet<CommitId>,
    /// The pack of a joining conversation's durable batch (the join commit),
    /// kept for the join's announcement: so the inviter takes the join
    /// without a fetch, and passes it on.
    joining_packs: HashMap<CommitId, Arc<BatchPack>>,
    invitations: BTreeMap<CommitId, Invitation>,
    connected: BTreeMap<DeviceId, VerifiedDevice>,
    /// The account, told of every durable batch and health change (set
    /// when it starts).
    listeners: Option<Listeners>,
    /// Conversations that cannot write.
    pub(super) health: ConversationHealth,
    /// The account's event stream (`/v1/events`).
    pub(super) events: EventBus,
    /// This device's clock against its peers'.
    pub(super) clock: ClockWatch,
    /// Limits on telling and hearing of refused commits.
    pub(super) notices: RejectionNotices,
    tuning: SyncTuning,
}

impl Swarms {
    pub(super) fn new(
        identity: &AccountIdentity,
        config: SwarmConfig,
        tuning: SyncTuning,
    ) -> Result<Self, SwarmError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| SwarmError::Io(format!("{}: {e}", config.dir.display())))?;
        let signer = DeviceSigner::new(
            identity.device_key.clone(),
            identity.device_cert.clone(),
            identity.account_cert.clone(),
        )?;
        Ok(Self {
            transport: config.transport,
            dir: config.dir,
            events: EventBus::new(config.metrics.events.clone()),
            clock: ClockWatch::new(config.metrics.clock.clone()),
            notices: RejectionNotices::new(config.metrics.rejections.clone()),
            metrics: config.metrics,
            signer,
            local_device: identity.device_id(),
            registry: HashMap::new(),
            joining: BTreeSet::new(),
            joining_packs: HashMap::new(),
            invitations: BTreeMap::new(),
            connected: BTreeMap::new(),
            listeners: None,
            health: ConversationHealth::default(),
            tuning,
        })
    }

    /// The conversation actor of `id`, if the account holds that swarm.
    pub(super) fn registry_addr(&self, id: &CommitId) -> Option<Addr<Conversation>> {
        self.registry.get(id).map(|e| e.addr.clone())
    }

    fn path_of(&self, id: &CommitId) -> PathBuf {
        self.dir.join(format!("{}.git", id.to_hex()))
    }

    /// The actor of the conversation stored at `path`, if it is loaded.
    pub(super) fn addr_by_path(&self, path: &Path) -> Option<Addr<Conversation>> {
        self.registry
            .values()
            .find(|e| e.path == path)
            .map(|e| e.addr.clone())
    }

    /// Adds a conversation that loaded late (after a failed startup load).
    pub(super) fn insert_loaded(
        &mut self,
        addr: Addr<Conversation>,
        view: SwarmView,
        path: PathBuf,
    ) {
        self.insert(addr, view, path);
    }

    fn start_conversation(&self, path: PathBuf, first_open: Scope) -> Addr<Conversation> {
        match &self.listeners {
            Some(listeners) => Conversation::start_with_listener(
                path,
                self.signer.clone(),
                self.metrics.clone(),
                listeners.clone(),
                first_open,
            ),
            None => {
                Conversation::start_on_own_thread(path, self.signer.clone(), self.metrics.clone())
            }
        }
    }

    fn insert(&mut self, addr: Addr<Conversation>, view: SwarmView, path: PathBuf) {
        self.invitations.remove(&view.id);
        self.joining.remove(&view.id);
        self.joining_packs.remove(&view.id);
        self.registry.insert(
            view.id,
            SwarmEntry {
                addr,
                view,
                path,
                scheduler: FetchScheduler::new(),
                announced: None,
                announcements_waiting: 0,
            },
        );
        self.metrics.conversations.set(self.registry.len() as i64);
    }

    /// Sends `frame` on a fresh `swarm/<id>` channel to `peer`, in the background.
    pub(super) fn tell(&self, peer: DeviceId, conversation: CommitId, frame: SwarmFrame) {
        self.tell_with(peer, conversation, frame, None)
    }

    /// Like [`Swarms::tell`], with the pack a `heads_pack` frame announces.
    fn tell_with(
        &self,
        peer: DeviceId,
        conversation: CommitId,
        frame: SwarmFrame,
        pack: Option<Arc<BatchPack>>,
    ) {
        let Ok(name) = ChannelName::new(&format!("swarm/{}", conversation.to_hex())) else {
            return;
        };
        let transport = self.transport.clone();
        actix::spawn(async move {
            match transport.send(OpenChannel { peer, name }).await {
                Ok(Ok(channel)) => {
                    let trailer = pack
                        .as_deref()
                        .map(|p| p.bytes.as_slice())
                        .unwrap_or_default();
                    if let Err(e) = send_frame_with(channel, &frame, trailer).await {
                        tracing::info!(%peer, error = %e, "swarm frame not delivered");
                    }
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "swarm channel not opened"),
                Err(e) => tracing::warn!(error = %e, "transport mailbox"),
            }
        });
    }

    /// Announces `conversation`'s tips to its connected member devices,
    /// unless they were announced already.
    fn announce(&mut self, conversation: &CommitId) {
        self.announce_with(conversation, None, false, None)
    }

    /// Announces the tips: with `pack` (the objects that made them, from the
    /// pack's bases) as `heads_pack`, else as `heads`; with `again`, even if
    /// these tips were announced before (anti-entropy); not to `holder`, a
    /// device known to hold them.
    fn announce_with(
        &mut self,
        conversation: &CommitId,
        pack: Option<Arc<BatchPack>>,
        again: bool,
        holder: Option<DeviceId>,
    ) {
        if self.tuning.drop_announcements {
            return;
        }
        let Some(entry) = self.registry.get_mut(conversation) else {
            return;
        };
        let tips = entry.view.tips.clone();
        // The pack goes along only when it makes exactly the announced tips.
        let pack = pack.filter(|p| tips == [p.tip] && p.bases.len() <= ANNOUNCED_HEADS_MAX);
        let with_pack = pack.is_some();
        if !again
            && entry
                .announced
                .as_ref()
                .is_some_and(|(t, packed)| *t == tips && (*packed || !with_pack))
        {
            return;
        }
        entry.announced = Some((tips.clone(), with_pack));
        let heads = announced_heads(&tips);
        let frame = match &pack {
            Some(pack) => SwarmFrame::HeadsPack {
                heads,
                bases: pack.bases.clone(),
                pack_bytes: pack.bytes.len(),
            },
            None => SwarmFrame::Heads { heads },
        };
        let entry = &self.registry[conversation];
        for device in &entry.view.member_devices {
            if *device != self.local_device
                && Some(*device) != holder
                && self.connected.contains_key(device)
            {
                self.tell_with(*device, *conversation, frame.clone(), pack.clone());
            }
        }
    }

    /// Tells connected devices of accounts invited to `conversation` about it.
    fn tell_invitees(&self, conversation: &CommitId, only: Option<&VerifiedDevice>) {
        let Some(entry) = self.registry.get(conversation) else {
            return;
        };
        for peer in self.connected.values() {
            if only.is_some_and(|o| o != peer) || !entry.view.is_invited(&peer.account_id) {
                continue;
            }
            // The frame bounds its title; a longer one is cut at a char boundary.
            let mut title = entry.view.title.clone().unwrap_or_default();
            while title.len() > INVITE_TITLE_BYTES_MAX {
                title.pop();
            }
            self.tell(peer.device_id, *conversation, SwarmFrame::Invite { title });
        }
    }
}

/// The tips an announcement names: all of them, or past the frame's bound
/// the greatest ids (a fetch brings every tip anyway).
fn announced_heads(tips: &[CommitId]) -> Vec<CommitId> {
    let skip = tips.len().saturating_sub(ANNOUNCED_HEADS_MAX);
    tips[skip..].to_vec()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn swarms(account: &mut Account) -> Result<&mut Swarms, SwarmError> {
    account.swarms.as_mut().ok_or(SwarmError::NoSync)
}

/// Registers the channel handlers, subscribes to connection events, hands
/// the transport our CRL, loads the conversations on disk, and starts
/// anti-entropy.
pub(super) fn start(account: &mut Account, ctx: &mut Context<Account>) {
    if let Some(sw) = account.swarms.as_mut() {
        sw.listeners = Some(Listeners {
            batches: ctx.address().recipient::<BatchDurable>(),
            health: ctx.address().recipient::<HealthChanged>(),
        });
    }
    super::conversation_health::start(ctx);
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    let transport = sw.transport.clone();
    let handler = ctx.address().recipient::<IncomingChannel>();
    let events = ctx.address().recipient::<ConnectionEvent>();
    let crl = UpdateRevocations {
        account: account.identity.account_cert.clone(),
        crl: account.identity.crl.clone(),
    };
    ctx.wait(
        async move {
            for pattern in ["swarm/*", "git/*"] {
                let pattern = ChannelPattern::new(pattern).expect("static pattern is valid");
                match transport
                    .send(RegisterChannel {
                        pattern,
                        handler: handler.clone(),
                    })
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "channel pattern not registered"),
                    Err(e) => tracing::error!(error = %e, "transport mailbox"),
                }
            }
            if let Ok(Err(e)) = transport.send(SubscribeEvents(events)).await {
                tracing::error!(error = %e, "connection events not subscribed");
            }
            match transport.send(crl).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "own CRL refused by the transport"),
                Err(e) => tracing::error!(error = %e, "transport mailbox"),
            }
            // Connections that came up before we subscribed.
            transport
                .send(crate::transport::Status)
                .await
                .map(|status| {
                    status
                        .connections
                        .into_iter()
                        .map(|c| c.peer)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
        .into_actor(account)
        // `wait`: no request (a static peer to dial, say) is handled before
        // the account hears about connections.
        .map(|already_up, act, _| {
            if let Some(sw) = act.swarms.as_mut() {
                for peer in already_up {
                    sw.connected.insert(peer.device_id, peer);
                }
                sw.metrics.peers_connected.set(sw.connected.len() as i64);
            }
        }),
    );
    let entries = match std::fs::read_dir(&sw.dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(dir = %sw.dir.display(), error = %e, "cannot list swarms");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_repo = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".git"))
            .is_some_and(|stem| stem.parse::<CommitId>().is_ok());
        if !is_repo {
            // Leftovers of an interrupted create or join: never history.
            if path
                .extension()
                .is_some_and(|e| e == "joining" || e == "new")
            {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        // Nothing else touches the repository yet (fetches start once the
        // account handles messages), so it recovers as at startup.
        let addr = sw.start_conversation(path.clone(), Scope::Startup);
        // `wait`, not `spawn`: the account handles no request until its
        // swarms are loaded, so a fresh daemon never answers 404 for one.
        let loading = addr.clone();
        ctx.wait(
            loading
                .send(GetView)
                .into_actor(account)
                .map(move |result, act, _| {
                    let Some(sw) = act.swarms.as_mut() else {
                        return;
                    };
                    match result {
                        Ok(Ok(view)) => sw.insert(addr, view, path),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "conversation not loaded; probing it with back-off");
                            let reason = match &e {
                                ConversationError::Store { source, .. } => {
                                    source.health_reason().unwrap_or("damaged")
                                }
                                _ => "io",
                            };
                            sw.health.not_loaded(path, addr, reason, e.to_string());
                        }
                        Err(e) => tracing::error!(error = %e, "conversation mailbox"),
                    }
                }),
        );
    }
    ctx.run_interval(sw.tuning.anti_entropy_interval, |act, ctx| {
        let Some(sw) = act.swarms.as_mut() else {
            return;
        };
        let now = Instant::now();
        let ids: Vec<CommitId> = sw.registry.keys().copied().collect();
        let mut all = Vec::new();
        for id in ids {
            if sw.tuning.anti_entropy {
                sw.announce_with(&id, None, true, None);
            }
            if let Some(entry) = sw.registry.get_mut(&id) {
                all.push((id, entry.scheduler.tick(now)));
            }
        }
        for (id, starts) in all {
            start_fetches(act, ctx, id, starts);
        }
    });
}

fn start_fetches(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    starts: Vec<StartFetch<DeviceId, CommitId>>,
) {
    for start in starts {
        start_fetch(account, ctx, conversation, start);
    }
}

/// Fetches `start.head` from `start.peer` over `git/<id>`, then has the
/// conversation validate and merge it.
fn start_fetch(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    start: StartFetch<DeviceId, CommitId>,
) {
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    let Some(entry) = sw.registry.get(&conversation) else {
        return;
    };
    let Ok(name) = ChannelName::new(&format!("git/{}", conversation.to_hex())) else {
        return;
    };
    let transport = sw.transport.clone();
    let addr = entry.addr.clone();
    let path = entry.path.clone();
    let peer = start.peer;
    // Ask about every head still wanted, not only this one: a fetch of the
    // newest head usually brings the older announced ones too, and knowing
    // that spares a no-op fetch for each of them.
    let mut wanted: Vec<CommitId> = entry.scheduler.wanted().copied().collect();
    if !wanted.contains(&start.head) {
        wanted.push(start.head);
    }
    let began = Instant::now();
    tracing::info!(%peer, %conversation, head = %start.head, "fetching");
    let watch = FetchWatch::default();
    let transfer = watch.clone();
    let fetch = async move {
        let channel = transport
            .send(OpenChannel { peer, name })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        fetch_git_watched(channel, path, peer, false, transfer)
            .await
            .map_err(|e| e.to_string())?;
        addr.send(ReceiveQuarantined { peer, wanted })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    };
    // A fetch stuck on a dead stream must not hold the peer's slot in the
    // scheduler until its much longer timeout.
    let fetch = stall_bounded(fetch, watch, |e| e);
    ctx.spawn(
        fetch
            .into_actor(account)
            .map(move |result: Result<Received, String>, act, ctx| {
                fetch_done(act, ctx, conversation, peer, began, result)
            }),
    );
}

/// Runs `fetch` (which reports its reads to `watch`) and fails it, as
/// `stalled` makes the error, once it has read nothing for
/// [`FETCH_STALL_TIMEOUT`]; one that is still reading, or validating what it
/// read, is let finish. The fetch is dropped, so abandoned, when it fails.
async fn stall_bounded<T, E>(
    fetch: impl std::future::Future<Output = Result<T, E>>,
    watch: FetchWatch,
    stalled: impl FnOnce(String) -> E,
) -> Result<T, E> {
    tokio::pin!(fetch);
    let mut read_before = 0;
    loop {
        tokio::select! {
            result = &mut fetch => return result,
            () = tokio::time::sleep(FETCH_STALL_TIMEOUT) => {
                let read = watch.read_bytes();
                if read == read_before && !watch.finished() {
                    return Err(stalled(format!("nothing read within {FETCH_STALL_TIMEOUT:?}")));
                }
                read_before = read;
            }
        }
    }
}

fn fetch_done(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    peer: DeviceId,
    began: Instant,
    result: Result<Received, String>,
) {
    let Some(sw) = account.swarms.as_mut() else {
        return;
    };
    sw.metrics
        .fetch_seconds
        .observe(began.elapsed().as_secs_f64());
    let Some(entry) = sw.registry.get_mut(&conversation) else {
        return;
    };
    let now = Instant::now();
    let before = entry.view.tips.clone();
    let mut sync_event = None;
    let mut refused = Vec::new();
    let (starts, moved) = match result {
        Ok(received) => {
            sync_event = Some(Event::Sync {
                conversation,
                tips: received.view.tips.clone(),
                peer,
                state: SyncState::Fetched,
                accepted: received.report.accepted,
            });
            sw.metrics.fetched("ok");
            tracing::info!(%peer, %conversation, accepted = received.report.accepted, tips = received.view.tips.len(), "fetched");
            if !received.report.rejected.is_empty() {
                tracing::warn!(%peer, %conversation, rejected = received.report.rejected.len(), "fetched commits rejected");
                refused = received.report.rejected.clone();
            }
            let moved = received.view.tips != entry.view.tips;
            entry.view = received.view;
            let held = received.held;
            let starts = entry
                .scheduler
                .fetch_finished(&peer, true, |h| held.contains(h), now);
            (starts, moved)
        }
        Err(e) => {
            sw.events.publish(Event::Sync {
                conversation,
                tips: entry.view.tips.clone(),
                peer,
                state: SyncState::Failed,
                accepted: 0,
            });
            sw.metrics.fetched("failed");
            tracing::info!(%peer, %conversation, error = %e, "fetch failed");
            (
                entry.scheduler.fetch_finished(&peer, false, |_| false, now),
                false,
            )
        }
    };
    if moved {
        sw.announce(&conversation);
        let after = sw.registry[&conversation].view.tips.clone();
        head_moved(account, ctx, conversation, before, after, sync_event);
    } else if let Some(event) = sync_event {
        sw.events.publish(event);
    }
    if !refused.is_empty() {
        tell_rejections(account, ctx, conversation, peer, &refused);
    }
    start_fetches(account, ctx, conversation, starts);
}

/// Publishes what a move of `conversation`'s tips from `since` to `until`
/// brought (one event per new message, member or profile commit, oldest
/// first), then `then`. Reads history only when someone subscribes.
pub(super) fn head_moved(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    since: Vec<CommitId>,
    until: Vec<CommitId>,
    then: Option<Event>,
) {
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    if !sw.events.has_subscribers() || since == until {
        if let Some(event) = then {
            sw.events.publish(event);
        }
        return;
    }
    let Some(entry) = sw.registry.get(&conversation) else {
        return;
    };
    let described = entry.addr.send(DescribeHeadMove { since, until });
    ctx.spawn(described.into_actor(account).map(move |result, act, _| {
        let Some(sw) = act.swarms.as_ref() else {
            return;
        };
        match result {
            Ok(Ok(moved)) => {
                for commit in &moved.commits {
                    if let Some(event) = Event::of_commit(conversation, commit) {
                        sw.events.publish(event);
                    }
                }
                if moved.omitted > 0 {
                    sw.events.publish(Event::Omitted {
                        conversation,
                        omitted: moved.omitted,
                    });
                }
            }
            Ok(Err(e)) => tracing::warn!(%conversation, error = %e, "head move not described"),
            Err(e) => tracing::warn!(%conversation, error = %e, "conversation mailbox"),
        }
        if let Some(event) = then {
            sw.events.publish(event);
        }
    }));
}

/// Member devices announce heads; so do devices of invited accounts, whose
/// join commit is how the swarm learns they joined.
pub(super) fn may_announce(view: &SwarmView, peer: &VerifiedDevice) -> bool {
    view.member_devices.contains(&peer.device_id) || view.is_invited(&peer.account_id)
}

/// Parses `kind/<conversation>` names.
fn conversation_of(name: &ChannelName) -> Option<CommitId> {
    name.as_str()
        .split_once('/')
        .and_then(|(_, id)| id.parse().ok())
}

impl Handler<IncomingChannel> for Account {
    type Result = ();

    fn handle(&mut self, msg: IncomingChannel, ctx: &mut Self::Context) {
        let Some(msg) = super::contacts::screen_channel(self, msg, ctx) else {
            return; // blocked, or a contact channel
        };
        let Some(sw) = self.swarms.as_ref() else {
            return; // dropping refuses
        };
        let kind = msg.name.kind().to_owned();
        let peer = msg.peer;
        let name = msg.name.clone();
        let refuse = |pending: crate::transport::PendingChannel,
                      reason: &'static str,
                      label: &'static str| {
            sw.metrics.refused(&kind, label);
            tracing::info!(peer = %peer.device_id, channel = %name, reason, "channel refused");
            actix::spawn(async move { pending.refuse(reason).await });
        };
        let Some(conversation) = conversation_of(&msg.name) else {
            return refuse(msg.channel, "malformed conversation id", "malformed");
        };
        let entry = sw.registry.get(&conversation);
        match (kind.as_str(), entry) {
            ("git", Some(entry)) => {
                let allowed = entry.view.member_devices.contains(&peer.device_id)
                    || entry.view.is_invited(&peer.account_id);
                if !allowed {
                    return refuse(
                        msg.channel,
                        "not a member of this conversation",
                        "not_member",
                    );
                }
                let path = entry.path.clone();
                let pending = msg.channel;
                actix::spawn(async move {
                    let served = match pending.accept().await {
                        Ok(channel) => serve_git(channel, path).await,
                        Err(e) => {
                            tracing::debug!(error = %e, "git channel not accepted");
                            return;
                        }
                    };
                    if let Err(e) = served {
                        tracing::info!(peer = %peer.device_id, error = %e, "upload-pack session failed");
                    }
                });
            }
            ("git", None) => refuse(msg.channel, "unknown conversation", "unknown"),
            ("swarm", Some(entry)) if !may_announce(&entry.view, &peer) => refuse(
                msg.channel,
                "not a member of this conversation",
                "not_member",
            ),
            ("swarm", _) => {
                let pending = msg.channel;
                let me = ctx.address();
                actix::spawn(async move {
                    let frame = match pending.accept().await {
                        Ok(channel) => receive_frame(channel).await,
                        Err(e) => {
                            tracing::debug!(error = %e, "swarm channel not accepted");
                            return;
                        }
                    };
                    match frame {
                        Ok(received) => {
                            let _ = me
                                .send(FrameReceived {
                                    peer,
                                    conversation,
                                    frame: received.frame,
                                    pack: received.pack,
                                    clock_ms: received.clock_ms,
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::info!(peer = %peer.device_id, error = %e, "bad swarm frame")
                        }
                    }
                });
            }
            _ => refuse(msg.channel, "not a swarm channel", "unknown_kind"),
        }
    }
}

/// A frame read from a `swarm/<id>` channel.
#[derive(Message)]
#[rtype(result = "()")]
struct FrameReceived {
    peer: VerifiedDevice,
    conversation: CommitId,
    frame: SwarmFrame,
    /// The pack that followed a `heads_pack` frame.
    pack: Option<Vec<u8>>,
    /// The sender's clock when it wrote the frame, and ours when it came.
    clock_ms: Option<(i64, i64)>,
}

impl Handler<FrameReceived> for Account {
    type Result = ();

    fn handle(&mut self, msg: FrameReceived, ctx: &mut Self::Context) {
        let Some(sw) = self.swarms.as_mut() else {
            return;
        };
        let FrameReceived {
            peer,
            conversation,
            frame,
            pack,
            clock_ms,
        } = msg;
        if let Some((sent_at_ms, received_at_ms)) = clock_ms {
            sw.clock
                .observe(peer.device_id, sent_at_ms, received_at_ms, &sw.events);
        }
        match frame {
            SwarmFrame::Heads { heads } => {
                heads_announced_after(self, ctx, conversation, peer, heads, true)
            }
            SwarmFrame::HeadsPack { heads, bases, .. } => {
                let Some(pack) = pack else {
                    return heads_announced(self, ctx, conversation, peer, heads);
                };
                let Some(entry) = sw.registry.get(&conversation) else {
                    return;
                };
                if !may_announce(&entry.view, &peer) {
                    return;
                }
                if heads.iter().all(|h| entry.view.tips.contains(h)) {
                    // Passed on by another member too: ours already.
                    return heads_announced(self, ctx, conversation, peer, heads);
                }
                let pack = Arc::new(pack);
                let receive = ReceivePack {
                    peer: peer.device_id,
                    heads: heads.clone(),
                    bases: bases.clone(),
                    pack: pack.clone(),
                };
                ctx.spawn(entry.addr.send(receive).into_actor(self).map(
                    move |received, act, ctx| match received {
                        Ok(Ok(received)) if received.held.len() == heads.len() => {
                            let Some(sw) = act.swarms.as_mut() else {
                                return;
                            };
                            let Some(entry) = sw.registry.get_mut(&conversation) else {
                                return;
                            };
                            let before = entry.view.tips.clone();
                            let after = received.view.tips.clone();
                            tracing::debug!(%conversation, accepted = received.report.accepted, "inline pack taken");
                            entry.view = received.view;
                            let sync_event = Event::Sync {
                                conversation,
                                tips: after.clone(),
                                peer: peer.device_id,
                                state: SyncState::Fetched,
                                accepted: received.report.accepted,
                            };
                            if before != after {
                                // A pack that made our tips exactly the
                                // announced ones is passed on as it came, so
                                // members holding its bases take it without a
                                // fetch; otherwise our tips go out plainly.
                                // The announcer holds what it sent us.
                                let (relay, skip) = match heads.as_slice() {
                                    [tip] if after == heads => {
                                        let relay = BatchPack {
                                            bases,
                                            tip: *tip,
                                            bytes: pack.to_vec(),
                                        };
                                        (Some(Arc::new(relay)), Some(peer.device_id))
                                    }
                                    _ => (None, None),
                                };
                                sw.announce_with(&conversation, relay, false, skip);
                                head_moved(act, ctx, conversation, before, after, Some(sync_event));
                            } else {
                                sw.events.publish(sync_event);
                            }
                        }
                        other => {
                            if let Ok(Err(e)) = other {
                                tracing::debug!(%conversation, error = %e, "inline pack not taken; fetching");
                            }
                            heads_announced(act, ctx, conversation, peer, heads);
                        }
                    },
                ));
            }
            SwarmFrame::Rejected { commits } => {
                rejections_reported(self, ctx, conversation, peer, commits)
            }
            SwarmFrame::Invite { title } => {
                if sw.registry.contains_key(&conversation) {
                    return;
                }
                sw.metrics.invitations_received.inc();
                if !sw.invitations.contains_key(&conversation)
                    && sw.invitations.len() >= INVITATIONS_MAX
                {
                    tracing::warn!(%conversation, "invitation dropped: too many pending");
                    return;
                }
                let invitation = sw.invitations.entry(conversation).or_insert(Invitation {
                    title,
                    from: BTreeMap::new(),
                });
                if invitation.from.len() < INVITERS_PER_INVITATION_MAX {
                    invitation.from.insert(peer.device_id, peer.account_id);
                }
            }
        }
    }
}

/// Heads a member announced: the ones we lack go to the fetch scheduler.
fn heads_announced(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    peer: VerifiedDevice,
    heads: Vec<CommitId>,
) {
    heads_announced_after(account, ctx, conversation, peer, heads, false)
}

/// [`heads_announced`]; with `grace`, heads we lack are asked about again
/// after [`ANNOUNCED_HEAD_GRACE`] before they go to the scheduler.
fn heads_announced_after(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    peer: VerifiedDevice,
    heads: Vec<CommitId>,
    grace: bool,
) {
    let Some(entry) = account
        .swarms
        .as_ref()
        .and_then(|sw| sw.registry.get(&conversation))
    else {
        return;
    };
    if !may_announce(&entry.view, &peer) {
        return;
    }
    // Our own tips echoed back (every member re-announces tips it takes)
    // need no question to the conversation, which would also cut short the
    // batch it is gathering.
    if heads.iter().all(|h| entry.view.tips.contains(h)) {
        if let Some(entry) = account
            .swarms
            .as_mut()
            .and_then(|sw| sw.registry.get_mut(&conversation))
        {
            let starts =
                entry
                    .scheduler
                    .heads_announced(&peer.device_id, &heads, |_| true, Instant::now());
            start_fetches(account, ctx, conversation, starts);
        }
        return;
    }
    let addr = entry.addr.clone();
    ctx.spawn(
        addr.send(Holds(heads.clone()))
            .into_actor(account)
            .map(move |held, act, ctx| {
                let Ok(Ok(held)) = held else {
                    return;
                };
                let Some(entry) = act
                    .swarms
                    .as_mut()
                    .and_then(|sw| sw.registry.get_mut(&conversation))
                else {
                    return;
                };
                let lacking = heads.iter().any(|h| !held.contains(h));
                if grace && lacking && entry.announcements_waiting < ANNOUNCEMENTS_WAITING_MAX {
                    entry.announcements_waiting += 1;
                    ctx.run_later(ANNOUNCED_HEAD_GRACE, move |act, ctx| {
                        if let Some(entry) = act
                            .swarms
                            .as_mut()
                            .and_then(|sw| sw.registry.get_mut(&conversation))
                        {
                            entry.announcements_waiting =
                                entry.announcements_waiting.saturating_sub(1);
                        }
                        heads_announced(act, ctx, conversation, peer, heads);
                    });
                    return;
                }
                let starts = entry.scheduler.heads_announced(
                    &peer.device_id,
                    &heads,
                    |h| held.contains(h),
                    Instant::now(),
                );
                start_fetches(act, ctx, conversation, starts);
            }),
    );
}

impl Handler<BatchDurable> for Account {
    type Result = ();

    /// Announces a durable batch once, with its pack when it has one.
    fn handle(&mut self, msg: BatchDurable, ctx: &mut Self::Context) {
        let Some(sw) = self.swarms.as_mut() else {
            return;
        };
        let conversation = msg.view.id;
        let Some(entry) = sw.registry.get_mut(&conversation) else {
            // Being created or joined: the caller announces, with the pack
            // of a join if it came first.
            if let Some(pack) = msg.pack.filter(|_| sw.joining.contains(&conversation)) {
                sw.joining_packs.insert(conversation, pack);
            }
            return;
        };
        let (before, after) = (entry.view.tips.clone(), msg.view.tips.clone());
        entry.view = msg.view;
        sw.announce_with(&conversation, msg.pack, false, None);
        head_moved(self, ctx, conversation, before, after, None);
    }
}

impl Handler<ConnectionEvent> for Account {
    type Result = ();

    fn handle(&mut self, msg: ConnectionEvent, ctx: &mut Self::Context) {
        super::contacts::connection_event(self, &msg);
        let Some(sw) = self.swarms.as_mut() else {
            return;
        };
        let device = msg.peer.device_id;
        sw.events.publish(Event::Connection {
            device_id: device,
            account_id: msg.peer.account_id,
            state: match msg.state {
                PeerState::Up { .. } => ConnectionState::Up,
                PeerState::Down { .. } => ConnectionState::Down,
            },
        });
        match msg.state {
            PeerState::Up { .. } => {
                sw.connected.insert(device, msg.peer);
                sw.metrics.peers_connected.set(sw.connected.len() as i64);
                let ids: Vec<CommitId> = sw.registry.keys().copied().collect();
                for id in ids {
                    let entry = &sw.registry[&id];
                    if entry.view.member_devices.contains(&device) && !sw.tuning.drop_announcements
                    {
                        sw.tell(
                            device,
                            id,
                            SwarmFrame::Heads {
                                heads: announced_heads(&entry.view.tips),
                            },
                        );
                    }
                    sw.tell_invitees(&id, Some(&msg.peer));
                }
            }
            PeerState::Down { .. } => {
                sw.connected.remove(&device);
                sw.clock.forget(&device, &sw.events);
                sw.metrics.peers_connected.set(sw.connected.len() as i64);
                let now = Instant::now();
                let mut all = Vec::new();
                for (id, entry) in sw.registry.iter_mut() {
                    all.push((*id, entry.scheduler.peer_gone(&device, now)));
                }
                for (id, starts) in all {
                    start_fetches(self, ctx, id, starts);
                }
            }
        }
    }
}

// ---- requests from the API ----

/// Keep a connection to the device(s) of `account` at `addr`.
#[derive(Message)]
#[rtype(result = "Result<(), SwarmError>")]
pub struct AddPeer {
    /// Where the peer listens.
    pub addr: SocketAddr,
    /// Whose device it is.
    pub account: AccountId,
}

impl Handler<AddPeer> for Account {
    type Result = ResponseFuture<Result<(), SwarmError>>;

    fn handle(&mut self, msg: AddPeer, _: &mut Self::Context) -> Self::Result {
        let transport = swarms(self).map(|sw| sw.transport.clone());
        Box::pin(async move {
            transport?
                .send(WantPeer {
                    addr: msg.addr,
                    peer: ExpectedPeer {
                        account_id: msg.account,
                        device_id: None,
                    },
                })
                .await
                .map_err(|e| SwarmError::Network(e.to_string()))
        })
    }
}

/// One conversation, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwarmSummary {
    /// The conversation id.
    pub id: CommitId,
    /// The tips (more than one while concurrent writes are not yet joined).
    pub tips: Vec<CommitId>,
    /// Members and admins.
    pub members: usize,
    /// Its title.
    pub title: Option<String>,
}

/// Lists the account's conversations.
#[derive(Message)]
#[rtype(result = "Result<Vec<SwarmSummary>, SwarmError>")]
pub struct ListSwarms;

impl Handler<ListSwarms> for Account {
    type Result = Result<Vec<SwarmSummary>, SwarmError>;

    fn handle(&mut self, _: ListSwarms, _: &mut Self::Context) -> Self::Result {
        let sw = swarms(self)?;
        let mut list: Vec<SwarmSummary> = sw
            .registry
            .values()
            .map(|e| SwarmSummary {
                id: e.view.id,
                tips: e.view.tips.clone(),
                members: e
                    .view
                    .members
                    .values()
                    .filter(|r| **r != Role::Invited)
                    .count(),
                title: e.view.title.clone(),
            })
            .collect();
        list.sort_by_key(|s| s.id);
        Ok(list)
    }
}

/// Creates a conversation with this account as its admin.
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct CreateSwarm {
    /// Who may invite.
    pub mode: Mode,
    /// Its title (a profile commit), if any.
    pub title: Option<String>,
}

fn blocking_error(e: tokio::task::JoinError) -> SwarmError {
    SwarmError::Io(format!("blocking task: {e}"))
}

/// Moves a repository just created at `tmp` to its place under `dir`, named
/// by its conversation id `id`. An id already taken (the initial commit's
/// nonce makes that unreachable short of a broken RNG) leaves the existing
/// repository alone; on any failure nothing half-made stays behind.
fn place_created(tmp: &Path, dir: &Path, id: CommitId) -> Result<PathBuf, SwarmError> {
    let path = dir.join(format!("{}.git", id.to_hex()));
    let result = if path.exists() {
        Err(SwarmError::AlreadyExists(id))
    } else {
        std::fs::rename(tmp, &path).map_err(|e| SwarmError::Io(format!("{}: {e}", path.display())))
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result.map(|()| path)
}

impl Handler<CreateSwarm> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: CreateSwarm, _: &mut Self::Context) -> Self::Result {
        let prepared = swarms(self).and_then(|sw| {
            if sw.registry.len() + sw.joining.len() >= CONVERSATIONS_MAX {
                return Err(SwarmError::TooManyConversations);
            }
            Ok((sw.dir.clone(), sw.signer.clone()))
        });
        let work = async move {
            let (dir, signer) = prepared?;
            let mode = msg.mode;
            tokio::task::spawn_blocking(move || {
                let mut suffix = [0u8; 8];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut suffix);
                let tmp = dir.join(format!("{}.new", u64::from_le_bytes(suffix)));
                let store = match Store::create(&tmp, &signer, mode, now_secs()) {
                    Ok(store) => store,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        return Err(SwarmError::Io(e.to_string()));
                    }
                };
                let id = store.conversation();
                drop(store);
                let path = place_created(&tmp, &dir, id)?;
                Ok::<_, SwarmError>((id, path))
            })
            .await
            .map_err(blocking_error)?
        };
        Box::pin(
            work.into_actor(self)
                .then(move |created, act, _| {
                    let started = created.and_then(|(id, path)| {
                        let sw = swarms(act)?;
                        sw.joining.insert(id);
                        let addr = sw.start_conversation(path.clone(), Scope::Runtime);
                        Ok((id, path, addr))
                    });
                    async move {
                        let (id, path, addr) = started?;
                        let view = match msg.title {
                            Some(title) => {
                                let profile = serde_json::json!({ "title": title }).to_string();
                                addr.send(Author {
                                    kind: BodyKind::Profile,
                                    content: Some(profile.into_bytes()),
                                })
                                .await
                                .map_err(mailbox)??
                                .1
                            }
                            None => addr.send(GetView).await.map_err(mailbox)??,
                        };
                        Ok::<_, SwarmError>((id, path, addr, view))
                    }
                    .into_actor(act)
                })
                .map(|result, act, _| {
                    let (id, path, addr, view) = result?;
                    let sw = swarms(act)?;
                    sw.insert(addr, view, path);
                    Ok(id)
                }),
        )
    }
}

/// Authors `kind` in `conversation`, updates the view and announces the head.
pub(super) fn author_in(
    account: &mut Account,
    conversation: CommitId,
    kind: BodyKind,
) -> ResponseActFuture<Account, Result<(CommitId, SwarmView), SwarmError>> {
    author_commit(account, conversation, kind, None)
}

/// [`author_in`] for kinds whose one chosen file (profile, CRL) is `content`.
pub(super) fn author_with_content(
    account: &mut Account,
    conversation: CommitId,
    kind: BodyKind,
    content: Vec<u8>,
) -> ResponseActFuture<Account, Result<(CommitId, SwarmView), SwarmError>> {
    author_commit(account, conversation, kind, Some(content))
}

fn author_commit(
    account: &mut Account,
    conversation: CommitId,
    kind: BodyKind,
    content: Option<Vec<u8>>,
) -> ResponseActFuture<Account, Result<(CommitId, SwarmView), SwarmError>> {
    let addr = swarms(account).and_then(|sw| {
        sw.registry
            .get(&conversation)
            .map(|e| e.addr.clone())
            .ok_or(SwarmError::NotFound(conversation))
    });
    let work = async move {
        addr?
            .send(Author { kind, content })
            .await
            .map_err(mailbox)?
            .map_err(SwarmError::from)
    };
    // The view and the events were updated when the batch became durable
    // (`BatchDurable` reaches the account before any reply of its batch);
    // this reply's view may already be older than the registry's.
    Box::pin(work.into_actor(account).map(move |result, act, _| {
        let (id, view) = result?;
        swarms(act)?.announce(&conversation);
        Ok((id, view))
    }))
}

/// Sends a text message (or a reply).
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct SendText {
    /// The conversation.
    pub conversation: CommitId,
    /// The text.
    pub text: String,
    /// The message it answers.
    pub reply_to: Option<CommitId>,
}

impl Handler<SendText> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: SendText, _: &mut Self::Context) -> Self::Result {
        if msg.text.len() > TEXT_BYTES_MAX {
            let found = msg.text.len();
            return Box::pin(fut::ready(Err(SwarmError::TooLarge { found })));
        }
        Box::pin(
            author_in(
                self,
                msg.conversation,
                BodyKind::Text {
                    text: msg.text,
                    reply_to: msg.reply_to,
                    edit_of: None,
                },
            )
            .map(|r, _, _| r.map(|(id, _)| id)),
        )
    }
}

/// Invites `account` to `conversation`.
#[derive(Message)]
#[rtype(result = "Result<(), SwarmError>")]
pub struct Invite {
    /// The conversation.
    pub conversation: CommitId,
    /// Whom to invite.
    pub account: AccountId,
}

impl Handler<Invite> for Account {
    type Result = ResponseActFuture<Self, Result<(), SwarmError>>;

    fn handle(&mut self, msg: Invite, _: &mut Self::Context) -> Self::Result {
        let conversation = msg.conversation;
        Box::pin(
            author_in(
                self,
                conversation,
                BodyKind::Member {
                    action: MemberAction::Invite,
                    account: msg.account,
                },
            )
            .map(move |r, act, _| {
                r?;
                swarms(act)?.tell_invitees(&conversation, None);
                Ok(())
            }),
        )
    }
}

/// Removes a member or withdraws an invitation (admins only), or, with
/// `account` this account, leaves.
#[derive(Message)]
#[rtype(result = "Result<(), SwarmError>")]
pub struct RemoveMember {
    /// The conversation.
    pub conversation: CommitId,
    /// Whom to remove; `None` to leave.
    pub account: Option<AccountId>,
}

impl Handler<RemoveMember> for Account {
    type Result = ResponseActFuture<Self, Result<(), SwarmError>>;

    fn handle(&mut self, msg: RemoveMember, _: &mut Self::Context) -> Self::Result {
        let me = self.identity.account_id();
        let kind = match msg.account {
            Some(account) if account != me => BodyKind::Member {
                action: MemberAction::Remove,
                account,
            },
            _ => BodyKind::Member {
                action: MemberAction::Leave,
                account: me,
            },
        };
        Box::pin(author_in(self, msg.conversation, kind).map(|r, _, _| r.map(|_| ())))
    }
}

/// A pending invitation, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InvitationInfo {
    /// The conversation.
    pub conversation: CommitId,
    /// Its title, as the inviter told it.
    pub title: String,
    /// Accounts whose devices told us.
    pub from: Vec<AccountId>,
}

/// Lists pending invitations.
#[derive(Message)]
#[rtype(result = "Result<Vec<InvitationInfo>, SwarmError>")]
pub struct ListInvitations;

impl Handler<ListInvitations> for Account {
    type Result = Result<Vec<InvitationInfo>, SwarmError>;

    fn handle(&mut self, _: ListInvitations, _: &mut Self::Context) -> Self::Result {
        let sw = swarms(self)?;
        Ok(sw
            .invitations
            .iter()
            .map(|(id, inv)| InvitationInfo {
                conversation: *id,
                title: inv.title.clone(),
                from: inv
                    .from
                    .values()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            })
            .collect())
    }
}

/// Accepts an invitation: clones the conversation from a device that sent
/// it, validating all of it, then authors our join.
#[derive(Message)]
#[rtype(result = "Result<(), SwarmError>")]
pub struct Join {
    /// The conversation.
    pub conversation: CommitId,
}

impl Handler<Join> for Account {
    type Result = ResponseActFuture<Self, Result<(), SwarmError>>;

    fn handle(&mut self, msg: Join, _: &mut Self::Context) -> Self::Result {
        let conversation = msg.conversation;
        let prepared = swarms(self).and_then(|sw| {
            if sw.registry.contains_key(&conversation) {
                return Err(SwarmError::AlreadyMember(conversation));
            }
            if sw.joining.contains(&conversation) {
                return Err(SwarmError::Io(
                    "a join of this conversation is running".into(),
                ));
            }
            if sw.registry.len() + sw.joining.len() >= CONVERSATIONS_MAX {
                return Err(SwarmError::TooManyConversations);
            }
            let invitation = sw
                .invitations
                .get(&conversation)
                .ok_or(SwarmError::NotInvited(conversation))?;
            let peer = invitation
                .from
                .keys()
                .find_map(|d| sw.connected.get(d))
                .copied()
                .ok_or(SwarmError::InviterOffline(conversation))?;
            let name = ChannelName::new(&format!("git/{}", conversation.to_hex()))
                .map_err(|e| SwarmError::Network(e.to_string()))?;
            sw.joining.insert(conversation);
            Ok((
                sw.transport.clone(),
                name,
                peer,
                sw.dir.clone(),
                sw.path_of(&conversation),
            ))
        });
        // Only the request that marked the join as running may clear it.
        let marked = prepared.is_ok();
        let clone = async move {
            let (transport, name, peer, dir, path) = prepared?;
            let tmp = dir.join(format!("{}.joining", conversation.to_hex()));
            let _ = std::fs::remove_dir_all(&tmp);
            let result = async {
                let channel = transport
                    .send(OpenChannel {
                        peer: peer.device_id,
                        name,
                    })
                    .await
                    .map_err(|e| SwarmError::Network(e.to_string()))?
                    .map_err(|e| SwarmError::Network(e.to_string()))?;
                // A clone stuck on a dead stream would hold the join (and
                // refuse every retry as running) for good.
                let watch = FetchWatch::default();
                let clone =
                    fetch_git_watched(channel, tmp.clone(), peer.device_id, true, watch.clone());
                let clone =
                    async move { clone.await.map_err(|e| SwarmError::Network(e.to_string())) };
                stall_bounded(clone, watch, SwarmError::Network).await?;
                let (tmp2, path2) = (tmp.clone(), path.clone());
                tokio::task::spawn_blocking(move || {
                    let repo = git2::Repository::open_bare(&tmp2)
                        .map_err(|e| SwarmError::Io(e.to_string()))?;
                    let store =
                        Store::adopt_quarantined(repo, conversation, &peer.device_id.to_hex())
                            .map_err(|e| SwarmError::Refused(e.to_string()))?;
                    drop(store);
                    std::fs::rename(&tmp2, &path2)
                        .map_err(|e| SwarmError::Io(format!("{}: {e}", path2.display())))
                })
                .await
                .map_err(blocking_error)?
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result.map(|()| path)
        };
        Box::pin(
            clone
                .into_actor(self)
                .then(move |cloned, act, _| {
                    let started = cloned.and_then(|path| {
                        let sw = swarms(act)?;
                        Ok((
                            path.clone(),
                            sw.start_conversation(path, Scope::Runtime),
                            sw.signer.account_id(),
                        ))
                    });
                    async move {
                        let (path, addr, me) = started?;
                        let (id, view) = addr
                            .send(Author {
                                kind: BodyKind::Member {
                                    action: MemberAction::Join,
                                    account: me,
                                },
                                content: None,
                            })
                            .await
                            .map_err(mailbox)??;
                        Ok::<_, SwarmError>((path, addr, view, id, me))
                    }
                    .into_actor(act)
                })
                .map(move |result, act, _| {
                    let sw = swarms(act)?;
                    match result {
                        Ok((path, addr, view, id, me)) => {
                            let pack = sw.joining_packs.remove(&conversation);
                            sw.insert(addr, view, path);
                            sw.announce_with(&conversation, pack, false, None);
                            // The cloned history is not replayed as events;
                            // our own join is the first one of this swarm.
                            sw.events.publish(Event::Member {
                                conversation,
                                id,
                                account_id: me,
                                action: "join",
                                by: Some(me),
                                timestamp: now_secs(),
                            });
                            Ok(())
                        }
                        Err(e) => {
                            if marked {
                                sw.joining.remove(&conversation);
                                sw.joining_packs.remove(&conversation);
                            }
                            Err(e)
                        }
                    }
                }),
        )
    }
}

/// Lists the newest text messages of a conversation, newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<MessageItem>, SwarmError>")]
pub struct Messages {
    /// The conversation.
    pub conversation: CommitId,
    /// How many at most.
    pub limit: usize,
}

impl Handler<Messages> for Account {
    type Result = ResponseFuture<Result<Vec<MessageItem>, SwarmError>>;

    fn handle(&mut self, msg: Messages, _: &mut Self::Context) -> Self::Result {
        let addr = swarms(self).and_then(|sw| {
            sw.registry
                .get(&msg.conversation)
                .map(|e| e.addr.clone())
                .ok_or(SwarmError::NotFound(msg.conversation))
        });
        Box::pin(async move {
            Ok(addr?
                .send(ListMessages { limit: msg.limit })
                .await
                .map_err(mailbox)??)
        })
    }
}

/// One member, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberInfo {
    /// The account.
    pub account_id: AccountId,
    /// Its role.
    pub role: Role,
}

/// Lists the members (and invitees) of a conversation.
#[derive(Message)]
#[rtype(result = "Result<Vec<MemberInfo>, SwarmError>")]
pub struct Members {
    /// The conversation.
    pub conversation: CommitId,
}

impl Handler<Members> for Account {
    type Result = Result<Vec<MemberInfo>, SwarmError>;

    fn handle(&mut self, msg: Members, _: &mut Self::Context) -> Self::Result {
        let sw = swarms(self)?;
        let entry = sw
            .registry
            .get(&msg.conversation)
            .ok_or(SwarmError::NotFound(msg.conversation))?;
        Ok(entry
            .view
            .members
            .iter()
            .map(|(account_id, role)| MemberInfo {
                account_id: *account_id,
                role: *role,
            })
            .collect())
    }
}

/// The allowed-signers file of a conversation.
#[derive(Message)]
#[rtype(result = "Result<String, SwarmError>")]
pub struct ExportAllowedSigners {
    /// The conversation.
    pub conversation: CommitId,
}

impl Handler<ExportAllowedSigners> for Account {
    type Result = ResponseFuture<Result<String, SwarmError>>;

    fn handle(&mut self, msg: ExportAllowedSigners, _: &mut Self::Context) -> Self::Result {
        let addr = swarms(self).and_then(|sw| {
            sw.registry
                .get(&msg.conversation)
                .map(|e| e.addr.clone())
                .ok_or(SwarmError::NotFound(msg.conversation))
        });
        Box::pin(async move { Ok(addr?.send(AllowedSigners).await.map_err(mailbox)??) })
    }
}

// ---- what the contact book (`super::contacts`) needs of the swarms ----

impl Swarms {
    /// The transport the account uses.
    pub(super) fn transport(&self) -> &Addr<Transport> {
        &self.transport
    }

    /// Connected devices of `account`.
    pub(super) fn connected_devices_of(&self, account: &AccountId) -> Vec<DeviceId> {
        self.connected
            .values()
            .filter(|peer| peer.account_id == *account)
            .map(|peer| peer.device_id)
            .collect()
    }

    /// The last view of `conversation`, if the account holds it.
    pub(super) fn view(&self, conversation: &CommitId) -> Option<&SwarmView> {
        self.registry.get(conversation).map(|entry| &entry.view)
    }

    /// Records that `peer` invited us to `conversation` (a contact request
    /// carries one), as an `invite` frame would, so that a join can find a
    /// device to clone from.
    pub(super) fn note_invitation(&mut self, conversation: CommitId, peer: &VerifiedDevice) {
        if self.registry.contains_key(&conversation) {
            return;
        }
        if !self.invitations.contains_key(&conversation)
            && self.invitations.len() >= INVITATIONS_MAX
        {
            tracing::warn!(%conversation, "invitation dropped: too many pending");
            return;
        }
        let invitation = self.invitations.entry(conversation).or_insert(Invitation {
            title: String::new(),
            from: BTreeMap::new(),
        });
        if invitation.from.len() < INVITERS_PER_INVITATION_MAX {
            invitation.from.insert(peer.device_id, peer.account_id);
        }
    }

    /// Forgets a pending invitation (a declined contact request's).
    pub(super) fn forget_invitation(&mut self, conversation: &CommitId) {
        self.invitations.remove(conversation);
    }
}

// ---- what discovery asks of the registry (see `super::discovered`) ----

impl Swarms {
    /// Accounts whose devices this account wants to reach: every member and
    /// invitee of every swarm (invitees so the invitation can be told).
    pub(super) fn accounts_of_interest(&self) -> BTreeSet<AccountId> {
        self.registry
            .values()
            .flat_map(|entry| entry.view.members.keys().copied())
            .collect()
    }

    /// This device.
    pub(super) fn local_device(&self) -> DeviceId {
        self.local_device
    }

    /// A connected peer device, with its account.
    pub(super) fn connected_device(&self, device: &DeviceId) -> Option<&VerifiedDevice> {
        self.connected.get(device)
    }

    /// Whether a device of `account` (or `device` itself) is connected.
    pub(super) fn reaches(&self, account: &AccountId, device: Option<&DeviceId>) -> bool {
        match device {
            Some(device) => self.connected.contains_key(device),
            None => self.connected.values().any(|p| p.account_id == *account),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversation id already on disk is a conflict, not a storage error:
    /// the repository there is left as it was and the new one is removed.
    #[test]
    fn placing_a_repository_under_a_taken_id_keeps_the_old_and_drops_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let id: CommitId = "ab".repeat(20).parse().unwrap();
        let taken = dir.path().join(format!("{id}.git"));
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("config"), "old").unwrap();
        let tmp = dir.path().join("1.new");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("config"), "new").unwrap();

        let placed = place_created(&tmp, dir.path(), id);
        assert!(matches!(placed, Err(SwarmError::AlreadyExists(got)) if got == id));
        assert_eq!(
            std::fs::read_to_string(taken.join("config")).unwrap(),
            "old"
        );
        assert!(!tmp.exists(), "the half-made repository is gone");

        let fresh: CommitId = "cd".repeat(20).parse().unwrap();
        std::fs::create_dir(&tmp).unwrap();
        let placed = place_created(&tmp, dir.path(), fresh).unwrap();
        assert_eq!(placed, dir.path().join(format!("{fresh}.git")));
        assert!(placed.is_dir() && !tmp.exists());
    }
}
