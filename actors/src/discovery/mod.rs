//! Discovery: finding where the devices we want to talk to listen, with no
//! server — multicast DNS on the LAN ([`mdns`]) and the mainline DHT on the
//! internet ([`dht`]). Static peers (config, `starling peer add`) need none
//! of this and keep working beside it.
//!
//! The `Discovery` actor (one per account) owns the mdns-sd daemon and the
//! DHT node — the only users of those libraries — and turns what they hear
//! into [`PeerDiscovered`] hints for the `Account` actor, which decides
//! whether the device is one it talks to and dials it through the
//! transport. Records are never trusted: the TLS handshake checks the
//! claimed account (and device) against the peer's certificate chain, and a
//! refuted claim is counted (`starling_discovery_verification_failed_total`).
//!
//! Records come and go (a link goes down, a laptop leaves): the actor keeps
//! the live mDNS records and offers each again every
//! [`MDNS_REOFFER_INTERVAL`] while it is not connected, so a peer is reached
//! again soon after its link returns. DHT lookups repeat every
//! [`DHT_RESOLVE_INTERVAL`] for the watched accounts not connected (and our
//! own account, for our other devices); our own
//! records are republished every [`DHT_REPUBLISH_INTERVAL`] (well inside
//! BEP 44's two-hour expiry) with the clock as sequence number. When the
//! DHT is unreachable (offline), one warning is logged and publishing
//! retries with exponential backoff up to [`DHT_RETRY_MAX`].

pub mod dht;
pub mod mdns;
pub mod metrics;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use mainline::async_dht::AsyncDht;
use mdns_sd::{ServiceDaemon, ServiceEvent};
use prometheus::Registry;
use starling_protocol::discovery::MDNS_SERVICE_TYPE;
use starling_protocol::{AccountId, DeviceId};

use crate::account::discovered::{
    DiscoveredOutcome, PeerDiscovered, SignDhtRecords, WatchedAccounts,
};
use crate::account::Account;
pub use metrics::DiscoveryMetrics;

/// How often live mDNS records of unconnected peers are offered again.
pub const MDNS_REOFFER_INTERVAL: Duration = Duration::from_secs(3);
/// Live mDNS records kept (others are ignored until some go away).
pub const MDNS_PEERS_MAX: usize = 256;
/// Dials of discovered peers in flight at once.
pub const DIALS_IN_FLIGHT_MAX: usize = 64;
/// How often watched accounts are looked up on the DHT.
pub const DHT_RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
/// How often our DHT records are refreshed.
pub const DHT_REPUBLISH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// First retry delay after a failed publish.
pub const DHT_RETRY_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay after failed publishes.
pub const DHT_RETRY_MAX: Duration = Duration::from_secs(10 * 60);
/// Discovery's mailbox bound.
pub const DISCOVERY_MAILBOX_CAPACITY: usize = 256;

/// Which mechanism found a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscoverySource {
    /// Multicast DNS on the local network.
    Mdns,
    /// The mainline DHT.
    Dht,
}

impl DiscoverySource {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Mdns => "mdns",
            Self::Dht => "dht",
        }
    }
}

/// DHT settings.
#[derive(Debug, Clone, Default)]
pub struct DhtSettings {
    /// Bootstrap nodes (`host:port`); empty means mainline's public ones.
    pub bootstrap: Vec<String>,
}

/// Everything a `Discovery` actor is built from.
pub struct DiscoveryConfig {
    /// The account it reports to (and that signs our records).
    pub account: Addr<Account>,
    /// Our account.
    pub account_id: AccountId,
    /// Our account's public key (to look up our other devices' signed records).
    pub account_public_key: [u8; 32],
    /// This device.
    pub device_id: DeviceId,
    /// The QUIC port we listen on.
    pub quic_port: u16,
    /// Advertise and browse with mDNS.
    pub mdns: bool,
    /// Publish and look up on the DHT (`None`: off).
    pub dht: Option<DhtSettings>,
    /// The node's metrics registry.
    pub registry: Registry,
}

