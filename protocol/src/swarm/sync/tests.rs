//! A deterministic network of [`SwarmSync`] instances over toy stores: a
//! virtual clock, per-link latency, groups that can be partitioned and
//! healed, device failures. Each device's store is a commit graph; a push
//! applies when the store holds its parents, a fetch copies every commit the
//! peer holds. One seed fixes every random choice; each run prints it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::swarm::dag::tips_after;
use crate::swarm::ids::CommitId;

type Peer = u32;
/// A pushed batch: the commit and its parents (its pack's bases).
type Pack = (CommitId, Vec<CommitId>);
type Sync = SwarmSync<Peer, CommitId, Pack, StdRng>;

#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn seed_or(default: u64) -> u64 {
    std::env::var("SYNC_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn commit(writer: Peer, n: u64) -> CommitId {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&writer.to_be_bytes());
    bytes[4..12].copy_from_slice(&n.to_be_bytes());
    bytes[19] = 1;
    CommitId::from_bytes(bytes)
}

/// The root every store starts from.
fn root() -> CommitId {
    CommitId::from_bytes([0; 20])
}

struct Node {
    sync: Sync,
    up: bool,
    /// Commit → parents.
    store: BTreeMap<CommitId, Vec<CommitId>>,
    tips: Vec<CommitId>,
    wake: Option<Instant>,
    written: u64,
    /// Pack-carrying pushes received, per commit.
    copies: BTreeMap<CommitId, u32>,
    fetches: u64,
}

impl Node {
    fn add(&mut self, commits: &[(CommitId, Vec<CommitId>)]) {
        let new: Vec<(CommitId, Vec<CommitId>)> = commits
            .iter()
            .filter(|(c, _)| !self.store.contains_key(c))
            .cloned()
            .collect();
        for (c, p) in &new {
            self.store.insert(*c, p.clone());
        }
        self.tips = tips_after(&self.tips, &new);
    }
}

#[derive(Debug)]
enum Event {
    Frame {
        from: Peer,
        to: Peer,
        frame: SyncFrame<Peer, CommitId>,
        payload: Option<Pack>,
    },
    Wake(Peer),
    FetchDone {
        node: Peer,
        from: Peer,
    },
    DialFailed {
        node: Peer,
        peer: Peer,
    },
}

struct Sim {
    now: Instant,
    rng: StdRng,
    nodes: Vec<Node>,
    group: Vec<u8>,
    partitioned: bool,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
    frames: u64,
}

