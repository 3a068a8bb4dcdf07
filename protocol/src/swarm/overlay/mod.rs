//! The bounded gossip overlay of one conversation on one device: which
//! member devices it keeps links to, and how a new message travels over
//! those links. The sync layer composes it; this module only decides.
//!
//! A sans-I/O state machine in the style of quinn-proto: the caller feeds it
//! inputs (frames received, links down, failed dials, member list changes,
//! messages written or obtained, with `now`), drains [`Output`]s with
//! [`Overlay::poll_output`] (frames to send and to whom, links to close,
//! neighbour changes, received messages to check), and calls
//! [`Overlay::handle_timeout`] at [`Overlay::poll_timeout`]. Randomness
//! comes from an RNG the caller hands in; nothing here reads a clock.
//!
//! # Design
//!
//! **Membership** follows HyParView (Leitão, Pereira, Rodrigues, DSN 2007):
//! a small active view of neighbours ([`ACTIVE_VIEW_MAX`]) with symmetric
//! links, and a larger passive view ([`PASSIVE_VIEW_MAX`]) to repair it. A
//! device joins through any member (its contact), whose neighbours carry the
//! joiner on random walks (`forward_join`); the last holder of each walk
//! asks the joiner to be its neighbour, and holders at
//! [`PASSIVE_WALK_HOPS`] remember it as passive. Periodic shuffles (random
//! walks carrying a sample of views) keep passive views fresh. When a link
//! fails, the device asks a random passive peer to be its neighbour, with
//! high priority (the receiver must accept) only when it has no neighbour at
//! all, else with low priority (accepted into a free slot only).
//!
//! Unlike classic HyParView, a swarm's membership is known: every member
//! device is listed in the conversation's tree. So:
//! - only members are ever in either view, and frames from other devices
//!   are refused (counted, and their link closed); a walk naming a
//!   non-member is refused, and non-members in a shuffle are skipped;
//! - a device removed from the member list ([`Overlay::set_members`]) leaves
//!   both views at once, and its link is closed;
//! - a passive view that runs dry is refilled from the member list, skipping
//!   members whose links failed recently ([`FAILED_PEER_QUARANTINE`]), so a
//!   device that lost every neighbour always finds candidates;
//! - a swarm of at most [`ACTIVE_VIEW_MAX`] other devices is a full mesh:
//!   every device asks every other to be its neighbour, and there is room
//!   for all.
//!
//! An active link is symmetric because every change of one side's view is
//! told to the other: a link is added only by a request and its accepting
//! reply (a side that can no longer take an accepted link answers with
//! `disconnect`), and removed only with a `disconnect` frame or by closing
//! the link, which the transport reports to the other side as
//! [`Overlay::connection_down`].
//!
//! **Broadcast** follows Plumtree ("Epidemic Broadcast Trees", SRDS 2007):
//! each neighbour is eager or lazy. A new message goes in full (`push`,
//! with its payload, an inline pack in production) to eager neighbours and
//! as an id (`ihave`, batched every [`LAZY_PUSH_INTERVAL`]) to lazy ones. A
//! duplicate push makes the receiver answer `prune`, and the sender pushes
//! to it lazily from then on; so the eager links settle into a spanning
//! tree. An announced id not received within [`GRAFT_TIMEOUT`] is asked
//! for (`graft`) from its announcers in turn, which makes those links eager
//! again and repairs the tree. New neighbours start eager. Every push carries
//! its hop count, so the caller can measure delivery depth.
//!
//! Four departures from the paper. The first shapes the tree:
//! - Plumtree's optimization re-parents toward whichever neighbour
//!   announced *this* message in fewer hops. One tree serves every author,
//!   so that re-roots it toward each author in turn: measured over 40
//!   broadcasts from random devices of 1,000, the tree wanders and the
//!   last-delivery hop reaches 21–28. Here each device keeps the average
//!   depth of its deliveries (low means near most authors), advertises it
//!   to its neighbours in `depth` frames when it moves by a hop, and a lazy
//!   neighbour that announced a message before its eager copy came replaces
//!   the upstream sender only if it sits a hop nearer the centre
//!   ([`TREE_OPTIMIZATION_DEPTH_MIN_SIXTEENTHS`](crate::swarm::limits::TREE_OPTIMIZATION_DEPTH_MIN_SIXTEENTHS)), and only when that sender is itself nearer
//!   than this device (never a child, and no cycle). The tree settles
//!   around the centre: last-delivery hop 12–14 at the maximum over five
//!   seeds (30–60 ms links), with about four optimizations per broadcast
//!   across 1,000 devices.
//!
//! The others serve the sync layer:
//! - Receipt is two-step. A push of an id the overlay does not hold becomes
//!   [`Output::Received`]; the caller checks and stores it and then answers
//!   [`Overlay::message_accepted`] (forward it), [`Overlay::message_already_held`]
//!   (a duplicate: prune the sender) or [`Overlay::message_refused`] (graft
//!   another announcer). Nothing is forwarded before the caller accepted it.
//! - A message may arrive out of band (a Git fetch): `message_accepted`
//!   without a prior push cancels the pending graft and forwards it.
//! - A push may come without payload (the sender no longer caches it, or got
//!   it out of band itself); the receiver fetches it from the sender.
//!
//! **Bounds.** Every view, table, queue and timer has a named bound in
//! [`crate::swarm::limits`]; past one the overlay drops and counts
//! ([`OverlayStats`]), never grows. The member list is bounded too
//! ([`OVERLAY_MEMBERS_MAX`]). [`Overlay::footprint`] reports every table's
//! size.