/// The discovery actor. Build with [`Discovery::new`], then `start()` it.
pub struct Discovery {
    account: Addr<Account>,
    account_id: AccountId,
    account_public_key: [u8; 32],
    device_id: DeviceId,
    quic_port: u16,
    metrics: DiscoveryMetrics,
    mdns_enabled: bool,
    mdns: Option<ServiceDaemon>,
    /// Our advertisement's full service name, to withdraw it at shutdown.
    advertised: Option<String>,
    /// Live mDNS records by their full service name.
    mdns_peers: HashMap<String, mdns::MdnsPeer>,
    dht_settings: Option<DhtSettings>,
    dht: Option<AsyncDht>,
    dht_retry: Duration,
    dht_offline: bool,
    resolving: bool,
    in_flight: HashSet<(AccountId, Option<DeviceId>, SocketAddr)>,
}

impl Discovery {
    /// Registers the metrics; nothing starts until the actor does.
    pub fn new(config: DiscoveryConfig) -> Result<Self, prometheus::Error> {
        Ok(Self {
            metrics: DiscoveryMetrics::register(&config.registry)?,
            account: config.account,
            account_id: config.account_id,
            account_public_key: config.account_public_key,
            device_id: config.device_id,
            quic_port: config.quic_port,
            mdns_enabled: config.mdns,
            mdns: None,
            advertised: None,
            mdns_peers: HashMap::new(),
            dht_settings: config.dht,
            dht: None,
            dht_retry: DHT_RETRY_MIN,
            dht_offline: false,
            resolving: false,
            in_flight: HashSet::new(),
        })
    }

    fn start_mdns(&mut self, ctx: &mut Context<Self>) -> Result<(), mdns::MdnsError> {
        let daemon = ServiceDaemon::new()?;
        let events = mdns::start(&daemon)?;
        let name = mdns::advertise(&daemon, &self.account_id, &self.device_id, self.quic_port)?;
        tracing::info!(service = name, port = self.quic_port, "advertising on mDNS");
        self.advertised = Some(name);
        ctx.add_stream(events.into_stream());
        self.mdns = Some(daemon);
        ctx.run_interval(MDNS_REOFFER_INTERVAL, |act, ctx| {
            let peers: Vec<mdns::MdnsPeer> = act.mdns_peers.values().cloned().collect();
            for peer in peers {
                for addr in peer.addrs {
                    act.offer(
                        peer.account,
                        Some(peer.device),
                        addr,
                        DiscoverySource::Mdns,
                        ctx,
                    );
                }
            }
        });
        Ok(())
    }

    /// Hands one hint to the account, at most one dial per (claim, address)
    /// at a time, and counts what became of it.
    fn offer(
        &mut self,
        account: AccountId,
        device: Option<DeviceId>,
        addr: SocketAddr,
        source: DiscoverySource,
        ctx: &mut Context<Self>,
    ) {
        let key = (account, device, addr);
        if device == Some(self.device_id)
            || self.in_flight.contains(&key)
            || self.in_flight.len() >= DIALS_IN_FLIGHT_MAX
        {
            return;
        }
        self.in_flight.insert(key);
        let hint = PeerDiscovered {
            account,
            device,
            addr,
            source,
        };
        ctx.spawn(
            self.account
                .send(hint)
                .into_actor(self)
                .map(move |outcome, act, _| {
                    act.in_flight.remove(&key);
                    let label = source.label();
                    match outcome {
                        Ok(DiscoveredOutcome::Connected) => {
                            act.metrics
                                .dials
                                .with_label_values(&[label, "connected"])
                                .inc();
                        }
                        Ok(DiscoveredOutcome::VerificationFailed(_)) => {
                            act.metrics
                                .dials
                                .with_label_values(&[label, "verification_failed"])
                                .inc();
                            act.metrics
                                .verification_failed
                                .with_label_values(&[label])
                                .inc();
                        }
                        Ok(DiscoveredOutcome::Unreachable(reason)) => {
                            tracing::debug!(%addr, source = label, reason, "discovered peer unreachable");
                            act.metrics
                                .dials
                                .with_label_values(&[label, "unreachable"])
                                .inc();
                        }
                        Ok(DiscoveredOutcome::Ignored | DiscoveredOutcome::AlreadyConnected) => {}
                        Err(e) => tracing::warn!(error = %e, "account mailbox"),
                    }
                }),
        );
    }