impl Sim {
    fn new(n: usize, groups: u8, seed: u64) -> Self {
        eprintln!("sync sim: {n} devices, seed {seed} (re-run with SYNC_SIM_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        let now = t0();
        let members: Vec<Peer> = (0..n as Peer).collect();
        let nodes = (0..n as Peer)
            .map(|me| {
                let mut sync = Sync::new(me, vec![root()], StdRng::seed_from_u64(rng.gen()), now);
                sync.set_members(members.iter().copied(), now).unwrap();
                Node {
                    sync,
                    up: true,
                    store: BTreeMap::from([(root(), vec![])]),
                    tips: vec![root()],
                    wake: None,
                    written: 0,
                    copies: BTreeMap::new(),
                    fetches: 0,
                }
            })
            .collect();
        let group = (0..n).map(|i| (i % groups as usize) as u8).collect();
        let mut sim = Self {
            now,
            rng,
            nodes,
            group,
            partitioned: false,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            frames: 0,
        };
        for node in 0..n as Peer {
            let contact = if node == 0 {
                None
            } else {
                Some(sim.rng.gen_range(0..node))
            };
            if let Some(contact) = contact {
                let now = sim.now;
                sim.nodes[node as usize].sync.join(contact, now).unwrap();
            }
            sim.after(node);
        }
        sim
    }

    fn reachable(&self, a: Peer, b: Peer) -> bool {
        self.nodes[a as usize].up
            && self.nodes[b as usize].up
            && (!self.partitioned || self.group[a as usize] == self.group[b as usize])
    }

    fn latency(&self, a: Peer, b: Peer) -> Duration {
        let x = (u64::from(a.min(b)) * 7_919 + u64::from(a.max(b)) * 104_729) % 31;
        let base = if self.group[a as usize] == self.group[b as usize] {
            5
        } else {
            30
        };
        Duration::from_millis(base + x)
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn write(&mut self, node: Peer) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        n.written += 1;
        let id = commit(node, n.written);
        let parents = n.tips.clone();
        n.add(&[(id, parents.clone())]);
        let tips = n.tips.clone();
        n.sync.authored(id, tips, Some((id, parents)), now);
        self.after(node);
    }

    fn after(&mut self, node: Peer) {
        let now = self.now;
        if !self.nodes[node as usize].up {
            while self.nodes[node as usize].sync.poll_output().is_some() {}
            return;
        }
        while let Some(output) = self.nodes[node as usize].sync.poll_output() {
            match output {
                SyncOutput::Send { to, frame, payload } => {
                    self.frames += 1;
                    if self.reachable(node, to) {
                        let at = now + self.latency(node, to);
                        self.schedule(
                            at,
                            Event::Frame {
                                from: node,
                                to,
                                frame,
                                payload,
                            },
                        );
                    } else {
                        let at = now + Duration::from_secs(1);
                        self.schedule(at, Event::DialFailed { node, peer: to });
                    }
                }
                SyncOutput::Received {
                    from,
                    id,
                    hops,
                    payload,
                } => {
                    let n = &mut self.nodes[node as usize];
                    if payload.is_some() {
                        *n.copies.entry(id).or_default() += 1;
                    }
                    if n.store.contains_key(&id) {
                        n.sync.push_already_held(id, now);
                    } else {
                        match payload {
                            Some((c, parents)) => {
                                let missing: Vec<CommitId> = parents
                                    .iter()
                                    .filter(|p| !n.store.contains_key(p))
                                    .copied()
                                    .collect();
                                if missing.is_empty() {
                                    n.add(&[(c, parents)]);
                                    let tips = n.tips.clone();
                                    n.sync.push_applied(id, tips, now);
                                } else {
                                    let pack = (c, parents);
                                    n.sync
                                        .push_waits_for_bases(from, id, hops, pack, missing, now);
                                }
                            }
                            None => n.sync.push_needs_fetch(from, id, now),
                        }
                    }
                }
                SyncOutput::CheckTips { from, tips, round } => {
                    let n = &mut self.nodes[node as usize];
                    let lacking = tips
                        .into_iter()
                        .filter(|t| !n.store.contains_key(t))
                        .collect();
                    n.sync.tips_checked(from, round, lacking, now);
                }
                SyncOutput::Fetch { peer, .. } => {
                    self.nodes[node as usize].fetches += 1;
                    let at = now + 2 * self.latency(node, peer) + Duration::from_millis(20);
                    self.schedule(at, Event::FetchDone { node, from: peer });
                }
                SyncOutput::Disconnect { .. }
                | SyncOutput::NeighborUp { .. }
                | SyncOutput::NeighborDown { .. } => {}
            }
        }
        let at = self.nodes[node as usize].sync.poll_timeout().max(now);
        let n = &mut self.nodes[node as usize];
        if n.wake.is_none_or(|w| at < w || w < now) {
            n.wake = Some(at);
            self.schedule(at, Event::Wake(node));
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let event = self.events.remove(&seq).expect("scheduled");
            self.process(event);
        }
        self.now = until;
    }

    fn process(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Frame {
                from,
                to,
                frame,
                payload,
            } => {
                if !self.reachable(from, to) {
                    return;
                }
                let _ = self.nodes[to as usize]
                    .sync
                    .handle_frame(from, frame, payload, now);
                self.after(to);
            }
            Event::Wake(node) => {
                let n = &mut self.nodes[node as usize];
                if !n.up || n.wake != Some(now) {
                    return;
                }
                n.wake = None;
                n.sync.handle_timeout(now);
                self.after(node);
            }
            Event::FetchDone { node, from } => {
                if !self.nodes[node as usize].up {
                    return;
                }
                let ok = self.reachable(node, from);
                if ok {
                    let theirs: Vec<(CommitId, Vec<CommitId>)> = self.nodes[from as usize]
                        .store
                        .iter()
                        .map(|(c, p)| (*c, p.clone()))
                        .collect();
                    // Parents first: ids grow with each writer's count, and
                    // `add` takes any order anyway (tips are recomputed).
                    self.nodes[node as usize].add(&theirs);
                }
                let n = &mut self.nodes[node as usize];
                let held: BTreeSet<CommitId> = n
                    .sync
                    .wanted()
                    .into_iter()
                    .filter(|w| n.store.contains_key(w))
                    .collect();
                let tips = n.tips.clone();
                n.sync.fetch_finished(from, ok, &held, tips, now);
                self.after(node);
            }
            Event::DialFailed { node, peer } => {
                if self.nodes[node as usize].up && !self.reachable(node, peer) {
                    self.nodes[node as usize].sync.connection_failed(peer, now);
                    self.after(node);
                }
            }
        }
    }

