//! Runs one variant of a scenario: starts every node, sets the swarm up,
//! plays the plan against the clock, waits for quiescence, then collects
//! every replica's final state for the checkers.
//!
//! Set-up (before the clock starts, not measured): node 0 creates the swarm
//! and invites every other account; each node connects to node 0, joins
//! (cloning and validating the history), then dials its topology peers;
//! once every node holds the same head, links to node 0 that the topology
//! does not have are closed. Writes go through the account actor, as the
//! API's would; faults go to the fabric or stop and start node actors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use git2::Oid;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use starling_actors::account::swarms::{
    AddPeer, CreateSwarm, Invite, Join, ListInvitations, ListSwarms, SendText, SwarmError,
};
use starling_actors::account::SyncTuning;
use starling_actors::conversation::store::{commit_id, oid, Store};
use starling_actors::transport::{Disconnect, Status, TransportLimits, UnwantPeer};
use starling_protocol::swarm::body::Mode;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::AccountIdentity;

use crate::fabric::{Fabric, FabricTotals};
use crate::node::{addr_of, prepare_dir, NodeSpec, RunningNode};
use crate::observe::{is_text, Live, Observer, Sample};
use crate::plan::{plan, purpose, sub_seed, Plan, PlannedAction};
use crate::scenario::{Scenario, Variant};

/// Joins run at once during set-up.
pub const SETUP_JOINS_PARALLEL: usize = 4;
/// Set-up (every join, then one head everywhere) fails after this many
/// seconds plus [`SETUP_SECS_PER_NODE`] per node: generous, because a loaded
/// machine (a build beside a 2x50 run) slows set-up several times over.
pub const SETUP_SECS_BASE: u64 = 60;
/// See [`SETUP_SECS_BASE`].
pub const SETUP_SECS_PER_NODE: u64 = 6;
/// Longest one actor request may take before the runner gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often connections and fabric totals are sampled.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often quiescence is checked.
const QUIESCENCE_POLL: Duration = Duration::from_millis(250);

/// How a run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// indicatif bars on stderr.
    Bars,
    /// Nothing.
    Quiet,
}

/// A message the runner asked a node to write.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Message number.
    pub n: usize,
    /// Writer.
    pub node: usize,
    /// When the writer accepted it (s); `None` if it refused.
    pub accepted_s: Option<f64>,
    /// Its commit, if accepted.
    pub id: Option<String>,
    /// Why not, if refused (the node was down, say).
    pub error: Option<String>,
}

/// Connections and wire totals at one time.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSample {
    /// Seconds since the clock started.
    pub t_s: f64,
    /// Connections per node (`None` while down).
    pub connections: Vec<Option<usize>>,
    /// Fabric totals.
    pub fabric: FabricTotals,
}

/// A replica's final state.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Node index.
    pub node: usize,
    /// Running at the end.
    pub online: bool,
    /// Repository path.
    pub path: PathBuf,
    /// Tips (empty when the repository cannot be opened).
    pub tips: Vec<Oid>,
    /// Display order of every commit (oldest first).
    pub order: Vec<Oid>,
    /// Its text messages.
    pub texts: BTreeSet<Oid>,
    /// How many of its commits are merges (more than one parent).
    pub merges: usize,
}

/// Everything a variant's run produced, for checkers and reports.
pub struct Outcome {
    /// The variant.
    pub variant: Variant,
    /// The plan played.
    pub plan: Plan,
    /// The swarm.
    pub conversation: CommitId,
    /// Writes.
    pub written: Vec<Written>,
    /// Final replicas.
    pub replicas: Vec<Replica>,
    /// Observer data.
    pub samples: Vec<Sample>,
    /// First-seen times per node.
    pub seen: Vec<std::collections::HashMap<Oid, f64>>,
    /// Connection and wire samples.
    pub stats: Vec<StatsSample>,
    /// Seconds from time zero to quiescence, if reached.
    pub quiescent_s: Option<f64>,
    /// Time of the last event.
    pub last_event_s: f64,
    /// Set-up time (s).
    pub setup_s: f64,
    /// Wall time of the whole variant (s).
    pub wall_s: f64,
    /// Commits nodes rejected (sum of `starling_swarm_commits_rejected_total`).
    pub commits_rejected: f64,
    /// Snapshots of one replica per group taken just before the first heal.
    pub heal_snapshots: Vec<(usize, PathBuf)>,
    /// The data dir (kept until the outcome is dropped).
    pub data: tempfile::TempDir,
}

