//! The account's contact book and the contact requests it sends and answers.
//!
//! The rules live in [`starling_protocol::contact`] ([`ContactBook`], the
//! frames); this module moves them over the network and to disk:
//!
//! - **add** creates a swarm in `one-to-one` mode, invites the other account
//!   (the swarm's own `invite` frame tells its devices), records the request
//!   and sends a `request` frame on `contact/<conversation>` to every
//!   connected device of that account — again on every connection up while
//!   it is pending, the way invitations are re-told;
//! - **accept** joins that swarm through the ordinary join path (clone over
//!   `git/<id>`, validate all of it, author the join), checks that the
//!   requester is its admin, and records the contact. The requester sees the
//!   join commit when it syncs and lists the account as a contact from then on;
//! - **decline** drops the request, remembers its conversation as declined,
//!   and answers with a `decline` frame (again whenever the request is re-sent),
//!   after which the requester stops asking and withdraws the invitation;
//! - **block** records the account as blocked and hands the whole blocked set
//!   to the transport, which closes and refuses that account's connections
//!   and channels. Frames and channels from a blocked account that still reach
//!   the account actor are refused and counted; a blocked peer is told nothing.
//!
//! The book is persisted in `DATA_DIR/contacts.json` (mode 0600, written
//! atomically off the actor's thread; snapshots carry a version so that an
//! older one never overwrites a newer one) and loaded at start, so contacts,
//! requests and blocks survive a restart.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use starling_protocol::channel::{ChannelName, ChannelPattern};
use starling_protocol::contact::{
    AddPlan, ContactBook, ContactBookError, ContactBookFormatError, ContactEntry, ContactFrame,
    ContactFrameError, EntryState, RequestOutcome, CONTACT_BOOK_BYTES_MAX,
    CONTACT_FRAME_LENGTH_BYTES,
};
use starling_protocol::swarm::body::Mode;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::{AccountId, DeviceId, VerifiedDevice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::channel_io::{ChannelStream, FRAME_READ_TIMEOUT};
use super::swarms::{CreateSwarm, Invite, Join, RemoveMember};
use super::{Account, SwarmError};
use crate::conversation::Role;
use crate::transport::{
    Channel, ConnectionEvent, IncomingChannel, OpenChannel, PeerState, RegisterChannel,
    SetBlockedAccounts, Transport,
};

/// The contact book's file in the data directory.
pub const CONTACTS_FILE: &str = "contacts.json";
/// The channel kind contact frames travel on (`contact/<conversation>`).
pub const CONTACT_CHANNEL_KIND: &str = "contact";
/// What a refused channel from a blocked account is told.
const BLOCKED_REFUSAL: &str = "refused";

/// The contact metrics (names are a stable API).
#[derive(Clone)]
pub struct ContactMetrics {
    /// Contact requests received and recorded.
    pub requests_received: IntCounter,
    /// Frames and channels dropped, by reason.
    dropped: IntCounterVec,
    /// Established contacts.
    pub contacts: IntGauge,
    /// Blocked accounts.
    pub blocked: IntGauge,
}

impl ContactMetrics {
    /// Unregistered metrics, for an account that exports none.
    fn unregistered() -> Self {
        Self::build().expect("static metric definitions are valid")
    }

    fn build() -> prometheus::Result<Self> {
        Ok(Self {
            requests_received: IntCounter::new(
                "starling_contact_requests_received_total",
                "Contact requests received from peers and recorded.",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "starling_contact_dropped_total",
                    "Contact frames, invitations and channels dropped or refused, by reason \
                     (blocked, declined, already_contact, full, malformed, stale).",
                ),
                &["reason"],
            )?,
            contacts: IntGauge::new("starling_contacts", "Established contacts.")?,
            blocked: IntGauge::new("starling_contacts_blocked", "Accounts blocked.")?,
        })
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::build()?;
        registry.register(Box::new(metrics.requests_received.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.contacts.clone()))?;
        registry.register(Box::new(metrics.blocked.clone()))?;
        Ok(metrics)
    }

    fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[reason]).inc();
    }
}

