//! Discovery diagnostics: `starling dht-bootstrap` runs DHT nodes for a
//! private network (tests use it as their testnet; an offline site can too),
//! and `starling mdns-advertise` puts one mDNS claim on the LAN, true or
//! false, to check what peers make of it. Both run until killed.

use std::net::SocketAddrV4;

use anyhow::Context as _;
use starling_actors::discovery::{dht, mdns};
use starling_protocol::{AccountId, DeviceId};

/// DHT nodes `dht-bootstrap` runs at most.
pub const BOOTSTRAP_NODES_MAX: usize = 16;

/// Runs `nodes` DHT server nodes; the first listens on `listen`.
pub fn dht_bootstrap(listen: SocketAddrV4, nodes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=BOOTSTRAP_NODES_MAX).contains(&nodes),
        "--nodes must be 1 to {BOOTSTRAP_NODES_MAX}"
    );
    let running = dht::start_bootstrap_nodes(listen, nodes)
        .with_context(|| format!("starting DHT nodes on {listen}"))?;
    crate::commands::print_out(&format!(
        "dht bootstrap: {listen} ({} nodes)",
        running.len()
    ));
    loop {
        std::thread::park();
    }
}

/// Advertises `account`/`device` at `port` on the LAN.
pub fn mdns_advertise(account: &str, device: &str, port: u16) -> anyhow::Result<()> {
    let account: AccountId = account.parse().context("account id")?;
    let device: DeviceId = device.parse().context("device id")?;
    let _advertisement =
        mdns::Advertisement::start(&account, &device, port).context("mDNS advertisement")?;
    crate::commands::print_out(&format!(
        "advertising account {account} device {device} at port {port}"
    ));
    loop {
        std::thread::park();
    }
}