    fn cut(&mut self) {
        self.partitioned = true;
        let now = self.now;
        let n = self.nodes.len() as Peer;
        for a in 0..n {
            for b in 0..n {
                if a != b
                    && self.group[a as usize] != self.group[b as usize]
                    && self.nodes[a as usize].sync.overlay().is_neighbor(&b)
                {
                    self.nodes[a as usize].sync.connection_down(b, now);
                }
            }
            self.after(a);
        }
    }

    fn fail(&mut self, node: Peer) {
        self.nodes[node as usize].up = false;
        let now = self.now;
        for other in 0..self.nodes.len() as Peer {
            if self.nodes[other as usize].up
                && self.nodes[other as usize].sync.overlay().is_neighbor(&node)
            {
                self.nodes[other as usize].sync.connection_down(node, now);
                self.after(other);
            }
        }
    }

    fn up(&self) -> Vec<Peer> {
        (0..self.nodes.len() as Peer)
            .filter(|n| self.nodes[*n as usize].up)
            .collect()
    }

    /// Whether every device that is up holds the same commits.
    fn converged(&self) -> bool {
        let up = self.up();
        let first = &self.nodes[up[0] as usize].tips;
        up.iter().all(|n| self.nodes[*n as usize].tips == *first)
    }

    fn all_written(&self) -> BTreeSet<CommitId> {
        self.nodes
            .iter()
            .flat_map(|n| n.store.keys().copied())
            .collect()
    }

    /// Runs until every device that is up converged, at most `max`; the time
    /// it took.
    fn settle(&mut self, max: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start < max {
            if self.converged() {
                return Some(self.now - start);
            }
            self.run_for(Duration::from_millis(100));
        }
        self.converged().then(|| self.now - start)
    }
}

fn writes(sim: &mut Sim, writers: &[Peer], messages: usize, over: Duration) {
    let step = over / messages as u32;
    for i in 0..messages {
        let w = writers[i % writers.len()];
        if sim.nodes[w as usize].up {
            sim.write(w);
        }
        sim.run_for(step);
    }
}

#[test]
fn a_swarm_partitioned_in_two_converges_after_the_heal_from_neighbours_only() {
    let n = sync_sim_size(200, 60);
    let mut sim = Sim::new(n, 2, seed_or(7));
    sim.run_for(Duration::from_secs(20));
    let writers: Vec<Peer> = (0..20).collect();
    writes(&mut sim, &writers, 100, Duration::from_secs(10));
    assert!(
        sim.settle(Duration::from_secs(30)).is_some(),
        "before the cut"
    );
    sim.cut();
    writes(&mut sim, &writers, 200, Duration::from_secs(20));
    sim.run_for(Duration::from_secs(10));
    let fetches_before: u64 = sim.nodes.iter().map(|n| n.fetches).sum();
    sim.partitioned = false;
    let took = sim
        .settle(Duration::from_secs(120))
        .expect("every device holds every commit after the heal");
    let fetches: u64 = sim.nodes.iter().map(|n| n.fetches).sum::<u64>() - fetches_before;
    let all = sim.all_written();
    for node in &sim.nodes {
        assert_eq!(node.store.len(), all.len(), "nothing is lost");
    }
    eprintln!(
        "{n} devices: converged {:.1} s after the heal, {:.2} fetches per device",
        took.as_secs_f64(),
        fetches as f64 / n as f64
    );
    // The two overlays become one again: later messages travel as pushes
    // across the former cut, with few fetches.
    sim.run_for(Duration::from_secs(90));
    let bridged = (0..n as Peer).any(|a| {
        sim.nodes[a as usize]
            .sync
            .overlay()
            .active_view()
            .iter()
            .any(|b| sim.group[*b as usize] != sim.group[a as usize])
    });
    assert!(bridged, "no neighbour link crosses the healed cut");
    let fetches_before: u64 = sim.nodes.iter().map(|n| n.fetches).sum();
    writes(&mut sim, &writers, 50, Duration::from_secs(10));
    sim.settle(Duration::from_secs(30))
        .expect("later messages reach every device");
    let later_fetches: u64 = sim.nodes.iter().map(|n| n.fetches).sum::<u64>() - fetches_before;
    let stats = |f: fn(&SyncStats) -> u64| sim.nodes.iter().map(|n| f(n.sync.stats())).sum::<u64>();
    eprintln!(
        "after bridging: {later_fetches} fetches for 50 messages on {n} devices \
         (in all: {} pushes applied, {} after waiting for bases, {} fetched instead)",
        stats(|s| s.pushes_applied),
        stats(|s| s.pushes_waited),
        stats(|s| s.pushes_fetched)
    );
    assert!(
        (later_fetches as usize) < n * 50 / 10,
        "{later_fetches} fetches: messages do not travel as pushes"
    );
    let active: Vec<usize> = sim
        .nodes
        .iter()
        .map(|n| n.sync.overlay().active_view().len())
        .collect();
    assert!(active
        .iter()
        .all(|a| *a <= crate::swarm::limits::ACTIVE_VIEW_MAX));
}