/// Why a contact request failed.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("{0}")]
    Book(#[from] ContactBookError),
    #[error("{0}")]
    Swarm(#[from] SwarmError),
    #[error("contact book {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("contact book {path}: {source}")]
    Format {
        path: PathBuf,
        source: ContactBookFormatError,
    },
    #[error("conversation {conversation} is not a one-to-one conversation of {account}")]
    NotOneToOne {
        conversation: CommitId,
        account: AccountId,
    },
    #[error("the account actor is gone: {0}")]
    Gone(String),
}

/// Why a contact frame could not be moved.
#[derive(Debug, thiserror::Error)]
enum ContactIoError {
    #[error("channel stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] ContactFrameError),
    #[error("no frame within {0:?}")]
    Timeout(std::time::Duration),
}

/// The account's contact state (a part of the `Account` actor).
pub struct Contacts {
    book: ContactBook,
    /// Where the book is persisted; `None` keeps it in memory.
    path: Option<PathBuf>,
    /// Version of the newest snapshot taken.
    version: u64,
    /// Version of the newest snapshot on disk; the lock orders writers.
    written: Arc<Mutex<u64>>,
    metrics: ContactMetrics,
}

impl Default for Contacts {
    fn default() -> Self {
        Self {
            book: ContactBook::new(),
            path: None,
            version: 0,
            written: Arc::new(Mutex::new(0)),
            metrics: ContactMetrics::unregistered(),
        }
    }
}

impl Contacts {
    /// Loads the book at `path` (an absent file is an empty book), with
    /// metrics registered in `registry`.
    pub fn load(path: PathBuf, registry: &Registry) -> Result<Self, ContactError> {
        let book = match std::fs::read(&path) {
            Ok(bytes) => ContactBook::from_json(&bytes).map_err(|source| ContactError::Format {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ContactBook::new(),
            Err(e) => {
                return Err(ContactError::Storage {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let metrics = ContactMetrics::register(registry).map_err(|e| ContactError::Storage {
            path: path.clone(),
            reason: format!("metrics: {e}"),
        })?;
        let contacts = Self {
            book,
            path: Some(path),
            version: 0,
            written: Arc::new(Mutex::new(0)),
            metrics,
        };
        contacts.update_gauges();
        Ok(contacts)
    }

    fn update_gauges(&self) {
        let entries = self.book.entries();
        let count = |state| entries.iter().filter(|e| e.state == state).count() as i64;
        self.metrics.contacts.set(count(EntryState::Contact));
        self.metrics.blocked.set(self.book.blocked().len() as i64);
    }

    /// Snapshots the book and writes it off the actor's thread. The future
    /// resolves once the snapshot (or a newer one) is durable.
    fn save(&mut self) -> impl std::future::Future<Output = Result<(), ContactError>> + 'static {
        self.update_gauges();
        self.version += 1;
        let version = self.version;
        let bytes = self.book.to_json();
        let written = self.written.clone();
        let path = self.path.clone();
        async move {
            let Some(path) = path else {
                return Ok(());
            };
            let target = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut on_disk = written.lock().unwrap_or_else(|p| p.into_inner());
                if *on_disk >= version {
                    return Ok(()); // a newer snapshot is already durable
                }
                write_atomic(&target, &bytes)?;
                *on_disk = version;
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r: std::io::Result<()>| r.map_err(|e| e.to_string()))
            .map_err(|reason| ContactError::Storage { path, reason })
        }
    }

    /// Saves in the background, logging a failure.
    fn save_in_background(&mut self) {
        let save = self.save();
        actix::spawn(async move {
            if let Err(e) = save.await {
                tracing::error!(error = %e, "contact book not saved");
            }
        });
    }
}

/// Writes `bytes` to `path` (0600) through a temporary file, fsync and
/// rename, then fsyncs the directory: a crash leaves the old or the new book.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    debug_assert!(bytes.len() <= CONTACT_BOOK_BYTES_MAX);
    let tmp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn channel_name(conversation: &CommitId) -> Option<ChannelName> {
    ChannelName::new(&format!("{CONTACT_CHANNEL_KIND}/{}", conversation.to_hex())).ok()
}

async fn write_frame(channel: Channel, frame: &ContactFrame) -> Result<(), ContactIoError> {
    let bytes = frame.encode()?;
    let mut stream = ChannelStream::new(channel);
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_frame(channel: Channel) -> Result<ContactFrame, ContactIoError> {
    let mut stream = ChannelStream::new(channel);
    let read = async {
        let mut prefix = [0u8; CONTACT_FRAME_LENGTH_BYTES];
        stream.read_exact(&mut prefix).await?;
        let len = ContactFrame::payload_len(prefix)?;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        Ok::<_, ContactIoError>(ContactFrame::decode_payload(&payload)?)
    };
    tokio::time::timeout(FRAME_READ_TIMEOUT, read)
        .await
        .map_err(|_| ContactIoError::Timeout(FRAME_READ_TIMEOUT))?
}

/// Sends `frame` on a fresh `contact/<conversation>` channel to `peer`, in
/// the background (best effort: requests are re-sent on connection up).
fn tell(transport: &Addr<Transport>, peer: DeviceId, conversation: CommitId, frame: ContactFrame) {
    let Some(name) = channel_name(&conversation) else {
        return;
    };
    let transport = transport.clone();
    actix::spawn(async move {
        match transport.send(OpenChannel { peer, name }).await {
            Ok(Ok(channel)) => {
                if let Err(e) = write_frame(channel, &frame).await {
                    tracing::info!(%peer, error = %e, "contact frame not delivered");
                }
            }
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "contact channel not opened"),
            Err(e) => tracing::warn!(error = %e, "transport mailbox"),
        }
    });
}

/// Tells `frame` to every connected device of `account`.
fn tell_account(account: &Account, to: &AccountId, conversation: CommitId, frame: ContactFrame) {
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    for device in sw.connected_devices_of(to) {
        tell(sw.transport(), device, conversation, frame.clone());
    }
}

fn request_frame(account: &Account) -> ContactFrame {
    ContactFrame::Request {
        display_name: account.identity.display_name.clone(),
    }
}

/// Hands the transport the whole blocked set.
fn push_blocked(account: &Account) {
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    let transport = sw.transport().clone();
    let accounts = account.contacts.book.blocked().clone();
    actix::spawn(async move {
        match transport.send(SetBlockedAccounts { accounts }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "blocked accounts refused by the transport"),
            Err(e) => tracing::error!(error = %e, "transport mailbox"),
        }
    });
}

/// Registers `contact/*` with the transport and hands it the blocked set,
/// before the account handles any request (so no static peer is dialled and
/// no early connection is kept from an account blocked before a restart).
pub(super) fn start(account: &mut Account, ctx: &mut Context<Account>) {
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    let transport = sw.transport().clone();
    let handler = ctx.address().recipient::<IncomingChannel>();
    let blocked = account.contacts.book.blocked().clone();
    ctx.wait(
        async move {
            let pattern = ChannelPattern::new(&format!("{CONTACT_CHANNEL_KIND}/*"))
                .expect("static pattern is valid");
            match transport.send(RegisterChannel { pattern, handler }).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "contact pattern not registered"),
                Err(e) => tracing::error!(error = %e, "transport mailbox"),
            }
            match transport
                .send(SetBlockedAccounts { accounts: blocked })
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "blocked accounts refused by the transport")
                }
                Err(e) => tracing::error!(error = %e, "transport mailbox"),
            }
        }
        .into_actor(account),
    );
}

