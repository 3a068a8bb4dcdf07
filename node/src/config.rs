//! Daemon configuration: embedded defaults, overridden by a TOML file, then by
//! environment variables, then by command-line flags (each layer wins over the
//! one before).
//!
//! The file is `DATA_DIR/starling.toml` unless `--config FILE` names another:
//!
//! ```toml
//! api = "127.0.0.1:7421"    # TCP address of the local HTTP API; port 0 picks one
//! ```
//!
//! Environment: `STARLING_API`. The QUIC listen address and static peers join
//! this file when the transport is wired into the daemon.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;

/// Default TCP port for the local API.
pub const DEFAULT_API_PORT: u16 = 7421;
/// Largest config file we read.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The daemon's settings after every layer is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// TCP address the local API binds (loopback by default: it is a local API).
    pub api: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
        }
    }
}

/// The file's shape: every key optional, unknown keys refused (a typo should
/// not silently fall back to a default).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    api: Option<SocketAddr>,
}

/// Overrides from the command line.
#[derive(Debug, Default)]
pub struct Overrides {
    pub api: Option<SocketAddr>,
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
        }
        if let Some(api) = env("STARLING_API") {
            config.api = api
                .parse()
                .with_context(|| format!("STARLING_API={api:?} is not host:port"))?;
        }
        config.api = flags.api.unwrap_or(config.api);
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
        };
        assert_eq!(
            Config::load(&file, false, env, flags).unwrap().api.port(),
            0
        );
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
