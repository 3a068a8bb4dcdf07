//! A scenario's decisions, drawn from its seed before anything runs: the
//! topology's edges, who writes when, and when churning nodes go down and
//! up. The same seed gives the same plan, byte for byte; that is what a
//! replay replays.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::scenario::{FaultAction, Scenario, Topology};

/// One thing the runner does at a time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum PlannedAction {
    /// Node `node` writes message number `n` of the run.
    Write {
        /// The writer.
        node: usize,
        /// The message's number (also in its text).
        n: usize,
    },
    /// Cut or restore group pairs.
    Partition {
        /// Group pairs.
        pairs: Vec<(usize, usize)>,
        /// Cut (`true`) or heal.
        cut: bool,
    },
    /// Cut or restore one node link.
    Link {
        /// The nodes.
        a: usize,
        /// The nodes.
        b: usize,
        /// Cut (`true`) or restore.
        cut: bool,
    },
    /// Crash a node.
    Crash {
        /// The node.
        node: usize,
    },
    /// Restart a node.
    Restart {
        /// The node.
        node: usize,
    },
    /// Restart a node muted (planted fault).
    Mute {
        /// The node.
        node: usize,
    },
}

/// An action at a time (seconds after the clock starts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedEvent {
    /// When.
    pub at_s: f64,
    /// What.
    #[serde(flatten)]
    pub action: PlannedAction,
}

/// Everything decided up front.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Node names, in index order.
    pub names: Vec<String>,
    /// Each node's group.
    pub groups: Vec<usize>,
    /// Connections: `(dialer, listener)`, dialer < listener.
    pub edges: Vec<(usize, usize)>,
    /// Every event, in time order.
    pub events: Vec<PlannedEvent>,
    /// Times of heals (for time-to-converge).
    pub heals_s: Vec<f64>,
    /// Times of partitions.
    pub partitions_s: Vec<f64>,
}

/// A seed for one purpose, derived from the scenario's.
pub fn sub_seed(seed: u64, purpose: u64) -> u64 {
    // SplitMix64 step: well-mixed, distinct streams per purpose.
    let mut z = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed purposes.
pub mod purpose {
    /// Node identities (plus the node index).
    pub const IDENTITY: u64 = 1;
    /// Topology.
    pub const TOPOLOGY: u64 = 2;
    /// Traffic.
    pub const TRAFFIC: u64 = 3;
    /// Churn.
    pub const CHURN: u64 = 4;
    /// The fabric's loss and jitter.
    pub const FABRIC: u64 = 5;
    /// Transport RNGs (plus the node index and incarnation).
    pub const TRANSPORT: u64 = 6;
}

/// Draws the plan of `scenario` run with `topology`.
pub fn plan(scenario: &Scenario, topology: &Topology) -> Plan {
    let nodes = scenario.node_names();
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let groups: Vec<usize> = nodes.iter().map(|(_, g)| *g).collect();
    let members: Vec<Vec<usize>> = (0..scenario.groups.len())
        .map(|g| (0..names.len()).filter(|i| groups[*i] == g).collect())
        .collect();
    let edges = edges(
        topology,
        &members,
        names.len(),
        sub_seed(scenario.seed, purpose::TOPOLOGY),
    );

    let mut events = Vec::new();
    let mut rng = StdRng::seed_from_u64(sub_seed(scenario.seed, purpose::TRAFFIC));
    let t = &scenario.traffic;
    let mut n = 0;
    for group in &members {
        let mut writers = group.clone();
        writers.shuffle(&mut rng);
        if t.writers_per_group > 0 {
            writers.truncate(t.writers_per_group);
        }
        for _ in 0..t.messages_per_group {
            let at_s = if t.stop_s > t.start_s {
                rng.gen_range(t.start_s..t.stop_s)
            } else {
                t.start_s
            };
            let node = *writers.choose(&mut rng).expect("groups are never empty");
            events.push(PlannedEvent {
                at_s,
                action: PlannedAction::Write { node, n },
            });
            n += 1;
        }
    }
    let index = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .expect("validated name")
    };
    let pairs = |gs: &Vec<String>| {
        let ids: Vec<usize> = gs.iter().filter_map(|g| scenario.group_index(g)).collect();
        let mut pairs = Vec::new();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                pairs.push((*a, *b));
            }
        }
        pairs
    };
    let (mut heals_s, mut partitions_s) = (Vec::new(), Vec::new());
    for f in &scenario.timeline {
        let action = match &f.action {
            FaultAction::Partition { groups } => {
                partitions_s.push(f.at_s);
                PlannedAction::Partition {
                    pairs: pairs(groups),
                    cut: true,
                }
            }
            FaultAction::Heal { groups } => {
                heals_s.push(f.at_s);
                PlannedAction::Partition {
                    pairs: pairs(groups),
                    cut: false,
                }
            }
            FaultAction::CutLink { nodes } => PlannedAction::Link {
                a: index(&nodes[0]),
                b: index(&nodes[1]),
                cut: true,
            },
            FaultAction::RestoreLink { nodes } => PlannedAction::Link {
                a: index(&nodes[0]),
                b: index(&nodes[1]),
                cut: false,
            },
            FaultAction::Crash { node } => PlannedAction::Crash { node: index(node) },
            FaultAction::Restart { node } => PlannedAction::Restart { node: index(node) },
            FaultAction::Mute { node } => PlannedAction::Mute { node: index(node) },
        };
        events.push(PlannedEvent {
            at_s: f.at_s,
            action,
        });
    }
    if let Some(c) = &scenario.churn {
        let mut rng = StdRng::seed_from_u64(sub_seed(scenario.seed, purpose::CHURN));
        let mut candidates: Vec<usize> = (1..names.len()).collect();
        candidates.shuffle(&mut rng);
        let count = ((candidates.len() as f64) * c.fraction).round() as usize;
        for &node in &candidates[..count] {
            let mut at = c.start_s + exponential(&mut rng, c.mean_up_s);
            while at < c.stop_s {
                events.push(PlannedEvent {
                    at_s: at,
                    action: PlannedAction::Crash { node },
                });
                let up = (at + exponential(&mut rng, c.mean_down_s)).min(c.stop_s);
                events.push(PlannedEvent {
                    at_s: up,
                    action: PlannedAction::Restart { node },
                });
                at = up + exponential(&mut rng, c.mean_up_s);
            }
        }
    }
    // Stable: equal times keep their planned order (a crash before its restart).
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Plan {
        names,
        groups,
        edges,
        events,
        heals_s,
        partitions_s,
    }
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    -mean * u.ln()
}