mod broadcast;
pub mod frame;
mod membership;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use rand_core::RngCore;

pub use frame::{
    push_payload_len, push_payload_prefix, Announcement, OverlayFrame, OverlayFrameError, Priority,
    OVERLAY_LENGTH_BYTES,
};

use crate::swarm::limits::{
    ACTIVE_VIEW_MAX, AWAITING_VERDICT_MAX, FAILED_PEER_QUARANTINE, GRAFT_TIMEOUT,
    LAZY_PUSH_INTERVAL, MISSING_IDS_MAX, OVERLAY_MAINTENANCE_INTERVAL, OVERLAY_MEMBERS_MAX,
    OVERLAY_OUTPUTS_QUEUED_MAX, PASSIVE_VIEW_MAX, PASSIVE_WALK_HOPS,
};

/// What the overlay asks its caller to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P, M, D> {
    /// Send `frame` to `to`, dialling if there is no link; a `push` frame's
    /// payload follows it when `payload` is set. A frame to a peer that is
    /// not a neighbour is a one-off: the link may be closed once it is sent.
    Send {
        /// The receiving member device.
        to: P,
        /// The frame.
        frame: OverlayFrame<P, M>,
        /// The payload that follows a `push` frame with `payload: true`.
        payload: Option<D>,
    },
    /// Close the overlay link to `peer` once the frames queued before this
    /// output are sent: a former neighbour, or a device that sent a frame
    /// but is not a member.
    Disconnect {
        /// The device whose link to close.
        peer: P,
    },
    /// `peer` is now a neighbour (anti-entropy runs between neighbours).
    NeighborUp {
        /// The new neighbour.
        peer: P,
    },
    /// `peer` is no longer a neighbour.
    NeighborDown {
        /// The former neighbour.
        peer: P,
    },
    /// A message this device has not confirmed holding arrived: check and
    /// store it, then call [`Overlay::message_accepted`],
    /// [`Overlay::message_already_held`] or [`Overlay::message_refused`].
    /// Without a payload, fetch it from `from` out of band first.
    Received {
        /// The member device that pushed it.
        from: P,
        /// The message.
        id: M,
        /// This device's distance from the author, in hops.
        hops: u16,
        /// Its payload, if the push carried one.
        payload: Option<D>,
    },
}

