//! The checkers: no loss, convergence, order agreement and validity, each a
//! verdict with a diff a person can act on (which node, which commits).
//!
//! - **No loss**: the accepted messages are every message a writer
//!   accepted plus every text commit in any replica; each replica of a node
//!   running at the end must hold all of them.
//! - **Convergence**: every node running at the end has the same head, and
//!   quiescence came before the deadline.
//! - **Order agreement**: any two replicas list the messages they share in
//!   the same order.
//! - **Validity**: each distinct final history (replicas with one head hold
//!   the same commits, as a commit id names its whole history) is cloned
//!   and re-validated from its root by the protocol's validator, the path a
//!   joining device takes; every commit must pass.

use std::collections::{BTreeMap, BTreeSet};

use git2::Oid;
use serde::Serialize;
use starling_actors::conversation::store::{commit_id, Store};

use crate::runner::{hex, Outcome};

/// Commits listed in a diff before it says "and N more".
pub const DIFF_COMMITS_MAX: usize = 8;

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Checker name.
    pub check: &'static str,
    /// Passed.
    pub passed: bool,
    /// What was checked, in numbers.
    pub summary: String,
    /// On failure, what differs, line by line.
    pub diff: Vec<String>,
}

fn listed(ids: &[Oid]) -> String {
    let mut s = hex(ids.iter().copied().take(DIFF_COMMITS_MAX)).join(", ");
    if ids.len() > DIFF_COMMITS_MAX {
        s.push_str(&format!(" and {} more", ids.len() - DIFF_COMMITS_MAX));
    }
    s
}

fn name(outcome: &Outcome, node: usize) -> &str {
    &outcome.plan.names[node]
}

/// The messages any node accepted.
pub fn accepted(outcome: &Outcome) -> BTreeSet<Oid> {
    let mut all: BTreeSet<Oid> = outcome
        .written
        .iter()
        .filter_map(|w| w.id.as_ref().and_then(|h| Oid::from_str(h).ok()))
        .collect();
    for r in &outcome.replicas {
        all.extend(r.texts.iter().copied());
    }
    all
}

/// No loss.
pub fn no_loss(outcome: &Outcome) -> Verdict {
    let all = accepted(outcome);
    let mut diff = Vec::new();
    let online: Vec<_> = outcome.replicas.iter().filter(|r| r.online).collect();
    for r in &online {
        let missing: Vec<Oid> = all.difference(&r.texts).copied().collect();
        if !missing.is_empty() {
            // Who holds them: the first holder of the first missing message.
            let holders: Vec<&str> = outcome
                .replicas
                .iter()
                .filter(|o| o.texts.contains(&missing[0]))
                .map(|o| name(outcome, o.node))
                .take(4)
                .collect();
            diff.push(format!(
                "{} lacks {} of {} accepted messages: {} (first one held by {})",
                name(outcome, r.node),
                missing.len(),
                all.len(),
                listed(&missing),
                if holders.is_empty() {
                    "nobody".to_owned()
                } else {
                    holders.join(", ")
                }
            ));
        }
    }
    Verdict {
        check: "no-loss",
        passed: diff.is_empty(),
        summary: format!("{} accepted messages, {} replicas", all.len(), online.len()),
        diff,
    }
}