fn edges(
    topology: &Topology,
    members: &[Vec<usize>],
    nodes: usize,
    seed: u64,
) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = BTreeSet::new();
    let mut add = |a: usize, b: usize| {
        if a != b {
            set.insert((a.min(b), a.max(b)));
        }
    };
    match topology {
        Topology::Mesh => {
            for a in 0..nodes {
                for b in a + 1..nodes {
                    add(a, b);
                }
            }
        }
        Topology::Random {
            peers_per_node,
            cross_group_links,
        } => {
            for group in members {
                let k = group.len();
                for (i, &a) in group.iter().enumerate() {
                    if k > 1 {
                        add(a, group[(i + 1) % k]);
                    }
                    let extra = peers_per_node.saturating_sub(2).min(k.saturating_sub(1));
                    for _ in 0..extra {
                        add(a, *group.choose(&mut rng).expect("non-empty"));
                    }
                }
            }
            for (i, ga) in members.iter().enumerate() {
                for gb in &members[i + 1..] {
                    for _ in 0..*cross_group_links {
                        let a = *ga.choose(&mut rng).expect("non-empty");
                        let b = *gb.choose(&mut rng).expect("non-empty");
                        add(a, b);
                    }
                }
            }
        }
        Topology::Star { hubs } => {
            // Hubs spread over the groups: the first nodes of each, in turn.
            let mut order = Vec::new();
            let longest = members.iter().map(Vec::len).max().unwrap_or(0);
            for i in 0..longest {
                for g in members {
                    if let Some(&n) = g.get(i) {
                        order.push(n);
                    }
                }
            }
            let hubs: Vec<usize> = order.iter().copied().take((*hubs).min(nodes)).collect();
            for (i, &a) in hubs.iter().enumerate() {
                for &b in &hubs[i + 1..] {
                    add(a, b);
                }
            }
            for (i, &node) in order.iter().skip(hubs.len()).enumerate() {
                // A node joins a hub of its own group if there is one.
                let own: Vec<usize> = hubs
                    .iter()
                    .copied()
                    .filter(|h| members.iter().any(|g| g.contains(h) && g.contains(&node)))
                    .collect();
                let pool = if own.is_empty() { &hubs } else { &own };
                add(node, pool[i % pool.len()]);
            }
        }
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        toml::from_str(
            r#"
            name = "t"
            seed = 9
            [[groups]]
            name = "a"
            nodes = 5
            [[groups]]
            name = "b"
            nodes = 5
            [traffic]
            messages_per_group = 20
            stop_s = 10
            [churn]
            start_s = 0
            stop_s = 10
            fraction = 0.5
            mean_up_s = 2
            mean_down_s = 1
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let s = scenario();
        let a = plan(&s, &s.topology);
        let b = plan(&s, &s.topology);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let mut other = s.clone();
        other.seed = 10;
        let c = plan(&other, &other.topology);
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
    }

    #[test]
    fn topologies_connect_every_node() {
        let s = scenario();
        for topology in [
            Topology::Mesh,
            Topology::Star { hubs: 2 },
            Topology::Random {
                peers_per_node: 3,
                cross_group_links: 1,
            },
        ] {
            let p = plan(&s, &topology);
            let mut reached = BTreeSet::from([0usize]);
            loop {
                let before = reached.len();
                for (a, b) in &p.edges {
                    if reached.contains(a) || reached.contains(b) {
                        reached.insert(*a);
                        reached.insert(*b);
                    }
                }
                if reached.len() == before {
                    break;
                }
            }
            assert_eq!(reached.len(), 10, "{topology:?} leaves nodes out");
        }
        assert_eq!(plan(&s, &Topology::Mesh).edges.len(), 45);
        assert_eq!(plan(&s, &Topology::Star { hubs: 2 }).edges.len(), 9);
    }
}
