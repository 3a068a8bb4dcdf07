//! The account's event stream: what the local API's `GET /v1/events`
//! WebSocket carries.
//!
//! The [`EventBus`] is owned by the account's swarm state; the account
//! publishes to it when a head moves (a commit authored here, or commits
//! accepted from a fetch: each new message, member change and profile change
//! becomes an event), when a fetch ends (a `sync` event), when a
//! connection to a peer device goes up or down, when its clock estimate
//! crosses the warning threshold (a `clock` event), and when a peer reports
//! refusing a commit this device wrote (a `rejected` event). Subscribers hold an
//! [`EventSubscription`].
//!
//! Bounded: the bus is a `tokio::sync::broadcast` ring of
//! [`EVENT_QUEUE_CAPACITY`] events shared by all subscribers, so memory does
//! not grow with a slow subscriber. A subscriber that falls further behind
//! than the ring loses the oldest events and is told so by a
//! [`Event::Lagged`] carrying the count, then continues with the oldest event
//! still held. At most [`EVENT_SUBSCRIBERS_MAX`] subscribe at once. Events
//! are published only when someone listens: without subscribers a head move
//! costs no history read.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, Registry};
use starling_protocol::swarm::body::{Body, BodyKind, MemberAction, VoteAction};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::timeline::TimelineCommit;
use starling_protocol::{AccountId, DeviceId};
use tokio::sync::broadcast;

/// Events the bus holds for its slowest subscriber; beyond it the oldest are
/// dropped for that subscriber and counted.
pub const EVENT_QUEUE_CAPACITY: usize = 256;
/// Subscribers at once (WebSocket clients of `/v1/events`).
pub const EVENT_SUBSCRIBERS_MAX: usize = 64;

/// What a message commit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A new text message.
    Text,
    /// A new text message answering `reply_to`.
    Reply,
    /// Its author replaces the text of `target`.
    Edit,
    /// Its author deletes `target` (an edit with empty text).
    Delete,
    /// A reaction (`body`) to `target`.
    Reaction,
}

/// Whether a connection went up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Authenticated and usable.
    Up,
    /// Closed.
    Down,
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Fetched, validated and merged.
    Fetched,
    /// The fetch failed; another announcer will be tried.
    Failed,
}

/// Whether this device's clock is off (see `super::clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    /// More than the warning threshold from its peers'.
    Skewed,
    /// Within it again (or no peer left to compare with).
    Ok,
}

/// Whether a conversation can write (see `super::conversation_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Its writes (or its opening) fail; it is probed until they work.
    Unhealthy,
    /// It writes again.
    Healthy,
}

/// One event of the stream, serialized with a snake_case `type`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message commit entered history (authored here or fetched).
    Message {
        /// The conversation.
        conversation: CommitId,
        /// The commit.
        id: CommitId,
        /// The author's account, when known.
        author: Option<AccountId>,
        /// Display time (committer time, no earlier than its parents'),
        /// seconds since the Unix epoch.
        timestamp: i64,
        /// What it does.
        kind: MessageKind,
        /// The text (new text for an edit, empty for a delete, the reaction
        /// for a reaction).
        body: String,
        /// The message answered (`reply`).
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<CommitId>,
        /// The message edited, deleted or reacted to.
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<CommitId>,
    },
    /// A membership commit entered history.
    Member {
        /// The conversation.
        conversation: CommitId,
        /// The commit.
        id: CommitId,
        /// The account it concerns.
        account_id: AccountId,
        /// `invite`, `join`, `leave`, `remove`, `ban`, `unban`, `vote_ban`, `vote_unban`.
        action: &'static str,
        /// Who made it.
        by: Option<AccountId>,
        /// Display time (committer time, no earlier than its parents'),
        /// seconds since the Unix epoch.
        timestamp: i64,
    },
    /// The conversation profile changed.
    Profile {
        /// The conversation.
        conversation: CommitId,
        /// The commit.
        id: CommitId,
        /// Who changed it.
        by: Option<AccountId>,
    },
    /// A fetch from a peer device ended.
    Sync {
        /// The conversation.
        conversation: CommitId,
        /// Our tips afterwards.
        tips: Vec<CommitId>,
        /// The device fetched from.
        peer: DeviceId,
        /// How it ended.
        state: SyncState,
        /// Commits accepted.
        accepted: usize,
    },
    /// A connection to a peer device went up or down.
    Connection {
        /// The peer device.
        device_id: DeviceId,
        /// Its account.
        account_id: AccountId,
        /// Up or down.
        state: ConnectionState,
    },
    /// A peer refuses a commit this device wrote: it will not reach that
    /// peer (nor, through it, others).
    Rejected {
        /// The conversation.
        conversation: CommitId,
        /// The refused commit.
        id: CommitId,
        /// The device that refuses it.
        peer: DeviceId,
        /// Why, as a rejection reason name (`other` for one this version
        /// does not know).
        reason: &'static str,
        /// The peer's sentence (display only).
        detail: String,
    },
    /// This device's clock crossed the warning threshold, either way.
    Clock {
        /// Our clock minus the median of our peers', in whole seconds.
        offset_seconds: i64,
        /// Peers the estimate rests on.
        peers: usize,
        /// Past the threshold, or back within it.
        state: ClockState,
    },
    /// A conversation stopped or started being able to write.
    Health {
        /// The conversation.
        conversation: CommitId,
        /// Unhealthy or healthy again.
        state: HealthState,
        /// Why it cannot write (`locked`, `io`, `damaged`, `format`).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// The error, for people (empty once healthy).
        detail: String,
    },
    /// This subscriber fell behind and `dropped` events were lost to it.
    Lagged {
        /// How many.
        dropped: u64,
    },
    /// A head move brought more commits than are described; `omitted` were not.
    Omitted {
        /// The conversation.
        conversation: CommitId,
        /// How many.
        omitted: usize,
    },
}