    fn start_dht(&mut self, settings: DhtSettings, ctx: &mut Context<Self>) {
        let bootstrap = settings.bootstrap.clone();
        ctx.spawn(
            tokio::task::spawn_blocking(move || dht::start(&bootstrap))
                .into_actor(self)
                .map(move |started, act, ctx| match started {
                    Ok(Ok(node)) => {
                        if settings.bootstrap.is_empty() {
                            tracing::info!("DHT node started (public bootstrap nodes)");
                        } else {
                            tracing::info!(bootstrap = ?settings.bootstrap, "DHT node started");
                        }
                        act.dht = Some(node);
                        act.publish(ctx);
                        ctx.run_interval(DHT_RESOLVE_INTERVAL, |act, ctx| act.resolve(ctx));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "internet discovery (DHT) unavailable; retrying");
                        ctx.run_later(act.next_retry(), move |act, ctx| {
                            act.start_dht(settings, ctx)
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "DHT start task"),
                }),
        );
    }

    fn next_retry(&mut self) -> Duration {
        let delay = self.dht_retry;
        self.dht_retry = (self.dht_retry * 2).min(DHT_RETRY_MAX);
        delay
    }

    /// Signs and puts our records; reschedules itself.
    fn publish(&mut self, ctx: &mut Context<Self>) {
        let Some(node) = self.dht.clone() else {
            return;
        };
        let account = self.account.clone();
        let account_id = self.account_id;
        let port = self.quic_port;
        let began = Instant::now();
        let work = async move {
            let seq = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let records = account
                .send(SignDhtRecords {
                    addresses: dht::local_addresses(port),
                    seq,
                })
                .await
                .map_err(|e| dht::DhtError::Put(format!("account mailbox: {e}")))??;
            dht::publish(&node, &records.device, &records.account, &account_id, port).await
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.metrics
                .dht_seconds
                .with_label_values(&["publish"])
                .observe(began.elapsed().as_secs_f64());
            let delay = match result {
                Ok(()) => {
                    act.metrics
                        .dht_operations
                        .with_label_values(&["publish", "ok"])
                        .inc();
                    if act.dht_offline {
                        tracing::info!("DHT reachable again; our records are published");
                    } else {
                        tracing::info!("published our records on the DHT");
                    }
                    act.dht_offline = false;
                    act.dht_retry = DHT_RETRY_MIN;
                    DHT_REPUBLISH_INTERVAL
                }
                Err(e) => {
                    act.metrics
                        .dht_operations
                        .with_label_values(&["publish", "failed"])
                        .inc();
                    let delay = act.next_retry();
                    if act.dht_offline {
                        tracing::debug!(error = %e, ?delay, "DHT publish failed again");
                    } else {
                        // One clear line, not one per retry.
                        tracing::warn!(error = %e, ?delay, "DHT unreachable (offline?): internet discovery retries with backoff; LAN and static peers keep working");
                        act.dht_offline = true;
                    }
                    delay
                }
            };
            ctx.run_later(delay, |act, ctx| act.publish(ctx));
        }));
    }

    /// Looks up every watched account that is not connected.
    fn resolve(&mut self, ctx: &mut Context<Self>) {
        let Some(node) = self.dht.clone() else {
            return;
        };
        if self.resolving {
            return;
        }
        self.resolving = true;
        let own = self.account_id;
        let own_key = self.account_public_key;
        let account = self.account.clone();
        let metrics = self.metrics.clone();
        let work = async move {
            let watched = account.send(WatchedAccounts).await.unwrap_or_default();
            let mut hints = Vec::new();
            for watched in watched {
                let began = Instant::now();
                let result = if watched == own {
                    dht::resolve_signed(&node, &own, &own_key)
                        .await
                        .map(|devices| {
                            devices
                                .unwrap_or_default()
                                .into_iter()
                                .flat_map(|d| d.addrs.into_iter().map(move |a| (Some(d.device), a)))
                                .collect::<Vec<_>>()
                        })
                } else {
                    dht::resolve_rendezvous(&node, &watched)
                        .await
                        .map(|addrs| addrs.into_iter().map(|a| (None, a)).collect())
                };
                metrics
                    .dht_seconds
                    .with_label_values(&["resolve"])
                    .observe(began.elapsed().as_secs_f64());
                let outcome = match &result {
                    Ok(found) if found.is_empty() => "not_found",
                    Ok(_) => "ok",
                    Err(e) => {
                        if matches!(
                            e,
                            dht::DhtError::Record(_) | dht::DhtError::WrongAccount { .. }
                        ) {
                            metrics.records_invalid.with_label_values(&["dht"]).inc();
                        }
                        tracing::debug!(account = %watched, error = %e, "DHT lookup failed");
                        "failed"
                    }
                };
                metrics
                    .dht_operations
                    .with_label_values(&["resolve", outcome])
                    .inc();
                for (device, addr) in result.unwrap_or_default() {
                    hints.push((watched, device, addr));
                }
            }
            hints
        };
        ctx.spawn(work.into_actor(self).map(|hints, act, ctx| {
            act.resolving = false;
            let found = hints
                .iter()
                .filter(|(_, device, _)| *device != Some(act.device_id))
                .count();
            act.metrics
                .peers_discovered
                .with_label_values(&["dht"])
                .inc_by(found as u64);
            for (account, device, addr) in hints {
                act.offer(account, device, addr, DiscoverySource::Dht, ctx);
            }
        }));
    }
}

