//! What a run measured, as `report.json`: the scenario as run (after
//! overrides), the seed, the plan's sizes, every checker's verdict, and the
//! metrics — delivery latency quantiles, time to converge after the heal
//! (and its ratio to a raw `git fetch` of the same commits), messages per
//! side, bytes on the wire, drops by reason, connections per node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use git2::Oid;
use serde::Serialize;

use crate::checkers::Verdict;
use crate::fabric::FabricTotals;
use crate::runner::Outcome;
use crate::scenario::{Overrides, Scenario};

/// The whole report of one `starling-sim run`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario as run.
    pub scenario: Scenario,
    /// Overrides applied.
    pub overrides: Overrides,
    /// The seed.
    pub seed: u64,
    /// One entry per variant.
    pub variants: Vec<VariantReport>,
    /// Every checker passed in every variant.
    pub passed: bool,
}

/// Quantiles of a distribution (seconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// Of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            count: values.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// The raw-git baseline: fetching between the two sides' replicas as they
/// were just before the heal, with libgit2's local transport (no QUIC, no
/// validation, no merge).
#[derive(Debug, Clone, Serialize)]
pub struct GitBaseline {
    /// Seconds for both directions' fetches together.
    pub fetch_s: f64,
    /// Objects moved, both directions.
    pub objects: usize,
    /// Bytes moved, both directions.
    pub bytes: usize,
    /// `time_to_converge_after_heal_s / fetch_s`.
    pub ratio: Option<f64>,
}

/// The longest history any replica ended with: how much of it is merges.
/// Every member receives, validates and stores every merge a member makes,
/// so merges weigh on a swarm as much as messages do.
#[derive(Debug, Default, Serialize)]
pub struct HistorySize {
    /// Commits.
    pub commits: usize,
    /// Of which text messages.
    pub messages: usize,
    /// Of which merges.
    pub merges: usize,
}

/// What one variant measured.
#[derive(Debug, Serialize)]
pub struct VariantReport {
    /// Variant name.
    pub name: String,
    /// Its topology.
    pub topology: crate::scenario::Topology,
    /// Nodes.
    pub nodes: usize,
    /// Topology links.
    pub edges: usize,
    /// Checker verdicts.
    pub checks: Vec<Verdict>,
    /// Set-up (swarm creation and joins) wall time, s.
    pub setup_s: f64,
    /// The whole variant's wall time, s.
    pub wall_s: f64,
    /// Time of the last planned event, s.
    pub last_event_s: f64,
    /// Time from zero to quiescence, s.
    pub quiescent_s: Option<f64>,
    /// Seconds from the first heal until every online node held every
    /// message accepted before it.
    pub time_to_converge_after_heal_s: Option<f64>,
    /// Seconds from the first heal until the first message written on one
    /// side before it reached a node of another group (reconnection cost).
    pub first_cross_delivery_after_heal_s: Option<f64>,
    /// The raw-git baseline, when there was a heal.
    pub git_baseline: Option<GitBaseline>,
    /// Writes asked for, accepted, refused (node down).
    pub writes: BTreeMap<&'static str, usize>,
    /// Delivery latency (accepted at the writer → seen at another node), s.
    pub delivery_latency: Quantiles,
    /// Messages accepted by writers of each group.
    pub messages_written_per_group: BTreeMap<String, usize>,
    /// Messages each group's replicas hold at the end (mean).
    pub messages_held_per_group: BTreeMap<String, f64>,
    /// Fabric totals at the end.
    pub wire: FabricTotals,
    /// Bytes sent per group pair, `from->to`.
    pub wire_bytes_between_groups: BTreeMap<String, u64>,
    /// Connections per node at the last sample.
    pub connections_per_node: BTreeMap<String, Option<usize>>,
    /// Mean connections per node over the run.
    pub connections_mean: f64,
    /// Commits nodes rejected.
    pub commits_rejected: f64,
    /// The longest final history.
    pub history: HistorySize,
    /// Plot files written (SVG and PNG).
    pub plots: Vec<String>,
    /// Plots that could not be drawn, and why.
    pub plot_errors: Vec<String>,
}

/// Delivery latencies of every accepted message to every other node that holds it.
pub fn latencies(outcome: &Outcome) -> Vec<f64> {
    let mut out = Vec::new();
    for w in &outcome.written {
        let (Some(id), Some(at)) = (
            w.id.as_ref().and_then(|h| Oid::from_str(h).ok()),
            w.accepted_s,
        ) else {
            continue;
        };
        for (j, seen) in outcome.seen.iter().enumerate() {
            if j != w.node {
                if let Some(t) = seen.get(&id) {
                    out.push((t - at).max(0.0));
                }
            }
        }
    }
    out
}

fn history_size(outcome: &Outcome) -> HistorySize {
    outcome
        .replicas
        .iter()
        .max_by_key(|r| r.order.len())
        .map(|r| HistorySize {
            commits: r.order.len(),
            messages: r.texts.len(),
            merges: r.merges,
        })
        .unwrap_or_default()
}

fn converge_after_heal(outcome: &Outcome) -> Option<f64> {
    let heal = *outcome.plan.heals_s.first()?;
    let before: Vec<Oid> = outcome
        .written
        .iter()
        .filter(|w| w.accepted_s.is_some_and(|t| t <= heal))
        .filter_map(|w| w.id.as_ref().and_then(|h| Oid::from_str(h).ok()))
        .collect();
    let mut latest = heal;
    for r in outcome.replicas.iter().filter(|r| r.online) {
        for m in &before {
            latest = latest.max(*outcome.seen[r.node].get(m)?);
        }
    }
    Some(latest - heal)
}

