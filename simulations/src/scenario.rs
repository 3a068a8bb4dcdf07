//! Scenario files: what a run simulates, as TOML (format in
//! `simulations/scenarios/README.md`).
//!
//! A scenario names groups of nodes and the links inside and between them,
//! how nodes are connected (topology), who writes how much and when
//! (traffic), a timeline of faults, random churn, sync timers, and the
//! checks to run. Every field has a documented default; unknown keys are
//! errors, so a typo never silently runs a different scenario.
//! [`Overrides`] shrink or grow a scenario without editing it (CI runs every
//! shipped scenario small; the scale run grows `internet-shutdown`).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Nodes one run may hold (each node is a few threads; see the README).
pub const NODES_MAX: usize = 1_000;
/// Messages one group may write in one run.
pub const MESSAGES_PER_GROUP_MAX: usize = 100_000;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("scenario {name}: {what}")]
    Invalid { name: String, what: String },
}

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (the file stem by convention).
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice (identities, topology, traffic, churn, loss).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Link used wherever no group or group pair says otherwise.
    #[serde(default)]
    pub network: LinkSpec,
    /// The groups of nodes (a university, a city).
    pub groups: Vec<GroupSpec>,
    /// Links between pairs of groups.
    #[serde(default)]
    pub links: Vec<GroupLink>,
    /// Who keeps a connection to whom.
    #[serde(default)]
    pub topology: Topology,
    /// Runs of the same scenario that differ only in topology (mesh-vs-star);
    /// empty means one run with `topology`.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Who writes, how much, when.
    pub traffic: Traffic,
    /// Faults at fixed times.
    #[serde(default)]
    pub timeline: Vec<Fault>,
    /// Random crashes and restarts.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Sync and transport timers.
    #[serde(default)]
    pub sync: SyncSpec,
    /// What to check, and by when.
    #[serde(default)]
    pub checks: Checks,
}

fn default_seed() -> u64 {
    1
}

/// One link's behaviour, each way.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency_ms: f64,
    /// Uniform extra delay in `[0, jitter_ms)`, per datagram (reorders).
    pub jitter_ms: f64,
    /// Probability each datagram is lost, `0.0..1.0`.
    pub loss: f64,
    /// Capacity each way in kilobits per second; `0` is unlimited.
    pub bandwidth_kbps: u64,
    /// Largest datagram carried; larger ones are dropped (QUIC's path MTU
    /// discovery finds this).
    pub mtu_bytes: usize,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            latency_ms: 5.0,
            jitter_ms: 0.0,
            loss: 0.0,
            bandwidth_kbps: 0,
            mtu_bytes: 1_500,
        }
    }
}

/// A named group of nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Its name; nodes are `<name>-<i>`.
    pub name: String,
    /// How many nodes.
    pub nodes: usize,
    /// Links between two nodes of this group (default: `network`).
    #[serde(default)]
    pub link: Option<LinkSpec>,
}

/// The link between two groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLink {
    /// The two groups.
    pub between: [String; 2],
    /// Its behaviour.
    pub link: LinkSpec,
}

/// Who keeps a connection to whom. Node 0 (the swarm's creator) also talks
/// to everyone while the swarm is set up; those extra connections are
/// closed before the scenario's clock starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Topology {
    /// Every pair of nodes.
    Mesh,
    /// A ring inside each group plus random peers in the group up to
    /// `peers_per_node`, and `cross_group_links` random links between each
    /// pair of groups.
    Random {
        /// Peers inside the group per node (at least the two ring neighbours).
        peers_per_node: usize,
        /// Links between each pair of groups.
        cross_group_links: usize,
    },
    /// `hubs` nodes (spread over the groups) connected to each other; every
    /// other node connected to one hub only.
    Star {
        /// How many bridges.
        hubs: usize,
    },
}

impl Default for Topology {
    fn default() -> Self {
        Topology::Random {
            peers_per_node: 3,
            cross_group_links: 2,
        }
    }
}

/// One run of a scenario with its own topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its name in the report.
    pub name: String,
    /// Its topology.
    pub topology: Topology,
}

/// Who writes, how much, when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Messages each group writes, spread uniformly at random over the window.
    pub messages_per_group: usize,
    /// Start of the writing window (seconds after the clock starts).
    #[serde(default)]
    pub start_s: f64,
    /// End of the writing window.
    pub stop_s: f64,
    /// How many of a group's nodes write (chosen at random); `0` is all.
    #[serde(default)]
    pub writers_per_group: usize,
    /// Bytes of text per message.
    #[serde(default = "default_text_bytes")]
    pub text_bytes: usize,
}

