//! Daemon configuration: embedded defaults, overridden by a TOML file, then by
//! environment variables, then by command-line flags (each layer wins over the
//! one before).
//!
//! The file is `DATA_DIR/starling.toml` unless `--config FILE` names another:
//!
//! ```toml
//! api = "127.0.0.1:7421"    # TCP address of the local HTTP API; port 0 picks one
//! listen = "0.0.0.0:7420"   # UDP address of QUIC; port 0 picks one
//! peers = ["<account id>@127.0.0.1:7520"]   # devices to keep connections to
//! mdns = true               # LAN discovery: advertise and browse with multicast DNS
//! dht = true                # internet discovery: records on the mainline DHT
//! dht_bootstrap = ["10.0.0.1:6881"]   # DHT bootstrap nodes; empty: the public ones
//! ```
//!
//! Environment: `STARLING_API`, `STARLING_LISTEN`, `STARLING_PEERS` (peers
//! separated by commas), `STARLING_MDNS` and `STARLING_DHT` (`true`/`false`),
//! `STARLING_DHT_BOOTSTRAP` (comma-separated). Flags: `--no-mdns`,
//! `--no-dht`, `--dht-bootstrap`. A peer names the account its device must prove:
//! the transport authenticates the peer's certificate chain against it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;

/// Default TCP port for the local API.
pub const DEFAULT_API_PORT: u16 = 7421;
/// Default UDP port for QUIC.
pub const DEFAULT_LISTEN_PORT: u16 = 7420;
/// Most static peers a config may list.
pub const PEERS_MAX: usize = 256;
/// Most DHT bootstrap nodes a config may list.
pub const DHT_BOOTSTRAP_MAX: usize = 32;
/// Largest config file we read.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The daemon's settings after every layer is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// TCP address the local API binds (loopback by default: it is a local API).
    pub api: SocketAddr,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Devices to keep connections to.
    pub peers: Vec<PeerAddr>,
    /// LAN discovery by multicast DNS.
    pub mdns: bool,
    /// Internet discovery on the mainline DHT.
    pub dht: bool,
    /// DHT bootstrap nodes (`host:port`); empty means the public ones.
    pub dht_bootstrap: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_LISTEN_PORT)),
            peers: Vec::new(),
            mdns: true,
            dht: true,
            dht_bootstrap: Vec::new(),
        }
    }
}

/// A static peer: `ACCOUNT_ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The account the device must prove.
    pub account: starling_protocol::AccountId,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl std::str::FromStr for PeerAddr {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (account, addr) = text
            .split_once('@')
            .with_context(|| format!("peer {text:?} is not ACCOUNT_ID@HOST:PORT"))?;
        let account = account
            .parse()
            .with_context(|| format!("peer {text:?}: bad account id"))?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .with_context(|| format!("peer {text:?}: bad address"))?
            .next()
            .with_context(|| format!("peer {text:?}: address resolves to nothing"))?;
        Ok(Self { account, addr })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.account, self.addr)
    }
}

fn parse_peers(texts: &[String]) -> anyhow::Result<Vec<PeerAddr>> {
    anyhow::ensure!(
        texts.len() <= PEERS_MAX,
        "{} peers listed; the limit is {PEERS_MAX}",
        texts.len()
    );
    texts.iter().map(|t| t.trim().parse()).collect()
}

/// The file's shape: every key optional, unknown keys refused (a typo should
/// not silently fall back to a default).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    api: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    peers: Option<Vec<String>>,
    mdns: Option<bool>,
    dht: Option<bool>,
    dht_bootstrap: Option<Vec<String>>,
}

/// Overrides from the command line.
#[derive(Debug, Default)]
pub struct Overrides {
    pub api: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    /// `--no-mdns`.
    pub no_mdns: bool,
    /// `--no-dht`.
    pub no_dht: bool,
    /// `--dht-bootstrap` (empty: not given).
    pub dht_bootstrap: Vec<String>,
}

fn parse_bool(key: &str, text: &str) -> anyhow::Result<bool> {
    match text.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => anyhow::bail!("{key}={other:?} is not true or false"),
    }
}

fn check_bootstrap(nodes: Vec<String>) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        nodes.len() <= DHT_BOOTSTRAP_MAX,
        "{} DHT bootstrap nodes listed; the limit is {DHT_BOOTSTRAP_MAX}",
        nodes.len()
    );
    for node in &nodes {
        anyhow::ensure!(
            node.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
            "DHT bootstrap node {node:?} is not HOST:PORT"
        );
    }
    Ok(nodes)
}