/// Looks at every incoming channel first: refuses a blocked account's, and
/// takes `contact/<id>` channels. Returns the others for the swarms.
pub(super) fn screen_channel(
    account: &mut Account,
    msg: IncomingChannel,
    ctx: &mut Context<Account>,
) -> Option<IncomingChannel> {
    let metrics = account.contacts.metrics.clone();
    let peer = msg.peer;
    if account.contacts.book.is_blocked(&peer.account_id) {
        metrics.dropped("blocked");
        tracing::info!(peer = %peer.device_id, channel = %msg.name, "channel refused: account blocked");
        let pending = msg.channel;
        actix::spawn(async move { pending.refuse(BLOCKED_REFUSAL).await });
        return None;
    }
    if msg.name.kind() != CONTACT_CHANNEL_KIND {
        return Some(msg);
    }
    let conversation = msg
        .name
        .as_str()
        .split_once('/')
        .and_then(|(_, id)| id.parse::<CommitId>().ok());
    let pending = msg.channel;
    let Some(conversation) = conversation else {
        metrics.dropped("malformed");
        actix::spawn(async move { pending.refuse("malformed conversation id").await });
        return None;
    };
    let me = ctx.address();
    actix::spawn(async move {
        let frame = match pending.accept().await {
            Ok(channel) => read_frame(channel).await,
            Err(e) => {
                tracing::debug!(error = %e, "contact channel not accepted");
                return;
            }
        };
        match frame {
            Ok(frame) => {
                let _ = me
                    .send(ContactFrameReceived {
                        peer,
                        conversation,
                        frame,
                    })
                    .await;
            }
            Err(e) => {
                metrics.dropped("malformed");
                tracing::info!(peer = %peer.device_id, error = %e, "bad contact frame");
            }
        }
    });
    None
}