struct Sim {
    scenario: Scenario,
    specs: Vec<NodeSpec>,
    nodes: Vec<Option<RunningNode>>,
    incarnations: Vec<u64>,
    fabric: Fabric,
    limits: TransportLimits,
    conversation: Option<CommitId>,
    plan: Plan,
    rejected: f64,
}

async fn ask<M, A>(addr: &actix::Addr<A>, msg: M) -> anyhow::Result<M::Result>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    tokio::time::timeout(REQUEST_TIMEOUT, addr.send(msg))
        .await
        .context("actor request timed out")?
        .context("actor mailbox")
}

impl Drop for Sim {
    /// A run that ends early (an error in set-up) stops its nodes all at
    /// once too.
    fn drop(&mut self) {
        self.crash_all();
    }
}

impl Sim {
    fn node(&self, i: usize) -> anyhow::Result<&RunningNode> {
        self.nodes[i]
            .as_ref()
            .with_context(|| format!("node {} is down", self.specs[i].name))
    }

    fn start_node(&mut self, i: usize, tuning: SyncTuning) -> anyhow::Result<()> {
        self.incarnations[i] += 1;
        let seed = sub_seed(
            self.scenario.seed,
            purpose::TRANSPORT + ((i as u64) << 8) + (self.incarnations[i] << 32),
        );
        let node = RunningNode::start(
            &self.specs[i],
            &self.fabric,
            self.limits.clone(),
            tuning,
            seed,
        )?;
        // Nodes' log lines name peers by device: this line maps them back.
        tracing::info!(node = %self.specs[i].name, device = %self.specs[i].device(), "node started");
        self.nodes[i] = Some(node);
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            self.rejected += node.counter("starling_swarm_commits_rejected_total");
            node.crash(&self.fabric, i);
        }
    }

    /// Crashes every running node, all at once.
    fn crash_all(&mut self) {
        let mut running = Vec::new();
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = slot.take() {
                self.rejected += node.counter("starling_swarm_commits_rejected_total");
                running.push((i, node));
            }
        }
        RunningNode::crash_all(running, &self.fabric);
    }

    /// Dials every topology peer node `i` is the dialer for.
    async fn dial_edges(&self, i: usize) -> anyhow::Result<()> {
        for &(a, b) in &self.plan.edges {
            if a == i {
                if let Some(node) = &self.nodes[a] {
                    ask(
                        &node.account,
                        AddPeer {
                            addr: addr_of(b),
                            account: self.specs[b].account(),
                        },
                    )
                    .await??;
                }
            }
        }
        Ok(())
    }

    async fn heads(&self) -> Vec<Option<(Vec<CommitId>, usize)>> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let head = match node {
                Some(n) => ask(&n.account, ListSwarms)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|l| l.first().map(|s| (s.tips.clone(), s.members))),
                None => None,
            };
            out.push(head);
        }
        out
    }

    async fn join(
        &self,
        i: usize,
        conversation: CommitId,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let node = self.node(i)?;
        ask(
            &node.account,
            AddPeer {
                addr: addr_of(0),
                account: self.specs[0].account(),
            },
        )
        .await??;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            let invited = match ask(&node.account, ListInvitations).await {
                Ok(list) => list?.iter().any(|inv| inv.conversation == conversation),
                Err(e) => {
                    last_error = format!("{e:#}");
                    false
                }
            };
            if invited {
                // Under load a join (a clone from the admin, who serves
                // every other joiner too) can outlast one request; it goes
                // on in the account, and asking again says when it is done.
                match ask(&node.account, Join { conversation }).await {
                    Ok(Ok(())) | Ok(Err(SwarmError::AlreadyMember(_))) => return Ok(()),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} could not join: {last_error}", self.specs[i].name)
    }

    async fn setup(&mut self, bar: &ProgressBar) -> anyhow::Result<()> {
        let n = self.specs.len();
        let admin = self.node(0)?.account.clone();
        let conversation = ask(
            &admin,
            CreateSwarm {
                mode: Mode::InvitesOnly,
                title: Some(self.scenario.name.clone()),
            },
        )
        .await??;
        self.conversation = Some(conversation);
        for spec in &self.specs[1..] {
            ask(
                &admin,
                Invite {
                    conversation,
                    account: spec.account(),
                },
            )
            .await??;
        }
        let deadline =
            Instant::now() + Duration::from_secs(SETUP_SECS_BASE + SETUP_SECS_PER_NODE * n as u64);
        let others: Vec<usize> = (1..n).collect();
        tracing::info!("invitations written");
        for chunk in others.chunks(SETUP_JOINS_PARALLEL) {
            let joins = chunk.iter().map(|&i| self.join(i, conversation, deadline));
            for r in futures::future::join_all(joins).await {
                r?;
            }
            bar.inc(chunk.len() as u64);
        }
        for i in 0..n {
            self.dial_edges(i).await?;
        }
        loop {
            let heads = self.heads().await;
            let first = heads[0].clone();
            if heads.iter().all(|h| *h == first) && first.is_some_and(|(_, m)| m == n) {
                break;
            }
            tracing::debug!(?heads, "waiting for set-up to converge");
            if Instant::now() > deadline {
                bail!("set-up did not converge: heads {heads:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("set-up converged");
        let admin_device = self.specs[0].device();
        for i in 1..n {
            if !self.plan.edges.contains(&(0, i)) {
                let node = self.node(i)?;
                ask(&node.transport, UnwantPeer { addr: addr_of(0) }).await?;
                ask(&node.transport, Disconnect { peer: admin_device }).await?;
            }
        }
        Ok(())
    }
}

fn snapshot(from: &Path, to: &Path) -> anyhow::Result<()> {
    let repo = git2::Repository::init_bare(to)?;
    let url = from.to_str().context("path is not UTF-8")?;
    repo.remote_anonymous(url)?
        .fetch(&["+refs/heads/*:refs/heads/*"], None, None)?;
    Ok(())
}

/// Runs `variant` of `scenario`.
pub fn run_variant(
    scenario: &Scenario,
    variant: &Variant,
    progress: Progress,
) -> anyhow::Result<Outcome> {
    let system = actix::System::new();
    system.block_on(run(scenario.clone(), variant.clone(), progress))
}

fn bar(progress: Progress, len: u64, what: &str) -> ProgressBar {
    match progress {
        Progress::Quiet => ProgressBar::hidden(),
        Progress::Bars => {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                )
                .expect("static template"),
            );
            bar.set_prefix(what.to_owned());
            bar
        }
    }
}

/// Data directories of this process's runs. A run that ends removes its own
/// (`TempDir`); an interrupted process does not unwind, so
/// [`remove_run_data`] removes them from its signal handler: on a tmpfs they
/// would hold RAM until someone noticed.
static LIVE_DATA: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes every run's data directory (those already gone are skipped).
/// For an interrupted process, just before it exits.
pub fn remove_run_data() {
    let dirs = LIVE_DATA
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let mut placeholders = Vec::new();
    for dir in dirs {
        // Nodes are still writing: renamed first, no path they know leads
        // into it, so nothing new appears while it is removed. A node that
        // is setting up would create its directories again under the old
        // name (libgit2 makes a repository's whole path), so a file holds
        // that name until the very end.
        let doomed = dir.with_extension("removing");
        let gone = match std::fs::rename(&dir, &doomed) {
            Ok(()) => {
                if std::fs::File::create(&dir).is_ok() {
                    placeholders.push(dir);
                }
                doomed
            }
            Err(_) => dir,
        };
        let _ = std::fs::remove_dir_all(gone);
    }
    for placeholder in placeholders {
        let _ = std::fs::remove_file(placeholder);
    }
}

/// Where nodes' data directories go: `STARLING_SIM_DATA` if set, else a
/// tmpfs (`/dev/shm`) where there is one, else the temporary directory. The
/// nodes fsync every batch and every ref as a daemon does; on a disk, a
/// hundred nodes on one machine would measure the disk, not the swarm.
fn data_root() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("STARLING_SIM_DATA") {
        return dir.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix("starling-sim-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

async fn run(scenario: Scenario, variant: Variant, progress: Progress) -> anyhow::Result<Outcome> {
    let began = Instant::now();
    let plan = plan(&scenario, &variant.topology);
    let n = plan.names.len();
    let data = tempfile::Builder::new()
        .prefix("starling-sim-")
        .tempdir_in(data_root())?;
    LIVE_DATA
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(data.path().to_owned());
    // Certificates start a minute ago so commits made now are inside them.
    let issued = SystemTime::now() - Duration::from_secs(60);
    let mut specs = Vec::with_capacity(n);
    for (i, name) in plan.names.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(sub_seed(
            scenario.seed,
            purpose::IDENTITY + ((i as u64) << 8),
        ));
        let identity = AccountIdentity::generate(name, issued, &mut rng)?;
        let dir = data.path().join("nodes").join(name);
        prepare_dir(&dir)?;
        specs.push(NodeSpec {
            index: i,
            name: name.clone(),
            group: plan.groups[i],
            identity,
            dir,
        });
    }
    let groups = scenario.groups.len();
    let links = (0..groups)
        .map(|a| (0..groups).map(|b| scenario.link_between(a, b)).collect())
        .collect();
    let fabric = Fabric::start(
        plan.groups.clone(),
        links,
        sub_seed(scenario.seed, purpose::FABRIC),
    )?;
    let s = &scenario.sync;
    let limits = TransportLimits {
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
        keep_alive: Duration::from_millis(s.keep_alive_ms),
        reconnect_backoff_max: Duration::from_millis(s.reconnect_backoff_max_ms),
        ..TransportLimits::default()
    };
    let tuning = SyncTuning {
        anti_entropy_interval: Duration::from_millis(s.anti_entropy_ms),
        ..SyncTuning::default()
    };
    let mut sim = Sim {
        scenario: scenario.clone(),
        specs,
        nodes: (0..n).map(|_| None).collect(),
        incarnations: vec![0; n],
        fabric: fabric.clone(),
        limits,
        conversation: None,
        plan: plan.clone(),
        rejected: 0.0,
    };
    let setup_bar = bar(progress, n as u64, &format!("{} setup", variant.name));
    for i in 0..n {
        sim.start_node(i, tuning.clone())?;
    }
    setup_bar.inc(1);
    sim.setup(&setup_bar).await?;
    setup_bar.finish();
    tracing::info!(
        nodes = n,
        seconds = began.elapsed().as_secs_f64(),
        "set-up done"
    );
    let conversation = sim.conversation.expect("set by setup");
    let setup_s = began.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let repos: Vec<PathBuf> = sim
        .specs
        .iter()
        .map(|s| s.repository(&conversation.to_hex()))
        .collect();
    let observer = Observer::start(repos.clone(), t0)?;
    let live = observer.live.clone();
    let stats: Arc<Mutex<Vec<StatsSample>>> = Arc::default();
    let transports: Arc<Mutex<Vec<Option<actix::Addr<starling_actors::transport::Transport>>>>> =
        Arc::new(Mutex::new(
            sim.nodes
                .iter()
                .map(|n| n.as_ref().map(|n| n.transport.clone()))
                .collect(),
        ));
    let stats_task = {
        let (stats, transports, fabric) = (stats.clone(), transports.clone(), fabric.clone());
        actix::spawn(async move {
            loop {
                let addrs = transports.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut connections = Vec::with_capacity(addrs.len());
                for addr in addrs {
                    let count = match addr {
                        Some(a) => tokio::time::timeout(Duration::from_secs(2), a.send(Status))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .map(|s| s.connections.iter().filter(|c| !c.draining).count()),
                        None => None,
                    };
                    connections.push(count);
                }
                stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(StatsSample {
                        t_s: t0.elapsed().as_secs_f64(),
                        connections,
                        fabric: fabric.totals(),
                    });
                tokio::time::sleep(STATS_INTERVAL).await;
            }
        })
    };

    let written: Arc<Mutex<Vec<Written>>> = Arc::default();
    let mut writes = Vec::new();
    let mut heal_snapshots = Vec::new();
    let events_bar = bar(
        progress,
        plan.events.len() as u64,
        &format!("{} run", variant.name),
    );
    let text_bytes = scenario.traffic.text_bytes;
    for event in &plan.events {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(event.at_s)).into()).await;
        tracing::info!(at_s = event.at_s, action = ?event.action, "event");
        match &event.action {
            PlannedAction::Write { node, n } => {
                let (node, n) = (*node, *n);
                let account = sim.nodes[node].as_ref().map(|r| r.account.clone());
                let written = written.clone();
                let mut text = format!("message {n} from {}", plan.names[node]);
                while text.len() < text_bytes {
                    text.push('.');
                }
                text.truncate(text_bytes);
                writes.push(actix::spawn(async move {
                    let result = match account {
                        None => Err("node is down".to_owned()),
                        Some(a) => match ask(
                            &a,
                            SendText {
                                conversation,
                                text,
                                reply_to: None,
                            },
                        )
                        .await
                        {
                            Ok(Ok(id)) => Ok(id),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    let t = t0.elapsed().as_secs_f64();
                    written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(match result {
                            Ok(id) => Written {
                                n,
                                node,
                                accepted_s: Some(t),
                                id: Some(id.to_hex()),
                                error: None,
                            },
                            Err(e) => Written {
                                n,
                                node,
                                accepted_s: None,
                                id: None,
                                error: Some(e),
                            },
                        });
                }));
            }
            PlannedAction::Partition { pairs, cut } => {
                if !cut && heal_snapshots.is_empty() {
                    // The raw-git baseline: one replica per group, as it is
                    // just before the heal.
                    for g in 0..groups {
                        if let Some(i) =
                            (0..n).find(|&i| plan.groups[i] == g && sim.nodes[i].is_some())
                        {
                            let to = data.path().join("baseline").join(format!("{g}.git"));
                            if snapshot(&repos[i], &to).is_ok() {
                                heal_snapshots.push((g, to));
                            }
                        }
                    }
                }
                for &(a, b) in pairs {
                    fabric.set_partition(a, b, *cut);
                }
            }
            PlannedAction::Link { a, b, cut } => fabric.set_cut(*a, *b, *cut),
            PlannedAction::Crash { node } => {
                sim.crash(*node);
                live.lock().unwrap_or_else(|p| p.into_inner()).online[*node] = false;
                transports.lock().unwrap_or_else(|p| p.into_inner())[*node] = None;
            }
            PlannedAction::Restart { node } | PlannedAction::Mute { node } => {
                let node = *node;
                let tuning = if matches!(event.action, PlannedAction::Mute { .. }) {
                    SyncTuning {
                        anti_entropy: false,
                        drop_announcements: true,
                        ..tuning.clone()
                    }
                } else {
                    tuning.clone()
                };
                sim.crash(node);
                sim.start_node(node, tuning)?;
                sim.dial_edges(node).await?;
                live.lock().unwrap_or_else(|p| p.into_inner()).online[node] = true;
                transports.lock().unwrap_or_else(|p| p.into_inner())[node] =
                    sim.nodes[node].as_ref().map(|r| r.transport.clone());
            }
        }
        events_bar.inc(1);
    }
    events_bar.finish();
    for w in writes {
        let _ = w.await;
    }
    let last_event_s = plan
        .events
        .last()
        .map(|e| e.at_s)
        .unwrap_or(0.0)
        .max(t0.elapsed().as_secs_f64());

    // Quiescence: every online node holds every accepted message and all
    // online nodes share one head — or the deadline passes.
    let deadline = t0 + Duration::from_secs_f64(last_event_s + scenario.checks.deadline_s);
    let accepted: Vec<Oid> = written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|w| w.id.as_ref().and_then(|h| Oid::from_str(h).ok()))
        .collect();
    let wait_bar = bar(progress, n as u64, &format!("{} settle", variant.name));
    let quiescent_s = loop {
        let (done, settled) = {
            let l = live.lock().unwrap_or_else(|p| p.into_inner());
            let online: Vec<usize> = (0..n).filter(|&i| l.online[i]).collect();
            let holding = online
                .iter()
                .filter(|&&i| accepted.iter().all(|c| l.seen[i].contains_key(c)))
                .count();
            let heads: BTreeSet<Option<&Vec<Oid>>> =
                online.iter().map(|&i| l.heads[i].as_ref()).collect();
            (holding, holding == online.len() && heads.len() == 1)
        };
        wait_bar.set_position(done as u64);
        if settled {
            break Some(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(QUIESCENCE_POLL).await;
    };
    wait_bar.finish();
    tracing::info!(?quiescent_s, "settled");
    stats_task.abort();
    let live = observer.stop();
    sim.crash_all();
    // Conversation actors live on their own threads and finish the message
    // they hold after their node's system stops; read replicas once no head
    // has moved for a while.
    wait_for_still_heads(&repos).await;
    let Live {
        seen,
        samples,
        online,
        ..
    } = std::mem::take(&mut *live.lock().unwrap_or_else(|p| p.into_inner()));
    let mut replicas = Vec::with_capacity(n);
    for (i, path) in repos.iter().enumerate() {
        replicas.push(read_replica(i, online[i], path)?);
    }
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(|p| p.into_inner()));
    let mut written = std::mem::take(&mut *written.lock().unwrap_or_else(|p| p.into_inner()));
    written.sort_by_key(|w| w.n);
    Ok(Outcome {
        variant,
        plan,
        conversation,
        written,
        replicas,
        samples,
        seen,
        stats,
        quiescent_s,
        last_event_s,
        setup_s,
        wall_s: began.elapsed().as_secs_f64(),
        commits_rejected: sim.rejected,
        heal_snapshots,
        data,
    })
}

/// How long every head must stay put before replicas are read.
const STILL_FOR: Duration = Duration::from_secs(3);
/// Longest wait for heads to stay put.
const STILL_WAIT_MAX: Duration = Duration::from_secs(60);

async fn wait_for_still_heads(repos: &[PathBuf]) {
    let read = || -> Vec<Vec<Oid>> {
        repos
            .iter()
            .map(|p| {
                git2::Repository::open_bare(p)
                    .map(|r| starling_actors::conversation::store::tip_refs(&r))
                    .unwrap_or_default()
            })
            .collect()
    };
    let started = Instant::now();
    let mut last = read();
    let mut still_since = Instant::now();
    while started.elapsed() < STILL_WAIT_MAX {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = read();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= STILL_FOR {
            return;
        }
    }
    tracing::warn!("replica heads still moving after the nodes stopped");
}

/// Reads a replica's final state from disk.
pub fn read_replica(node: usize, online: bool, path: &Path) -> anyhow::Result<Replica> {
    let store = match Store::open(path) {
        Ok(s) => s,
        Err(_) => {
            return Ok(Replica {
                node,
                online,
                path: path.to_owned(),
                tips: Vec::new(),
                order: Vec::new(),
                texts: BTreeSet::new(),
                merges: 0,
            })
        }
    };
    let tips: Vec<Oid> = store.tips().iter().map(oid).collect();
    let order: Vec<Oid> = store
        .full_order()
        .with_context(|| format!("reading the history of {}", path.display()))?
        .iter()
        .map(oid)
        .collect();
    let repo = store.repository();
    let texts = order
        .iter()
        .copied()
        .filter(|c| is_text(repo, *c))
        .collect();
    let merges = order
        .iter()
        .filter(|c| repo.find_commit(**c).is_ok_and(|c| c.parent_count() > 1))
        .count();
    Ok(Replica {
        node,
        online,
        path: path.to_owned(),
        tips,
        order,
        texts,
        merges,
    })
}

/// Commit ids as hex, for reports.
pub fn hex(ids: impl IntoIterator<Item = Oid>) -> Vec<String> {
    ids.into_iter().map(|c| commit_id(c).to_hex()).collect()
}
