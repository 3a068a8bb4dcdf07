//! The overlay's membership half: the active and passive views, joins and
//! their random walks, neighbour requests, shuffles and repair (HyParView
//! over a known member list; the design is in the parent module's doc).

use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::{
    pick, random_index, shuffled, FrameRefused, Members, NeighborRequest, Output, Overlay,
    OverlayFrame, Priority,
};
use crate::swarm::limits::{
    ACTIVE_VIEW_MAX, ACTIVE_VIEW_RETRY_BELOW, ACTIVE_WALK_HOPS, FAILED_PEERS_REMEMBERED_MAX,
    FAILED_PEER_QUARANTINE, NEIGHBOR_REQUESTS_IN_FLIGHT_MAX, NEIGHBOR_REQUEST_TIMEOUT,
    PASSIVE_VIEW_MAX, PASSIVE_WALK_HOPS, SHUFFLE_ACTIVE_PEERS, SHUFFLE_INTERVAL,
    SHUFFLE_PASSIVE_PEERS, SHUFFLE_WALK_HOPS,
};

/// The time to the next shuffle: uniform between half and one and a half
/// [`SHUFFLE_INTERVAL`], so that devices do not shuffle in step.
pub(super) fn jittered_shuffle_interval(rng: &mut impl RngCore) -> Duration {
    let base = SHUFFLE_INTERVAL.as_millis() as u64;
    let offset = (u64::from(rng.next_u32()) * base) >> 32;
    Duration::from_millis(base / 2 + offset)
}