/// Re-sends pending requests to a device of their account when it connects.
pub(super) fn connection_event(account: &mut Account, event: &ConnectionEvent) {
    let PeerState::Up { .. } = event.state else {
        return;
    };
    let Some(sw) = account.swarms.as_ref() else {
        return;
    };
    let pending = account
        .contacts
        .book
        .outgoing(&event.peer.account_id)
        .filter(|r| r.state == starling_protocol::contact::OutgoingState::Pending)
        .map(|r| r.conversation);
    if let Some(conversation) = pending {
        tell(
            sw.transport(),
            event.peer.device_id,
            conversation,
            request_frame(account),
        );
    }
}

/// A frame read from a `contact/<id>` channel.
#[derive(Message)]
#[rtype(result = "()")]
struct ContactFrameReceived {
    peer: VerifiedDevice,
    conversation: CommitId,
    frame: ContactFrame,
}

impl Handler<ContactFrameReceived> for Account {
    type Result = ();

    fn handle(&mut self, msg: ContactFrameReceived, ctx: &mut Self::Context) {
        let ContactFrameReceived {
            peer,
            conversation,
            frame,
        } = msg;
        let metrics = self.contacts.metrics.clone();
        match frame {
            ContactFrame::Request { display_name } => {
                let outcome = self.contacts.book.receive_request(
                    peer.account_id,
                    conversation,
                    display_name,
                    now_secs(),
                );
                match outcome {
                    RequestOutcome::Recorded | RequestOutcome::Known => {
                        if let Some(sw) = self.swarms.as_mut() {
                            sw.note_invitation(conversation, &peer);
                        }
                        if outcome == RequestOutcome::Recorded {
                            metrics.requests_received.inc();
                            tracing::info!(from = %peer.account_id, %conversation, "contact request received");
                            self.contacts.save_in_background();
                        }
                    }
                    RequestOutcome::Declined => {
                        metrics.dropped(outcome.label());
                        // The requester has not heard yet: tell it again.
                        if let Some(sw) = self.swarms.as_ref() {
                            tell(
                                sw.transport(),
                                peer.device_id,
                                conversation,
                                ContactFrame::Decline,
                            );
                        }
                    }
                    other => {
                        metrics.dropped(other.label());
                        tracing::info!(from = %peer.account_id, %conversation, reason = other.label(), "contact request dropped");
                    }
                }
            }
            ContactFrame::Decline => {
                if !self
                    .contacts
                    .book
                    .receive_decline(&peer.account_id, &conversation)
                {
                    metrics.dropped("stale");
                    return;
                }
                tracing::info!(by = %peer.account_id, %conversation, "contact request declined");
                self.contacts.save_in_background();
                // Withdraw the invitation, so the repository says it too.
                let withdraw = ctx.address().send(RemoveMember {
                    conversation,
                    account: Some(peer.account_id),
                });
                actix::spawn(async move {
                    if let Ok(Err(e)) = withdraw.await {
                        tracing::info!(error = %e, "declined invitation not withdrawn");
                    }
                });
            }
        }
    }
}