/// Why the overlay refused an input from the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error("the member list names {found} devices; the limit is {OVERLAY_MEMBERS_MAX}")]
    TooManyMembers { found: usize },
    #[error("the contact is not a member device of this conversation")]
    ContactNotAMember,
}

/// Why the overlay ignored a frame (also counted in [`OverlayStats`]); the
/// caller logs it with the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameRefused {
    #[error("overlay frame from a device that is not a member of this conversation")]
    NotAMember,
    #[error("overlay `{kind}` frame from a device that is not a neighbour")]
    NotANeighbor { kind: &'static str },
    #[error("overlay `{kind}` frame names a device that is not a member, or this device")]
    NamesNonMember { kind: &'static str },
    #[error("push frame says payload={announced} but the caller passed {}", if *.announced { "none" } else { "one" })]
    PayloadMismatch { announced: bool },
}

/// Counters of one overlay instance, for the caller to export as metrics.
/// Every count only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayStats {
    /// Frames refused because their sender is not a member.
    pub frames_from_non_members: u64,
    /// Frames refused as out of place: broadcast control, walks or depths
    /// from a member that is not a neighbour, walks naming a non-member,
    /// push payload mismatches.
    pub frames_out_of_place: u64,
    /// Push frames received (with or without payload).
    pub pushes_received: u64,
    /// Push frames received with a payload.
    pub payloads_received: u64,
    /// Pushes of a message already held or being checked.
    pub duplicate_pushes: u64,
    /// Push frames sent (eager pushes and graft answers).
    pub pushes_sent: u64,
    /// Push frames sent with a payload.
    pub payloads_sent: u64,
    /// Ids announced to this device in `ihave` frames.
    pub ihave_ids_received: u64,
    /// Announced ids not remembered: the missing table (or the announcer's
    /// share of it, or the id's announcer list) was full.
    pub ihave_ids_dropped: u64,
    /// Ids this device asked for in `graft` frames.
    pub graft_ids_sent: u64,
    /// Ids neighbours asked for in `graft` frames.
    pub graft_ids_received: u64,
    /// Grafted ids this device does not hold (none is answered).
    pub graft_ids_unknown: u64,
    /// Missing ids given up after every announcer was grafted.
    pub grafts_abandoned: u64,
    /// `prune` frames sent.
    pub prunes_sent: u64,
    /// `prune` frames received.
    pub prunes_received: u64,
    /// Tree optimizations: a lazy neighbour nearer the tree's centre
    /// replaced an upstream sender.
    pub tree_optimizations: u64,
    /// Received messages forgotten before the caller's verdict (table full,
    /// or no verdict in time).
    pub awaiting_evicted: u64,
    /// Messages the caller refused.
    pub messages_refused: u64,
    /// Peers that became neighbours.
    pub neighbors_up: u64,
    /// Peers that stopped being neighbours.
    pub neighbors_down: u64,
    /// Neighbour requests (and joins) sent.
    pub neighbor_requests_sent: u64,
    /// Neighbour requests that failed (dial failed, link down, timed out).
    pub neighbor_requests_failed: u64,
    /// Neighbour requests not sent because enough were in flight.
    pub neighbor_requests_skipped: u64,
    /// Shuffles started.
    pub shuffles_started: u64,
    /// Outputs dropped because the caller did not drain the queue.
    pub outputs_dropped: u64,
}

/// The size of every table of one overlay instance (a gauge per field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayFootprint {
    /// Member devices known (without this one).
    pub members: usize,
    /// Neighbours.
    pub active: usize,
    /// Passive peers.
    pub passive: usize,
    /// Neighbour requests in flight.
    pub requests: usize,
    /// Peers remembered as recently failed.
    pub quarantined: usize,
    /// Message ids remembered as held.
    pub held_ids: usize,
    /// Payloads cached for grafts.
    pub payloads: usize,
    /// Received messages waiting for the caller's verdict.
    pub awaiting: usize,
    /// Announced ids not yet received.
    pub missing: usize,
    /// Announcements queued for lazy neighbours.
    pub lazy_queued: usize,
    /// Outputs not yet drained.
    pub outputs: usize,
}

