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
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Convergence.
pub fn convergence(outcome: &Outcome) -> Verdict {
    let mut by_head: BTreeMap<Option<Oid>, Vec<&str>> = BTreeMap::new();
    for r in outcome.replicas.iter().filter(|r| r.online) {
        by_head
            .entry(r.head)
            .or_default()
            .push(name(outcome, r.node));
    }
    let mut diff = Vec::new();
    if by_head.len() > 1 {
        for (head, nodes) in &by_head {
            let head = head
                .map(|h| commit_id(h).to_hex())
                .unwrap_or_else(|| "none".into());
            diff.push(format!(
                "head {head}: {} nodes ({})",
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
            Some(t) => format!("one head on every online node at t={t:.1}s"),
            None => format!("{} distinct heads at the deadline", by_head.len()),
        },
        diff,
    }
}

/// Order agreement.
pub fn order(outcome: &Outcome) -> Verdict {
    let online: Vec<_> = outcome
        .replicas
        .iter()
        .filter(|r| r.online && r.head.is_some())
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
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut heads: BTreeMap<Oid, usize> = BTreeMap::new();
    for r in &outcome.replicas {
        if let Some(h) = r.head {
            heads.entry(h).or_insert(r.node);
        }
    }
    let mut diff = Vec::new();
    let scratch = outcome.data.path().join("validity");
    for (k, node) in heads.values().enumerate() {
        let replica = &outcome.replicas[*node];
        if let Err(e) = revalidate(
            replica,
            &scratch.join(format!("{k}.git")),
            outcome,
            now_secs,
        ) {
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
/// checks the clone ends at the replica's head. A conversation thread may
/// still finish a merge after its node stopped; if the head moved during the
/// clone, the (newer, larger) history is validated again, a bounded number
/// of times.
fn revalidate(
    replica: &crate::runner::Replica,
    to: &std::path::Path,
    outcome: &Outcome,
    now_secs: i64,
) -> Result<(), String> {
    const ATTEMPTS_MAX: usize = 3;
    let head_now = || {
        git2::Repository::open_bare(&replica.path)
            .and_then(|r| r.refname_to_id(starling_actors::conversation::store::HEAD_REF))
            .map_err(|e| e.to_string())
    };
    let mut last = String::new();
    for _ in 0..ATTEMPTS_MAX {
        let before = head_now()?;
        let _ = std::fs::remove_dir_all(to);
        let cloned = Store::clone_from(
            &replica.path,
            to,
            outcome.conversation,
            "validity",
            now_secs,
        )
        .map_err(|e| {
            format!(
                "history at {} fails validation: {e}",
                commit_id(before).to_hex()
            )
        })?;
        let validated = cloned.head().map_err(|e| e.to_string())?;
        drop(cloned);
        let _ = std::fs::remove_dir_all(to);
        if validated == commit_id(head_now()?) {
            return Ok(());
        }
        last = format!(
            "re-validation ended at {} but the replica's head is now {}",
            validated.to_hex(),
            commit_id(head_now()?).to_hex()
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
