//! A deterministic network of overlay instances, for tests only: a virtual
//! clock, per-link latency with first-in first-out delivery per ordered pair
//! (as on one stream), optional frame loss, node failures, and at each node
//! a caller that checks and stores received messages the way the sync layer
//! does (a push without payload is fetched from its sender out of band).
//! Every frame is encoded (so none exceeds a wire bound) and every
//! sixteenth decoded again and compared, so the codec is on the path. One seed fixes every random choice; each run prints it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Output, Overlay, OverlayFrame};

/// A simulated device.
pub(super) type PeerId = u32;
/// A simulated message.
pub(super) type MessageId = u64;
/// A simulated payload (stands in for an inline pack).
pub(super) type Payload = Vec<u8>;
/// The overlay as the simulator runs it.
pub(super) type SimOverlay = Overlay<PeerId, MessageId, Payload, StdRng>;
type Frame = OverlayFrame<PeerId, MessageId>;

/// One fixed origin per test process; only differences between instants
/// matter.
#[allow(clippy::disallowed_methods)]
pub(super) fn t0() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The seed a test runs with: `OVERLAY_SIM_SEED` if set, else its default.
pub(super) fn seed_or(default: u64) -> u64 {
    std::env::var("OVERLAY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// How the simulated network behaves.
#[derive(Debug, Clone)]
pub(super) struct NetConfig {
    /// One-way latency of a link, drawn per device pair in this range, in ms.
    pub latency_ms: (u64, u64),
    /// Probability that a frame is lost.
    pub loss: f64,
    /// How long a dial to a device that is down takes to fail.
    pub dial_timeout: Duration,
    /// How long a link to a device that went down takes to be reported
    /// down, drawn in this range, in ms.
    pub failure_detection_ms: (u64, u64),
}

impl NetConfig {
    /// Wide-area links, no loss: 30–60 ms one way (a continent's round
    /// trips), or the range `OVERLAY_SIM_LATENCY_MS=LO-HI` gives.
    pub fn wan() -> Self {
        let latency_ms = std::env::var("OVERLAY_SIM_LATENCY_MS")
            .ok()
            .and_then(|range| {
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                (lo <= hi).then_some((lo, hi))
            })
            .unwrap_or((30, 60));
        Self {
            latency_ms,
            loss: 0.0,
            dial_timeout: Duration::from_secs(1),
            failure_detection_ms: (200, 2_000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    NotStarted,
    Up,
    Down,
}

struct SimNode {
    overlay: SimOverlay,
    state: NodeState,
    /// Messages held, with the hop count of the copy taken.
    holds: BTreeMap<MessageId, u16>,
    /// Messages being fetched out of band.
    fetching: BTreeSet<MessageId>,
    wake: Option<Instant>,
}

#[derive(Debug)]
enum Event {
    Frame {
        from: PeerId,
        to: PeerId,
        frame: Frame,
        payload: Option<Payload>,
    },
    /// `from` closed its link to `to`.
    LinkClosed {
        from: PeerId,
        to: PeerId,
    },
    ConnectionDown {
        node: PeerId,
        peer: PeerId,
    },
    DialFailed {
        node: PeerId,
        peer: PeerId,
    },
    Wake {
        node: PeerId,
    },
    FetchDone {
        node: PeerId,
        from: PeerId,
        id: MessageId,
        hops: u16,
    },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What crossed the simulated wire.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    /// Frames sent, by kind.
    pub frames: BTreeMap<&'static str, u64>,
    /// Payload-carrying pushes delivered to a live device, per message.
    pub payload_copies: BTreeMap<MessageId, u64>,
    /// Frames whose receiver refused them, by reason.
    pub refused: BTreeMap<String, u64>,
}

/// One broadcast's outcome.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    /// Live devices (besides the author) that hold it.
    pub reached: usize,
    /// Live devices besides the author.
    pub expected: usize,
    /// The deepest delivery, in hops.
    pub last_delivery_hops: u16,
    /// Every live device's delivery depth, in hops.
    pub hops: Vec<u16>,
    /// Relative message redundancy: payload copies received / (n−1) − 1.
    pub rmr: f64,
}

/// The simulated network.
pub(super) struct Sim {
    pub seed: u64,
    rng: StdRng,
    now: Instant,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    /// When the last frame queued on each ordered pair arrives.
    link_clear_at: HashMap<(PeerId, PeerId), Instant>,
    /// Membership frames (and link closes) in flight per unordered pair.
    membership_in_flight: HashMap<(PeerId, PeerId), u32>,
    dial_failures_pending: BTreeSet<(PeerId, PeerId)>,
    frames_sent: u64,
    config: NetConfig,
    pub traffic: Traffic,
    /// Each broadcast's author.
    authors: BTreeMap<MessageId, PeerId>,
}

impl Sim {
    /// `n` devices, none started, each knowing all `n` as members.
    pub fn new(n: usize, seed: u64, config: NetConfig) -> Self {
        eprintln!(
            "overlay sim: {n} devices, seed {seed} (re-run with OVERLAY_SIM_SEED={seed}), \
             one-way latency {}-{} ms",
            config.latency_ms.0, config.latency_ms.1
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let now = t0();
        let members: Vec<PeerId> = (0..n as PeerId).collect();
        let nodes = (0..n as PeerId)
            .map(|id| {
                let mut overlay = Overlay::new(id, StdRng::seed_from_u64(rng.gen()), now);
                overlay
                    .set_members(members.iter().copied(), now)
                    .expect("a simulated swarm is within the member bound");
                SimNode {
                    overlay,
                    state: NodeState::NotStarted,
                    holds: BTreeMap::new(),
                    fetching: BTreeSet::new(),
                    wake: None,
                }
            })
            .collect();
        Self {
            seed,
            rng,
            now,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            link_clear_at: HashMap::new(),
            membership_in_flight: HashMap::new(),
            dial_failures_pending: BTreeSet::new(),
            frames_sent: 0,
            config,
            traffic: Traffic::default(),
            authors: BTreeMap::new(),
        }
    }

    pub fn overlay(&self, node: PeerId) -> &SimOverlay {
        &self.nodes[node as usize].overlay
    }

    pub fn is_up(&self, node: PeerId) -> bool {
        self.nodes[node as usize].state == NodeState::Up
    }

    pub fn not_started(&self, node: PeerId) -> bool {
        self.nodes[node as usize].state == NodeState::NotStarted
    }

    pub fn up_nodes(&self) -> Vec<PeerId> {
        (0..self.nodes.len() as PeerId)
            .filter(|n| self.is_up(*n))
            .collect()
    }

    /// A random device that is up.
    pub fn random_up_node(&mut self) -> PeerId {
        let up = self.up_nodes();
        up[self.rng.gen_range(0..up.len())]
    }

    /// Starts `node`, joining through `contact` if given.
    pub fn start(&mut self, node: PeerId, contact: Option<PeerId>) {
        let now = self.now;
        let sim_node = &mut self.nodes[node as usize];
        assert_eq!(sim_node.state, NodeState::NotStarted);
        sim_node.state = NodeState::Up;
        if let Some(contact) = contact {
            sim_node
                .overlay
                .join(contact, now)
                .expect("contacts are members");
        }
        self.after_input(node);
    }

    /// Starts every device in turn, `stagger` apart, each joining through a
    /// random device already up.
    pub fn start_all(&mut self, stagger: Duration) {
        self.start(0, None);
        for node in 1..self.nodes.len() as PeerId {
            self.run_for(stagger);
            let contact = self.random_up_node();
            self.start(node, Some(contact));
        }
    }

    /// `node` fails: its links are reported down to its neighbours after a
    /// detection delay, and dials to it fail from now on.
    pub fn fail(&mut self, node: PeerId) {
        self.nodes[node as usize].state = NodeState::Down;
        let neighbours: Vec<PeerId> = (0..self.nodes.len() as PeerId)
            .filter(|n| self.is_up(*n) && self.overlay(*n).is_neighbor(&node))
            .collect();
        for neighbour in neighbours {
            let (lo, hi) = self.config.failure_detection_ms;
            let delay = Duration::from_millis(self.rng.gen_range(lo..=hi));
            self.schedule(
                self.now + delay,
                Event::ConnectionDown {
                    node: neighbour,
                    peer: node,
                },
            );
        }
    }

    /// `node` leaves the conversation's overlay.
    pub fn leave(&mut self, node: PeerId) {
        let now = self.now;
        self.nodes[node as usize].overlay.leave(now);
        self.after_input(node);
    }

    /// Replaces `node`'s member list.
    pub fn set_members(&mut self, node: PeerId, members: &[PeerId]) {
        let now = self.now;
        self.nodes[node as usize]
            .overlay
            .set_members(members.iter().copied(), now)
            .expect("within the member bound");
        self.after_input(node);
    }

    /// `node` writes message `id` and broadcasts it with a small payload.
    pub fn broadcast(&mut self, node: PeerId, id: MessageId) {
        let now = self.now;
        self.authors.insert(id, node);
        let sim_node = &mut self.nodes[node as usize];
        sim_node.holds.insert(id, 0);
        sim_node
            .overlay
            .broadcast(id, Some(id.to_be_bytes().to_vec()), now);
        self.after_input(node);
    }

    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    /// Processes every event up to `until`; the clock then reads `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(Scheduled { at, event, .. }) = self.queue.pop().expect("peeked");
            self.now = at;
            self.process(event);
        }
        self.now = until;
    }

    /// Membership frames or link closes in flight between `a` and `b`.
    pub fn membership_in_flight(&self, a: PeerId, b: PeerId) -> u32 {
        self.membership_in_flight
            .get(&(a.min(b), a.max(b)))
            .copied()
            .unwrap_or(0)
    }

    /// Pairs of live devices where one lists the other as neighbour but not
    /// the reverse, and nothing is in flight between them that could fix it.
    pub fn settled_asymmetric_links(&self) -> Vec<(PeerId, PeerId)> {
        let mut found = Vec::new();
        for a in self.up_nodes() {
            for b in self.overlay(a).active_view() {
                let b = *b;
                let mutual = self.is_up(b) && self.overlay(b).is_neighbor(&a);
                if !mutual && self.membership_in_flight(a, b) == 0 {
                    found.push((a, b));
                }
            }
        }
        found
    }

    /// Whether the live devices' active views connect them all.
    pub fn up_nodes_connected(&self) -> bool {
        let up = self.up_nodes();
        let Some(first) = up.first() else {
            return true;
        };
        let mut seen = BTreeSet::from([*first]);
        let mut todo = VecDeque::from([*first]);
        while let Some(node) = todo.pop_front() {
            for peer in self.overlay(node).active_view() {
                if self.is_up(*peer) && seen.insert(*peer) {
                    todo.push_back(*peer);
                }
            }
        }
        seen.len() == up.len()
    }

    /// The broadcast counters of every live device, summed.
    pub fn broadcast_totals(&self) -> String {
        let mut grafts = 0;
        let mut optimizations = 0;
        let mut duplicates = 0;
        let mut prunes = 0;
        let mut abandoned = 0;
        for node in self.up_nodes() {
            let stats = self.overlay(node).stats();
            grafts += stats.graft_ids_sent;
            optimizations += stats.tree_optimizations;
            duplicates += stats.duplicate_pushes;
            prunes += stats.prunes_sent;
            abandoned += stats.grafts_abandoned;
        }
        format!(
            "grafted ids {grafts}, tree optimizations {optimizations}, duplicate pushes \
             {duplicates}, prunes {prunes}, grafts abandoned {abandoned}; frames {:?}",
            self.traffic.frames
        )
    }

    /// How far message `id` got among the live devices.
    pub fn delivery(&self, id: MessageId) -> Delivery {
        let author = self.authors[&id];
        let mut hops = Vec::new();
        let mut expected = 0;
        for node in self.up_nodes() {
            if node == author {
                continue;
            }
            expected += 1;
            if let Some(h) = self.nodes[node as usize].holds.get(&id) {
                hops.push(*h);
            }
        }
        let copies = self.traffic.payload_copies.get(&id).copied().unwrap_or(0);
        Delivery {
            reached: hops.len(),
            expected,
            last_delivery_hops: hops.iter().copied().max().unwrap_or(0),
            rmr: copies as f64 / expected.max(1) as f64 - 1.0,
            hops,
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// The one-way latency between two devices, fixed per pair by the seed.
    fn latency(&self, a: PeerId, b: PeerId) -> Duration {
        let (lo, hi) = self.config.latency_ms;
        let key = (u64::from(a.min(b)) << 32) | u64::from(a.max(b));
        let mixed = splitmix64(self.seed ^ key);
        Duration::from_millis(lo + mixed % (hi - lo + 1))
    }

    /// When something sent now from `from` reaches `to`, in order behind
    /// what `from` sent `to` before.
    fn arrival(&mut self, from: PeerId, to: PeerId) -> Instant {
        let at = self.now + self.latency(from, to);
        let clear = self.link_clear_at.entry((from, to)).or_insert(at);
        *clear = (*clear).max(at);
        *clear
    }

    fn count_membership(&mut self, a: PeerId, b: PeerId, delta: i32) {
        let entry = self
            .membership_in_flight
            .entry((a.min(b), a.max(b)))
            .or_insert(0);
        *entry = entry.saturating_add_signed(delta);
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
                if is_membership(&frame) {
                    self.count_membership(from, to, -1);
                }
                if !self.is_up(to) {
                    // The receiver went down with the frame in flight: the
                    // sender's transport notices, as a failed dial would.
                    self.dial_failed_later(from, to);
                    return;
                }
                if let OverlayFrame::Push {
                    id, payload: true, ..
                } = frame
                {
                    *self.traffic.payload_copies.entry(id).or_default() += 1;
                }
                let result = self.nodes[to as usize]
                    .overlay
                    .handle_frame(from, frame, payload, now);
                if let Err(refused) = result {
                    *self.traffic.refused.entry(refused.to_string()).or_default() += 1;
                }
                self.after_input(to);
            }
            Event::LinkClosed { from, to } => {
                self.count_membership(from, to, -1);
                if self.is_up(to) {
                    self.nodes[to as usize].overlay.connection_down(from, now);
                    self.after_input(to);
                }
            }
            Event::ConnectionDown { node, peer } => {
                if self.is_up(node) {
                    self.nodes[node as usize].overlay.connection_down(peer, now);
                    self.after_input(node);
                }
            }
            Event::DialFailed { node, peer } => {
                self.dial_failures_pending.remove(&(node, peer));
                if self.is_up(node) && !self.is_up(peer) {
                    self.nodes[node as usize]
                        .overlay
                        .connection_failed(peer, now);
                    self.after_input(node);
                }
            }
            Event::Wake { node } => {
                let sim_node = &mut self.nodes[node as usize];
                if sim_node.state != NodeState::Up || sim_node.wake != Some(now) {
                    return;
                }
                sim_node.wake = None;
                sim_node.overlay.handle_timeout(now);
                self.after_input(node);
            }
            Event::FetchDone {
                node,
                from,
                id,
                hops,
            } => {
                if !self.is_up(node) {
                    return;
                }
                let fetched = self.is_up(from);
                let sim_node = &mut self.nodes[node as usize];
                sim_node.fetching.remove(&id);
                if fetched && !sim_node.holds.contains_key(&id) {
                    sim_node.holds.insert(id, hops);
                    sim_node.overlay.message_accepted(id, None, now);
                } else if fetched {
                    sim_node.overlay.message_already_held(id, now);
                } else {
                    sim_node.overlay.message_refused(id, now);
                }
                self.after_input(node);
            }
        }
    }

    /// Carries out everything `node`'s overlay asked for, then sets its
    /// next wake-up.
    fn after_input(&mut self, node: PeerId) {
        let now = self.now;
        if self.nodes[node as usize].state != NodeState::Up {
            // A device that is off sends nothing (its overlay may still queue
            // requests when its member list is set before it starts).
            while self.nodes[node as usize].overlay.poll_output().is_some() {}
            return;
        }
        while let Some(output) = self.nodes[node as usize].overlay.poll_output() {
            match output {
                Output::Send { to, frame, payload } => self.transmit(node, to, frame, payload),
                Output::Disconnect { peer } => {
                    if self.nodes[peer as usize].state != NodeState::Down {
                        self.count_membership(node, peer, 1);
                        let at = self.arrival(node, peer);
                        self.schedule(
                            at,
                            Event::LinkClosed {
                                from: node,
                                to: peer,
                            },
                        );
                    }
                }
                Output::NeighborUp { .. } | Output::NeighborDown { .. } => {}
                Output::Received {
                    from,
                    id,
                    hops,
                    payload,
                } => {
                    let sim_node = &mut self.nodes[node as usize];
                    let held = sim_node.holds.contains_key(&id);
                    if held {
                        sim_node.overlay.message_already_held(id, now);
                    } else if payload.is_some() {
                        sim_node.holds.insert(id, hops);
                        sim_node.overlay.message_accepted(id, None, now);
                    } else if sim_node.fetching.insert(id) {
                        // Out of band, as a Git fetch: one round trip.
                        let at = now + 2 * self.latency(node, from);
                        self.schedule(
                            at,
                            Event::FetchDone {
                                node,
                                from,
                                id,
                                hops,
                            },
                        );
                    }
                }
            }
        }
        let sim_node = &mut self.nodes[node as usize];
        if sim_node.state != NodeState::Up {
            return;
        }
        if let Some(at) = sim_node.overlay.poll_timeout() {
            let at = at.max(now);
            if sim_node.wake.is_none_or(|wake| at < wake) {
                sim_node.wake = Some(at);
                self.schedule(at, Event::Wake { node });
            }
        }
    }

    fn transmit(&mut self, from: PeerId, to: PeerId, frame: Frame, payload: Option<Payload>) {
        *self.traffic.frames.entry(frame.kind()).or_default() += 1;
        // Every frame must fit the wire; every sixteenth also crosses it
        // through the decoder (JSON would dominate a debug run otherwise).
        let bytes = frame.encode().expect("the overlay's own frames encode");
        self.frames_sent += 1;
        if self.frames_sent % 16 == 0 {
            let decoded = Frame::decode(&bytes[4..]).expect("the overlay's own frames decode");
            assert_eq!(decoded, frame, "a frame survives the wire");
        }
        if self.nodes[to as usize].state != NodeState::Up {
            self.dial_failed_later(from, to);
            return;
        }
        if self.config.loss > 0.0 && self.rng.gen_bool(self.config.loss) {
            return;
        }
        if is_membership(&frame) {
            self.count_membership(from, to, 1);
        }
        let at = self.arrival(from, to);
        self.schedule(
            at,
            Event::Frame {
                from,
                to,
                frame,
                payload,
            },
        );
    }
}

impl Sim {
    /// Reports to `node`, a dial timeout from now, that `peer` cannot be
    /// reached (once per pair at a time).
    fn dial_failed_later(&mut self, node: PeerId, peer: PeerId) {
        if self.dial_failures_pending.insert((node, peer)) {
            let at = self.now + self.config.dial_timeout;
            self.schedule(at, Event::DialFailed { node, peer });
        }
    }
}

fn is_membership(frame: &Frame) -> bool {
    matches!(
        frame,
        OverlayFrame::Join
            | OverlayFrame::Neighbor { .. }
            | OverlayFrame::NeighborReply { .. }
            | OverlayFrame::Disconnect { .. }
    )
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value below which `share` of `values` lie (nearest rank).
pub(super) fn percentile(values: &[f64], share: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