// ---- requests from the API ----

fn entry(account_id: AccountId, state: EntryState, conversation: Option<CommitId>) -> ContactEntry {
    ContactEntry {
        account_id,
        state,
        conversation,
        display_name: None,
    }
}

fn gone(e: MailboxError) -> ContactError {
    ContactError::Gone(e.to_string())
}

/// Asks `account` to be a contact: a one-to-one swarm with it invited, and a
/// contact request. Adding an account that already asked us accepts it.
#[derive(Message)]
#[rtype(result = "Result<ContactEntry, ContactError>")]
pub struct AddContact {
    /// The account to add.
    pub account: AccountId,
}

impl Handler<AddContact> for Account {
    type Result = ResponseActFuture<Self, Result<ContactEntry, ContactError>>;

    fn handle(&mut self, msg: AddContact, ctx: &mut Self::Context) -> Self::Result {
        let account = msg.account;
        let me = self.identity.account_id();
        let plan = if self.swarms.is_none() {
            Err(ContactError::Swarm(SwarmError::NoSync))
        } else {
            self.contacts
                .book
                .plan_add(&me, &account)
                .map_err(ContactError::from)
        };
        let addr = ctx.address();
        match plan {
            Err(e) => Box::pin(fut::ready(Err(e))),
            Ok(AddPlan::AcceptIncoming(_)) => Box::pin(
                async move { addr.send(AcceptContact { account }).await.map_err(gone)? }
                    .into_actor(self),
            ),
            Ok(AddPlan::Resend(conversation)) => {
                tell_account(self, &account, conversation, request_frame(self));
                Box::pin(fut::ready(Ok(entry(
                    account,
                    EntryState::Requested,
                    Some(conversation),
                ))))
            }
            Ok(AddPlan::New) => {
                let create = async move {
                    let conversation = addr
                        .send(CreateSwarm {
                            mode: Mode::OneToOne,
                            title: None,
                        })
                        .await
                        .map_err(gone)??;
                    addr.send(Invite {
                        conversation,
                        account,
                    })
                    .await
                    .map_err(gone)??;
                    Ok::<_, ContactError>(conversation)
                };
                Box::pin(create.into_actor(self).then(move |created, act, _| {
                    let recorded = created.and_then(|conversation| {
                        act.contacts
                            .book
                            .record_outgoing(account, conversation, now_secs())?;
                        Ok(conversation)
                    });
                    let save = recorded.is_ok().then(|| act.contacts.save());
                    if let Ok(conversation) = recorded {
                        tracing::info!(to = %account, %conversation, "contact request sent");
                        tell_account(act, &account, conversation, request_frame(act));
                    }
                    async move {
                        if let Some(save) = save {
                            save.await?;
                        }
                        let conversation = recorded?;
                        Ok(entry(account, EntryState::Requested, Some(conversation)))
                    }
                    .into_actor(act)
                }))
            }
        }
    }
}

/// Accepts the request from `account`: joins its one-to-one swarm and
/// records the contact.
#[derive(Message)]
#[rtype(result = "Result<ContactEntry, ContactError>")]
pub struct AcceptContact {
    /// The requester.
    pub account: AccountId,
}

impl Handler<AcceptContact> for Account {
    type Result = ResponseActFuture<Self, Result<ContactEntry, ContactError>>;