impl Actor for Discovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(DISCOVERY_MAILBOX_CAPACITY);
        if self.mdns_enabled {
            if let Err(e) = self.start_mdns(ctx) {
                tracing::error!(error = %e, "LAN discovery (mDNS) could not start; it stays off");
            }
        } else {
            tracing::info!("LAN discovery (mDNS) off");
        }
        match self.dht_settings.clone() {
            Some(settings) => self.start_dht(settings, ctx),
            None => tracing::info!("internet discovery (DHT) off"),
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(daemon) = self.mdns.take() {
            let _ = daemon.shutdown();
        }
    }
}

/// How long shutdown waits for the mDNS goodbye to go out.
pub const MDNS_GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Withdraw our mDNS advertisement (peers drop the record at once instead of
/// dialling a dead address until it expires), then stop.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Discovery {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let goodbye = match (&self.mdns, self.advertised.take()) {
            (Some(daemon), Some(name)) => daemon.unregister(&name).ok(),
            _ => None,
        };
        Box::pin(
            async move {
                if let Some(status) = goodbye {
                    let _ = tokio::time::timeout(MDNS_GOODBYE_TIMEOUT, status.recv_async()).await;
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}

impl StreamHandler<ServiceEvent> for Discovery {
    fn handle(&mut self, event: ServiceEvent, ctx: &mut Context<Self>) {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let fullname = service.get_fullname().to_owned();
                let Some(peer) = mdns::peer_of(&service) else {
                    tracing::debug!(service = fullname, "unreadable mDNS record");
                    self.metrics
                        .records_invalid
                        .with_label_values(&["mdns"])
                        .inc();
                    return;
                };
                if peer.device == self.device_id {
                    return;
                }
                if !self.mdns_peers.contains_key(&fullname)
                    && self.mdns_peers.len() >= MDNS_PEERS_MAX
                {
                    return;
                }
                let known = self.mdns_peers.get(&fullname);
                let new_addrs = peer
                    .addrs
                    .iter()
                    .filter(|a| !known.is_some_and(|k| k.addrs.contains(a)))
                    .count();
                self.metrics
                    .peers_discovered
                    .with_label_values(&["mdns"])
                    .inc_by(new_addrs as u64);
                tracing::info!(account = %peer.account, device = %peer.device, addrs = ?peer.addrs, "mDNS record");
                self.mdns_peers.insert(fullname, peer.clone());
                for addr in peer.addrs {
                    self.offer(
                        peer.account,
                        Some(peer.device),
                        addr,
                        DiscoverySource::Mdns,
                        ctx,
                    );
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(peer) = self.mdns_peers.remove(&fullname) {
                    tracing::info!(account = %peer.account, device = %peer.device, "mDNS record gone");
                }
            }
            _ => {}
        }
    }

    /// The browser's channel closes only when the mDNS daemon stops; the
    /// actor (and the DHT half) carries on.
    fn finished(&mut self, _: &mut Context<Self>) {
        tracing::info!(service = MDNS_SERVICE_TYPE, "mDNS browsing ended");
    }
}
