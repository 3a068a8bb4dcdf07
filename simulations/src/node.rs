//! One simulated node: the daemon's actors (transport, account, one
//! conversation thread per swarm) on their own actix system and thread, over
//! a fabric socket, on a data dir that outlives crashes.
//!
//! A crash stops the node's actix system (every actor on it stops, no
//! goodbye is sent, the socket vanishes from the fabric); the data dir stays,
//! and a restart builds the actors again on it, as a daemon restart would.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use prometheus::Registry;
use starling_actors::account::{Account, SwarmConfig, SyncTuning};
use starling_actors::conversation::SwarmMetrics;
use starling_actors::transport::{
    LocalIdentity, Shutdown, Transport, TransportConfig, TransportLimits,
};
use starling_protocol::{AccountId, AccountIdentity, DeviceId};

use crate::fabric::{node_addr, Fabric};

/// Folder of the swarm repositories under a node's data dir (as the daemon's).
pub const SWARMS_DIR: &str = "swarms";
/// Longest a node's actors may take to start.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a crashed node's thread may take to wind down before the runner
/// stops waiting for it (a blocking git task may hold it a little longer;
/// it holds no socket, so it can no longer affect the run).
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node is, across its incarnations.
pub struct NodeSpec {
    /// Index in the scenario (its address derives from it).
    pub index: usize,
    /// `<group>-<i>`.
    pub name: String,
    /// Group index.
    pub group: usize,
    /// Its account and device.
    pub identity: AccountIdentity,
    /// Data dir.
    pub dir: PathBuf,
}

impl NodeSpec {
    /// The account id.
    pub fn account(&self) -> AccountId {
        self.identity.account_id()
    }

    /// The device id.
    pub fn device(&self) -> DeviceId {
        self.identity.device_id()
    }

    /// The repository of `conversation` in this node's data dir.
    pub fn repository(&self, conversation_hex: &str) -> PathBuf {
        self.dir
            .join(SWARMS_DIR)
            .join(format!("{conversation_hex}.git"))
    }

    /// Where swarms live.
    pub fn swarms_dir(&self) -> PathBuf {
        self.dir.join(SWARMS_DIR)
    }
}

/// A running incarnation of a node.
pub struct RunningNode {
    /// The account actor (the API's handle in a daemon).
    pub account: Addr<Account>,
    /// The transport actor.
    pub transport: Addr<Transport>,
    /// This incarnation's metrics.
    pub registry: Registry,
    system: actix::System,
    thread: Option<JoinHandle<()>>,
    stopped: std::sync::mpsc::Receiver<()>,
}

impl RunningNode {
    /// Starts the node's actors on a new thread over a fresh fabric socket.
    pub fn start(
        spec: &NodeSpec,
        fabric: &Fabric,
        limits: TransportLimits,
        tuning: SyncTuning,
        rng_seed: u64,
    ) -> anyhow::Result<Self> {
        let socket = fabric.bind(spec.index);
        let identity = spec.identity.clone();
        let swarms_dir = spec.swarms_dir();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (stopped_tx, stopped) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("node-{}", spec.name))
            .spawn(move || {
                let runner = actix::System::new();
                let started = runner.block_on(async move {
                    let registry = Registry::new();
                    let local = LocalIdentity::new(
                        identity.device_key.clone(),
                        identity.device_cert.clone(),
                        identity.account_cert.clone(),
                    )?;
                    let transport = Transport::new(TransportConfig {
                        identity: local,
                        socket,
                        registry: registry.clone(),
                        limits,
                        revocations: vec![(identity.account_cert.clone(), identity.crl.clone())],
                        rng_seed,
                    })?
                    .start();
                    let config = SwarmConfig {
                        transport: transport.clone(),
                        dir: swarms_dir,
                        metrics: SwarmMetrics::register(&registry)?,
                    };
                    let account = Account::with_swarms_tuned(identity, config, tuning)?.start();
                    anyhow::Ok((account, transport, registry, actix::System::current()))
                });
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    // `run` consumes the runner: the runtime is gone when it returns.
                    let _ = runner.run();
                }
                let _ = stopped_tx.send(());
            })
            .context("spawning a node thread")?;
        let (account, transport, registry, system) = rx
            .recv_timeout(NODE_START_TIMEOUT)
            .context("node did not start in time")??;
        Ok(Self {
            account,
            transport,
            registry,
            system,
            thread: Some(thread),
            stopped,
        })
    }

    /// Crashes the node: its socket leaves the fabric first (so nothing it
    /// does from then on reaches anyone: no goodbye), then its transport
    /// closes locally (which unblocks git tasks reading its streams) and its
    /// actix system stops, dropping every actor.
    pub fn crash(mut self, fabric: &Fabric, index: usize) {
        fabric.unbind(index);
        self.stop();
    }

    /// Crashes many nodes at once: each is told to stop before any is
    /// waited for, and all share one [`NODE_STOP_TIMEOUT`]. One by one, a
    /// loaded run's end could wait that long for each node in turn.
    pub fn crash_all(nodes: Vec<(usize, RunningNode)>, fabric: &Fabric) {
        let mut stopping = Vec::with_capacity(nodes.len());
        for (index, mut node) in nodes {
            fabric.unbind(index);
            node.begin_stop();
            stopping.push(node);
        }
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        let mut lingering = 0;
        for mut node in stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if !node.finish_stop(left) {
                lingering += 1;
            }
        }
        if lingering > 0 {
            tracing::warn!(
                lingering,
                "crashed nodes' threads still winding down; not waiting for them"
            );
        }
    }

    fn stop(&mut self) {
        self.begin_stop();
        if !self.finish_stop(NODE_STOP_TIMEOUT) {
            tracing::warn!("a crashed node's thread is still winding down; not waiting for it");
        }
    }

    /// Asks the node's own arbiter to close the transport, then stop.
    fn begin_stop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        let transport = self.transport.clone();
        let arbiter = self.system.arbiter().clone();
        let _ = arbiter.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), transport.send(Shutdown)).await;
            System::current().stop();
        });
    }

    /// Waits up to `wait` for the node's thread; whether it ended.
    fn finish_stop(&mut self, wait: Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        if self.stopped.recv_timeout(wait).is_ok() {
            let _ = thread.join();
            true
        } else {
            self.system.stop();
            false
        }
    }

    /// The sum of counter `name` in this incarnation's registry.
    pub fn counter(&self, name: &str) -> f64 {
        counter(&self.registry, name)
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of counter `name` across its labels in `registry`.
pub fn counter(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// The address node `index` listens on.
pub fn addr_of(index: usize) -> std::net::SocketAddr {
    node_addr(index)
}

/// Creates a node's data dir.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(SWARMS_DIR))
        .with_context(|| format!("creating {}", dir.display()))
}
