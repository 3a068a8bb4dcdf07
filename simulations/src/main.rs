//! `starling-sim`: runs many real Starling nodes in one process over a virtual
//! UDP fabric that can partition and heal, replays scenarios from a seed, and
//! checks convergence and no-loss (see docs/ARCHITECTURE.md).
//!
//! The harness arrives with the simulation issue; this binary exists so the
//! workspace has its final shape, and says so instead of pretending to run.

use clap::Parser;

/// Simulate Starling swarms over a virtual network.
#[derive(Parser)]
#[command(name = "starling-sim", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("starling-sim has no scenario runner yet: it arrives with the simulation issue")
}
