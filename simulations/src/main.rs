//! `starling-sim`: runs a scenario file (or lists the shipped ones) and
//! exits non-zero when a checker fails. See `simulations/scenarios/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use starling_sim::{Overrides, Progress, Scenario};

/// Fabric lateness (p99) past which a run's summary warns that the machine,
/// not only the protocol, set its timings: far above any link latency a
/// scenario configures for a campus, and still well under its timers.
const LATENESS_WARN_P99: Duration = Duration::from_millis(100);

/// Simulate Starling swarms over a virtual network.
#[derive(Parser)]
#[command(name = "starling-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: a file path, or the name of a shipped scenario.
    Run {
        /// Scenario file or shipped name.
        scenario: String,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Where report.json and the plots go.
        #[arg(long, default_value = "sim-report")]
        out: PathBuf,
        /// Nodes in every group (overrides the file).
        #[arg(long)]
        nodes_per_group: Option<usize>,
        /// Messages every group writes (overrides the file).
        #[arg(long)]
        messages_per_group: Option<usize>,
        /// Multiplies every time in the scenario.
        #[arg(long)]
        time_scale: Option<f64>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// List the shipped scenarios.
    List,
}

/// On Ctrl-C or SIGTERM, removes the runs' node data (on a tmpfs it holds
/// RAM) and exits with 130, as an interrupted tool does. The handlers are
/// in place when this returns.
fn remove_run_data_when_interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let signals = {
        let _context = runtime.enter();
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
    };
    let Ok((mut interrupt, mut terminate)) = signals else {
        return;
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        eprintln!("interrupted: removing the nodes' data");
        starling_sim::runner::remove_run_data();
        std::process::exit(130);
    });
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STARLING_SIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        // Each node runs on a thread named after it: the name says whose line it is.
        .with_thread_names(true)
        .init();
    remove_run_data_when_interrupted();
    match Cli::parse().command {
        Command::List => {
            for (name, path) in starling_sim::shipped()? {
                let scenario = Scenario::load(&path)?;
                println!("{name:<20} {}", scenario.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            seed,
            out,
            nodes_per_group,
            messages_per_group,
            time_scale,
            quiet,
        } => {
            let path = {
                let p = PathBuf::from(&scenario);
                if p.exists() {
                    p
                } else {
                    starling_sim::scenarios_dir().join(format!("{scenario}.toml"))
                }
            };
            let overrides = Overrides {
                nodes_per_group,
                messages_per_group,
                time_scale,
                seed,
            };
            let scenario = Scenario::load(&path)?.with(&overrides)?;
            eprintln!(
                "running {} with seed {} (replay: --seed {})",
                scenario.name, scenario.seed, scenario.seed
            );
            let progress = if quiet {
                Progress::Quiet
            } else {
                Progress::Bars
            };
            let report = starling_sim::run(&scenario, &overrides, Some(&out), progress)?;
            for v in &report.variants {
                println!(
                    "{} [{}]: {} nodes, setup {:.1}s, wall {:.1}s, delivery p50 {:.2}s p99 {:.2}s, converge after heal {}",
                    scenario.name,
                    v.name,
                    v.nodes,
                    v.setup_s,
                    v.wall_s,
                    v.delivery_latency.p50,
                    v.delivery_latency.p99,
                    v.time_to_converge_after_heal_s
                        .map(|t| format!("{t:.2}s"))
                        .unwrap_or_else(|| "n/a".into())
                );
                if let Some(t) = v.first_cross_delivery_after_heal_s {
                    println!("  first message across the healed cut after {t:.2}s");
                }
                let late = &v.wire.lateness;
                println!(
                    "  fabric lateness: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
                    late.quantile(0.5).as_secs_f64() * 1e3,
                    late.quantile(0.99).as_secs_f64() * 1e3,
                    late.max().as_secs_f64() * 1e3
                );
                if late.quantile(0.99) > LATENESS_WARN_P99 {
                    println!(
                        "  warning: the fabric delivered late (p99 over {} ms): this machine's \
                         cores were saturated, so timings here measure it as well as the protocol",
                        LATENESS_WARN_P99.as_millis()
                    );
                }
                println!(
                    "  history: {} commits, {} messages, {} merges",
                    v.history.commits, v.history.messages, v.history.merges
                );
                if let Some(b) = &v.git_baseline {
                    println!(
                        "  raw git fetch of the same commits: {:.3}s ({} objects); ratio {}",
                        b.fetch_s,
                        b.objects,
                        b.ratio
                            .map(|r| format!("{r:.0}x"))
                            .unwrap_or_else(|| "n/a".into())
                    );
                }
                for c in &v.checks {
                    println!(
                        "  {:<12} {} — {}",
                        c.check,
                        if c.passed { "PASS" } else { "FAIL" },
                        c.summary
                    );
                    for line in &c.diff {
                        println!("      {line}");
                    }
                }
            }
            println!("report: {}", out.join("report.json").display());
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
