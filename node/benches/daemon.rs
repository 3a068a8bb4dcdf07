//! Daemon benchmarks of issue #5, on real `starling up` processes on loopback
//! (the release binary `cargo bench` builds), driven through the HTTP API:
//!
//! 1. **latency**: two daemons; a message posted on one, observed on the
//!    other; p50/p99 over [`LATENCY_MESSAGES`] messages, one at a time;
//! 2. **throughput**: three daemons in one swarm; [`THROUGHPUT_CLIENTS`]
//!    concurrent HTTP clients post [`THROUGHPUT_MESSAGES`] messages to one
//!    of them; messages per second until every replica holds the last head;
//! 3. **catch-up**: a fresh member joins a swarm of [`CATCH_UP_MESSAGES`]
//!    messages (clone over QUIC, every commit validated), beside a stock
//!    `git fetch` of the same repository from a local path.
//!
//! Run with `cargo bench -p starling-node --bench daemon` (all three) or
//! `… -- latency|throughput|catch-up`. Numbers go to stdout as a table.
//! `STARLING_BENCH_SCALE=0.1` shrinks every count (a quick look).
//!
//! Observation: [`observe_message`] is the one place that decides when a
//! message "arrived" on the other daemon: the `message` event on that
//! daemon's `GET /v1/events` WebSocket, as an application would see it.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Messages timed by the latency benchmark (after [`LATENCY_WARM_UP`]).
const LATENCY_MESSAGES: usize = 1_000;
/// Messages sent before latency is timed (connections and caches warm).
const LATENCY_WARM_UP: usize = 20;
/// Messages posted by the throughput benchmark.
const THROUGHPUT_MESSAGES: usize = 5_000;
/// Concurrent HTTP clients posting them, one run per entry: a few busy
/// applications, then enough load to show the group-commit ceiling.
const THROUGHPUT_CLIENTS: [usize; 2] = [16, 64];
/// Clients that fill the catch-up benchmark's history.
const HISTORY_CLIENTS: usize = 16;
/// History a fresh member catches up on.
const CATCH_UP_MESSAGES: usize = 10_000;
/// Longest any wait in a benchmark may take before it fails.
const DEADLINE: Duration = Duration::from_secs(300);

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("STARLING_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale).round() as usize).max(1)
}

