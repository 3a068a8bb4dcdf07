//! The virtual network: quinn's [`AsyncUdpSocket`] over an in-process fabric
//! with per-link latency, jitter, loss, bandwidth and MTU, named groups that
//! can be partitioned and healed, single link cuts, and sockets that vanish
//! when their node crashes.
//!
//! Every datagram a node sends goes through one router thread (its own tokio
//! runtime): the router decides its fate against the fabric's state at send
//! time (cut, too large, lost, queue full) and, if it survives, delivers it
//! to whatever socket is bound at the destination once its latency, jitter
//! and the link's serialisation delay have passed. A datagram for an address
//! nobody holds (a crashed node) is dropped, as UDP would drop it. Loss and
//! jitter draw from one seeded RNG in the order datagrams reach the router;
//! that order depends on thread timing, so the same seed replays the same
//! scenario decisions (topology, traffic, faults, churn) but not the same
//! per-datagram losses.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use starling_actors::transport::socket::{poll_recv_datagrams, Datagram};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::scenario::LinkSpec;

/// Datagrams waiting for the router; more are dropped (counted as `router`).
pub const ROUTER_QUEUE_DATAGRAMS_MAX: usize = 65_536;
/// Datagrams queued at one socket before further ones are dropped.
pub const SOCKET_QUEUE_DATAGRAMS_MAX: usize = 4_096;
/// Longest a datagram may wait behind others on a bandwidth-limited link;
/// beyond it the link's queue is full and the datagram is dropped (`queue`).
pub const LINK_QUEUE_DELAY_MAX: Duration = Duration::from_millis(500);

/// The port every simulated node listens on.
pub const NODE_PORT: u16 = 4433;

/// The address of node `index`: `10.x.y.z:4433`.
pub fn node_addr(index: usize) -> SocketAddr {
    let i = index as u32 + 1;
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], NODE_PORT))
}

struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    /// When the node sent it: the router may see it later, when it is busy.
    sent_at: Instant,
}

/// Why datagrams were dropped, with counts and bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DropCounts {
    /// Link cut (partition or single cut).
    pub cut: u64,
    /// Random loss.
    pub loss: u64,
    /// Larger than the link's MTU.
    pub mtu: u64,
    /// Bandwidth-limited link's queue full.
    pub queue: u64,
    /// Router or socket queue full.
    pub overrun: u64,
    /// Nobody bound at the destination (crashed node).
    pub unbound: u64,
}

/// Running totals of the fabric.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FabricTotals {
    /// Bytes each node sent (UDP payload), by node index.
    pub sent_bytes: Vec<u64>,
    /// Bytes each node received.
    pub received_bytes: Vec<u64>,
    /// Bytes sent from group a to group b: `[a][b]`.
    pub group_bytes: Vec<Vec<u64>>,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams dropped, by reason.
    pub dropped: DropCounts,
    /// How late datagrams were delivered against their links' schedule.
    pub lateness: Lateness,
}

/// How late the fabric delivered datagrams against the schedule its links
/// set: the simulator's own timekeeping. Every node shares the machine's
/// cores with the router; when they starve it, every link is slower than
/// configured, and a run's timings measure the machine as much as the
/// protocol. A log-scale histogram (4 buckets per doubling, from 1 µs), so
/// it stays small however long the run.
#[derive(Debug, Clone, Default)]
pub struct Lateness {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

/// Buckets of [`Lateness`]: 4 per doubling up to 2^32 µs (over an hour).
const LATENESS_BUCKETS: usize = 4 * 32;

impl Lateness {
    /// Counts one delivery `late` behind schedule.
    pub fn record(&mut self, late: Duration) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENESS_BUCKETS];
        }
        let micros = late.as_micros().min(u128::from(u64::MAX)) as f64;
        let bucket = ((micros + 1.0).log2() * 4.0) as usize;
        self.buckets[bucket.min(LATENESS_BUCKETS - 1)] += 1;
        self.count += 1;
        self.max = self.max.max(late);
    }

    /// Deliveries counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile, as the upper bound of its bucket (at most 19 %
    /// above the true value), never above the largest seen.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.count - 1) as f64 * q).round() as u64;
        let mut seen = 0;
        for (bucket, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen > rank {
                let upper = 2f64.powf((bucket + 1) as f64 / 4.0) - 1.0;
                return Duration::from_secs_f64(upper / 1e6).min(self.max);
            }
        }
        self.max
    }

    /// The largest lateness seen.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Serialize for Lateness {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Summary {
            count: u64,
            p50_ms: f64,
            p99_ms: f64,
            max_ms: f64,
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Summary {
            count: self.count,
            p50_ms: ms(self.quantile(0.5)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max),
        }
        .serialize(serializer)
    }
}