    fn handle(&mut self, msg: AcceptContact, ctx: &mut Self::Context) -> Self::Result {
        let account = msg.account;
        let conversation = match self.contacts.book.incoming(&account) {
            Some(request) => request.conversation,
            None => return Box::pin(fut::ready(Err(ContactBookError::NoRequest(account).into()))),
        };
        let Some(sw) = self.swarms.as_mut() else {
            return Box::pin(fut::ready(Err(SwarmError::NoSync.into())));
        };
        // Any connected device of the requester may serve the clone.
        for device in sw.connected_devices_of(&account) {
            sw.note_invitation(
                conversation,
                &VerifiedDevice {
                    account_id: account,
                    device_id: device,
                },
            );
        }
        let addr = ctx.address();
        let join = async move {
            match addr.send(Join { conversation }).await.map_err(gone)? {
                Ok(()) | Err(SwarmError::AlreadyMember(_)) => Ok(()),
                Err(e) => Err(ContactError::from(e)),
            }
        };
        Box::pin(join.into_actor(self).then(move |joined, act, _| {
            let accepted = joined.and_then(|()| {
                // The request said this is the requester's one-to-one swarm;
                // the repository must agree before we call it a contact.
                let requester_is_admin = act
                    .swarms
                    .as_ref()
                    .and_then(|sw| sw.view(&conversation))
                    .is_some_and(|view| {
                        view.members.get(&account) == Some(&Role::Admin) && view.members.len() <= 2
                    });
                if !requester_is_admin {
                    return Err(ContactError::NotOneToOne {
                        conversation,
                        account,
                    });
                }
                Ok(act.contacts.book.accept(&account, now_secs())?)
            });
            let save = accepted.is_ok().then(|| act.contacts.save());
            if accepted.is_ok() {
                tracing::info!(%account, %conversation, "contact request accepted");
            }
            async move {
                if let Some(save) = save {
                    save.await?;
                }
                let contact = accepted?;
                Ok(ContactEntry {
                    account_id: account,
                    state: EntryState::Contact,
                    conversation: Some(contact.conversation),
                    display_name: contact.display_name,
                })
            }
            .into_actor(act)
        }))
    }
}

/// Declines the request from `account` and tells its devices.
#[derive(Message)]
#[rtype(result = "Result<ContactEntry, ContactError>")]
pub struct DeclineContact {
    /// The requester.
    pub account: AccountId,
}

impl Handler<DeclineContact> for Account {
    type Result = ResponseFuture<Result<ContactEntry, ContactError>>;

    fn handle(&mut self, msg: DeclineContact, _: &mut Self::Context) -> Self::Result {
        let account = msg.account;
        let conversation = match self.contacts.book.decline(&account) {
            Ok(conversation) => conversation,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        };
        if let Some(sw) = self.swarms.as_mut() {
            sw.forget_invitation(&conversation);
        }
        tell_account(self, &account, conversation, ContactFrame::Decline);
        tracing::info!(%account, %conversation, "contact request declined");
        let save = self.contacts.save();
        Box::pin(async move {
            save.await?;
            Ok(entry(account, EntryState::Declined, Some(conversation)))
        })
    }
}

/// Blocks `account`: its request is dropped and its connections refused.
#[derive(Message)]
#[rtype(result = "Result<ContactEntry, ContactError>")]
pub struct BlockContact {
    /// The account to block.
    pub account: AccountId,
}

impl Handler<BlockContact> for Account {
    type Result = ResponseFuture<Result<ContactEntry, ContactError>>;

    fn handle(&mut self, msg: BlockContact, _: &mut Self::Context) -> Self::Result {
        let account = msg.account;
        if account == self.identity.account_id() {
            return Box::pin(async { Err(ContactBookError::SelfContact.into()) });
        }
        let dropped = match self.contacts.book.block(account) {
            Ok(dropped) => dropped,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        };
        if let (Some(sw), Some(conversation)) = (self.swarms.as_mut(), dropped) {
            sw.forget_invitation(&conversation);
        }
        push_blocked(self);
        tracing::info!(%account, "account blocked");
        let conversation = self.contacts.book.contact(&account).map(|c| c.conversation);
        let save = self.contacts.save();
        Box::pin(async move {
            save.await?;
            Ok(entry(account, EntryState::Blocked, conversation))
        })
    }
}

/// Unblocks `account`.
#[derive(Message)]
#[rtype(result = "Result<(), ContactError>")]
pub struct UnblockContact {
    /// The account to unblock.
    pub account: AccountId,
}

impl Handler<UnblockContact> for Account {
    type Result = ResponseFuture<Result<(), ContactError>>;