fn default_text_bytes() -> usize {
    64
}

/// A fault at a fixed time. (Unknown keys are refused by [`FaultAction`];
/// serde cannot deny them on a struct that flattens another.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// When (seconds after the clock starts).
    pub at_s: f64,
    /// What.
    #[serde(flatten)]
    pub action: FaultAction,
}

/// What a fault does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultAction {
    /// Cut every link between any two of `groups`.
    Partition {
        /// The groups to separate from each other.
        groups: Vec<String>,
    },
    /// Restore every link between any two of `groups`.
    Heal {
        /// The groups to join again.
        groups: Vec<String>,
    },
    /// Cut the link between two nodes.
    CutLink {
        /// The two nodes.
        nodes: [String; 2],
    },
    /// Restore it.
    RestoreLink {
        /// The two nodes.
        nodes: [String; 2],
    },
    /// Stop a node's actors (its data dir stays).
    Crash {
        /// The node.
        node: String,
    },
    /// Start a crashed node again on its data dir.
    Restart {
        /// The node.
        node: String,
    },
    /// Restart a node with a planted fault: it announces no head, ever, and
    /// never runs anti-entropy (the no-loss checker must catch what follows).
    Mute {
        /// The node.
        node: String,
    },
}

/// Random crashes and restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Window in which nodes go down and up; all are up again at its end.
    pub start_s: f64,
    /// End of the window.
    pub stop_s: f64,
    /// Share of the nodes (never node 0) that churn.
    pub fraction: f64,
    /// Mean time up between crashes (exponential).
    pub mean_up_s: f64,
    /// Mean time down (exponential).
    pub mean_down_s: f64,
}

/// Sync and transport timers. Defaults are the daemon's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSpec {
    /// Anti-entropy interval.
    pub anti_entropy_ms: u64,
    /// Largest reconnection back-off.
    pub reconnect_backoff_max_ms: u64,
    /// Idle time after which a QUIC connection closes.
    pub idle_timeout_ms: u64,
    /// QUIC keep-alive interval.
    pub keep_alive_ms: u64,
}

impl Default for SyncSpec {
    fn default() -> Self {
        use starling_protocol::limits;
        Self {
            anti_entropy_ms: starling_actors::account::swarms::ANTI_ENTROPY_INTERVAL.as_millis()
                as u64,
            reconnect_backoff_max_ms: limits::RECONNECT_BACKOFF_MAX_MS,
            idle_timeout_ms: limits::CONNECTION_IDLE_TIMEOUT_MS,
            keep_alive_ms: limits::CONNECTION_KEEP_ALIVE_MS,
        }
    }
}

/// What to check. All on by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// Every accepted message is in every member's repository.
    pub no_loss: bool,
    /// Every online member reaches the same head by the deadline.
    pub convergence: bool,
    /// Replicas agree on the order of the messages they share.
    pub order: bool,
    /// Every replica's history passes the protocol's validator.
    pub validity: bool,
    /// Seconds after the last write or fault by which every member must hold
    /// everything (the run waits at most this long).
    pub deadline_s: f64,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            no_loss: true,
            convergence: true,
            order: true,
            validity: true,
            deadline_s: 120.0,
        }
    }
}

