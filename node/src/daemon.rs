//! `starling up`: the daemon's start-up and shutdown.
//!
//! Start-up order: take the data dir's lock (one daemon per data dir), load
//! and verify the identity, bind the QUIC socket and start the transport, the
//! account (which loads the swarms under `DATA_DIR/swarms/` and registers its
//! channels) and the static peers, bind the API, then publish how to reach
//! it: a fresh bearer token in `DATA_DIR/api.token` (0600) and the bound
//! addresses in `DATA_DIR/run.json`. Shutdown (SIGINT/SIGTERM) stops the API
//! gracefully, closes the transport, and removes `run.json`. Conversation
//! actors finish the message they are handling (each commit is written
//! before its ref moves, so a repository is consistent at any instant).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use actix::Actor;
use actix_web::dev::Service;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use rand_core::RngCore;
use starling_actors::account::contacts::CONTACTS_FILE;
use starling_actors::account::swarms::AddPeer;
use starling_actors::account::{Account, SwarmConfig};
use starling_actors::conversation::SwarmMetrics;
use starling_actors::discovery::{DhtSettings, Discovery, DiscoveryConfig};
use starling_actors::transport::{
    udp_socket, LocalIdentity, Transport, TransportConfig, TransportLimits,
};

use crate::api::{self, ApiMetrics, ApiState, NodeFacts};
use crate::config::Config;
use crate::data_dir::{write_atomic, DataDir};

/// File naming the running daemon's addresses, for the CLI.
pub const RUN_FILE: &str = "run.json";
/// File holding the API bearer token.
pub const TOKEN_FILE: &str = "api.token";
const LOCK_FILE: &str = "daemon.lock";
/// Folder of the swarm repositories, under the data dir.
pub const SWARMS_DIR: &str = "swarms";
/// How long in-flight API requests get to finish at shutdown.
const SHUTDOWN_GRACE_SECONDS: u64 = 10;

/// What `run.json` says.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// Base URL of the local API.
    pub api: String,
    /// QUIC address (host:port).
    #[serde(default)]
    pub listen: String,
}

/// Holds the data dir's lock for as long as it lives (the OS drops it with the process).
struct DaemonLock {
    _file: File,
}

fn lock(root: &Path) -> anyhow::Result<DaemonLock> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let running = std::fs::read_to_string(root.join(RUN_FILE))
            .ok()
            .and_then(|s| serde_json::from_str::<RunInfo>(&s).ok());
        match running {
            Some(info) => anyhow::bail!(
                "a daemon already runs on {} (pid {}, API {})",
                root.display(),
                info.pid,
                info.api
            ),
            None => anyhow::bail!("a daemon already runs on {}", root.display()),
        }
    }
    Ok(DaemonLock { _file: file })
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn up(root: PathBuf, config: Config) -> anyhow::Result<()> {
    let data_dir = DataDir::new(root.clone());
    data_dir.ensure_root()?;
    let _lock = lock(&root)?;
    for leftover in data_dir.remove_leftovers()? {
        tracing::warn!(file = %leftover.display(), "removed a file a crash left behind");
    }
    let identity = data_dir.load()?;
    let mut token_bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut token_bytes);
    let token = hex::encode(token_bytes);
    write_atomic(&root.join(TOKEN_FILE), token.as_bytes(), 0o600)?;

    let system = actix::System::new();
    let result = system.block_on(async move {
        let registry = prometheus::Registry::new();
        let api_metrics = ApiMetrics::register(&registry)?;
        let socket = udp_socket(config.listen)
            .with_context(|| format!("binding QUIC to {}", config.listen))?;
        let listen = socket.local_addr()?;
        let local = LocalIdentity::new(
            identity.device_key.clone(),
            identity.device_cert.clone(),
            identity.account_cert.clone(),
        )?;
        let mut seed = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut seed);
        let transport = Transport::new(TransportConfig {
            identity: local,
            socket,
            registry: registry.clone(),
            limits: TransportLimits::default(),
            revocations: vec![(identity.account_cert.clone(), identity.crl.clone())],
            rng_seed: u64::from_le_bytes(seed),
        })?
        .start();
        let swarm_config = SwarmConfig {
            transport: transport.clone(),
            dir: root.join(SWARMS_DIR),
            metrics: SwarmMetrics::register(&registry)?,
        };
        let discovery_facts = (
            identity.account_id(),
            identity.account_key.verifying_key().to_bytes(),
            identity.device_id(),
        );
        let account = Account::with_swarms(identity, swarm_config)?
            .with_contacts(root.join(CONTACTS_FILE), &registry)?
            .start();
        // Held until shutdown so it lives even when it has nothing scheduled.
        let discovery = Discovery::new(DiscoveryConfig {
            account: account.clone(),
            account_id: discovery_facts.0,
            account_public_key: discovery_facts.1,
            device_id: discovery_facts.2,
            quic_port: listen.port(),
            mdns: config.mdns,
            dht: config.dht.then(|| DhtSettings {
                bootstrap: config.dht_bootstrap.clone(),
            }),
            registry: registry.clone(),
        })?
        .start();
        for peer in &config.peers {
            account
                .send(AddPeer {
                    addr: peer.addr,
                    account: peer.account,
                })
                .await??;
        }
        let mut state = ApiState {
            account,
            token,
            registry,
            node: NodeFacts {
                api: String::new(),
                listen: listen.to_string(),
                pid: std::process::id(),
            },
        };
        // Bind first so port 0 resolves, then tell handlers the real address.
        let listener = std::net::TcpListener::bind(config.api)
            .with_context(|| format!("binding the API to {}", config.api))?;
        let bound = listener.local_addr()?;
        state.node.api = format!("http://{bound}");
        let run_info = RunInfo {
            pid: std::process::id(),
            api: state.node.api.clone(),
            listen: state.node.listen.clone(),
        };
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            let metrics = api_metrics.clone();
            App::new()
                .app_data(state.clone())
                .wrap_fn(move |req, service| {
                    let metrics = metrics.clone();
                    let call = service.call(req);
                    async move {
                        let response = call.await?;
                        let route = response
                            .request()
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".to_owned());
                        metrics.count(&route, response.status());
                        Ok(response)
                    }
                })
                .configure(api::configure)
        })
        .workers(1)
        .shutdown_timeout(SHUTDOWN_GRACE_SECONDS)
        .listen(listener)?
        .run();
        write_atomic(
            &root.join(RUN_FILE),
            &serde_json::to_vec_pretty(&run_info)?,
            0o644,
        )?;
        tracing::info!(api = %run_info.api, listen = %run_info.listen, pid = run_info.pid, "daemon up");
        eprintln!(
            "starling daemon up: API {}, QUIC {}",
            run_info.api, run_info.listen
        );
        let served = server.await;
        let _ = discovery
            .send(starling_actors::discovery::Shutdown)
            .await;
        let _ = transport
            .send(starling_actors::transport::Shutdown)
            .await;
        let _ = std::fs::remove_file(root.join(RUN_FILE));
        tracing::info!("daemon stopped");
        served.context("API server")
    });
    actix::System::current().stop();
    result
}
