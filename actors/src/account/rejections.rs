//! Nothing a member writes may fail to propagate without it learning so.
//!
//! When validation refuses commits a peer sent us, we tell that peer, and
//! every connected member device that signed one of them, in a `rejected`
//! frame on `swarm/<id>` (PROTOCOL.md §10.2): the commits, their reason
//! names and sentences. A device told so checks which of them are its own
//! (signed by it and in its accepted history: a peer's word is a hint, not a
//! fact) and records each: the counter
//! `starling_swarm_commits_rejected_by_peers_total{reason}`, a `rejected`
//! event on `/v1/events`, and a warning in its log.
//!
//! A peer refusing a head refuses it again at every announcement, so both
//! ends are rate-limited per conversation and peer ([`NoticeLimiter`]): a
//! peer is told at most once per [`REJECTION_NOTICE_INTERVAL`], and notices
//! from a peer are taken at most once per
//! [`REJECTION_NOTICES_TAKEN_INTERVAL`] (shorter, so an honest peer's are
//! never dropped); each side's memory of that is bounded by
//! [`REJECTION_NOTICE_KEYS_MAX`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{IntCounterVec, Opts, Registry};
use starling_protocol::swarm::gossip::{rejected_frame, RejectedCommit};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::validation::{Rejection, REJECTION_REASONS};
use starling_protocol::{DeviceId, VerifiedDevice};

use super::events::Event;
use super::swarms::{may_announce, Swarms};
use super::Account;
use crate::conversation::history::{OwnAccepted, SignersOf};

/// How often at most one peer is told about one conversation's refused
/// commits (a refused head is fetched and refused again at every
/// anti-entropy round, every 5 s).
pub const REJECTION_NOTICE_INTERVAL: Duration = Duration::from_secs(30);
/// How often at most a notice from one peer about one conversation is
/// taken; shorter than [`REJECTION_NOTICE_INTERVAL`], so only a peer that
/// ignores that limit loses notices.
pub const REJECTION_NOTICES_TAKEN_INTERVAL: Duration = Duration::from_secs(10);
/// (conversation, peer) pairs each side remembers for its limit.
pub const REJECTION_NOTICE_KEYS_MAX: usize = 1_024;

/// At most one event per key and interval, remembering a bounded number of
/// keys.
#[derive(Debug)]
pub struct NoticeLimiter {
    interval: Duration,
    last: HashMap<(CommitId, DeviceId), Instant>,
}

impl NoticeLimiter {
    /// Allows one per `interval` and key.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether `key` may go at `now` (and if so, remembers that it did).
    /// With [`REJECTION_NOTICE_KEYS_MAX`] keys held within their interval,
    /// new keys are refused rather than remembered.
    pub fn allow(&mut self, key: (CommitId, DeviceId), now: Instant) -> bool {
        let interval = self.interval;
        let recent = |at: &Instant| now.saturating_duration_since(*at) < interval;
        if self.last.get(&key).is_some_and(recent) {
            return false;
        }
        if self.last.len() >= REJECTION_NOTICE_KEYS_MAX && !self.last.contains_key(&key) {
            self.last.retain(|_, at| recent(at));
            if self.last.len() >= REJECTION_NOTICE_KEYS_MAX {
                return false;
            }
        }
        self.last.insert(key, now);
        true
    }
}

/// The metrics of refused commits told and learnt.
#[derive(Clone)]
pub struct RejectionMetrics {
    ours: IntCounterVec,
    notices: IntCounterVec,
}

impl RejectionMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ours = IntCounterVec::new(
            Opts::new(
                "starling_swarm_commits_rejected_by_peers_total",
                "Commits this device wrote that a peer reported refusing, by the peer's reason (as in starling_swarm_commits_rejected_total; other: a name this version does not know). Counted per report, so a lasting refusal keeps it rising.",
            ),
            &["reason"],
        )?;
        let notices = IntCounterVec::new(
            Opts::new(
                "starling_swarm_rejection_notices_total",
                "rejected frames: sent to peers, suppressed (the peer was told within the interval), received, dropped (from a peer not allowed to announce, or too soon after its last).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(ours.clone()))?;
        registry.register(Box::new(notices.clone()))?;
        Ok(Self { ours, notices })
    }

    fn notice(&self, outcome: &str) {
        self.notices.with_label_values(&[outcome]).inc();
    }
}

/// What the account remembers to keep notices within their limits.
pub struct RejectionNotices {
    sent: NoticeLimiter,
    taken: NoticeLimiter,
    metrics: RejectionMetrics,
}

impl RejectionNotices {
    /// Nothing told or taken yet.
    pub fn new(metrics: RejectionMetrics) -> Self {
        Self {
            sent: NoticeLimiter::new(REJECTION_NOTICE_INTERVAL),
            taken: NoticeLimiter::new(REJECTION_NOTICES_TAKEN_INTERVAL),
            metrics,
        }
    }
}

/// Maps a peer's reason name onto the fixed label set (metric labels never
/// carry peer-supplied strings).
fn known_reason(reason: &str) -> &'static str {
    REJECTION_REASONS
        .iter()
        .find(|known| **known == reason)
        .copied()
        .unwrap_or("other")
}

