//! Which peer to fetch a swarm's missing history from, and when.
//!
//! Members announce their heads on `swarm/<id>` channels, both when they
//! commit and periodically (anti-entropy). Many members announce the same
//! head, so fetching from every announcer would multiply traffic by the swarm
//! size. This scheduler turns announcements into few fetches:
//!
//! - a head we lack is *wanted*; it remembers who announced it (bounded);
//! - at most one fetch per peer and [`FETCHES_IN_FLIGHT_MAX`] in all; a fetch
//!   brings the peer's whole head, so one fetch usually satisfies many wants;
//! - a failed or timed-out fetch is retried from another announcer; when all
//!   have failed, the head waits for a fresh announcement (anti-entropy
//!   brings one), so no wanted head is ever dropped while someone offers it;
//! - after every fetch the caller says which wanted heads it now holds. A
//!   successful fetch brings the peer's *current* head, which contains
//!   everything it announced before (a peer never rewrites history), though
//!   not always the very commits: it may have moved on to an equivalent merge.
//!   So a successful fetch also withdraws the peer's earlier announcements;
//!   retrying them would fetch the same head again and again.
//!
//! Generic over the peer and head types so the rules are tested on small
//! values; time comes in as `Instant`s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Most fetches running at once for one swarm.
pub const FETCHES_IN_FLIGHT_MAX: usize = 4;
/// Most heads remembered as wanted; beyond it the newest announcement of an
/// unknown head is dropped (anti-entropy repeats it later).
pub const WANTED_HEADS_MAX: usize = 1024;
/// Most announcers remembered per wanted head.
pub const ANNOUNCERS_PER_HEAD_MAX: usize = 16;
/// A fetch that has not finished after this long counts as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Start fetching `head` (and whatever else the peer holds) from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFetch<P, H> {
    pub peer: P,
    pub head: H,
}

#[derive(Debug, Clone)]
struct Wanted<P> {
    /// Announcer → sequence number of its latest announcement of the head.
    announcers: BTreeMap<P, u64>,
    failed: BTreeSet<P>,
}

#[derive(Debug, Clone)]
struct InFlight<H> {
    head: H,
    /// Announcements numbered up to this one came before the fetch began.
    since: u64,
    deadline: Instant,
}

/// The scheduler for one swarm.
#[derive(Debug, Clone)]
pub struct FetchScheduler<P, H> {
    wanted: BTreeMap<H, Wanted<P>>,
    in_flight: BTreeMap<P, InFlight<H>>,
    /// Numbers announcements, to tell those before a fetch from those during it.
    announcements: u64,
    dropped_announcements: u64,
}

impl<P: Ord + Clone, H: Ord + Clone> Default for FetchScheduler<P, H> {
    fn default() -> Self {
        Self {
            wanted: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            announcements: 0,
            dropped_announcements: 0,
        }
    }
}

impl<P: Ord + Clone, H: Ord + Clone> FetchScheduler<P, H> {
    /// An idle scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// `peer` says its heads are `heads`; `held` says which we already hold.
    pub fn heads_announced(
        &mut self,
        peer: &P,
        heads: &[H],
        held: impl Fn(&H) -> bool,
        now: Instant,
    ) -> Vec<StartFetch<P, H>> {
        self.announcements += 1;
        let number = self.announcements;
        for head in heads {
            if held(head) {
                continue;
            }
            if !self.wanted.contains_key(head) && self.wanted.len() >= WANTED_HEADS_MAX {
                self.dropped_announcements += 1;
                continue;
            }
            let wanted = self.wanted.entry(head.clone()).or_insert_with(|| Wanted {
                announcers: BTreeMap::new(),
                failed: BTreeSet::new(),
            });
            // A fresh announcement forgives an earlier failure: the peer may
            // have been restarting.
            wanted.failed.remove(peer);
            if wanted.announcers.len() < ANNOUNCERS_PER_HEAD_MAX
                || wanted.announcers.contains_key(peer)
            {
                wanted.announcers.insert(peer.clone(), number);
            }
        }
        self.schedule(now)
    }

    /// The fetch from `peer` ended; `held` now reflects what it brought.
    pub fn fetch_finished(
        &mut self,
        peer: &P,
        succeeded: bool,
        held: impl Fn(&H) -> bool,
        now: Instant,
    ) -> Vec<StartFetch<P, H>> {
        if let Some(fetch) = self.in_flight.remove(peer) {
            if succeeded {
                // What it announced before the fetch began, it brought (or
                // something containing it); what it announced since, not yet.
                for wanted in self.wanted.values_mut() {
                    if wanted
                        .announcers
                        .get(peer)
                        .is_some_and(|n| *n <= fetch.since)
                    {
                        wanted.announcers.remove(peer);
                    }
                }
            } else if let Some(wanted) = self.wanted.get_mut(&fetch.head) {
                wanted.failed.insert(peer.clone());
            }
        }
        self.wanted
            .retain(|head, w| !held(head) && !w.announcers.is_empty());
        self.schedule(now)
    }