fn first_cross_delivery_after_heal(outcome: &Outcome) -> Option<f64> {
    let heal = *outcome.plan.heals_s.first()?;
    let groups = &outcome.plan.groups;
    let mut first: Option<f64> = None;
    for w in outcome
        .written
        .iter()
        .filter(|w| w.accepted_s.is_some_and(|t| t <= heal))
    {
        let Some(id) = w.id.as_ref().and_then(|h| Oid::from_str(h).ok()) else {
            continue;
        };
        for (j, seen) in outcome.seen.iter().enumerate() {
            if groups[j] != groups[w.node] {
                if let Some(t) = seen.get(&id).filter(|t| **t >= heal) {
                    first = Some(first.map_or(*t, |f: f64| f.min(*t)));
                }
            }
        }
    }
    first.map(|t| t - heal)
}

fn fetch_between(from: &Path, to: &Path) -> anyhow::Result<(usize, usize)> {
    let repo = git2::Repository::open_bare(to)?;
    let url = from.to_str().context("path is not UTF-8")?;
    let mut remote = repo.remote_anonymous(url)?;
    remote.fetch(&["+refs/heads/main:refs/remotes/other/main"], None, None)?;
    let stats = remote.stats();
    Ok((stats.received_objects(), stats.received_bytes()))
}

fn git_baseline(outcome: &Outcome, converge_s: Option<f64>) -> Option<GitBaseline> {
    let [(_, a), (_, b), ..] = outcome.heal_snapshots.as_slice() else {
        return None;
    };
    let started = Instant::now();
    let ab = fetch_between(a, b).ok()?;
    let ba = fetch_between(b, a).ok()?;
    let fetch_s = started.elapsed().as_secs_f64();
    Some(GitBaseline {
        fetch_s,
        objects: ab.0 + ba.0,
        bytes: ab.1 + ba.1,
        ratio: converge_s.map(|c| c / fetch_s.max(1e-6)),
    })
}

/// Builds a variant's report from its outcome and verdicts.
pub fn variant_report(
    scenario: &Scenario,
    outcome: &Outcome,
    checks: Vec<Verdict>,
) -> VariantReport {
    let names = &outcome.plan.names;
    let group_name = |g: usize| scenario.groups[g].name.clone();
    let mut writes = BTreeMap::new();
    writes.insert("planned", outcome.written.len());
    writes.insert(
        "accepted",
        outcome.written.iter().filter(|w| w.id.is_some()).count(),
    );
    writes.insert(
        "refused",
        outcome.written.iter().filter(|w| w.id.is_none()).count(),
    );
    let mut written_per_group = BTreeMap::new();
    for w in outcome.written.iter().filter(|w| w.id.is_some()) {
        *written_per_group
            .entry(group_name(outcome.plan.groups[w.node]))
            .or_insert(0) += 1;
    }
    let mut held: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &outcome.replicas {
        let e = held
            .entry(group_name(outcome.plan.groups[r.node]))
            .or_default();
        e.0 += r.texts.len();
        e.1 += 1;
    }
    let wire = outcome
        .stats
        .last()
        .map(|s| s.fabric.clone())
        .unwrap_or_default();
    let mut between = BTreeMap::new();
    for (a, row) in wire.group_bytes.iter().enumerate() {
        for (b, bytes) in row.iter().enumerate() {
            between.insert(format!("{}->{}", group_name(a), group_name(b)), *bytes);
        }
    }
    let last = outcome.stats.last();
    let connections_per_node = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), last.and_then(|s| s.connections[i])))
        .collect();
    let counts: Vec<usize> = outcome
        .stats
        .iter()
        .flat_map(|s| s.connections.iter().flatten().copied())
        .collect();
    let connections_mean = if counts.is_empty() {
        0.0
    } else {
        counts.iter().sum::<usize>() as f64 / counts.len() as f64
    };
    let converge = converge_after_heal(outcome);
    VariantReport {
        name: outcome.variant.name.clone(),
        topology: outcome.variant.topology.clone(),
        nodes: names.len(),
        edges: outcome.plan.edges.len(),
        checks,
        setup_s: outcome.setup_s,
        wall_s: outcome.wall_s,
        last_event_s: outcome.last_event_s,
        quiescent_s: outcome.quiescent_s,
        time_to_converge_after_heal_s: converge,
        first_cross_delivery_after_heal_s: first_cross_delivery_after_heal(outcome),
        git_baseline: git_baseline(outcome, converge),
        writes,
        delivery_latency: Quantiles::of(&mut latencies(outcome)),
        messages_written_per_group: written_per_group,
        messages_held_per_group: held
            .into_iter()
            .map(|(g, (sum, n))| (g, sum as f64 / n.max(1) as f64))
            .collect(),
        wire,
        wire_bytes_between_groups: between,
        connections_per_node,
        connections_mean,
        commits_rejected: outcome.commits_rejected,
        history: history_size(outcome),
        plots: Vec::new(),
        plot_errors: Vec::new(),
    }
}

/// Writes `report.json` into `dir`.
pub fn write_json(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}