impl Config {
    /// Applies the layers. `file` is read only if it exists, unless `required`.
    pub fn load(
        file: &Path,
        required: bool,
        env: impl Fn(&str) -> Option<String>,
        flags: Overrides,
    ) -> anyhow::Result<Self> {
        let mut config = Config::default();
        if required || file.exists() {
            let size = std::fs::metadata(file)
                .with_context(|| format!("reading config {}", file.display()))?
                .len();
            anyhow::ensure!(
                size <= CONFIG_BYTES_MAX,
                "config {} is {size} bytes; the limit is {CONFIG_BYTES_MAX}",
                file.display()
            );
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading config {}", file.display()))?;
            let parsed: ConfigFile =
                toml::from_str(&text).with_context(|| format!("config {}", file.display()))?;
            config.api = parsed.api.unwrap_or(config.api);
            config.listen = parsed.listen.unwrap_or(config.listen);
            if let Some(peers) = parsed.peers {
                config.peers = parse_peers(&peers)?;
            }
            config.mdns = parsed.mdns.unwrap_or(config.mdns);
            config.dht = parsed.dht.unwrap_or(config.dht);
            if let Some(nodes) = parsed.dht_bootstrap {
                config.dht_bootstrap = check_bootstrap(nodes)?;
            }
        }
        if let Some(api) = env("STARLING_API") {
            config.api = api
                .parse()
                .with_context(|| format!("STARLING_API={api:?} is not host:port"))?;
        }
        if let Some(listen) = env("STARLING_LISTEN") {
            config.listen = listen
                .parse()
                .with_context(|| format!("STARLING_LISTEN={listen:?} is not host:port"))?;
        }
        if let Some(peers) = env("STARLING_PEERS") {
            let list: Vec<String> = peers
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(str::to_owned)
                .collect();
            config.peers = parse_peers(&list)?;
        }
        if let Some(mdns) = env("STARLING_MDNS") {
            config.mdns = parse_bool("STARLING_MDNS", &mdns)?;
        }
        if let Some(dht) = env("STARLING_DHT") {
            config.dht = parse_bool("STARLING_DHT", &dht)?;
        }
        if let Some(nodes) = env("STARLING_DHT_BOOTSTRAP") {
            config.dht_bootstrap = check_bootstrap(
                nodes
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )?;
        }
        config.api = flags.api.unwrap_or(config.api);
        config.listen = flags.listen.unwrap_or(config.listen);
        config.mdns &= !flags.no_mdns;
        config.dht &= !flags.no_dht;
        if !flags.dht_bootstrap.is_empty() {
            config.dht_bootstrap = check_bootstrap(flags.dht_bootstrap)?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.toml");
        assert_eq!(
            Config::load(&file, false, no_env, Overrides::default()).unwrap(),
            Config::default()
        );

        std::fs::write(&file, "api = \"127.0.0.1:9001\"\n").unwrap();
        let from_file = Config::load(&file, false, no_env, Overrides::default()).unwrap();
        assert_eq!(from_file.api.port(), 9001);

        let env = |key: &str| (key == "STARLING_API").then(|| "127.0.0.1:9101".to_owned());
        assert_eq!(
            Config::load(&file, false, env, Overrides::default())
                .unwrap()
                .api
                .port(),
            9101
        );
        let flags = Overrides {
            api: Some("127.0.0.1:0".parse().unwrap()),
            listen: None,
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(&file, false, env, flags).unwrap().api.port(),
            0
        );
    }

    #[test]
    fn listen_and_peers_layer_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.toml");
        let account = "ab".repeat(32);
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:9400\"\npeers = [\"{account}@127.0.0.1:9401\"]\n"),
        )
        .unwrap();
        let config = Config::load(&file, false, no_env, Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 9400);
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.peers[0].addr.port(), 9401);
        assert_eq!(
            config.peers[0].to_string(),
            format!("{account}@127.0.0.1:9401")
        );
        let env = |key: &str| match key {
            "STARLING_LISTEN" => Some("127.0.0.1:9500".to_owned()),
            "STARLING_PEERS" => Some(String::new()),
            _ => None,
        };
        let config = Config::load(&file, false, env, Overrides::default()).unwrap();
        assert_eq!((config.listen.port(), config.peers.len()), (9500, 0));
        let flags = Overrides {
            api: None,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(&file, false, env, flags)
                .unwrap()
                .listen
                .port(),
            0
        );
        std::fs::write(&file, "peers = [\"nobody@127.0.0.1:1\"]\n").unwrap();
        assert!(Config::load(&file, false, no_env, Overrides::default()).is_err());
    }

    #[test]
    fn discovery_toggles_layer_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.toml");
        let defaults = Config::load(&file, false, no_env, Overrides::default()).unwrap();
        assert!(defaults.mdns && defaults.dht && defaults.dht_bootstrap.is_empty());
        std::fs::write(&file, "mdns = false\ndht_bootstrap = [\"10.0.0.1:6881\"]\n").unwrap();
        let config = Config::load(&file, false, no_env, Overrides::default()).unwrap();
        assert!(!config.mdns && config.dht);
        assert_eq!(config.dht_bootstrap, ["10.0.0.1:6881"]);
        let env = |key: &str| match key {
            "STARLING_MDNS" => Some("true".to_owned()),
            "STARLING_DHT_BOOTSTRAP" => Some("a.example:1, b.example:2".to_owned()),
            _ => None,
        };
        let config = Config::load(&file, false, env, Overrides::default()).unwrap();
        assert!(config.mdns);
        assert_eq!(config.dht_bootstrap, ["a.example:1", "b.example:2"]);
        let flags = Overrides {
            no_mdns: true,
            no_dht: true,
            ..Overrides::default()
        };
        let config = Config::load(&file, false, env, flags).unwrap();
        assert!(!config.mdns && !config.dht);
        let bad = |key: &str| (key == "STARLING_DHT").then(|| "maybe".to_owned());
        assert!(Config::load(&file, false, bad, Overrides::default()).is_err());
        std::fs::write(&file, "dht_bootstrap = [\"no-port\"]\n").unwrap();
        assert!(Config::load(&file, false, no_env, Overrides::default()).is_err());
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.toml");
        std::fs::write(&file, "apj = \"127.0.0.1:9000\"\n").unwrap();
        let error = Config::load(&file, false, no_env, Overrides::default()).unwrap_err();
        assert!(format!("{error:#}").contains("unknown field"), "{error:#}");
        let env = |_: &str| Some("nonsense".to_owned());
        assert!(Config::load(
            &dir.path().join("absent.toml"),
            false,
            env,
            Overrides::default()
        )
        .is_err());
        assert!(Config::load(
            &dir.path().join("absent.toml"),
            true,
            no_env,
            Overrides::default()
        )
        .is_err());
    }
}