/// The known member devices (never this one), sorted: binary search for
/// membership, an index for uniform random picks.
#[derive(Debug, Clone)]
struct Members<P> {
    sorted: Vec<P>,
}

impl<P: Ord> Members<P> {
    fn contains(&self, peer: &P) -> bool {
        self.sorted.binary_search(peer).is_ok()
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }
}

/// A neighbour request (or join) this device sent and not yet seen answered.
#[derive(Debug, Clone)]
struct NeighborRequest {
    priority: Priority,
    deadline: Instant,
}

/// A message this device holds.
#[derive(Debug, Clone)]
struct Held {
    hops: u16,
    since: Instant,
}

/// A pushed message handed to the caller to check.
#[derive(Debug, Clone)]
struct Awaiting<P, D> {
    from: P,
    hops: u16,
    payload: Option<D>,
    since: Instant,
}

/// An id announced to this device that it does not hold.
#[derive(Debug, Clone)]
struct Missing<P> {
    /// Announcers not yet grafted, with their announced hops.
    announcers: Vec<(P, u16)>,
    /// The neighbour whose announcement created the entry (whose share of the
    /// table it occupies).
    creator: P,
    /// When to graft next; none while a pushed copy awaits the verdict.
    due: Option<Instant>,
}

/// One conversation's overlay on this device. `P` is a member device id,
/// `M` a message id, `D` a payload handle (cheap to clone), `R` the RNG.
pub struct Overlay<P, M, D, R> {
    me: P,
    rng: R,
    members: Members<P>,
    active: Vec<P>,
    passive: Vec<P>,
    requests: BTreeMap<P, NeighborRequest>,
    /// Peers whose link failed, with when they may be picked again.
    quarantine: BTreeMap<P, Instant>,
    /// Neighbours pushed to in full; the others (`active` minus these) are
    /// lazy.
    eager: BTreeSet<P>,
    held: BTreeMap<M, Held>,
    /// Held ids in the order they were taken, for eviction.
    held_order: VecDeque<(Instant, M)>,
    payloads: VecDeque<(M, D, Instant)>,
    awaiting: BTreeMap<M, Awaiting<P, D>>,
    missing: BTreeMap<M, Missing<P>>,
    /// Missing entries created per announcer.
    missing_per_peer: BTreeMap<P, usize>,
    graft_due: BTreeSet<(Instant, M)>,
    lazy_queue: BTreeMap<P, Vec<Announcement<M>>>,
    lazy_flush_at: Option<Instant>,
    /// Running average of this device's delivery depth (weight 1/8 per
    /// delivery), in sixteenths of a hop, and how many deliveries it has seen.
    depth_average_sixteenths: u32,
    depth_samples: u32,
    /// The average as last advertised to the neighbours.
    depth_advertised: Option<u32>,
    /// Each neighbour's advertised average delivery depth.
    neighbor_depth: BTreeMap<P, u32>,
    shuffle_at: Instant,
    maintenance_at: Instant,
    outputs: VecDeque<Output<P, M, D>>,
    stats: OverlayStats,
}