struct State {
    /// Address → (node index, inbox).
    sockets: HashMap<SocketAddr, (usize, mpsc::Sender<Datagram>)>,
    addr_node: HashMap<SocketAddr, usize>,
    node_group: Vec<usize>,
    /// Link spec between groups `[a][b]`.
    links: Vec<Vec<LinkSpec>>,
    /// Cut group pairs (a < b).
    partitions: BTreeSet<(usize, usize)>,
    /// Cut node pairs (a < b).
    cuts: BTreeSet<(usize, usize)>,
    /// When each directed node pair's link is free again (bandwidth).
    busy_until: HashMap<(usize, usize), Instant>,
    rng: StdRng,
    totals: FabricTotals,
}

fn ordered(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The fabric: cheap to clone, shared by every socket and the runner.
#[derive(Clone)]
pub struct Fabric {
    state: Arc<Mutex<State>>,
    router: mpsc::Sender<InFlight>,
}

impl fmt::Debug for Fabric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fabric").finish_non_exhaustive()
    }
}

impl Fabric {
    /// A fabric for nodes in groups `node_group[i]`, with `links[a][b]`
    /// between groups, its router on its own thread. The router stops when
    /// every clone of the fabric is dropped.
    pub fn start(node_group: Vec<usize>, links: Vec<Vec<LinkSpec>>, seed: u64) -> io::Result<Self> {
        let groups = links.len();
        let nodes = node_group.len();
        let addr_node = (0..nodes).map(|i| (node_addr(i), i)).collect();
        let state = Arc::new(Mutex::new(State {
            sockets: HashMap::new(),
            addr_node,
            node_group,
            links,
            partitions: BTreeSet::new(),
            cuts: BTreeSet::new(),
            busy_until: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            totals: FabricTotals {
                sent_bytes: vec![0; nodes],
                received_bytes: vec![0; nodes],
                group_bytes: vec![vec![0; groups]; groups],
                ..FabricTotals::default()
            },
        }));
        let (router, inbox) = mpsc::channel(ROUTER_QUEUE_DATAGRAMS_MAX);
        let routed = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("sim-fabric".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime with timers builds");
                runtime.block_on(route(routed, inbox));
            })?;
        Ok(Self { state, router })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds node `index`'s socket (again, after a restart).
    pub fn bind(&self, index: usize) -> Arc<SimSocket> {
        let addr = node_addr(index);
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE_DATAGRAMS_MAX);
        self.lock().sockets.insert(addr, (index, tx));
        Arc::new(SimSocket {
            addr,
            fabric: self.clone(),
            inbox: Mutex::new(rx),
        })
    }

    /// Removes node `index`'s socket: datagrams to it are dropped from now on.
    pub fn unbind(&self, index: usize) {
        self.lock().sockets.remove(&node_addr(index));
    }

    /// Cuts (`cut = true`) or restores every link between groups `a` and `b`.
    pub fn set_partition(&self, a: usize, b: usize, cut: bool) {
        let mut s = self.lock();
        if cut {
            s.partitions.insert(ordered(a, b));
        } else {
            s.partitions.remove(&ordered(a, b));
        }
    }

    /// Cuts or restores the link between nodes `a` and `b`.
    pub fn set_cut(&self, a: usize, b: usize, cut: bool) {
        let mut s = self.lock();
        if cut {
            s.cuts.insert(ordered(a, b));
        } else {
            s.cuts.remove(&ordered(a, b));
        }
    }

    /// A copy of the running totals.
    pub fn totals(&self) -> FabricTotals {
        self.lock().totals.clone()
    }

    fn send(&self, datagram: InFlight) {
        if self.router.try_send(datagram).is_err() {
            self.lock().totals.dropped.overrun += 1;
        }
    }
}

/// Where a datagram goes and when, or why it does not.
enum Fate {
    Deliver(Instant),
    Drop,
}

