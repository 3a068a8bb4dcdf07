//! Swarm sync: the rules by which one device keeps one conversation in step
//! with the other member devices. A sans-I/O state machine, in the style of
//! [`super::overlay::Overlay`] which it drives: inputs with `now`, outputs
//! drained with [`SwarmSync::poll_output`], timers through
//! [`SwarmSync::poll_timeout`] and [`SwarmSync::handle_timeout`].
//!
//! It composes three things:
//! - the **overlay**: a bounded set of neighbours among the member devices,
//!   and Plumtree broadcast of each durable batch's tip with its inline
//!   pack along a spanning tree (ids to the other neighbours);
//! - **anti-entropy** between neighbours only: every
//!   [`TIPS_EXCHANGE_INTERVAL`], when a link comes up, and whenever the
//!   tips change by a fetch, each device tells its neighbours its tips
//!   (`tips` frame). A neighbour that lacks one fetches from it; Git's
//!   negotiation then brings everything missing in one transfer. After a
//!   partition heals, each device reconciles with its neighbours, not with
//!   every member;
//! - **bridging**: a partition leaves two overlays whose active views hold
//!   only their own side, and nothing in HyParView mixes them again while
//!   no link fails. So every [`TIPS_PROBE_INTERVAL`] (jittered) a device
//!   tells its tips to one member outside its active view, picked at
//!   random from the member list; when a non-neighbour's tips show commits
//!   this device lacks, it also joins the overlay through that member (at
//!   most once per [`BRIDGE_JOIN_INTERVAL`]), whose random walks then link
//!   the two sides;
//! - the **fetch scheduler** ([`FetchScheduler`]): one fetch per peer at a
//!   time, retries from another announcer, nothing dropped while offered.
//!
//! What it does not know is the repository. Whether this device holds a
//! commit, whether a pushed pack applies, what a fetch brought: the caller
//! answers from its store ([`SyncOutput::CheckTips`], [`SyncOutput::Received`],
//! [`SwarmSync::fetch_finished`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_core::{RngCore, SeedableRng};

use super::gossip::ANNOUNCED_HEADS_MAX;
use super::overlay::{FrameRefused, Output, Overlay, OverlayError, OverlayFrame};
use crate::fetch_schedule::FetchScheduler;

/// How often a device tells each neighbour its tips (anti-entropy).
pub const TIPS_EXCHANGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a device tells its tips to one random member outside its
/// active view (bridging overlays a partition left apart), on average.
pub const TIPS_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Fewest time between two joins through non-neighbours whose tips showed
/// commits this device lacked.
pub const BRIDGE_JOIN_INTERVAL: Duration = Duration::from_secs(60);
/// How long a neighbour's tips that this device lacks wait before they are
/// checked again and only then fetched: between busy writers a neighbour's
/// tips are often on their way here as pushes already.
pub const TIPS_RECHECK_DELAY: Duration = Duration::from_millis(1_000);
/// Outputs queued at most; past this an output is dropped and counted
/// (anti-entropy repairs whatever a dropped frame would have carried).
pub const SYNC_OUTPUTS_QUEUED_MAX: usize = 8_192;
/// Pushed commits that could not be applied (their pack's bases missing)
/// and wait for a fetch, at most.
pub const PUSHES_AWAITING_FETCH_MAX: usize = 256;
/// How long a pushed pack whose bases are missing waits for them to arrive
/// by other pushes before its commit is fetched instead. Concurrent writers'
/// batches travel the tree on different paths, so a batch often overtakes
/// one of its bases by a few link latencies.
pub const PUSH_BASES_WAIT: Duration = Duration::from_millis(500);
/// Pushed packs waiting for their bases, at most.
pub const PUSHES_WAITING_FOR_BASES_MAX: usize = 256;

/// A frame of the sync layer between two member devices of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFrame<P, M> {
    /// Overlay membership and broadcast.
    Overlay(OverlayFrame<P, M>),
    /// The sender's tips (at most [`ANNOUNCED_HEADS_MAX`]: the greatest ids).
    Tips {
        /// Tip commit ids.
        tips: Vec<M>,
    },
}