#[test]
fn half_the_swarm_failing_at_once_leaves_the_rest_in_step() {
    let n = sync_sim_size(1_000, 100);
    let mut sim = Sim::new(n, 1, seed_or(11));
    sim.run_for(Duration::from_secs(30));
    let mut rng = StdRng::seed_from_u64(3);
    let mut ids: Vec<Peer> = (0..n as Peer).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    for node in &ids[..n / 2] {
        sim.fail(*node);
    }
    sim.run_for(Duration::from_secs(20));
    let writers: Vec<Peer> = ids[n / 2..].iter().take(10).copied().collect();
    writes(&mut sim, &writers, 40, Duration::from_secs(8));
    let took = sim
        .settle(Duration::from_secs(60))
        .expect("every survivor holds every later commit");
    let copies: Vec<u32> = sim
        .up()
        .iter()
        .flat_map(|n| sim.nodes[*n as usize].copies.values().copied())
        .collect();
    let mean = copies.iter().sum::<u32>() as f64 / copies.len().max(1) as f64;
    eprintln!(
        "{} survivors of {n}: converged in {:.1} s, {:.2} pack copies per commit received",
        n / 2,
        took.as_secs_f64(),
        mean
    );
}

/// The full size under `SYNC_SIM_FULL=1`, else a size that keeps the debug
/// test suite quick.
fn sync_sim_size(full: usize, quick: usize) -> usize {
    if std::env::var("SYNC_SIM_FULL").is_ok() {
        full
    } else {
        quick
    }
}

#[test]
fn tips_from_strangers_or_past_the_bound_are_refused_and_counted() {
    let now = t0();
    let mut sync = Sync::new(0, vec![root()], StdRng::seed_from_u64(1), now);
    sync.set_members([0, 1, 2], now).unwrap();
    while sync.poll_output().is_some() {}
    let stranger = sync.handle_frame(9, SyncFrame::Tips { tips: vec![root()] }, None, now);
    assert_eq!(stranger, Err(SyncRefused::TipsFromNonMember));
    let many = vec![root(); ANNOUNCED_HEADS_MAX + 1];
    let flood = sync.handle_frame(1, SyncFrame::Tips { tips: many }, None, now);
    assert!(matches!(flood, Err(SyncRefused::TooManyTips { .. })));
    assert_eq!(sync.stats().tips_refused, 2);
    assert!(sync.poll_output().is_none(), "a refused frame asks nothing");
    // A member's tips are checked, and the lacking ones fetched from it.
    let tip = commit(1, 1);
    sync.handle_frame(1, SyncFrame::Tips { tips: vec![tip] }, None, now)
        .unwrap();
    assert_eq!(
        sync.poll_output(),
        Some(SyncOutput::CheckTips {
            from: 1,
            tips: vec![tip],
            round: 0
        })
    );
    sync.tips_checked(1, 0, vec![tip], now);
    assert_eq!(sync.poll_output(), None, "checked again before a fetch");
    let later = now + TIPS_RECHECK_DELAY;
    sync.handle_timeout(later);
    let mut rechecked = None;
    while let Some(output) = sync.poll_output() {
        if let SyncOutput::CheckTips { round: 1, tips, .. } = output {
            rechecked = Some(tips);
        }
    }
    assert_eq!(rechecked, Some(vec![tip]));
    sync.tips_checked(1, 1, vec![tip], later);
    assert_eq!(
        sync.poll_output(),
        Some(SyncOutput::Fetch { peer: 1, want: tip })
    );
}