fn starling(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("STARLING_DATA_DIR")
        .env_remove("STARLING_API")
        .env_remove("STARLING_LISTEN")
        .env_remove("STARLING_PEERS")
        .output()
        .expect("the starling binary runs")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One daemon and an HTTP client (kept-alive connections) for its API.
struct Node {
    name: &'static str,
    dir: PathBuf,
    account_id: String,
    port: u16,
    child: Option<Child>,
    api: String,
    token: String,
    http: ureq::Agent,
}

impl Node {
    fn create(root: &Path, name: &'static str) -> Node {
        let dir = root.join(name);
        let created = starling(
            &dir,
            &["--json", "account", "create", "--display-name", name],
        );
        assert!(created.status.success(), "account create: {created:?}");
        let shown: Value =
            serde_json::from_slice(&starling(&dir, &["--json", "account", "show"]).stdout)
                .expect("account show prints JSON");
        Node {
            name,
            dir,
            account_id: shown["account_id"].as_str().expect("id").to_owned(),
            port: free_udp_port(),
            child: None,
            api: String::new(),
            token: String::new(),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .max_idle_connections_per_host(64)
                .build(),
        }
    }

    fn peer_addr(&self) -> String {
        format!("{}@127.0.0.1:{}", self.account_id, self.port)
    }

    fn start(&mut self, peers: &[String]) {
        let _ = std::fs::remove_file(self.dir.join("run.json"));
        let log = std::fs::File::create(self.dir.join("daemon.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["up", "--api", "127.0.0.1:0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .env_remove("STARLING_API")
            .env_remove("STARLING_LISTEN")
            .env("STARLING_PEERS", peers.join(","))
            // Loopback only: no public DHT, no mDNS.
            .env("STARLING_MDNS", "false")
            .env("STARLING_DHT", "false")
            .env(
                "STARLING_LOG",
                std::env::var("STARLING_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starling up starts");
        let run: Value = wait_for(&format!("{} to start", self.name), || {
            std::fs::read_to_string(self.dir.join("run.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .filter(|run| run["pid"] == child.id())
        });
        self.api = run["api"].as_str().expect("api").to_owned();
        self.token = std::fs::read_to_string(self.dir.join("api.token"))
            .expect("token")
            .trim()
            .to_owned();
        self.child = Some(child);
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = self
            .http
            .request(method, &format!("{}/v1{path}", self.api))
            .set("Authorization", &format!("Bearer {}", self.token));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => response.into_json().expect("JSON answer"),
            Err(e) => panic!("{} {method} {path}: {e}", self.name),
        }
    }

    fn send(&self, conversation: &str, text: &str) -> String {
        let answer = self.call(
            "POST",
            &format!("/swarms/{conversation}/messages"),
            Some(json!({ "text": text })),
        );
        answer["id"].as_str().expect("message id").to_owned()
    }

    /// Follows this daemon's event stream (`GET /v1/events`).
    fn events(&self) -> EventStream {
        use tungstenite::client::IntoClientRequest;
        let url = format!("{}/v1/events", self.api.replacen("http://", "ws://", 1));
        let mut request = url.as_str().into_client_request().expect("events URL");
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("token header"),
        );
        let (socket, _) = tungstenite::connect(request).expect("event stream");
        EventStream { socket }
    }

    fn head(&self, conversation: &str) -> Option<String> {
        let list = self.call("GET", "/swarms", None);
        list.as_array()?
            .iter()
            .find(|s| s["id"] == conversation)
            .and_then(|s| s["head"].as_str())
            .map(str::to_owned)
    }

    /// The sum of every sample of metric `name` in `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(&format!("{}/metrics", self.api))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn repository(&self, conversation: &str) -> PathBuf {
        self.dir.join("swarms").join(format!("{conversation}.git"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One daemon's event stream, read by the latency benchmark.
struct EventStream {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
}

/// Blocks until `events` carries the `message` event of message `id`, and
/// returns when it did. The one notification source of the latency benchmark.
fn observe_message(events: &mut EventStream, id: &str) -> Instant {
    loop {
        let frame = events.socket.read().expect("event stream open");
        let tungstenite::Message::Text(text) = frame else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).expect("event JSON");
        if event["type"] == "message" && event["id"] == id {
            return Instant::now();
        }
        assert_ne!(
            event["type"], "lagged",
            "the benchmark fell behind its stream"
        );
    }
}

/// Starts daemons that know each other, one swarm created by the first and
/// joined by the rest; returns them with the swarm id.
fn swarm_of(root: &Path, names: &[&'static str]) -> (Vec<Node>, String) {
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::create(root, n)).collect();
    let addrs: Vec<String> = nodes.iter().map(Node::peer_addr).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        node.start(&peers);
    }
    let id = nodes[0].call("POST", "/swarms", Some(json!({ "title": "bench" })))["id"]
        .as_str()
        .expect("swarm id")
        .to_owned();
    for member in &nodes[1..] {
        join(&nodes[0], member, &id);
    }
    (nodes, id)
}

/// `admin` invites `member`, which joins (clone over QUIC); returns the
/// time the join call took.
fn join(admin: &Node, member: &Node, id: &str) -> Duration {
    admin.call(
        "POST",
        &format!("/swarms/{id}/invites"),
        Some(json!({ "account_id": member.account_id })),
    );
    wait_for("the invitation", || {
        member
            .call("GET", "/invites", None)
            .as_array()
            .is_some_and(|list| list.iter().any(|i| i["conversation"] == id))
            .then_some(())
    });
    let began = Instant::now();
    member.call("POST", &format!("/swarms/{id}/join"), Some(json!({})));
    began.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn latency(root: &Path) -> Vec<(String, String)> {
    let (nodes, id) = swarm_of(root, &["alice", "bob"]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let mut bob_events = bob.events();
    for i in 0..LATENCY_WARM_UP {
        let sent = alice.send(&id, &format!("warm-up {i}"));
        observe_message(&mut bob_events, &sent);
    }
    let count = scaled(LATENCY_MESSAGES);
    let mut samples = Vec::with_capacity(count);
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let began = Instant::now();
        let sent = alice.send(&id, &format!("latency {i}"));
        acks.push(began.elapsed());
        samples.push(observe_message(&mut bob_events, &sent) - began);
    }
    samples.sort();
    acks.sort();
    vec![
        (
            format!("latency: API call on alice → WebSocket event on bob, p50 (n={count})"),
            ms(percentile(&samples, 0.5)),
        ),
        ("latency: p99".into(), ms(percentile(&samples, 0.99))),
        ("latency: max".into(), ms(*samples.last().expect("samples"))),
        (
            "latency: API acknowledgement (durable) on alice, p50".into(),
            ms(percentile(&acks, 0.5)),
        ),
        (
            "latency: API acknowledgement, p99".into(),
            ms(percentile(&acks, 0.99)),
        ),
    ]
}

/// Posts `count` messages to `node` from `clients` threads, each waiting
/// for its acknowledgement before its next post.
fn post_concurrently(node: &Node, id: &str, count: usize, clients: usize, label: &str) {
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let next = next.clone();
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                node.send(id, &format!("{label} {i}"));
            });
        }
    });
}

/// What one throughput run measured.
struct ThroughputRun {
    acknowledged: Duration,
    converged: Duration,
    mean_batch: f64,
    /// Fetches the other replicas made (batches whose inline pack they
    /// could not take).
    fetches: f64,
}

/// One throughput run: `count` messages from `clients` concurrent clients
/// into `nodes[0]`, timed until acknowledged and until every replica holds
/// the same head.
fn throughput_run(nodes: &[Node], id: &str, count: usize, clients: usize) -> ThroughputRun {
    let fetches = || -> f64 {
        nodes[1..]
            .iter()
            .map(|n| n.metric("starling_swarm_fetches_total"))
            .sum()
    };
    let fetches_before = fetches();
    let batches_before = nodes[0].metric("starling_swarm_batch_commits_count");
    let batched_before = nodes[0].metric("starling_swarm_batch_commits_sum");
    let began = Instant::now();
    post_concurrently(&nodes[0], id, count, clients, "throughput");
    let acknowledged = began.elapsed();
    // Converged: every replica reports the same head (re-read each time:
    // a replica that merged moves the others on).
    wait_for("replicas to converge", || {
        let heads: Vec<Option<String>> = nodes.iter().map(|n| n.head(id)).collect();
        (heads[0].is_some() && heads.windows(2).all(|w| w[0] == w[1])).then_some(())
    });
    let converged = began.elapsed();
    let batches = nodes[0].metric("starling_swarm_batch_commits_count") - batches_before;
    let batched = nodes[0].metric("starling_swarm_batch_commits_sum") - batched_before;
    ThroughputRun {
        acknowledged,
        converged,
        mean_batch: batched / batches.max(1.0),
        fetches: fetches() - fetches_before,
    }
}

fn throughput(root: &Path) -> Vec<(String, String)> {
    let (nodes, id) = swarm_of(root, &["alice", "bob", "carol"]);
    let count = scaled(THROUGHPUT_MESSAGES);
    let mut rows = Vec::new();
    for clients in THROUGHPUT_CLIENTS {
        let run = throughput_run(&nodes, &id, count, clients);
        rows.extend([
            (
                format!("throughput: {count} messages, {clients} clients → alice, all 3 converged"),
                format!("{:.0} msg/s", count as f64 / run.converged.as_secs_f64()),
            ),
            (
                format!("throughput ({clients} clients): acknowledged (durable) on alice"),
                format!("{:.0} msg/s", count as f64 / run.acknowledged.as_secs_f64()),
            ),
            (
                format!("throughput ({clients} clients): convergence lag after the last ack"),
                ms(run.converged - run.acknowledged),
            ),
            (
                format!("throughput ({clients} clients): mean commits per durable batch"),
                format!("{:.1}", run.mean_batch),
            ),
            (
                format!("throughput ({clients} clients): fetches by bob and carol"),
                format!("{:.0}", run.fetches),
            ),
        ]);
    }
    // The sequential figure, for comparison: one client, one at a time.
    let sequential = scaled(500);
    let seq_began = Instant::now();
    post_concurrently(&nodes[0], &id, sequential, 1, "sequential");
    let seq_elapsed = seq_began.elapsed();
    rows.push((
        format!("throughput: one sequential client ({sequential} messages, acked)"),
        format!("{:.0} msg/s", sequential as f64 / seq_elapsed.as_secs_f64()),
    ));
    rows
}

fn git(args: &[&str]) {
    let out = Command::new("git").args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn catch_up(root: &Path) -> Vec<(String, String)> {
    let (mut nodes, id) = swarm_of(root, &["alice"]);
    let count = scaled(CATCH_UP_MESSAGES);
    post_concurrently(&nodes[0], &id, count, HISTORY_CLIENTS, "history");
    // Dave is fresh: a new account and daemon, told where alice is.
    let mut dave = Node::create(root, "dave");
    let alice_addr = nodes[0].peer_addr();
    dave.start(&[alice_addr]);
    // Alice learns dave's address by his dialling in; wait until the
    // invitation can reach him.
    let ours = join(&nodes[0], &dave, &id);
    let held = dave.head(&id);
    assert!(held.is_some(), "dave holds the swarm after joining");
    // Stock git, same repository, same run: a local-path fetch into a fresh
    // bare repository.
    let source = nodes[0].repository(&id);
    let target = root.join("stock-fetch.git");
    git(&["init", "--quiet", "--bare", target.to_str().expect("utf-8")]);
    let began = Instant::now();
    git(&[
        "-C",
        target.to_str().expect("utf-8"),
        "fetch",
        "--quiet",
        source.to_str().expect("utf-8"),
        "refs/heads/main:refs/heads/main",
    ]);
    let stock = began.elapsed();
    nodes.push(dave);
    vec![
        (
            format!("catch-up: fresh member joins {count} messages (clone + validate + join)"),
            ms(ours),
        ),
        (
            "catch-up: stock `git fetch` from a local path".into(),
            ms(stock),
        ),
        (
            "catch-up: ratio (target ≤ 1.5)".into(),
            format!("{:.2}", ours.as_secs_f64() / stock.as_secs_f64()),
        ),
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks benchmarks.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let mut rows = Vec::new();
    type Bench = fn(&Path) -> Vec<(String, String)>;
    let benches: [(&str, Bench); 3] = [
        ("latency", latency),
        ("throughput", throughput),
        ("catch-up", catch_up),
    ];
    for (name, bench) in benches {
        if !wanted(name) {
            continue;
        }
        let root = tempfile::tempdir().expect("tmp");
        eprintln!("running {name} in {} …", root.path().display());
        if std::env::var_os("STARLING_BENCH_KEEP").is_some() {
            // Data dirs and daemon logs stay for a post-mortem.
            let kept = root.keep();
            rows.extend(bench(&kept));
        } else {
            rows.extend(bench(root.path()));
        }
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!();
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}
