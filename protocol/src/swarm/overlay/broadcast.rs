//! The overlay's broadcast half: eager pushes along a tree, lazy `ihave`
//! announcements, grafts and prunes (Plumtree with a two-step receipt; the
//! design is in the parent module's doc).

use std::collections::BTreeMap;
use std::time::Instant;

use rand_core::RngCore;

use super::{Announcement, Awaiting, FrameRefused, Held, Missing, Output, Overlay, OverlayFrame};
use crate::swarm::limits::{
    ANNOUNCERS_PER_ID_MAX, AWAITING_VERDICT_MAX, AWAITING_VERDICT_TIMEOUT,
    DEPTH_ADVERTISE_STEP_SIXTEENTHS, DEPTH_SAMPLES_MIN, GRAFT_BATCH_IDS_MAX, GRAFT_RETRY_TIMEOUT,
    GRAFT_TIMEOUT, IHAVE_BATCH_IDS_MAX, LAZY_PUSH_INTERVAL, MESSAGE_IDS_REMEMBERED_MAX,
    MESSAGE_ID_RETENTION, MISSING_IDS_MAX, MISSING_IDS_PER_PEER_MAX, PAYLOADS_CACHED_MAX,
    PAYLOAD_RETENTION, TREE_OPTIMIZATION_DEPTH_MIN_SIXTEENTHS,
};