fn decide(s: &mut State, d: &InFlight, now: Instant) -> Fate {
    let (Some(&from), Some(&to)) = (s.addr_node.get(&d.from), s.addr_node.get(&d.to)) else {
        s.totals.dropped.unbound += 1;
        return Fate::Drop;
    };
    if !s.sockets.contains_key(&d.from) {
        // Sent by a node that has crashed since: it never left.
        s.totals.dropped.unbound += 1;
        return Fate::Drop;
    }
    let (ga, gb) = (s.node_group[from], s.node_group[to]);
    let len = d.bytes.len() as u64;
    s.totals.sent_bytes[from] += len;
    s.totals.group_bytes[ga][gb] += len;
    if s.partitions.contains(&ordered(ga, gb)) || s.cuts.contains(&ordered(from, to)) {
        s.totals.dropped.cut += 1;
        return Fate::Drop;
    }
    let link = s.links[ga][gb];
    if d.bytes.len() > link.mtu_bytes {
        s.totals.dropped.mtu += 1;
        return Fate::Drop;
    }
    if link.loss > 0.0 && s.rng.gen_bool(link.loss) {
        s.totals.dropped.loss += 1;
        return Fate::Drop;
    }
    let mut departs = now;
    if link.bandwidth_kbps > 0 {
        let busy = s.busy_until.entry((from, to)).or_insert(now);
        let start = (*busy).max(now);
        if start - now > LINK_QUEUE_DELAY_MAX {
            s.totals.dropped.queue += 1;
            return Fate::Drop;
        }
        let serialise =
            Duration::from_secs_f64(len as f64 * 8.0 / (link.bandwidth_kbps as f64 * 1_000.0));
        *busy = start + serialise;
        departs = start + serialise;
    }
    let jitter = if link.jitter_ms > 0.0 {
        s.rng.gen_range(0.0..link.jitter_ms)
    } else {
        0.0
    };
    Fate::Deliver(departs + Duration::from_secs_f64((link.latency_ms + jitter) / 1_000.0))
}