/// Convergence: every online replica holds the same commits. Accepted
/// history is closed under ancestry, so that is the same tip set.
pub fn convergence(outcome: &Outcome) -> Verdict {
    let mut by_tips: BTreeMap<&Vec<Oid>, Vec<&str>> = BTreeMap::new();
    for r in outcome.replicas.iter().filter(|r| r.online) {
        by_tips
            .entry(&r.tips)
            .or_default()
            .push(name(outcome, r.node));
    }
    let mut diff = Vec::new();
    if by_tips.len() > 1 {
        for (tips, nodes) in &by_tips {
            let tips = if tips.is_empty() {
                "none".to_owned()
            } else {
                tips.iter()
                    .map(|t| commit_id(*t).to_hex()[..12].to_owned())
                    .collect::<Vec<_>>()
                    .join("+")
            };
            diff.push(format!(
                "tips {tips}: {} nodes ({})",
                nodes.len(),
                nodes.iter().take(6).copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if outcome.quiescent_s.is_none() {
        diff.push("no quiescence before the deadline".into());
    }
    Verdict {
        check: "convergence",
        passed: diff.is_empty(),
        summary: match outcome.quiescent_s {
            Some(t) => format!("the same commits on every online node at t={t:.1}s"),
            None => format!("{} distinct commit sets at the deadline", by_tips.len()),
        },
        diff,
    }
}

/// Order agreement.
pub fn order(outcome: &Outcome) -> Verdict {
    let online: Vec<_> = outcome
        .replicas
        .iter()
        .filter(|r| r.online && !r.tips.is_empty())
        .collect();
    let mut diff = Vec::new();
    if let Some(reference) = online.iter().max_by_key(|r| r.order.len()) {
        let in_ref: BTreeSet<Oid> = reference.order.iter().copied().collect();
        for r in &online {
            let mine: BTreeSet<Oid> = r.order.iter().copied().collect();
            let a: Vec<Oid> = reference
                .order
                .iter()
                .copied()
                .filter(|c| mine.contains(c))
                .collect();
            let b: Vec<Oid> = r
                .order
                .iter()
                .copied()
                .filter(|c| in_ref.contains(c))
                .collect();
            if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
                diff.push(format!(
                    "{} and {} disagree at shared position {at}: {} vs {}",
                    name(outcome, reference.node),
                    name(outcome, r.node),
                    commit_id(a[at]).to_hex(),
                    commit_id(b[at]).to_hex()
                ));
            }
        }
    }
    Verdict {
        check: "order",
        passed: diff.is_empty(),
        summary: format!(
            "{} replicas compared pairwise with the longest history",
            online.len()
        ),
        diff,
    }
}

/// Validity.
pub fn validity(outcome: &Outcome) -> Verdict {
    let mut heads: BTreeMap<&Vec<Oid>, usize> = BTreeMap::new();
    for r in &outcome.replicas {
        if !r.tips.is_empty() {
            heads.entry(&r.tips).or_insert(r.node);
        }
    }
    let mut diff = Vec::new();
    let scratch = outcome.data.path().join("validity");
    for (k, node) in heads.values().enumerate() {
        let replica = &outcome.replicas[*node];
        if let Err(e) = revalidate(replica, &scratch.join(format!("{k}.git")), outcome) {
            diff.push(format!("{}: {e}", name(outcome, *node)));
        }
    }
    Verdict {
        check: "validity",
        passed: diff.is_empty(),
        summary: format!(
            "{} distinct histories re-validated from the root; nodes rejected {} fetched commits",
            heads.len(),
            outcome.commits_rejected
        ),
        diff,
    }
}

/// Clones `replica` afresh, validating every commit from the root, and
/// checks the clone ends at the replica's tips. A conversation thread may
/// still finish a receive after its node stopped; if the tips moved during
/// the clone, the (newer, larger) history is validated again, a bounded
/// number of times.
fn revalidate(
    replica: &crate::runner::Replica,
    to: &std::path::Path,
    outcome: &Outcome,
) -> Result<(), String> {
    const ATTEMPTS_MAX: usize = 3;
    let head_now = || -> Result<Vec<Oid>, String> {
        let repo = git2::Repository::open_bare(&replica.path).map_err(|e| e.to_string())?;
        Ok(starling_actors::conversation::store::tip_refs(&repo))
    };
    let show = |tips: &[Oid]| {
        tips.iter()
            .map(|t| commit_id(*t).to_hex())
            .collect::<Vec<_>>()
            .join("+")
    };
    let mut last = String::new();
    for _ in 0..ATTEMPTS_MAX {
        let before = head_now()?;
        let _ = std::fs::remove_dir_all(to);
        let cloned = Store::clone_from(&replica.path, to, outcome.conversation, "validity")
            .map_err(|e| format!("history at {} fails validation: {e}", show(&before)))?;
        let validated: Vec<Oid> = cloned
            .tips()
            .iter()
            .map(starling_actors::conversation::store::oid)
            .collect();
        drop(cloned);
        let _ = std::fs::remove_dir_all(to);
        if validated == head_now()? {
            return Ok(());
        }
        last = format!(
            "re-validation ended at {} but the replica's tips are now {}",
            show(&validated),
            show(&head_now()?)
        );
    }
    Err(last)
}

/// Runs the checks the scenario asks for.
pub fn run_checks(outcome: &Outcome, checks: &crate::scenario::Checks) -> Vec<Verdict> {
    let mut out = Vec::new();
    if checks.no_loss {
        out.push(no_loss(outcome));
    }
    if checks.convergence {
        out.push(convergence(outcome));
    }
    if checks.order {
        out.push(order(outcome));
    }
    if checks.validity {
        out.push(validity(outcome));
    }
    out
}