impl<P, M, D, R> Overlay<P, M, D, R>
where
    P: Ord + Clone,
    M: Ord + Clone,
    D: Clone,
    R: RngCore,
{
    /// A new overlay instance for device `me`, with no members yet.
    pub fn new(me: P, mut rng: R, now: Instant) -> Self {
        let shuffle_at = now + membership::jittered_shuffle_interval(&mut rng);
        Self {
            me,
            rng,
            members: Members { sorted: Vec::new() },
            active: Vec::new(),
            passive: Vec::new(),
            requests: BTreeMap::new(),
            quarantine: BTreeMap::new(),
            eager: BTreeSet::new(),
            held: BTreeMap::new(),
            held_order: VecDeque::new(),
            payloads: VecDeque::new(),
            awaiting: BTreeMap::new(),
            missing: BTreeMap::new(),
            missing_per_peer: BTreeMap::new(),
            graft_due: BTreeSet::new(),
            lazy_queue: BTreeMap::new(),
            lazy_flush_at: None,
            depth_average_sixteenths: 0,
            depth_samples: 0,
            depth_advertised: None,
            neighbor_depth: BTreeMap::new(),
            shuffle_at,
            maintenance_at: now + OVERLAY_MAINTENANCE_INTERVAL,
            outputs: VecDeque::new(),
            stats: OverlayStats::default(),
        }
    }

    /// Replaces the member list (every member device of the conversation;
    /// this device may be listed). Devices no longer listed leave both views
    /// at once and their links are closed.
    pub fn set_members(
        &mut self,
        members: impl IntoIterator<Item = P>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        let mut sorted: Vec<P> = members.into_iter().filter(|m| *m != self.me).collect();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() > OVERLAY_MEMBERS_MAX {
            return Err(OverlayError::TooManyMembers {
                found: sorted.len(),
            });
        }
        self.replace_members(Members { sorted }, now);
        self.check_invariants();
        Ok(())
    }

    /// Joins the overlay through `contact`, a member device (typically the
    /// inviter, or any member this device can reach). Without a join, the
    /// device still finds neighbours from the member list at the next
    /// maintenance.
    pub fn join(&mut self, contact: P, now: Instant) -> Result<(), OverlayError> {
        if !self.members.contains(&contact) {
            return Err(OverlayError::ContactNotAMember);
        }
        self.send_join(contact, now);
        self.check_invariants();
        Ok(())
    }

    /// Leaves the overlay: tells every neighbour and forgets every member.
    pub fn leave(&mut self, now: Instant) {
        self.leave_all(now);
        self.check_invariants();
    }

    /// A frame arrived from `from` (with the payload that followed a `push`).
    /// A refused frame changes nothing but a counter (and a non-member's
    /// frame closes its link).
    pub fn handle_frame(
        &mut self,
        from: P,
        frame: OverlayFrame<P, M>,
        payload: Option<D>,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        if !self.members.contains(&from) {
            // Close its link: a device removed while it was our neighbour, or
            // whose request crossed its removal, learns it from the link
            // going down, and drops us too.
            self.stats.frames_from_non_members += 1;
            self.emit(Output::Disconnect { peer: from });
            return Err(FrameRefused::NotAMember);
        }
        let result = self.dispatch_frame(from, frame, payload, now);
        if result.is_err() {
            self.stats.frames_out_of_place += 1;
        }
        self.check_invariants();
        result
    }

    /// The link to `peer` closed or failed (the transport saw it go).
    pub fn connection_down(&mut self, peer: P, now: Instant) {
        self.link_lost(peer, now, false);
        self.check_invariants();
    }

    /// Dialling `peer` failed: it is dropped from both views for a while.
    pub fn connection_failed(&mut self, peer: P, now: Instant) {
        self.link_lost(peer, now, true);
        self.check_invariants();
    }

    /// This device wrote message `id`: push it (with `payload`) along the
    /// tree and announce it to lazy neighbours.
    pub fn broadcast(&mut self, id: M, payload: Option<D>, now: Instant) {
        self.broadcast_own(id, payload, now);
        self.check_invariants();
    }

    /// This device now holds `id`: after [`Output::Received`] (the caller
    /// checked and stored it; `payload`, if given, replaces the pushed one),
    /// or out of band (a fetch). Cancels its pending graft and forwards it.
    pub fn message_accepted(&mut self, id: M, payload: Option<D>, now: Instant) {
        self.accept(id, payload, now);
        self.check_invariants();
    }

    /// The caller already held the message of an [`Output::Received`]: the
    /// push was a duplicate, and its sender is pruned.
    pub fn message_already_held(&mut self, id: M, now: Instant) {
        self.already_held(id, now);
        self.check_invariants();
    }

    /// The caller refused the message of an [`Output::Received`] (invalid or
    /// not storable): it is grafted from another announcer, if any.
    pub fn message_refused(&mut self, id: M, now: Instant) {
        self.refuse(id, now);
        self.check_invariants();
    }

    /// Runs every timer due at `now`: grafts, lazy announcements, neighbour
    /// request timeouts, shuffles and view maintenance.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.grafts_due(now);
        if self.lazy_flush_at.is_some_and(|at| at <= now) {
            self.flush_lazy_queues();
        }
        self.requests_due(now);
        if self.shuffle_at <= now {
            self.shuffle(now);
        }
        if self.maintenance_at <= now {
            self.maintain(now);
            self.maintenance_at = now + OVERLAY_MAINTENANCE_INTERVAL;
        }
        self.check_invariants();
    }

    /// When [`Overlay::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let request = self.requests.values().map(|r| r.deadline).min();
        let graft = self.graft_due.first().map(|(at, _)| *at);
        [
            Some(self.shuffle_at),
            Some(self.maintenance_at),
            self.lazy_flush_at,
            request,
            graft,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next output, in order; drain after every call.
    pub fn poll_output(&mut self) -> Option<Output<P, M, D>> {
        self.outputs.pop_front()
    }

    /// This device's id.
    pub fn me(&self) -> &P {
        &self.me
    }

    /// The neighbours.
    pub fn active_view(&self) -> &[P] {
        &self.active
    }

    /// The passive peers.
    pub fn passive_view(&self) -> &[P] {
        &self.passive
    }

    /// Whether `peer` is a neighbour.
    pub fn is_neighbor(&self, peer: &P) -> bool {
        self.active.contains(peer)
    }

    /// Whether `peer` is a neighbour this device pushes to in full.
    pub fn is_eager(&self, peer: &P) -> bool {
        self.eager.contains(peer)
    }

    /// The member devices (this one excluded), sorted.
    pub fn members(&self) -> &[P] {
        &self.members.sorted
    }

    /// Whether `peer` is in the member list.
    pub fn is_member(&self, peer: &P) -> bool {
        self.members.contains(peer)
    }

    /// Whether this device holds `id` as far as the overlay remembers.
    pub fn holds(&self, id: &M) -> bool {
        self.held.contains_key(id)
    }

    /// The counters.
    pub fn stats(&self) -> &OverlayStats {
        &self.stats
    }

    /// The size of every table.
    pub fn footprint(&self) -> OverlayFootprint {
        OverlayFootprint {
            members: self.members.len(),
            active: self.active.len(),
            passive: self.passive.len(),
            requests: self.requests.len(),
            quarantined: self.quarantine.len(),
            held_ids: self.held.len(),
            payloads: self.payloads.len(),
            awaiting: self.awaiting.len(),
            missing: self.missing.len(),
            lazy_queued: self.lazy_queue.values().map(Vec::len).sum(),
            outputs: self.outputs.len(),
        }
    }

    fn dispatch_frame(
        &mut self,
        from: P,
        frame: OverlayFrame<P, M>,
        payload: Option<D>,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        match frame {
            OverlayFrame::Join => self.on_join(from, now),
            OverlayFrame::ForwardJoin { joiner, ttl } => {
                self.on_forward_join(from, joiner, ttl, now)
            }
            OverlayFrame::Neighbor { priority } => {
                self.on_neighbor(from, priority, now);
                Ok(())
            }
            OverlayFrame::NeighborReply { accepted } => self.on_neighbor_reply(from, accepted, now),
            OverlayFrame::Disconnect { alive } => {
                self.on_disconnect(from, alive, now);
                Ok(())
            }
            OverlayFrame::Shuffle { origin, ttl, peers } => {
                self.on_shuffle(from, origin, ttl, peers, now)
            }
            OverlayFrame::ShuffleReply { peers } => {
                self.add_passive_sample(peers, now);
                Ok(())
            }
            OverlayFrame::Push {
                id,
                hops,
                payload: announced,
            } => {
                if announced != payload.is_some() {
                    return Err(FrameRefused::PayloadMismatch { announced });
                }
                self.on_push(from, id, hops, payload, now);
                Ok(())
            }
            OverlayFrame::IHave { ids } => self.on_ihave(from, ids, now),
            OverlayFrame::Graft { ids } => self.on_graft(from, ids),
            OverlayFrame::Prune => self.on_prune(from),
            OverlayFrame::Depth { depth_sixteenths } => self.on_depth(from, depth_sixteenths),
        }
    }

    /// Queues an output, or counts it dropped if the caller stopped
    /// draining.
    fn emit(&mut self, output: Output<P, M, D>) {
        if self.outputs.len() >= OVERLAY_OUTPUTS_QUEUED_MAX {
            self.stats.outputs_dropped += 1;
            return;
        }
        self.outputs.push_back(output);
    }

    fn send(&mut self, to: P, frame: OverlayFrame<P, M>) {
        self.emit(Output::Send {
            to,
            frame,
            payload: None,
        });
    }

    /// Whether the swarm is small enough for every device to be everyone's
    /// neighbour.
    fn full_mesh(&self) -> bool {
        self.members.len() <= ACTIVE_VIEW_MAX
    }

    fn is_quarantined(&self, peer: &P, now: Instant) -> bool {
        self.quarantine.get(peer).is_some_and(|until| *until > now)
    }

    /// The views' structural invariants, checked after every input in debug
    /// builds (cheap ones only: that the views are disjoint is asserted where
    /// a peer enters one, and the tests check membership of every entry from
    /// outside).
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.active.len() <= ACTIVE_VIEW_MAX,
            "active view over bound"
        );
        assert!(
            self.passive.len() <= PASSIVE_VIEW_MAX,
            "passive view over bound"
        );
        for (index, peer) in self.active.iter().enumerate() {
            assert!(*peer != self.me, "self in the active view");
            assert!(
                !self.active[..index].contains(peer),
                "neighbour listed twice"
            );
        }
        assert!(!self.passive.contains(&self.me), "self in the passive view");
        assert!(
            self.eager.iter().all(|p| self.active.contains(p)),
            "eager peer that is not a neighbour"
        );
        assert!(
            self.lazy_queue.keys().all(|p| self.active.contains(p)),
            "lazy queue for a non-neighbour"
        );
        assert!(
            self.neighbor_depth.keys().all(|p| self.active.contains(p)),
            "depth of a non-neighbour"
        );
        assert!(
            self.missing.len() <= MISSING_IDS_MAX,
            "missing table over bound"
        );
        assert!(
            self.awaiting.len() <= AWAITING_VERDICT_MAX,
            "verdict table over bound"
        );
    }
}

/// A uniform index below `len` (which must not be zero). The bias of the
/// multiply-shift is below 2^-32 for the small lengths used here.
fn random_index(rng: &mut impl RngCore, len: usize) -> usize {
    debug_assert!(len > 0);
    ((u64::from(rng.next_u32()) * len as u64) >> 32) as usize
}

/// A random element of `items`.
fn pick<'a, T>(rng: &mut impl RngCore, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        Some(&items[random_index(rng, items.len())])
    }
}

/// `items` in random order (Fisher-Yates).
fn shuffled<T>(rng: &mut impl RngCore, mut items: Vec<T>) -> Vec<T> {
    for i in (1..items.len()).rev() {
        let j = random_index(rng, i + 1);
        items.swap(i, j);
    }
    items
}

// The graft timeout must leave a pushed copy time to arrive along the tree
// before a lazy announcement triggers a graft.
const _: () = assert!(GRAFT_TIMEOUT.as_millis() > 10 * LAZY_PUSH_INTERVAL.as_millis());
const _: () = assert!(FAILED_PEER_QUARANTINE.as_secs() > OVERLAY_MAINTENANCE_INTERVAL.as_secs());
const _: () = assert!(PASSIVE_WALK_HOPS > 0);