/// What the sync layer asks its caller to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutput<P, M, D> {
    /// Send `frame` (with `payload` after a push) to `to`, dialling if needed.
    Send {
        /// The member device.
        to: P,
        /// The frame.
        frame: SyncFrame<P, M>,
        /// The inline pack following a push.
        payload: Option<D>,
    },
    /// The conversation no longer needs a link to `peer`.
    Disconnect {
        /// The former neighbour.
        peer: P,
    },
    /// `peer` became a neighbour.
    NeighborUp {
        /// The neighbour.
        peer: P,
    },
    /// `peer` stopped being a neighbour.
    NeighborDown {
        /// The former neighbour.
        peer: P,
    },
    /// A pushed commit: apply its pack if it has one and the store holds its
    /// bases, then call [`SwarmSync::push_applied`],
    /// [`SwarmSync::push_already_held`], [`SwarmSync::push_refused`] or
    /// [`SwarmSync::push_needs_fetch`].
    Received {
        /// Who pushed it.
        from: P,
        /// The batch's tip.
        id: M,
        /// Hops from its author.
        hops: u16,
        /// The inline pack, if the push carried one.
        payload: Option<D>,
    },
    /// A neighbour's tips: answer [`SwarmSync::tips_checked`] with those the
    /// store lacks (and this `round`).
    CheckTips {
        /// The neighbour.
        from: P,
        /// Its tips.
        tips: Vec<M>,
        /// 0 when they arrive; 1 when checked again after
        /// [`TIPS_RECHECK_DELAY`].
        round: u8,
    },
    /// Fetch every tip of `peer` (Git negotiation brings what is missing);
    /// `want` is the commit that made it necessary. Answer
    /// [`SwarmSync::fetch_finished`].
    Fetch {
        /// Whom to fetch from.
        peer: P,
        /// The commit wanted.
        want: M,
    },
}

/// Why the sync layer ignored a frame (also counted); the caller logs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncRefused {
    #[error(transparent)]
    Overlay(#[from] FrameRefused),
    #[error("`tips` frame from a device that is not a member of this conversation")]
    TipsFromNonMember,
    #[error("`tips` frame names {found} tips; the limit is {ANNOUNCED_HEADS_MAX}")]
    TooManyTips { found: usize },
}

/// Counters of one conversation's sync, for metrics (they only grow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// `tips` frames sent.
    pub tips_sent: u64,
    /// `tips` frames received from neighbours.
    pub tips_received: u64,
    /// `tips` frames refused (from a device that is not a neighbour, or
    /// naming too many tips).
    pub tips_refused: u64,
    /// Fetches started.
    pub fetches_started: u64,
    /// `tips` frames sent to a random member outside the active view.
    pub probes_sent: u64,
    /// Joins through a non-neighbour whose tips we lacked.
    pub bridge_joins: u64,
    /// Pushed commits whose pack applied.
    pub pushes_applied: u64,
    /// Pushed commits fetched instead (no pack, or its bases missing).
    pub pushes_fetched: u64,
    /// Pushes dropped from the wait for a fetch (table full).
    pub pushes_dropped: u64,
    /// Pushed packs that waited for their bases and then applied.
    pub pushes_waited: u64,
    /// Outputs dropped because the caller did not drain them.
    pub outputs_dropped: u64,
}

/// A pushed pack whose bases this device lacks, waiting for them.
#[derive(Debug, Clone)]
struct WaitingPush<P, M, D> {
    from: P,
    hops: u16,
    payload: D,
    missing: BTreeSet<M>,
    deadline: Instant,
}