impl<P, M, D, R> Overlay<P, M, D, R>
where
    P: Ord + Clone,
    M: Ord + Clone,
    D: Clone,
    R: RngCore,
{
    pub(super) fn replace_members(&mut self, members: Members<P>, now: Instant) {
        let departed: Vec<P> = self
            .active
            .iter()
            .filter(|p| !members.contains(p))
            .cloned()
            .collect();
        self.members = members;
        // A departed member (left, or banned) gets no frame: the link is
        // closed, which its transport reports to it.
        for peer in departed {
            self.remove_active(&peer, false, now);
        }
        let members = &self.members;
        self.passive.retain(|p| members.contains(p));
        self.requests.retain(|p, _| members.contains(p));
        self.quarantine.retain(|p, _| members.contains(p));
        self.repair_active(now);
    }

    pub(super) fn send_join(&mut self, contact: P, now: Instant) {
        if self.active.contains(&contact) {
            return;
        }
        if self.register_request(contact.clone(), Priority::High, now) {
            self.send(contact, OverlayFrame::Join);
        }
    }

    pub(super) fn leave_all(&mut self, now: Instant) {
        for peer in self.active.clone() {
            self.send(peer.clone(), OverlayFrame::Disconnect { alive: false });
            self.remove_active(&peer, false, now);
        }
        self.members = Members { sorted: Vec::new() };
        self.passive.clear();
        self.requests.clear();
        self.quarantine.clear();
    }

    /// A link to `peer` went down (`dial_failed`: it never came up).
    pub(super) fn link_lost(&mut self, peer: P, now: Instant, dial_failed: bool) {
        let was_requested = self.requests.remove(&peer).is_some();
        if was_requested {
            self.stats.neighbor_requests_failed += 1;
        }
        let was_active = self.active.contains(&peer);
        if was_active {
            self.remove_active(&peer, false, now);
        }
        if dial_failed || was_active || was_requested {
            self.passive.retain(|p| *p != peer);
            self.put_in_quarantine(peer, now);
            self.repair_active(now);
        }
    }

    pub(super) fn on_join(&mut self, from: P, now: Instant) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            self.requests.remove(&from);
            self.make_room(&from, now);
            self.add_active(from.clone());
            let others: Vec<P> = self
                .active
                .iter()
                .filter(|p| **p != from)
                .cloned()
                .collect();
            for peer in others {
                self.send(
                    peer,
                    OverlayFrame::ForwardJoin {
                        joiner: from.clone(),
                        ttl: ACTIVE_WALK_HOPS,
                    },
                );
            }
        }
        self.send(from, OverlayFrame::NeighborReply { accepted: true });
        Ok(())
    }

    pub(super) fn on_forward_join(
        &mut self,
        from: P,
        joiner: P,
        ttl: u8,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor {
                kind: "forward_join",
            });
        }
        if joiner == self.me || !self.members.contains(&joiner) {
            return Err(FrameRefused::NamesNonMember {
                kind: "forward_join",
            });
        }
        if self.active.contains(&joiner) {
            return Ok(());
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.register_and_ask(joiner, Priority::High, now);
            return Ok(());
        }
        if ttl == PASSIVE_WALK_HOPS {
            self.add_passive(joiner.clone(), now);
        }
        let onward: Vec<P> = self
            .active
            .iter()
            .filter(|p| **p != from && **p != joiner)
            .cloned()
            .collect();
        match pick(&mut self.rng, &onward).cloned() {
            Some(next) => self.send(
                next,
                OverlayFrame::ForwardJoin {
                    joiner,
                    ttl: ttl - 1,
                },
            ),
            None => {
                self.register_and_ask(joiner, Priority::High, now);
            }
        }
        Ok(())
    }

    pub(super) fn on_neighbor(&mut self, from: P, priority: Priority, now: Instant) {
        let accept = self.active.contains(&from)
            || priority == Priority::High
            || self.active.len() < ACTIVE_VIEW_MAX;
        if accept && !self.active.contains(&from) {
            // Our own request to it, if any, is answered by this link.
            self.requests.remove(&from);
            self.make_room(&from, now);
            self.add_active(from.clone());
        } else if !accept {
            self.add_passive(from.clone(), now);
        }
        self.send(from, OverlayFrame::NeighborReply { accepted: accept });
    }

    pub(super) fn on_neighbor_reply(
        &mut self,
        from: P,
        accepted: bool,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        let request = self.requests.remove(&from);
        if self.active.contains(&from) {
            // Already neighbours through the peer's own request, which we
            // accepted: its answer to ours adds nothing.
            return Ok(());
        }
        if accepted {
            // The peer has added us, even if our request timed out here; take
            // the link, or tell it we cannot so that it drops us too.
            let high = request.is_some_and(|r| r.priority == Priority::High);
            if self.active.len() < ACTIVE_VIEW_MAX || high {
                self.make_room(&from, now);
                self.add_active(from);
            } else {
                self.send(from.clone(), OverlayFrame::Disconnect { alive: true });
                self.add_passive(from, now);
            }
        } else {
            self.add_passive(from, now);
            if request.is_some() && self.active.len() < ACTIVE_VIEW_RETRY_BELOW {
                self.repair_active(now);
            }
        }
        Ok(())
    }

    pub(super) fn on_disconnect(&mut self, from: P, alive: bool, now: Instant) {
        self.requests.remove(&from);
        if self.active.contains(&from) {
            self.remove_active(&from, alive, now);
        } else if !alive {
            self.passive.retain(|p| *p != from);
        }
        self.repair_active(now);
    }

    pub(super) fn on_shuffle(
        &mut self,
        from: P,
        origin: P,
        ttl: u8,
        peers: Vec<P>,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor { kind: "shuffle" });
        }
        if origin == self.me || !self.members.contains(&origin) {
            return Err(FrameRefused::NamesNonMember { kind: "shuffle" });
        }
        let ttl = ttl.saturating_sub(1);
        if ttl > 0 && self.active.len() > 1 {
            let onward: Vec<P> = self
                .active
                .iter()
                .filter(|p| **p != from && **p != origin)
                .cloned()
                .collect();
            if let Some(next) = pick(&mut self.rng, &onward).cloned() {
                self.send(next, OverlayFrame::Shuffle { origin, ttl, peers });
                return Ok(());
            }
        }
        let candidates: Vec<P> = self
            .passive
            .iter()
            .filter(|p| **p != origin)
            .cloned()
            .collect();
        let mut reply = shuffled(&mut self.rng, candidates);
        reply.truncate(peers.len());
        self.send(origin, OverlayFrame::ShuffleReply { peers: reply });
        self.add_passive_sample(peers, now);
        Ok(())
    }

    /// Takes a shuffle's sample into the passive view; entries that are not
    /// members (or are this device, or neighbours) are skipped.
    pub(super) fn add_passive_sample(&mut self, peers: Vec<P>, now: Instant) {
        for peer in peers {
            self.add_passive(peer, now);
        }
    }

    pub(super) fn requests_due(&mut self, now: Instant) {
        let expired: Vec<P> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(p, _)| p.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for peer in expired {
            self.requests.remove(&peer);
            self.stats.neighbor_requests_failed += 1;
            self.passive.retain(|p| *p != peer);
            self.put_in_quarantine(peer, now);
        }
        self.repair_active(now);
    }

    pub(super) fn shuffle(&mut self, now: Instant) {
        self.shuffle_at = now + jittered_shuffle_interval(&mut self.rng);
        if self.full_mesh() {
            return;
        }
        let Some(target) = pick(&mut self.rng, &self.active).cloned() else {
            return;
        };
        let others: Vec<P> = self
            .active
            .iter()
            .filter(|p| **p != target)
            .cloned()
            .collect();
        let mut peers = vec![self.me.clone()];
        peers.extend(
            shuffled(&mut self.rng, others)
                .into_iter()
                .take(SHUFFLE_ACTIVE_PEERS),
        );
        let passive = shuffled(&mut self.rng, self.passive.clone());
        peers.extend(
            passive
                .into_iter()
                .filter(|p| *p != target)
                .take(SHUFFLE_PASSIVE_PEERS),
        );
        self.stats.shuffles_started += 1;
        self.send(
            target,
            OverlayFrame::Shuffle {
                origin: self.me.clone(),
                ttl: SHUFFLE_WALK_HOPS,
                peers,
            },
        );
    }

    pub(super) fn maintain(&mut self, now: Instant) {
        self.quarantine.retain(|_, until| *until > now);
        self.expire_messages(now);
        self.advertise_depth();
        if !self.full_mesh() && self.passive.len() < ACTIVE_VIEW_MAX {
            self.refill_passive(now);
        }
        self.repair_active(now);
    }

    /// Asks new neighbours for every free slot of the active view: every
    /// missing member in a full mesh, random passive peers otherwise.
    pub(super) fn repair_active(&mut self, now: Instant) {
        let target = ACTIVE_VIEW_MAX.min(self.members.len());
        let wanted = target.saturating_sub(self.active.len() + self.requests.len());
        if wanted == 0 {
            return;
        }
        let candidates: Vec<P> = if self.full_mesh() {
            self.members
                .sorted
                .iter()
                .filter(|p| {
                    !self.active.contains(p)
                        && !self.requests.contains_key(p)
                        && !self.is_quarantined(p, now)
                })
                .cloned()
                .collect()
        } else {
            let available = |overlay: &Self| {
                overlay
                    .passive
                    .iter()
                    .filter(|p| !overlay.requests.contains_key(p))
                    .count()
            };
            if available(self) < wanted {
                self.refill_passive(now);
            }
            self.passive
                .iter()
                .filter(|p| !self.requests.contains_key(p))
                .cloned()
                .collect()
        };
        for peer in shuffled(&mut self.rng, candidates).into_iter().take(wanted) {
            // Only a device with no neighbour (and no strong request out) may
            // insist; others must not knock neighbours out of full views.
            let insist = self.active.is_empty()
                && !self.requests.values().any(|r| r.priority == Priority::High);
            let priority = if insist {
                Priority::High
            } else {
                Priority::Low
            };
            if !self.register_and_ask(peer, priority, now) {
                break;
            }
        }
    }

    /// Tops the passive view up with random members (not neighbours, not
    /// asked, not recently failed).
    fn refill_passive(&mut self, now: Instant) {
        if self.members.sorted.is_empty() {
            return;
        }
        for _ in 0..4 * PASSIVE_VIEW_MAX {
            if self.passive.len() >= PASSIVE_VIEW_MAX {
                break;
            }
            let index = random_index(&mut self.rng, self.members.len());
            let peer = self.members.sorted[index].clone();
            if !self.requests.contains_key(&peer) {
                self.add_passive(peer, now);
            }
        }
    }

    /// Records a request in flight; false if too many are.
    fn register_request(&mut self, peer: P, priority: Priority, now: Instant) -> bool {
        if self.requests.contains_key(&peer) {
            return false;
        }
        if self.requests.len() >= NEIGHBOR_REQUESTS_IN_FLIGHT_MAX {
            self.stats.neighbor_requests_skipped += 1;
            return false;
        }
        self.requests.insert(
            peer,
            NeighborRequest {
                priority,
                deadline: now + NEIGHBOR_REQUEST_TIMEOUT,
            },
        );
        self.stats.neighbor_requests_sent += 1;
        true
    }

    /// Asks `peer` to be a neighbour; false if too many requests are in
    /// flight.
    fn register_and_ask(&mut self, peer: P, priority: Priority, now: Instant) -> bool {
        if self.requests.contains_key(&peer) {
            return true;
        }
        if !self.register_request(peer.clone(), priority, now) {
            return false;
        }
        self.send(peer, OverlayFrame::Neighbor { priority });
        true
    }

    /// Frees a slot for `incoming` by dropping a random other neighbour,
    /// which is told (it stays a passive peer).
    fn make_room(&mut self, incoming: &P, now: Instant) {
        if self.active.len() < ACTIVE_VIEW_MAX {
            return;
        }
        let others: Vec<P> = self
            .active
            .iter()
            .filter(|p| *p != incoming)
            .cloned()
            .collect();
        if let Some(victim) = pick(&mut self.rng, &others).cloned() {
            self.send(victim.clone(), OverlayFrame::Disconnect { alive: true });
            self.remove_active(&victim, true, now);
        }
    }

    fn add_active(&mut self, peer: P) {
        debug_assert!(self.active.len() < ACTIVE_VIEW_MAX);
        debug_assert!(peer != self.me && self.members.contains(&peer));
        if self.active.contains(&peer) {
            return;
        }
        self.passive.retain(|p| *p != peer);
        self.quarantine.remove(&peer);
        debug_assert!(!self.passive.contains(&peer));
        self.active.push(peer.clone());
        self.stats.neighbors_up += 1;
        self.neighbor_added(&peer);
        self.emit(Output::NeighborUp { peer });
    }

    /// Drops `peer` from the active view and closes its link (after any frame
    /// already queued for it); `keep_passive` when it is still online.
    pub(super) fn remove_active(&mut self, peer: &P, keep_passive: bool, now: Instant) {
        let Some(index) = self.active.iter().position(|p| p == peer) else {
            return;
        };
        let peer = self.active.swap_remove(index);
        self.neighbor_gone(&peer);
        self.stats.neighbors_down += 1;
        self.emit(Output::NeighborDown { peer: peer.clone() });
        self.emit(Output::Disconnect { peer: peer.clone() });
        if keep_passive {
            self.add_passive(peer, now);
        }
    }

    fn add_passive(&mut self, peer: P, now: Instant) {
        if peer == self.me
            || !self.members.contains(&peer)
            || self.active.contains(&peer)
            || self.passive.contains(&peer)
            || self.is_quarantined(&peer, now)
        {
            return;
        }
        if self.passive.len() >= PASSIVE_VIEW_MAX {
            let index = random_index(&mut self.rng, self.passive.len());
            self.passive.swap_remove(index);
        }
        debug_assert!(!self.active.contains(&peer));
        self.passive.push(peer);
    }

    fn put_in_quarantine(&mut self, peer: P, now: Instant) {
        self.quarantine.insert(peer, now + FAILED_PEER_QUARANTINE);
        if self.quarantine.len() > FAILED_PEERS_REMEMBERED_MAX {
            let oldest = self
                .quarantine
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                self.quarantine.remove(&oldest);
            }
        }
    }
}