/// Validation of what `peer` sent us for `conversation` refused
/// `rejections`: tell `peer`, and every connected member device that signed
/// a refused commit, within the limits.
pub(super) fn tell_rejections(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    peer: DeviceId,
    rejections: &[Rejection],
) {
    let Some(frame) = rejected_frame(rejections) else {
        return;
    };
    let Some(addr) = account
        .swarms
        .as_ref()
        .and_then(|sw| sw.registry_addr(&conversation))
    else {
        return;
    };
    let ids: Vec<CommitId> = rejections.iter().filter_map(Rejection::commit).collect();
    ctx.spawn(addr.send(SignersOf(ids)).into_actor(account).map(
        move |signers, act, _| {
            let Some(sw) = act.swarms.as_mut() else {
                return;
            };
            let mut targets = BTreeSet::from([peer]);
            match signers {
                Ok(Ok(signers)) => targets.extend(signers),
                Ok(Err(e)) => tracing::debug!(%conversation, error = %e, "signers unknown"),
                Err(e) => tracing::debug!(%conversation, error = %e, "conversation mailbox"),
            }
            let now = Instant::now();
            for target in targets {
                if !sw.may_tell(&conversation, &target) {
                    continue;
                }
                if sw.notices.sent.allow((conversation, target), now) {
                    sw.notices.metrics.notice("sent");
                    tracing::info!(peer = %target, %conversation, "telling a peer which of its commits we refuse");
                    sw.tell(target, conversation, frame.clone());
                } else {
                    sw.notices.metrics.notice("suppressed");
                }
            }
        },
    ));
}

/// `peer` says it refused `commits` of `conversation`: record those that
/// are ours.
pub(super) fn rejections_reported(
    account: &mut Account,
    ctx: &mut Context<Account>,
    conversation: CommitId,
    peer: VerifiedDevice,
    commits: Vec<RejectedCommit>,
) {
    let Some(sw) = account.swarms.as_mut() else {
        return;
    };
    let allowed = sw
        .view(&conversation)
        .is_some_and(|view| may_announce(view, &peer));
    if !allowed
        || !sw
            .notices
            .taken
            .allow((conversation, peer.device_id), Instant::now())
    {
        sw.notices.metrics.notice("dropped");
        return;
    }
    sw.notices.metrics.notice("received");
    let Some(addr) = sw.registry_addr(&conversation) else {
        return;
    };
    let ids = commits.iter().map(|c| c.id).collect();
    ctx.spawn(
        addr.send(OwnAccepted(ids))
            .into_actor(account)
            .map(move |own, act, _| {
                let Some(sw) = act.swarms.as_ref() else {
                    return;
                };
                let own = match own {
                    Ok(Ok(own)) => own,
                    Ok(Err(e)) => {
                        tracing::warn!(%conversation, error = %e, "refused commits not checked");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%conversation, error = %e, "conversation mailbox");
                        return;
                    }
                };
                for commit in commits.into_iter().filter(|c| own.contains(&c.id)) {
                    let reason = known_reason(&commit.reason);
                    sw.notices.metrics.ours.with_label_values(&[reason]).inc();
                    tracing::warn!(
                        peer = %peer.device_id,
                        %conversation,
                        commit = %commit.id,
                        reason,
                        detail = %commit.detail,
                        "a peer refuses a commit this device wrote; it will not reach that peer"
                    );
                    sw.events.publish(Event::Rejected {
                        conversation,
                        id: commit.id,
                        peer: peer.device_id,
                        reason,
                        detail: commit.detail,
                    });
                }
            }),
    );
}

impl Swarms {
    /// Whether `device` may be told about `conversation`'s refused commits:
    /// a connected device (not this one) that may announce in it.
    fn may_tell(&self, conversation: &CommitId, device: &DeviceId) -> bool {
        *device != self.local_device()
            && self.connected_device(device).is_some_and(|peer| {
                self.view(conversation)
                    .is_some_and(|view| may_announce(view, peer))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> (CommitId, DeviceId) {
        (
            CommitId::from_bytes([n; 20]),
            format!("{n:02x}").repeat(32).parse().unwrap(),
        )
    }

    #[test]
    fn one_notice_per_key_and_interval_in_bounded_memory() {
        let interval = Duration::from_secs(30);
        let mut limiter = NoticeLimiter::new(interval);
        let start = Instant::now();
        assert!(limiter.allow(key(1), start));
        assert!(!limiter.allow(key(1), start + Duration::from_secs(29)));
        assert!(limiter.allow(key(2), start), "another key has its own");
        assert!(limiter.allow(key(1), start + interval));
        // Full of keys within their interval: new keys wait.
        let mut full = NoticeLimiter::new(interval);
        for n in 0..REJECTION_NOTICE_KEYS_MAX as u32 {
            let mut conversation = [0u8; 20];
            conversation[..4].copy_from_slice(&n.to_be_bytes());
            assert!(full.allow((CommitId::from_bytes(conversation), key(1).1), start));
        }
        assert!(!full.allow(key(251), start + Duration::from_secs(1)));
        assert_eq!(full.last.len(), REJECTION_NOTICE_KEYS_MAX);
        // Once they are old, they make room.
        assert!(full.allow(key(251), start + interval));
        assert_eq!(full.last.len(), 1);
    }

    #[test]
    fn peers_reasons_map_onto_the_fixed_labels() {
        assert_eq!(known_reason("time"), "time");
        assert_eq!(
            known_reason("descendant_of_rejected"),
            "descendant_of_rejected"
        );
        assert_eq!(known_reason("made up by a peer"), "other");
    }
}