/// Changes applied to a scenario on load (CLI flags, tests).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// Nodes in every group.
    pub nodes_per_group: Option<usize>,
    /// Messages every group writes.
    pub messages_per_group: Option<usize>,
    /// Multiplies every time in the scenario (traffic, faults, churn; not the deadline).
    pub time_scale: Option<f64>,
    /// Replaces the scenario's seed.
    pub seed: Option<u64>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let scenario: Scenario = toml::from_str(&text).map_err(|source| ScenarioError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Applies `overrides`, then validates again.
    pub fn with(mut self, overrides: &Overrides) -> Result<Self, ScenarioError> {
        if let Some(n) = overrides.nodes_per_group {
            for g in &mut self.groups {
                g.nodes = n;
            }
        }
        if let Some(m) = overrides.messages_per_group {
            self.traffic.messages_per_group = m;
        }
        if let Some(seed) = overrides.seed {
            self.seed = seed;
        }
        if let Some(k) = overrides.time_scale {
            self.traffic.start_s *= k;
            self.traffic.stop_s *= k;
            for f in &mut self.timeline {
                f.at_s *= k;
            }
            if let Some(c) = &mut self.churn {
                c.start_s *= k;
                c.stop_s *= k;
                c.mean_up_s *= k;
                c.mean_down_s *= k;
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Every node's name, group index, in node order.
    pub fn node_names(&self) -> Vec<(String, usize)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, spec)| (0..spec.nodes).map(move |i| (format!("{}-{i}", spec.name), g)))
            .collect()
    }

    /// The variants to run: the listed ones, or one named `default`.
    pub fn runs(&self) -> Vec<Variant> {
        if self.variants.is_empty() {
            vec![Variant {
                name: "default".into(),
                topology: self.topology.clone(),
            }]
        } else {
            self.variants.clone()
        }
    }

    fn invalid(&self, what: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            what: what.into(),
        }
    }

    /// Checks names, sizes, probabilities and times.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let groups: BTreeSet<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        if self.groups.is_empty() || groups.len() != self.groups.len() {
            return Err(self.invalid("needs at least one group, with distinct names"));
        }
        let nodes: usize = self.groups.iter().map(|g| g.nodes).sum();
        if !(2..=NODES_MAX).contains(&nodes) {
            return Err(self.invalid(format!("needs 2..={NODES_MAX} nodes, has {nodes}")));
        }
        if self.groups.iter().any(|g| g.nodes == 0) {
            return Err(self.invalid("every group needs at least one node"));
        }
        let mut links = vec![self.network];
        links.extend(self.groups.iter().filter_map(|g| g.link));
        for l in &self.links {
            for g in &l.between {
                if !groups.contains(g.as_str()) {
                    return Err(self.invalid(format!("link names unknown group {g}")));
                }
            }
            links.push(l.link);
        }
        for l in links {
            if !(0.0..1.0).contains(&l.loss) || l.latency_ms < 0.0 || l.jitter_ms < 0.0 {
                return Err(self.invalid("loss must be in [0, 1); latency and jitter >= 0"));
            }
            if l.mtu_bytes < 1_200 {
                return Err(self.invalid("mtu_bytes below QUIC's minimum of 1200"));
            }
        }
        let t = &self.traffic;
        if t.messages_per_group > MESSAGES_PER_GROUP_MAX
            || t.stop_s < t.start_s
            || t.start_s < 0.0
            || t.text_bytes == 0
            || t.text_bytes > starling_protocol::swarm::limits::TEXT_BYTES_MAX
        {
            return Err(self.invalid(
                "traffic: messages_per_group within bounds, 0 <= start_s <= stop_s, text_bytes within the text limit",
            ));
        }
        let names: BTreeSet<String> = self.node_names().into_iter().map(|(n, _)| n).collect();
        for f in &self.timeline {
            if f.at_s < 0.0 {
                return Err(self.invalid("a fault at a negative time"));
            }
            let (gs, ns): (Vec<&String>, Vec<&String>) = match &f.action {
                FaultAction::Partition { groups: g } | FaultAction::Heal { groups: g } => {
                    (g.iter().collect(), vec![])
                }
                FaultAction::CutLink { nodes } | FaultAction::RestoreLink { nodes } => {
                    (vec![], nodes.iter().collect())
                }
                FaultAction::Crash { node }
                | FaultAction::Restart { node }
                | FaultAction::Mute { node } => (vec![], vec![node]),
            };
            if let Some(g) = gs.iter().find(|g| !groups.contains(g.as_str())) {
                return Err(self.invalid(format!("timeline names unknown group {g}")));
            }
            if let Some(n) = ns.iter().find(|n| !names.contains(n.as_str())) {
                return Err(self.invalid(format!("timeline names unknown node {n}")));
            }
        }
        if let Some(c) = &self.churn {
            if !(0.0..=1.0).contains(&c.fraction)
                || c.stop_s < c.start_s
                || c.mean_up_s <= 0.0
                || c.mean_down_s <= 0.0
            {
                return Err(self.invalid("churn: fraction in [0, 1], start_s <= stop_s, means > 0"));
            }
        }
        for v in self.runs() {
            if let Topology::Star { hubs } = v.topology {
                if hubs == 0 {
                    return Err(self.invalid("a star needs at least one hub"));
                }
            }
        }
        if self.checks.deadline_s <= 0.0 {
            return Err(self.invalid("checks.deadline_s must be positive"));
        }
        Ok(())
    }

    /// The link between nodes of groups `a` and `b`.
    pub fn link_between(&self, a: usize, b: usize) -> LinkSpec {
        if a == b {
            return self.groups[a].link.unwrap_or(self.network);
        }
        let (na, nb) = (&self.groups[a].name, &self.groups[b].name);
        self.links
            .iter()
            .find(|l| {
                (&l.between[0] == na && &l.between[1] == nb)
                    || (&l.between[0] == nb && &l.between[1] == na)
            })
            .map(|l| l.link)
            .unwrap_or(self.network)
    }

    /// The index of group `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }
}