fn member_action(action: MemberAction) -> &'static str {
    match action {
        MemberAction::Invite => "invite",
        MemberAction::Join => "join",
        MemberAction::Leave => "leave",
        MemberAction::Remove => "remove",
        MemberAction::Ban => "ban",
        MemberAction::Unban => "unban",
    }
}

impl Event {
    /// The event a new commit of `conversation` makes, if it makes one
    /// (merges, device and CRL commits do not).
    pub fn of_commit(conversation: CommitId, commit: &TimelineCommit) -> Option<Event> {
        let Body::Known { kind, .. } = &commit.body else {
            return None;
        };
        let id = commit.key.id;
        let timestamp = commit.key.time_secs;
        let author = commit.author;
        let message = |kind, body: &str, reply_to, target| Event::Message {
            conversation,
            id,
            author,
            timestamp,
            kind,
            body: body.to_owned(),
            reply_to,
            target,
        };
        Some(match kind {
            BodyKind::Text {
                text,
                reply_to,
                edit_of: Some(target),
            } => {
                let kind = if text.is_empty() {
                    MessageKind::Delete
                } else {
                    MessageKind::Edit
                };
                message(kind, text, *reply_to, Some(*target))
            }
            BodyKind::Text {
                text,
                reply_to: Some(answered),
                edit_of: None,
            } => message(MessageKind::Reply, text, Some(*answered), None),
            BodyKind::Text { text, .. } => message(MessageKind::Text, text, None, None),
            BodyKind::Reaction { target, reaction } => {
                message(MessageKind::Reaction, reaction, None, Some(*target))
            }
            BodyKind::Member { action, account } => Event::Member {
                conversation,
                id,
                account_id: *account,
                action: member_action(*action),
                by: author,
                timestamp,
            },
            BodyKind::Vote { action, account } => Event::Member {
                conversation,
                id,
                account_id: *account,
                action: match action {
                    VoteAction::Ban => "vote_ban",
                    VoteAction::Unban => "vote_unban",
                },
                by: author,
                timestamp,
            },
            BodyKind::Profile => Event::Profile {
                conversation,
                id,
                by: author,
            },
            _ => return None,
        })
    }
}

/// The event stream's metrics.
#[derive(Clone)]
pub struct EventMetrics {
    subscribers: IntGauge,
    published: IntCounter,
    dropped: IntCounter,
}

impl EventMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let subscribers = IntGauge::new(
            "starling_events_subscribers",
            "Subscribers of the account's event stream (/v1/events WebSocket clients).",
        )?;
        let published = IntCounter::new(
            "starling_events_published_total",
            "Events published to the account's event stream while it had subscribers.",
        )?;
        let dropped = IntCounter::new(
            "starling_events_dropped_total",
            "Events lost to event-stream subscribers that fell behind (summed over subscribers).",
        )?;
        registry.register(Box::new(subscribers.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Self {
            subscribers,
            published,
            dropped,
        })
    }

    /// Metrics registered nowhere (for tests and nodes without a registry).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry has no clashing names")
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("the event stream has its maximum of {EVENT_SUBSCRIBERS_MAX} subscribers")]
    TooManySubscribers,
}