impl<P, M, D, R> Overlay<P, M, D, R>
where
    P: Ord + Clone,
    M: Ord + Clone,
    D: Clone,
    R: RngCore,
{
    /// A new neighbour starts eager (the tree may need the link) and learns
    /// this device's depth.
    pub(super) fn neighbor_added(&mut self, peer: &P) {
        self.eager.insert(peer.clone());
        if let Some(depth_sixteenths) = self.depth_advertised {
            self.send(peer.clone(), OverlayFrame::Depth { depth_sixteenths });
        }
    }

    /// A former neighbour no longer announces anything to this device.
    pub(super) fn neighbor_gone(&mut self, peer: &P) {
        self.eager.remove(peer);
        self.lazy_queue.remove(peer);
        self.neighbor_depth.remove(peer);
        for missing in self.missing.values_mut() {
            missing.announcers.retain(|(p, _)| p != peer);
        }
    }

    pub(super) fn broadcast_own(&mut self, id: M, payload: Option<D>, now: Instant) {
        if self.held.contains_key(&id) {
            return;
        }
        self.awaiting.remove(&id);
        let announcers = self.take_missing(&id);
        self.hold(id.clone(), 0, payload.clone(), now);
        self.forward(&id, None, 0, payload, &announcers, now);
    }

    pub(super) fn on_push(&mut self, from: P, id: M, hops: u16, payload: Option<D>, now: Instant) {
        self.stats.pushes_received += 1;
        if payload.is_some() {
            self.stats.payloads_received += 1;
        }
        if self.held.contains_key(&id) || self.awaiting.contains_key(&id) {
            self.stats.duplicate_pushes += 1;
            self.prune(&from);
            return;
        }
        if self.awaiting.len() >= AWAITING_VERDICT_MAX {
            let oldest = self
                .awaiting
                .iter()
                .min_by_key(|(_, a)| a.since)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.forget_awaiting(&oldest, now);
            }
        }
        // The copy is here: no graft while the caller checks it.
        if let Some(missing) = self.missing.get_mut(&id) {
            if let Some(due) = missing.due.take() {
                self.graft_due.remove(&(due, id.clone()));
            }
        }
        if self.active.contains(&from) {
            self.eager.insert(from.clone());
        }
        self.awaiting.insert(
            id.clone(),
            Awaiting {
                from: from.clone(),
                hops,
                payload: payload.clone(),
                since: now,
            },
        );
        self.emit(Output::Received {
            from,
            id,
            hops,
            payload,
        });
    }

    pub(super) fn accept(&mut self, id: M, payload: Option<D>, now: Instant) {
        if self.held.contains_key(&id) {
            return;
        }
        let awaiting = self.awaiting.remove(&id);
        let announcers = self.take_missing(&id);
        let (from, hops, payload) = match awaiting {
            Some(pushed) => (Some(pushed.from), pushed.hops, payload.or(pushed.payload)),
            // Obtained out of band: count it one hop past its nearest
            // announcer, or one hop from its author if nobody announced it.
            None => {
                let hops = announcers
                    .iter()
                    .map(|(_, h)| h.saturating_add(1))
                    .min()
                    .unwrap_or(1);
                (None, hops, payload)
            }
        };
        if let Some(sender) = &from {
            self.note_delivery_depth(hops);
            self.optimize_tree(sender, &announcers);
        }
        self.hold(id.clone(), hops, payload.clone(), now);
        self.forward(&id, from.as_ref(), hops, payload, &announcers, now);
    }

    pub(super) fn already_held(&mut self, id: M, now: Instant) {
        let hops = match self.awaiting.remove(&id) {
            Some(pushed) => {
                self.stats.duplicate_pushes += 1;
                self.prune(&pushed.from);
                pushed.hops
            }
            None => 1,
        };
        self.take_missing(&id);
        if !self.held.contains_key(&id) {
            self.hold(id, hops, None, now);
        }
    }

    pub(super) fn refuse(&mut self, id: M, now: Instant) {
        if self.awaiting.remove(&id).is_none() {
            return;
        }
        self.stats.messages_refused += 1;
        self.graft_now(&id, now);
    }

    pub(super) fn on_ihave(
        &mut self,
        from: P,
        ids: Vec<Announcement<M>>,
        now: Instant,
    ) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor { kind: "ihave" });
        }
        self.stats.ihave_ids_received += ids.len() as u64;
        for Announcement { id, hops } in ids {
            if self.held.contains_key(&id) {
                continue;
            }
            if let Some(missing) = self.missing.get_mut(&id) {
                if missing.announcers.iter().any(|(p, _)| *p == from) {
                    continue;
                }
                if missing.announcers.len() >= ANNOUNCERS_PER_ID_MAX {
                    self.stats.ihave_ids_dropped += 1;
                    continue;
                }
                missing.announcers.push((from.clone(), hops));
                continue;
            }
            let share = self.missing_per_peer.get(&from).copied().unwrap_or(0);
            if self.missing.len() >= MISSING_IDS_MAX || share >= MISSING_IDS_PER_PEER_MAX {
                self.stats.ihave_ids_dropped += 1;
                continue;
            }
            // While a pushed copy is being checked, only remember the
            // announcer, in case the caller refuses that copy.
            let due = if self.awaiting.contains_key(&id) {
                None
            } else {
                Some(now + GRAFT_TIMEOUT)
            };
            if let Some(due) = due {
                self.graft_due.insert((due, id.clone()));
            }
            self.missing.insert(
                id,
                Missing {
                    announcers: vec![(from.clone(), hops)],
                    creator: from.clone(),
                    due,
                },
            );
            *self.missing_per_peer.entry(from.clone()).or_default() += 1;
        }
        Ok(())
    }

    pub(super) fn on_graft(&mut self, from: P, ids: Vec<M>) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor { kind: "graft" });
        }
        self.eager.insert(from.clone());
        self.stats.graft_ids_received += ids.len() as u64;
        for id in ids {
            let Some(held) = self.held.get(&id) else {
                self.stats.graft_ids_unknown += 1;
                continue;
            };
            let hops = held.hops.saturating_add(1);
            let payload = self
                .payloads
                .iter()
                .find(|(cached, _, _)| *cached == id)
                .map(|(_, payload, _)| payload.clone());
            self.push(from.clone(), id, hops, payload);
        }
        Ok(())
    }

    pub(super) fn on_depth(&mut self, from: P, depth_sixteenths: u32) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor { kind: "depth" });
        }
        self.neighbor_depth.insert(from, depth_sixteenths);
        Ok(())
    }

    /// Tells every neighbour this device's average delivery depth once it
    /// has moved by [`DEPTH_ADVERTISE_STEP_SIXTEENTHS`] (a hop) since last
    /// told.
    pub(super) fn advertise_depth(&mut self) {
        if self.depth_samples < DEPTH_SAMPLES_MIN {
            return;
        }
        let depth_sixteenths = self.depth_average_sixteenths;
        let moved = self
            .depth_advertised
            .is_none_or(|told| told.abs_diff(depth_sixteenths) >= DEPTH_ADVERTISE_STEP_SIXTEENTHS);
        if !moved {
            return;
        }
        self.depth_advertised = Some(depth_sixteenths);
        for peer in self.active.clone() {
            self.send(peer, OverlayFrame::Depth { depth_sixteenths });
        }
    }

    pub(super) fn on_prune(&mut self, from: P) -> Result<(), FrameRefused> {
        if !self.active.contains(&from) {
            return Err(FrameRefused::NotANeighbor { kind: "prune" });
        }
        self.stats.prunes_received += 1;
        self.eager.remove(&from);
        Ok(())
    }

    /// Grafts every missing id whose timer is due, one `graft` frame per
    /// announcer.
    pub(super) fn grafts_due(&mut self, now: Instant) {
        let mut batches: BTreeMap<P, Vec<M>> = BTreeMap::new();
        while let Some((due, id)) = self.graft_due.first().cloned() {
            if due > now {
                break;
            }
            self.graft_due.pop_first();
            let Some(missing) = self.missing.get_mut(&id) else {
                continue;
            };
            missing.due = None;
            let active = &self.active;
            let nearest = missing
                .announcers
                .iter()
                .enumerate()
                .filter(|(_, (p, _))| active.contains(p))
                .min_by_key(|(_, (_, hops))| *hops)
                .map(|(index, _)| index);
            match nearest {
                Some(index) => {
                    let (peer, _) = missing.announcers.remove(index);
                    let retry = now + GRAFT_RETRY_TIMEOUT;
                    missing.due = Some(retry);
                    self.graft_due.insert((retry, id.clone()));
                    batches.entry(peer).or_default().push(id);
                }
                None => {
                    self.take_missing(&id);
                    self.stats.grafts_abandoned += 1;
                }
            }
        }
        for (peer, ids) in batches {
            self.eager.insert(peer.clone());
            for chunk in ids.chunks(GRAFT_BATCH_IDS_MAX) {
                self.stats.graft_ids_sent += chunk.len() as u64;
                self.send(
                    peer.clone(),
                    OverlayFrame::Graft {
                        ids: chunk.to_vec(),
                    },
                );
            }
        }
    }

    pub(super) fn flush_lazy_queues(&mut self) {
        self.lazy_flush_at = None;
        for (peer, ids) in std::mem::take(&mut self.lazy_queue) {
            if !ids.is_empty() {
                self.send(peer, OverlayFrame::IHave { ids });
            }
        }
    }

    /// Forgets held ids and payloads past their retention, and received
    /// messages the caller never gave a verdict on.
    pub(super) fn expire_messages(&mut self, now: Instant) {
        while let Some((since, _)) = self.held_order.front() {
            if *since + MESSAGE_ID_RETENTION > now {
                break;
            }
            self.pop_oldest_held();
        }
        while self
            .payloads
            .front()
            .is_some_and(|(_, _, since)| *since + PAYLOAD_RETENTION <= now)
        {
            self.payloads.pop_front();
        }
        let stale: Vec<M> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.since + AWAITING_VERDICT_TIMEOUT <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.forget_awaiting(&id, now);
        }
    }

    /// Drops a received message the caller did not answer in time; its
    /// announcers, if any, are grafted.
    fn forget_awaiting(&mut self, id: &M, now: Instant) {
        if self.awaiting.remove(id).is_some() {
            self.stats.awaiting_evicted += 1;
            self.graft_now(id, now);
        }
    }

    /// Grafts a missing id's next announcer at the next timeout.
    fn graft_now(&mut self, id: &M, now: Instant) {
        if let Some(missing) = self.missing.get_mut(id) {
            if missing.due.is_none() {
                missing.due = Some(now);
                self.graft_due.insert((now, id.clone()));
            }
        }
    }

    /// Sends a duplicate's sender a `prune`; the link turns lazy both ways.
    fn prune(&mut self, from: &P) {
        if !self.active.contains(from) {
            return;
        }
        self.eager.remove(from);
        self.stats.prunes_sent += 1;
        self.send(from.clone(), OverlayFrame::Prune);
    }

    /// A message came from `sender`, a neighbour nearer the tree's centre
    /// than this device (its upstream), while a lazy neighbour that sits
    /// nearer still had announced it first: that neighbour replaces the
    /// sender (grafted with no message asked, the sender pruned).
    ///
    /// Centrality is each device's average delivery depth, advertised in
    /// `depth` frames: it does not depend on which device wrote the message,
    /// so the tree settles around the devices nearest most authors instead of
    /// being re-rooted toward each author in turn. Moving only to neighbours
    /// nearer the centre than this device keeps the upstream relation free
    /// of cycles.
    fn optimize_tree(&mut self, sender: &P, announcers: &[(P, u16)]) {
        if self.depth_samples < DEPTH_SAMPLES_MIN || !self.active.contains(sender) {
            return;
        }
        let Some(&sender_depth) = self.neighbor_depth.get(sender) else {
            return;
        };
        if sender_depth >= self.depth_average_sixteenths {
            // It came up from a neighbour farther out (a child): keep it.
            return;
        }
        let nearest = announcers
            .iter()
            .filter(|(p, _)| p != sender && self.active.contains(p))
            .filter_map(|(p, _)| self.neighbor_depth.get(p).map(|depth| (p, *depth)))
            .min_by_key(|(_, depth)| *depth);
        let Some((nearer, nearer_depth)) = nearest else {
            return;
        };
        if nearer_depth + TREE_OPTIMIZATION_DEPTH_MIN_SIXTEENTHS > sender_depth {
            return;
        }
        let nearer = nearer.clone();
        self.stats.tree_optimizations += 1;
        self.eager.insert(nearer.clone());
        self.send(nearer, OverlayFrame::Graft { ids: Vec::new() });
        self.prune(sender);
    }

    /// Folds a delivery's depth into the running average (weight 1/8).
    fn note_delivery_depth(&mut self, hops: u16) {
        let sample = u32::from(hops) * 16;
        let average = self.depth_average_sixteenths;
        self.depth_average_sixteenths = if self.depth_samples == 0 {
            sample
        } else {
            average - average / 8 + sample / 8
        };
        self.depth_samples = self.depth_samples.saturating_add(1);
    }

    /// Pushes `id` to eager neighbours and queues it for lazy ones, except
    /// its sender and those that announced it (they hold it).
    fn forward(
        &mut self,
        id: &M,
        from: Option<&P>,
        hops: u16,
        payload: Option<D>,
        announcers: &[(P, u16)],
        now: Instant,
    ) {
        let targets: Vec<P> = self
            .active
            .iter()
            .filter(|p| Some(*p) != from && !announcers.iter().any(|(a, _)| a == *p))
            .cloned()
            .collect();
        for peer in targets {
            if self.eager.contains(&peer) {
                self.push(peer, id.clone(), hops.saturating_add(1), payload.clone());
            } else {
                self.announce_lazily(
                    peer,
                    Announcement {
                        id: id.clone(),
                        hops,
                    },
                    now,
                );
            }
        }
    }

    fn push(&mut self, to: P, id: M, hops: u16, payload: Option<D>) {
        self.stats.pushes_sent += 1;
        if payload.is_some() {
            self.stats.payloads_sent += 1;
        }
        self.emit(Output::Send {
            to,
            frame: OverlayFrame::Push {
                id,
                hops,
                payload: payload.is_some(),
            },
            payload,
        });
    }

    /// Queues an announcement; a queue that fills a batch goes out at once,
    /// so no queue grows past [`IHAVE_BATCH_IDS_MAX`].
    fn announce_lazily(&mut self, peer: P, announcement: Announcement<M>, now: Instant) {
        let queue = self.lazy_queue.entry(peer.clone()).or_default();
        queue.push(announcement);
        if queue.len() >= IHAVE_BATCH_IDS_MAX {
            let ids = self.lazy_queue.remove(&peer).unwrap_or_default();
            self.send(peer, OverlayFrame::IHave { ids });
        } else if self.lazy_flush_at.is_none() {
            self.lazy_flush_at = Some(now + LAZY_PUSH_INTERVAL);
        }
    }

    fn hold(&mut self, id: M, hops: u16, payload: Option<D>, now: Instant) {
        self.held.insert(id.clone(), Held { hops, since: now });
        self.held_order.push_back((now, id.clone()));
        while self.held.len() > MESSAGE_IDS_REMEMBERED_MAX {
            self.pop_oldest_held();
        }
        if let Some(payload) = payload {
            self.payloads.push_back((id, payload, now));
            if self.payloads.len() > PAYLOADS_CACHED_MAX {
                self.payloads.pop_front();
            }
        }
    }

    fn pop_oldest_held(&mut self) {
        if let Some((since, id)) = self.held_order.pop_front() {
            if self.held.get(&id).is_some_and(|held| held.since == since) {
                self.held.remove(&id);
            }
        }
    }

    /// Removes a missing entry with its timer; returns its announcers.
    fn take_missing(&mut self, id: &M) -> Vec<(P, u16)> {
        let Some(missing) = self.missing.remove(id) else {
            return Vec::new();
        };
        if let Some(due) = missing.due {
            self.graft_due.remove(&(due, id.clone()));
        }
        if let Some(share) = self.missing_per_peer.get_mut(&missing.creator) {
            *share -= 1;
            if *share == 0 {
                self.missing_per_peer.remove(&missing.creator);
            }
        }
        missing.announcers
    }
}