/// One conversation's sync on one device. `P` is a member device id, `M` a
/// commit id, `D` an inline pack handle, `R` the RNG the overlay uses.
pub struct SwarmSync<P, M, D, R> {
    overlay: Overlay<P, M, D, R>,
    scheduler: FetchScheduler<P, M>,
    tips: Vec<M>,
    /// Connected member devices (the caller reports links up and down).
    connected: BTreeSet<P>,
    /// Pushed commits waiting for a fetch from their pusher, by id.
    awaiting_fetch: BTreeMap<M, P>,
    /// Tips neighbours announced that we lacked, to check again at a time.
    rechecks: BTreeMap<P, (Vec<M>, Instant)>,
    /// Pushed packs waiting for their missing bases, by id.
    waiting_for_bases: BTreeMap<M, WaitingPush<P, M, D>>,
    tips_exchange_at: Instant,
    probe_at: Instant,
    bridge_join_after: Instant,
    rng: R,
    outputs: VecDeque<SyncOutput<P, M, D>>,
    stats: SyncStats,
}

impl<P, M, D, R> SwarmSync<P, M, D, R>
where
    P: Ord + Clone,
    M: Ord + Clone,
    D: Clone,
    R: RngCore + SeedableRng,
{
    /// Sync for device `me`, holding `tips`.
    pub fn new(me: P, tips: Vec<M>, mut rng: R, now: Instant) -> Self {
        let overlay_rng = R::seed_from_u64(rng.next_u64());
        let probe_at = now + jittered(&mut rng, TIPS_PROBE_INTERVAL);
        Self {
            overlay: Overlay::new(me, overlay_rng, now),
            scheduler: FetchScheduler::new(),
            tips,
            connected: BTreeSet::new(),
            awaiting_fetch: BTreeMap::new(),
            waiting_for_bases: BTreeMap::new(),
            rechecks: BTreeMap::new(),
            tips_exchange_at: now + TIPS_EXCHANGE_INTERVAL,
            probe_at,
            bridge_join_after: now,
            rng,
            outputs: VecDeque::new(),
            stats: SyncStats::default(),
        }
    }

    /// The member devices changed (joins, leaves, bans, revocations).
    pub fn set_members(
        &mut self,
        members: impl IntoIterator<Item = P>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        let result = self.overlay.set_members(members, now);
        self.drain_overlay(now);
        result
    }

    /// Joins the overlay through `contact` (a member device we reach).
    pub fn join(&mut self, contact: P, now: Instant) -> Result<(), OverlayError> {
        let result = self.overlay.join(contact, now);
        self.drain_overlay(now);
        result
    }

    /// A link to `peer` is up (the transport connected it).
    pub fn connection_up(&mut self, peer: P, now: Instant) {
        self.connected.insert(peer.clone());
        if self.overlay.is_neighbor(&peer) {
            self.send_tips(peer);
        }
        self.drain_overlay(now);
    }

    /// The link to `peer` went down.
    pub fn connection_down(&mut self, peer: P, now: Instant) {
        self.connected.remove(&peer);
        self.rechecks.remove(&peer);
        self.overlay.connection_down(peer.clone(), now);
        let starts = self.scheduler.peer_gone(&peer, now);
        self.start_fetches(starts);
        self.drain_overlay(now);
    }

    /// Dialling `peer` failed.
    pub fn connection_failed(&mut self, peer: P, now: Instant) {
        self.overlay.connection_failed(peer.clone(), now);
        let starts = self.scheduler.peer_gone(&peer, now);
        self.start_fetches(starts);
        self.drain_overlay(now);
    }

    /// A frame from `from` (with the pack after a push).
    pub fn handle_frame(
        &mut self,
        from: P,
        frame: SyncFrame<P, M>,
        payload: Option<D>,
        now: Instant,
    ) -> Result<(), SyncRefused> {
        let result = match frame {
            SyncFrame::Overlay(frame) => self
                .overlay
                .handle_frame(from, frame, payload, now)
                .map_err(SyncRefused::from),
            SyncFrame::Tips { tips } => {
                if !self.overlay.is_member(&from) {
                    self.stats.tips_refused += 1;
                    Err(SyncRefused::TipsFromNonMember)
                } else if tips.len() > ANNOUNCED_HEADS_MAX {
                    self.stats.tips_refused += 1;
                    Err(SyncRefused::TooManyTips { found: tips.len() })
                } else {
                    self.stats.tips_received += 1;
                    self.emit(SyncOutput::CheckTips {
                        from,
                        tips,
                        round: 0,
                    });
                    Ok(())
                }
            }
        };
        self.drain_overlay(now);
        result
    }

    /// The answer to [`SyncOutput::CheckTips`] of `round`: of `from`'s tips,
    /// the store lacks `lacking`. The first time they are checked again a
    /// moment later (pushes may be bringing them); the second, fetched.
    pub fn tips_checked(&mut self, from: P, round: u8, lacking: Vec<M>, now: Instant) {
        if lacking.is_empty() {
            return;
        }
        if round == 0 {
            // One pending check per peer: a newer announcement replaces it.
            self.rechecks
                .insert(from, (lacking, now + TIPS_RECHECK_DELAY));
            return;
        }
        if !self.overlay.is_neighbor(&from)
            && self.overlay.is_member(&from)
            && self.bridge_join_after <= now
        {
            // The overlay did not bring these: `from` may be on another
            // side of a healed partition.
            self.bridge_join_after = now + BRIDGE_JOIN_INTERVAL;
            self.stats.bridge_joins += 1;
            let _ = self.overlay.join(from.clone(), now);
            self.drain_overlay(now);
        }
        let starts = self
            .scheduler
            .heads_announced(&from, &lacking, |_| false, now);
        self.start_fetches(starts);
    }

    /// This device made batch tip `tip` durable; its tips are now `tips`,
    /// and `pack` (if it fits a push) holds the batch.
    pub fn authored(&mut self, tip: M, tips: Vec<M>, pack: Option<D>, now: Instant) {
        self.tips = tips;
        self.overlay.broadcast(tip, pack, now);
        self.drain_overlay(now);
    }

    /// The pack of pushed commit `id` applied: the store holds it, and its
    /// tips are now `tips`.
    pub fn push_applied(&mut self, id: M, tips: Vec<M>, now: Instant) {
        self.stats.pushes_applied += 1;
        self.waiting_for_bases.remove(&id);
        self.tips = tips;
        self.overlay.message_accepted(id.clone(), None, now);
        self.bases_arrived(&[id]);
        self.drain_overlay(now);
    }

    /// The pack of pushed commit `id` cannot apply yet: the store lacks
    /// `missing` of its bases. It waits up to [`PUSH_BASES_WAIT`] for them
    /// to arrive (and is then handed out again as [`SyncOutput::Received`]),
    /// else its commit is fetched from `from`.
    pub fn push_waits_for_bases(
        &mut self,
        from: P,
        id: M,
        hops: u16,
        payload: D,
        missing: Vec<M>,
        now: Instant,
    ) {
        if let Some(waiting) = self.waiting_for_bases.get_mut(&id) {
            // Handed out again and still short: keep the first deadline.
            waiting.missing = missing.into_iter().collect();
            return;
        }
        if self.waiting_for_bases.len() >= PUSHES_WAITING_FOR_BASES_MAX {
            self.push_needs_fetch(from, id, now);
            return;
        }
        self.waiting_for_bases.insert(
            id,
            WaitingPush {
                from,
                hops,
                payload,
                missing: missing.into_iter().collect(),
                deadline: now + PUSH_BASES_WAIT,
            },
        );
    }

    /// `held` are now in the store: packs that waited only for them are
    /// handed out again.
    fn bases_arrived(&mut self, held: &[M]) {
        let mut ready = Vec::new();
        for (id, waiting) in self.waiting_for_bases.iter_mut() {
            for h in held {
                waiting.missing.remove(h);
            }
            if waiting.missing.is_empty() {
                ready.push(id.clone());
            }
        }
        for id in ready {
            if let Some(waiting) = self.waiting_for_bases.get(&id) {
                self.stats.pushes_waited += 1;
                let (from, hops, payload) =
                    (waiting.from.clone(), waiting.hops, waiting.payload.clone());
                // Kept until the caller answers, so a pack still short keeps
                // its first deadline.
                waiting_received(&mut self.outputs, &mut self.stats, from, id, hops, payload);
            }
        }
    }

    /// The store already held pushed commit `id`.
    pub fn push_already_held(&mut self, id: M, now: Instant) {
        self.waiting_for_bases.remove(&id);
        self.overlay.message_already_held(id, now);
        self.drain_overlay(now);
    }

    /// Pushed commit `id` is invalid (validation refused it).
    pub fn push_refused(&mut self, id: M, now: Instant) {
        self.waiting_for_bases.remove(&id);
        self.overlay.message_refused(id, now);
        self.drain_overlay(now);
    }

    /// Pushed commit `id` came without a pack, or its pack's bases are
    /// missing here: fetch it from its pusher.
    pub fn push_needs_fetch(&mut self, from: P, id: M, now: Instant) {
        self.waiting_for_bases.remove(&id);
        self.stats.pushes_fetched += 1;
        if !self.awaiting_fetch.contains_key(&id)
            && self.awaiting_fetch.len() >= PUSHES_AWAITING_FETCH_MAX
        {
            self.stats.pushes_dropped += 1;
            self.overlay.message_refused(id, now);
            self.drain_overlay(now);
            return;
        }
        self.awaiting_fetch.insert(id.clone(), from.clone());
        let starts = self.scheduler.heads_announced(&from, &[id], |_| false, now);
        self.start_fetches(starts);
    }

    /// Commits wanted from fetches: what the caller checks after a fetch.
    pub fn wanted(&self) -> Vec<M> {
        let mut wanted: BTreeSet<M> = self.scheduler.wanted().cloned().collect();
        wanted.extend(self.awaiting_fetch.keys().cloned());
        wanted.into_iter().collect()
    }

    /// The fetch from `peer` ended. `held` are the wanted commits the store
    /// holds now, `tips` its tips.
    pub fn fetch_finished(
        &mut self,
        peer: P,
        succeeded: bool,
        held: &BTreeSet<M>,
        tips: Vec<M>,
        now: Instant,
    ) {
        let starts = self
            .scheduler
            .fetch_finished(&peer, succeeded, |m| held.contains(m), now);
        for id in held {
            if self.awaiting_fetch.remove(id).is_some() {
                self.overlay.message_accepted(id.clone(), None, now);
            }
        }
        if succeeded {
            // The fetch may have brought the bases of waiting packs: hand
            // them all out again (each keeps its first deadline).
            let all: Vec<M> = self
                .waiting_for_bases
                .values()
                .flat_map(|w| w.missing.iter().cloned())
                .collect();
            self.bases_arrived(&all);
        }
        if !succeeded {
            // A push whose pusher failed us: another announcer may graft it.
            let failed: Vec<M> = self
                .awaiting_fetch
                .iter()
                .filter(|(_, from)| **from == peer)
                .map(|(id, _)| id.clone())
                .collect();
            for id in failed {
                self.awaiting_fetch.remove(&id);
                self.overlay.message_refused(id, now);
            }
        }
        if tips != self.tips {
            self.tips = tips;
            // What we just took, our neighbours may lack.
            let neighbors: Vec<P> = self.overlay.active_view().to_vec();
            for peer in neighbors {
                self.send_tips(peer);
            }
        }
        self.start_fetches(starts);
        self.drain_overlay(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.overlay.handle_timeout(now);
        if self.tips_exchange_at <= now {
            self.tips_exchange_at = now + TIPS_EXCHANGE_INTERVAL;
            let neighbors: Vec<P> = self.overlay.active_view().to_vec();
            for peer in neighbors {
                self.send_tips(peer);
            }
            let starts = self.scheduler.tick(now);
            self.start_fetches(starts);
        }
        let due: Vec<P> = self
            .rechecks
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            if let Some((tips, _)) = self.rechecks.remove(&peer) {
                self.emit(SyncOutput::CheckTips {
                    from: peer,
                    tips,
                    round: 1,
                });
            }
        }
        let expired: Vec<(M, P)> = self
            .waiting_for_bases
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, w)| (id.clone(), w.from.clone()))
            .collect();
        for (id, from) in expired {
            self.push_needs_fetch(from, id, now);
        }
        if self.probe_at <= now {
            self.probe_at = now + jittered(&mut self.rng, TIPS_PROBE_INTERVAL);
            let outside: Vec<P> = self
                .overlay
                .members()
                .iter()
                .filter(|m| !self.overlay.is_neighbor(m))
                .cloned()
                .collect();
            if !outside.is_empty() {
                let pick = (self.rng.next_u64() % outside.len() as u64) as usize;
                self.stats.probes_sent += 1;
                self.send_tips(outside[pick].clone());
            }
        }
        self.drain_overlay(now);
    }

    /// When [`SwarmSync::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        let mut ours = self.tips_exchange_at.min(self.probe_at);
        if let Some(first) = self.waiting_for_bases.values().map(|w| w.deadline).min() {
            ours = ours.min(first);
        }
        if let Some(first) = self.rechecks.values().map(|(_, at)| *at).min() {
            ours = ours.min(first);
        }
        match self.overlay.poll_timeout() {
            Some(at) => at.min(ours),
            None => ours,
        }
    }

    /// The next output, in order; drain after every call.
    pub fn poll_output(&mut self) -> Option<SyncOutput<P, M, D>> {
        self.outputs.pop_front()
    }

    /// The overlay (views, stats).
    pub fn overlay(&self) -> &Overlay<P, M, D, R> {
        &self.overlay
    }

    /// The counters.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Our tips as last told.
    pub fn tips(&self) -> &[M] {
        &self.tips
    }

    fn send_tips(&mut self, to: P) {
        self.stats.tips_sent += 1;
        let skip = self.tips.len().saturating_sub(ANNOUNCED_HEADS_MAX);
        let tips = self.tips[skip..].to_vec();
        self.emit(SyncOutput::Send {
            to,
            frame: SyncFrame::Tips { tips },
            payload: None,
        });
    }

    fn start_fetches(&mut self, starts: Vec<crate::fetch_schedule::StartFetch<P, M>>) {
        for start in starts {
            self.stats.fetches_started += 1;
            self.emit(SyncOutput::Fetch {
                peer: start.peer,
                want: start.head,
            });
        }
    }

    /// Moves the overlay's outputs into ours, reacting to neighbour changes.
    fn drain_overlay(&mut self, _now: Instant) {
        while let Some(output) = self.overlay.poll_output() {
            let mapped = match output {
                Output::Send { to, frame, payload } => SyncOutput::Send {
                    to,
                    frame: SyncFrame::Overlay(frame),
                    payload,
                },
                Output::Disconnect { peer } => SyncOutput::Disconnect { peer },
                Output::NeighborUp { peer } => {
                    self.emit(SyncOutput::NeighborUp { peer: peer.clone() });
                    // A new neighbour learns our tips at once: a device that
                    // rejoins after a partition reconciles right away.
                    self.send_tips(peer);
                    continue;
                }
                Output::NeighborDown { peer } => SyncOutput::NeighborDown { peer },
                Output::Received {
                    from,
                    id,
                    hops,
                    payload,
                } => SyncOutput::Received {
                    from,
                    id,
                    hops,
                    payload,
                },
            };
            self.emit(mapped);
        }
    }

    fn emit(&mut self, output: SyncOutput<P, M, D>) {
        if self.outputs.len() >= SYNC_OUTPUTS_QUEUED_MAX {
            self.stats.outputs_dropped += 1;
            return;
        }
        self.outputs.push_back(output);
    }
}

/// Queues a waiting pack's [`SyncOutput::Received`] again (bounded like
/// every output).
fn waiting_received<P, M, D>(
    outputs: &mut VecDeque<SyncOutput<P, M, D>>,
    stats: &mut SyncStats,
    from: P,
    id: M,
    hops: u16,
    payload: D,
) {
    if outputs.len() >= SYNC_OUTPUTS_QUEUED_MAX {
        stats.outputs_dropped += 1;
        return;
    }
    outputs.push_back(SyncOutput::Received {
        from,
        id,
        hops,
        payload: Some(payload),
    });
}

/// `interval` scaled by a random factor in [0.5, 1.5), so devices do not
/// probe in step.
fn jittered(rng: &mut impl RngCore, interval: Duration) -> Duration {
    let factor = 0.5 + (rng.next_u32() as f64 / (u64::from(u32::MAX) + 1) as f64);
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests;
