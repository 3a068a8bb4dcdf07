//! `starling-sim`: many real Starling nodes in one process over a virtual
//! UDP fabric that partitions and heals, driven by scenario files, judged
//! by checkers, reported as JSON and plots.
//!
//! Every node runs the daemon's own actors — transport (quinn, rustls mutual
//! TLS), account (sync, anti-entropy, access), one conversation thread per
//! swarm on a real Git repository — and only the UDP socket is simulated
//! (quinn's `AsyncUdpSocket`, the one network seam). Nothing here shortcuts
//! the transport, and nothing here decides what a node accepts.
//!
//! - [`scenario`]: the TOML scenario format and overrides.
//! - [`plan`]: the seeded decisions (topology, traffic, churn).
//! - [`fabric`]: the virtual network.
//! - [`node`]: one node's actors, crash and restart.
//! - [`observe`]: the observer thread that timestamps arrivals.
//! - [`runner`]: set-up, the timeline, quiescence, final state.
//! - [`checkers`]: no loss, convergence, order agreement, validity.
//! - [`report`] and [`plots`]: `report.json` and the SVG/PNG charts.

pub mod checkers;
pub mod fabric;
pub mod node;
pub mod observe;
pub mod plan;
pub mod plots;
pub mod report;
pub mod runner;
pub mod scenario;

use std::path::{Path, PathBuf};

pub use runner::Progress;
pub use scenario::{Overrides, Scenario};

/// The scenarios shipped with the crate.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// The shipped scenario files, by name.
pub fn shipped() -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_owned(), path.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs every variant of `scenario`, checks each, and writes `report.json`
/// and the plots into `out` when given. Returns the report; its `passed`
/// says whether every checker passed.
pub fn run(
    scenario: &Scenario,
    overrides: &Overrides,
    out: Option<&Path>,
    progress: Progress,
) -> anyhow::Result<report::Report> {
    let mut variants = Vec::new();
    for variant in scenario.runs() {
        let outcome = runner::run_variant(scenario, &variant, progress)?;
        let verdicts = checkers::run_checks(&outcome, &scenario.checks);
        let mut v = report::variant_report(scenario, &outcome, verdicts);
        if let Some(dir) = out {
            std::fs::create_dir_all(dir)?;
            for chart in plots::charts(scenario, &outcome) {
                match plots::write(&chart, dir) {
                    Ok(files) => v.plots.extend(files),
                    Err(e) => v.plot_errors.push(format!("{}: {e}", chart.file)),
                }
            }
        }
        variants.push(v);
    }
    let passed = variants.iter().all(|v| v.checks.iter().all(|c| c.passed));
    let report = report::Report {
        scenario: scenario.clone(),
        overrides: overrides.clone(),
        seed: scenario.seed,
        variants,
        passed,
    };
    if let Some(dir) = out {
        report::write_json(&report, dir)?;
    }
    Ok(report)
}