/// The account's event bus (see the module doc).
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    metrics: EventMetrics,
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new(metrics: EventMetrics) -> Self {
        let (sender, _) = broadcast::channel(EVENT_QUEUE_CAPACITY);
        Self { sender, metrics }
    }

    /// Whether anyone listens (publishers skip the work of describing
    /// commits otherwise).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Publishes `event` to every subscriber; never blocks, never grows.
    pub fn publish(&self, event: Event) {
        if self.sender.send(Arc::new(event)).is_ok() {
            self.metrics.published.inc();
        }
    }

    /// A new subscription, receiving events published from now on.
    pub fn subscribe(&self) -> Result<EventSubscription, EventsError> {
        if self.sender.receiver_count() >= EVENT_SUBSCRIBERS_MAX {
            return Err(EventsError::TooManySubscribers);
        }
        self.metrics.subscribers.inc();
        Ok(EventSubscription {
            receiver: self.sender.subscribe(),
            metrics: self.metrics.clone(),
        })
    }
}

/// One subscriber's view of the bus.
pub struct EventSubscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    metrics: EventMetrics,
}

impl EventSubscription {
    /// The next event; [`Event::Lagged`] when events were lost to this
    /// subscriber; `None` once the bus is gone (the account stopped).
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(dropped)) => {
                self.metrics.dropped.inc_by(dropped);
                Some(Arc::new(Event::Lagged { dropped }))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        self.metrics.subscribers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(n: u8) -> Event {
        Event::Connection {
            device_id: format!("{n:02x}").repeat(32).parse().unwrap(),
            account_id: "ab".repeat(32).parse().unwrap(),
            state: ConnectionState::Up,
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_lost_and_memory_stays_bounded() {
        let metrics = EventMetrics::unregistered();
        let bus = EventBus::new(metrics.clone());
        let mut slow = bus.subscribe().unwrap();
        let extra = 10;
        for n in 0..EVENT_QUEUE_CAPACITY + extra {
            bus.publish(connection((n % 250) as u8));
        }
        // The ring never holds more than its capacity.
        assert_eq!(bus.sender.len(), EVENT_QUEUE_CAPACITY);
        assert_eq!(
            *slow.next().await.unwrap(),
            Event::Lagged {
                dropped: extra as u64
            }
        );
        assert_eq!(metrics.dropped.get(), extra as u64);
        // Then the oldest event still held, and every later one, in order.
        let mut received = 0;
        while let Ok(Some(event)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), slow.next()).await
        {
            assert!(matches!(*event, Event::Connection { .. }));
            received += 1;
        }
        assert_eq!(received, EVENT_QUEUE_CAPACITY);
    }

    #[tokio::test]
    async fn subscribers_are_bounded_counted_and_see_the_end_of_the_bus() {
        let metrics = EventMetrics::unregistered();
        let bus = EventBus::new(metrics.clone());
        let mut subs: Vec<_> = (0..EVENT_SUBSCRIBERS_MAX)
            .map(|_| bus.subscribe().unwrap())
            .collect();
        assert!(matches!(
            bus.subscribe(),
            Err(EventsError::TooManySubscribers)
        ));
        assert_eq!(metrics.subscribers.get(), EVENT_SUBSCRIBERS_MAX as i64);
        subs.truncate(1);
        assert_eq!(metrics.subscribers.get(), 1);
        bus.publish(connection(1));
        drop(bus);
        assert_eq!(*subs[0].next().await.unwrap(), connection(1));
        assert!(subs[0].next().await.is_none());
    }

    #[test]
    fn events_serialize_with_a_snake_case_type() {
        let value = serde_json::to_value(Event::Lagged { dropped: 3 }).unwrap();
        assert_eq!(value, serde_json::json!({ "type": "lagged", "dropped": 3 }));
        let value = serde_json::to_value(connection(2)).unwrap();
        assert_eq!(value["type"], "connection");
        assert_eq!(value["state"], "up");
    }
}
