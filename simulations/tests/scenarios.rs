//! Every shipped scenario, run small through the real stack (real actors,
//! QUIC, TLS, Git repositories over the virtual fabric), must pass every
//! checker; and a planted loss — a node that announces nothing and never
//! runs anti-entropy — must be caught by the no-loss checker with a diff
//! that names what is missing and who holds it.
//!
//! Sizes are cut down (3 nodes a group, a handful of messages, times
//! scaled) to keep the suite within a few minutes on two cores in debug;
//! `starling-sim run` runs the full sizes. Each test prints its seed; rerun
//! one with `starling-sim run NAME --seed N` and the same overrides.

use std::path::PathBuf;

use starling_sim::checkers::Verdict;
use starling_sim::report::Report;
use starling_sim::scenario::{Checks, Fault, FaultAction, GroupSpec, LinkSpec, Traffic};
use starling_sim::{Overrides, Progress, Scenario};

fn shipped(name: &str) -> Scenario {
    Scenario::load(&starling_sim::scenarios_dir().join(format!("{name}.toml")))
        .unwrap_or_else(|e| panic!("shipped scenario {name}: {e}"))
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-sim-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn failures(report: &Report) -> Vec<(String, Verdict)> {
    report
        .variants
        .iter()
        .flat_map(|v| {
            v.checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| (v.name.clone(), c.clone()))
        })
        .collect()
}

fn run_small(name: &str, overrides: Overrides) -> Report {
    let scenario = shipped(name)
        .with(&overrides)
        .expect("overrides keep it valid");
    eprintln!("{name}: seed {} overrides {overrides:?}", scenario.seed);
    let out = out_dir(name);
    let report = starling_sim::run(&scenario, &overrides, Some(&out), Progress::Quiet)
        .expect("the run completes");
    let failed = failures(&report);
    assert!(failed.is_empty(), "{name} failed checks: {failed:#?}");
    // The report and every plot were written.
    assert!(out.join("report.json").exists());
    for v in &report.variants {
        assert!(v.plot_errors.is_empty(), "{:?}", v.plot_errors);
        assert_eq!(v.plots.len(), 10, "five charts, SVG and PNG: {:?}", v.plots);
        assert!(v.writes["accepted"] > 0, "nothing was written");
        assert_eq!(v.checks.len(), 4, "all four checkers ran");
    }
    let _ = std::fs::remove_dir_all(&out);
    report
}

#[test]
fn internet_shutdown_converges_after_the_heal() {
    let report = run_small(
        "internet-shutdown",
        Overrides {
            nodes_per_group: Some(3),
            messages_per_group: Some(10),
            time_scale: Some(0.3),
            seed: None,
        },
    );
    let v = &report.variants[0];
    // Both sides wrote during the cut, and the cut really cut.
    assert!(v.wire.dropped.cut > 0, "no datagram hit the partition");
    assert!(v.time_to_converge_after_heal_s.is_some());
    let baseline = v
        .git_baseline
        .as_ref()
        .expect("a heal gives a git baseline");
    assert!(baseline.objects > 0, "the two sides differed at the heal");
    // The history counts what it holds: every accepted message, and at
    // least the merge that joined the two sides' histories.
    assert_eq!(v.history.messages, v.writes["accepted"]);
    assert!(v.history.merges >= 1, "{:?}", v.history);
    assert!(v.history.commits >= v.history.messages + v.history.merges);
}

#[test]
fn churn_loses_nothing() {
    let report = run_small(
        "churn",
        Overrides {
            nodes_per_group: Some(6),
            messages_per_group: Some(24),
            time_scale: Some(0.4),
            seed: None,
        },
    );
    let v = &report.variants[0];
    assert!(v.writes["planned"] >= v.writes["accepted"]);
}

#[test]
fn lossy_links_still_deliver_everything() {
    let report = run_small(
        "lossy",
        Overrides {
            nodes_per_group: Some(4),
            messages_per_group: Some(12),
            time_scale: Some(0.3),
            seed: None,
        },
    );
    assert!(
        report.variants[0].wire.dropped.loss > 0,
        "no datagram was lost"
    );
}

#[test]
fn mesh_and_star_both_converge() {
    let report = run_small(
        "mesh-vs-star",
        Overrides {
            nodes_per_group: Some(3),
            messages_per_group: Some(8),
            time_scale: Some(0.3),
            seed: None,
        },
    );
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["mesh", "star"]);
    assert!(
        report.variants[0].edges > report.variants[1].edges,
        "a mesh has more links than a star"
    );
}

/// A node that drops every announcement and never runs anti-entropy: what
/// it writes stays with it, and the no-loss checker must say so.
#[test]
fn the_no_loss_checker_catches_a_planted_loss() {
    let scenario = Scenario {
        name: "planted-loss".into(),
        description: "node muted-0 announces nothing".into(),
        seed: 5,
        network: LinkSpec::default(),
        groups: vec![
            GroupSpec {
                name: "muted".into(),
                nodes: 1,
                link: None,
            },
            GroupSpec {
                name: "rest".into(),
                nodes: 3,
                link: None,
            },
        ],
        links: vec![],
        topology: starling_sim::scenario::Topology::Mesh,
        variants: vec![],
        traffic: Traffic {
            messages_per_group: 3,
            start_s: 1.5,
            stop_s: 3.0,
            writers_per_group: 0,
            text_bytes: 32,
        },
        timeline: vec![Fault {
            at_s: 0.5,
            action: FaultAction::Mute {
                node: "muted-0".into(),
            },
        }],
        churn: None,
        sync: Default::default(),
        checks: Checks {
            deadline_s: 8.0,
            ..Checks::default()
        },
    };
    scenario.validate().unwrap();
    eprintln!("planted-loss: seed {}", scenario.seed);
    let report =
        starling_sim::run(&scenario, &Overrides::default(), None, Progress::Quiet).unwrap();
    assert!(!report.passed);
    let v = &report.variants[0];
    let no_loss = v.checks.iter().find(|c| c.check == "no-loss").unwrap();
    assert!(
        !no_loss.passed,
        "the planted loss went unnoticed: {no_loss:#?}"
    );
    // Every other node lacks the muted node's three messages, and the diff
    // says only the muted node holds them.
    assert_eq!(no_loss.diff.len(), 3, "{:#?}", no_loss.diff);
    for line in &no_loss.diff {
        assert!(line.starts_with("rest-"), "{line}");
        assert!(line.contains("lacks 3 of 6 accepted messages"), "{line}");
        assert!(line.ends_with("(first one held by muted-0)"), "{line}");
    }
    // The rest still agree among themselves and every history is valid.
    let validity = v.checks.iter().find(|c| c.check == "validity").unwrap();
    assert!(validity.passed, "{validity:#?}");
}