struct Scheduled {
    at: Instant,
    seq: u64,
    /// How long the datagram waited for the router before `at` was set.
    queued: Duration,
    datagram: InFlight,
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

async fn route(state: std::sync::Weak<Mutex<State>>, mut inbox: mpsc::Receiver<InFlight>) {
    let mut pending: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = pending.peek().map(|Reverse(s)| s.at);
        tokio::select! {
            received = inbox.recv() => {
                let Some(datagram) = received else { return };
                let Some(state) = state.upgrade() else { return };
                let now = Instant::now();
                let fate = decide(&mut state.lock().unwrap_or_else(|p| p.into_inner()), &datagram, now);
                if let Fate::Deliver(at) = fate {
                    seq += 1;
                    let queued = now.saturating_duration_since(datagram.sent_at);
                    pending.push(Reverse(Scheduled { at, seq, queued, datagram }));
                }
            }
            () = sleep_until(next), if next.is_some() => {
                let Some(state) = state.upgrade() else { return };
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while pending.peek().is_some_and(|Reverse(p)| p.at <= now) {
                    let Reverse(Scheduled { at, queued, datagram, .. }) =
                        pending.pop().expect("peeked");
                    if deliver(&mut s, datagram) {
                        s.totals.lateness.record(queued + now.saturating_duration_since(at));
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Hands `d` to its destination's socket; whether it got there.
fn deliver(s: &mut State, d: InFlight) -> bool {
    let Some((node, inbox)) = s.sockets.get(&d.to) else {
        s.totals.dropped.unbound += 1;
        return false;
    };
    let node = *node;
    let len = d.bytes.len() as u64;
    match inbox.try_send(Datagram {
        from: d.from,
        bytes: d.bytes,
    }) {
        Ok(()) => {
            s.totals.delivered += 1;
            s.totals.received_bytes[node] += len;
            true
        }
        Err(_) => {
            s.totals.dropped.overrun += 1;
            false
        }
    }
}

/// One node's socket on the fabric.
pub struct SimSocket {
    addr: SocketAddr,
    fabric: Fabric,
    // Only quinn's endpoint driver receives; the lock is never contended.
    inbox: Mutex<mpsc::Receiver<Datagram>>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("addr", &self.addr)
            .finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        // Sends never block: a full queue drops the datagram instead, as UDP does.
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for chunk in transmit.contents.chunks(segment) {
            self.fabric.send(InFlight {
                from: self.addr,
                to: transmit.destination,
                bytes: chunk.to_vec(),
                sent_at: Instant::now(),
            });
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // A crashed node's inbox is closed: `Pending` forever, as on a dead link.
        poll_recv_datagrams(&self.inbox, self.addr, cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(from: &SimSocket, to: SocketAddr, bytes: &[u8]) {
        from.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        })
        .expect("fabric sends never fail");
    }

    async fn recv(socket: &SimSocket, within: Duration) -> Option<Vec<u8>> {
        let poll = std::future::poll_fn(|cx| {
            let mut buf = [0u8; 2_000];
            let mut meta = [RecvMeta::default()];
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket
                .poll_recv(cx, &mut bufs, &mut meta)
                .map(|r| r.map(|_| buf[..meta[0].len].to_vec()))
        });
        tokio::time::timeout(within, poll)
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    fn link(latency_ms: f64, loss: f64) -> LinkSpec {
        LinkSpec {
            latency_ms,
            loss,
            ..LinkSpec::default()
        }
    }

    #[tokio::test]
    async fn delays_partitions_heals_and_drops_for_crashed_nodes() {
        let fast = link(1.0, 0.0);
        let slow = link(80.0, 0.0);
        let fabric =
            Fabric::start(vec![0, 1], vec![vec![fast, slow], vec![slow, fast]], 1).unwrap();
        let (a, b) = (fabric.bind(0), fabric.bind(1));
        let started = Instant::now();
        send(&a, node_addr(1), b"hello");
        assert_eq!(
            recv(&b, Duration::from_secs(2)).await.as_deref(),
            Some(&b"hello"[..])
        );
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "latency applied"
        );

        fabric.set_partition(0, 1, true);
        send(&a, node_addr(1), b"cut");
        assert_eq!(recv(&b, Duration::from_millis(300)).await, None);
        fabric.set_partition(0, 1, false);
        send(&a, node_addr(1), b"healed");
        assert_eq!(
            recv(&b, Duration::from_secs(2)).await.as_deref(),
            Some(&b"healed"[..])
        );

        send(&a, node_addr(1), &[0u8; 1_600]);
        assert_eq!(
            recv(&b, Duration::from_millis(300)).await,
            None,
            "above the MTU"
        );

        fabric.unbind(1);
        send(&a, node_addr(1), b"nobody");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let totals = fabric.totals();
        assert_eq!(totals.dropped.cut, 1);
        assert_eq!(totals.dropped.mtu, 1);
        assert_eq!(totals.dropped.unbound, 1);
        assert_eq!(totals.delivered, 2);
        assert_eq!(totals.lateness.count(), 2, "every delivery is timed");
        assert_eq!(totals.group_bytes[0][1], 5 + 3 + 6 + 1_600 + 6);
    }

    #[test]
    fn lateness_quantiles_come_from_the_buckets() {
        let mut lateness = Lateness::default();
        assert_eq!(lateness.quantile(0.5), Duration::ZERO);
        for _ in 0..98 {
            lateness.record(Duration::from_micros(100));
        }
        lateness.record(Duration::from_millis(50));
        lateness.record(Duration::from_secs(3));
        let p50 = lateness.quantile(0.5);
        assert!(
            p50 >= Duration::from_micros(100) && p50 <= Duration::from_micros(120),
            "{p50:?}"
        );
        let p99 = lateness.quantile(0.99);
        assert!(
            p99 >= Duration::from_millis(50) && p99 <= Duration::from_micros(59_500),
            "{p99:?}"
        );
        assert_eq!(
            lateness.quantile(1.0),
            Duration::from_secs(3),
            "capped at the max"
        );
        assert_eq!(lateness.max(), Duration::from_secs(3));
        assert_eq!(lateness.count(), 100);
        let json = serde_json::to_value(&lateness).unwrap();
        assert_eq!(json["count"], 100);
        assert_eq!(json["max_ms"], 3000.0);
    }

    #[tokio::test]
    async fn loses_about_the_configured_share() {
        let lossy = link(0.0, 0.3);
        let fabric = Fabric::start(vec![0, 0], vec![vec![lossy]], 7).unwrap();
        let (a, _b) = (fabric.bind(0), fabric.bind(1));
        for _ in 0..2_000 {
            send(&a, node_addr(1), b"x");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lost = fabric.totals().dropped.loss;
        assert!((450..=750).contains(&lost), "lost {lost} of 2000 at 30%");
    }
}