    /// `peer` disconnected: forget what it offered and treat its fetch as failed.
    pub fn peer_gone(&mut self, peer: &P, now: Instant) -> Vec<StartFetch<P, H>> {
        self.in_flight.remove(peer);
        for wanted in self.wanted.values_mut() {
            wanted.announcers.remove(peer);
            wanted.failed.remove(peer);
        }
        self.wanted.retain(|_, w| !w.announcers.is_empty());
        self.schedule(now)
    }

    /// Expires fetches past their deadline (as failures) and schedules more.
    pub fn tick(&mut self, now: Instant) -> Vec<StartFetch<P, H>> {
        let expired: Vec<P> = self
            .in_flight
            .iter()
            .filter(|(_, fetch)| fetch.deadline <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in expired {
            if let Some(fetch) = self.in_flight.remove(&peer) {
                if let Some(wanted) = self.wanted.get_mut(&fetch.head) {
                    wanted.failed.insert(peer);
                }
            }
        }
        self.schedule(now)
    }

    /// Heads still wanted.
    pub fn wanted(&self) -> impl Iterator<Item = &H> {
        self.wanted.keys()
    }

    /// Fetches running, as (peer, head).
    pub fn in_flight(&self) -> impl Iterator<Item = (&P, &H)> {
        self.in_flight.iter().map(|(p, fetch)| (p, &fetch.head))
    }

    /// Announcements of unknown heads dropped because [`WANTED_HEADS_MAX`] was reached.
    pub fn dropped_announcements(&self) -> u64 {
        self.dropped_announcements
    }

    fn schedule(&mut self, now: Instant) -> Vec<StartFetch<P, H>> {
        let mut started = Vec::new();
        let being_fetched: BTreeSet<H> = self.in_flight.values().map(|f| f.head.clone()).collect();
        for (head, wanted) in &self.wanted {
            if self.in_flight.len() >= FETCHES_IN_FLIGHT_MAX {
                break;
            }
            if being_fetched.contains(head) {
                continue;
            }
            let candidate = wanted
                .announcers
                .keys()
                .find(|p| !wanted.failed.contains(*p) && !self.in_flight.contains_key(*p));
            if let Some(peer) = candidate {
                self.in_flight.insert(
                    peer.clone(),
                    InFlight {
                        head: head.clone(),
                        since: self.announcements,
                        deadline: now + FETCH_TIMEOUT,
                    },
                );
                started.push(StartFetch {
                    peer: peer.clone(),
                    head: head.clone(),
                });
            }
        }
        debug_assert!(self.in_flight.len() <= FETCHES_IN_FLIGHT_MAX);
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;

    /// One fixed origin per test process; only differences between instants matter.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    #[test]
    fn many_announcers_of_one_head_cause_one_fetch() {
        let mut s = FetchScheduler::<u8, u32>::new();
        let mut started = Vec::new();
        for peer in 0..10u8 {
            started.extend(s.heads_announced(&peer, &[7], |_| false, t0()));
        }
        assert_eq!(started, vec![StartFetch { peer: 0, head: 7 }]);
        // It succeeds: nothing else is started.
        assert!(s.fetch_finished(&0, true, |h| *h == 7, t0()).is_empty());
        assert_eq!(s.wanted().count(), 0);
    }

    #[test]
    fn a_failure_moves_to_the_next_announcer_and_a_timeout_counts_as_failure() {
        let mut s = FetchScheduler::<u8, u32>::new();
        s.heads_announced(&1, &[5], |_| false, t0());
        s.heads_announced(&2, &[5], |_| false, t0());
        assert_eq!(
            s.fetch_finished(&1, false, |_| false, t0()),
            vec![StartFetch { peer: 2, head: 5 }]
        );
        let late = t0() + FETCH_TIMEOUT;
        assert!(
            s.tick(late).is_empty(),
            "both failed: wait for a fresh announcement"
        );
        assert_eq!(s.wanted().count(), 1, "but the head is still wanted");
        assert_eq!(
            s.heads_announced(&1, &[5], |_| false, late),
            vec![StartFetch { peer: 1, head: 5 }]
        );
    }

    #[test]
    fn held_heads_are_never_fetched_and_departed_peers_are_forgotten() {
        let mut s = FetchScheduler::<u8, u32>::new();
        assert!(s.heads_announced(&1, &[1, 2], |h| *h <= 2, t0()).is_empty());
        s.heads_announced(&3, &[9], |_| false, t0());
        assert!(s.peer_gone(&3, t0()).is_empty());
        assert_eq!(s.wanted().count(), 0);
        assert_eq!(s.in_flight().count(), 0);
    }

    /// The loop the simulator found: a peer announced a head, then moved on
    /// to an equivalent merge; every fetch from it succeeded without
    /// bringing that exact commit, and the head was fetched again at once,
    /// thousands of times a minute.
    #[test]
    fn a_successful_fetch_withdraws_the_peers_earlier_announcements() {
        let mut s = FetchScheduler::<u8, u32>::new();
        assert_eq!(
            s.heads_announced(&1, &[5], |_| false, t0()),
            vec![StartFetch { peer: 1, head: 5 }]
        );
        s.heads_announced(&2, &[5], |_| false, t0());
        assert_eq!(
            s.fetch_finished(&1, true, |_| false, t0()),
            vec![StartFetch { peer: 2, head: 5 }],
            "not from peer 1 again; peer 2 still offers it"
        );
        assert!(s.fetch_finished(&2, true, |_| false, t0()).is_empty());
        assert_eq!(s.wanted().count(), 0, "nobody offers it any more");
    }

    #[test]
    fn an_announcement_made_during_a_fetch_survives_it() {
        let mut s = FetchScheduler::<u8, u32>::new();
        s.heads_announced(&1, &[5], |_| false, t0());
        // Peer 1 moves on while we fetch from it.
        assert!(s.heads_announced(&1, &[6], |_| false, t0()).is_empty());
        assert_eq!(
            s.fetch_finished(&1, true, |h| *h == 5, t0()),
            vec![StartFetch { peer: 1, head: 6 }]
        );
    }

    #[derive(Debug, Clone)]
    enum Event {
        Announce { peer: u8, heads: Vec<u8> },
        Finish { peer: u8, succeeded: bool },
        Gone { peer: u8 },
        Tick { seconds: u8 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u8..8, proptest::collection::vec(0u8..32, 0..6))
                .prop_map(|(peer, heads)| Event::Announce { peer, heads }),
            (0u8..8, any::<bool>()).prop_map(|(peer, succeeded)| Event::Finish { peer, succeeded }),
            (0u8..8).prop_map(|peer| Event::Gone { peer }),
            (0u8..90).prop_map(|seconds| Event::Tick { seconds }),
        ]
    }

    proptest! {
        /// Bounds hold always; a head someone still offers is never silently lost.
        #[test]
        fn invariants_hold_under_any_schedule(events in proptest::collection::vec(event(), 0..200)) {
            let mut s = FetchScheduler::<u8, u8>::new();
            // A successful fetch from a peer brings every head it announced
            // before the fetch began, and none it announced during it.
            let held = RefCell::new(BTreeSet::<u8>::new());
            let mut offered: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
            let mut offered_at_start: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
            let mut now = t0();
            for event in events {
                let busy_before: BTreeSet<u8> = s.in_flight().map(|(p, _)| *p).collect();
                match event.clone() {
                    Event::Announce { peer, heads } => {
                        offered.entry(peer).or_default().extend(heads.iter().copied());
                        s.heads_announced(&peer, &heads, |h| held.borrow().contains(h), now);
                    }
                    Event::Finish { peer, succeeded } => {
                        if succeeded && busy_before.contains(&peer) {
                            held.borrow_mut().extend(offered_at_start.get(&peer).into_iter().flatten().copied());
                        }
                        s.fetch_finished(&peer, succeeded, |h| held.borrow().contains(h), now);
                    }
                    Event::Gone { peer } => {
                        offered.remove(&peer);
                        s.peer_gone(&peer, now);
                    }
                    Event::Tick { seconds } => {
                        now += Duration::from_secs(u64::from(seconds));
                        s.tick(now);
                    }
                }
                let in_flight: Vec<_> = s.in_flight().map(|(p, h)| (*p, *h)).collect();
                // A fetch (re)started in this step brings what its peer
                // offered so far. (After a tick, every running fetch is
                // snapshot again: generous, never stricter than the truth.)
                for (peer, _) in &in_flight {
                    let restarted = match &event {
                        Event::Finish { peer: p, .. } | Event::Gone { peer: p } => p == peer,
                        Event::Tick { .. } => true,
                        Event::Announce { .. } => false,
                    };
                    if restarted || !busy_before.contains(peer) {
                        offered_at_start.insert(*peer, offered.get(peer).cloned().unwrap_or_default());
                    }
                }
                prop_assert!(in_flight.len() <= FETCHES_IN_FLIGHT_MAX);
                let busy_peers: BTreeSet<u8> = in_flight.iter().map(|(p, _)| *p).collect();
                prop_assert_eq!(busy_peers.len(), in_flight.len(), "one fetch per peer");
                // Work-conserving: with capacity left, no wanted head waits on an idle,
                // unfailed announcer.
                if in_flight.len() < FETCHES_IN_FLIGHT_MAX {
                    for (head, wanted) in &s.wanted {
                        if in_flight.iter().any(|(_, h)| h == head) {
                            continue;
                        }
                        for peer in wanted.announcers.keys() {
                            prop_assert!(wanted.failed.contains(peer) || busy_peers.contains(peer), "head {} idles while peer {} could serve it", head, peer);
                        }
                    }
                }
                // Every unheld head some connected peer offered is still wanted.
                for heads in offered.values() {
                    for head in heads {
                        if !held.borrow().contains(head) {
                            prop_assert!(s.wanted().any(|w| w == head), "head {} was lost", head);
                        }
                    }
                }
            }
        }
    }
}