    fn handle(&mut self, msg: UnblockContact, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.contacts.book.unblock(&msg.account) {
            return Box::pin(async move { Err(e.into()) });
        }
        push_blocked(self);
        tracing::info!(account = %msg.account, "account unblocked");
        let save = self.contacts.save();
        Box::pin(save)
    }
}

/// Lists contacts, requests sent, and blocked accounts.
#[derive(Message)]
#[rtype(result = "Vec<ContactEntry>")]
pub struct ListContacts;

impl Handler<ListContacts> for Account {
    type Result = MessageResult<ListContacts>;

    fn handle(&mut self, _: ListContacts, _: &mut Self::Context) -> Self::Result {
        // A request is answered when its account joined our swarm: the
        // repository (synced like any other) is the truth, not a frame.
        let joined: Vec<(AccountId, CommitId)> = match self.swarms.as_ref() {
            Some(sw) => self
                .contacts
                .book
                .pending_outgoing()
                .filter(|(account, request)| {
                    sw.view(&request.conversation).is_some_and(|view| {
                        matches!(view.members.get(account), Some(Role::Member | Role::Admin))
                    })
                })
                .map(|(account, request)| (*account, request.conversation))
                .collect(),
            None => Vec::new(),
        };
        let now = now_secs();
        let mut changed = false;
        for (account, conversation) in joined {
            changed |= self.contacts.book.peer_joined(&account, &conversation, now);
        }
        if changed {
            self.contacts.save_in_background();
        }
        MessageResult(self.contacts.book.entries())
    }
}

/// One unanswered request, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContactRequestInfo {
    /// The requester.
    pub account_id: AccountId,
    /// The one-to-one conversation it carries.
    pub conversation: CommitId,
    /// The requester's display name, as it claims it.
    pub display_name: String,
    /// When it arrived (seconds since the Unix epoch).
    pub received: i64,
}

/// Lists unanswered requests.
#[derive(Message)]
#[rtype(result = "Vec<ContactRequestInfo>")]
pub struct ListContactRequests;

impl Handler<ListContactRequests> for Account {
    type Result = MessageResult<ListContactRequests>;

    fn handle(&mut self, _: ListContactRequests, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.contacts
                .book
                .requests()
                .iter()
                .map(|(account, request)| ContactRequestInfo {
                    account_id: *account,
                    conversation: request.conversation,
                    display_name: request.display_name.clone(),
                    received: request.received,
                })
                .collect(),
        )
    }
}

impl Account {
    /// Keeps the account's contact book at `path` (loaded now, saved on every
    /// change), with its metrics in `registry`.
    pub fn with_contacts(
        mut self,
        path: PathBuf,
        registry: &Registry,
    ) -> Result<Self, ContactError> {
        self.contacts = Contacts::load(path, registry)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_file_is_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTACTS_FILE);
        write_atomic(&path, b"{\"version\":1}").unwrap();
        write_atomic(&path, b"{\"version\":1,\"blocked\":[]}").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("json.tmp").exists());
        let registry = Registry::new();
        let contacts = Contacts::load(path, &registry).unwrap();
        assert_eq!(contacts.book, ContactBook::new());
    }

    #[test]
    fn a_corrupt_book_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTACTS_FILE);
        std::fs::write(&path, b"{\"version\":9}").unwrap();
        let error = Contacts::load(path, &Registry::new()).err().unwrap();
        assert!(error.to_string().contains(CONTACTS_FILE), "{error}");
    }

    #[actix::test]
    async fn snapshots_never_go_back_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTACTS_FILE);
        let mut contacts = Contacts::load(path.clone(), &Registry::new()).unwrap();
        let account = AccountId::from_bytes([7; 32]);
        contacts.book.block(account).unwrap();
        let older = contacts.save();
        contacts.book.unblock(&account).unwrap();
        let newer = contacts.save();
        // The newer write lands first; the older one must then be skipped.
        newer.await.unwrap();
        older.await.unwrap();
        let on_disk = ContactBook::from_json(&std::fs::read(&path).unwrap()).unwrap();
        assert!(!on_disk.is_blocked(&account));
    }
}
