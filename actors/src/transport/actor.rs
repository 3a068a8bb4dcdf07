//! The `Transport` actor: one quinn endpoint per account, one connection per
//! peer device, the channel routing table, reconnection and events.
//!
//! The actor owns all connection state. Per-connection tasks (accepting
//! streams and datagrams) and per-handshake tasks only move bytes; they report
//! to the actor with bounded `send`s and it decides. Decisions that need no
//! state (header parsing, the pending-accepts limit) happen in the tasks so a
//! flood of streams never queues in the actor's mailbox.
//!
//! **Simultaneous dial.** When a second connection to the same peer device
//! appears, both ends keep the one dialled by the device with the smaller
//! device id (byte order) — a rule each side evaluates alone and both agree
//! on. The other connection *drains*: it takes no new outgoing channels, and
//! closes with [`CloseCode::Duplicate`] once it has been draining for the grace
//! period and holds no channel (or after the drain timeout regardless). An
//! opener whose channel was cut by that close before the peer answered retries
//! on the survivor, so no channel is lost. Two connections dialled by the same
//! side (a redial racing an old connection) keep the newer one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::Registry;
use quinn::{AsyncUdpSocket, VarInt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use starling_protocol::channel::{ChannelName, CloseCode, ReplyCode};
use starling_protocol::limits;
use starling_protocol::VerifiedDevice;
use starling_protocol::{AccountCert, CrlError, DeviceId, RevocationList};
use tokio::sync::watch;

use super::blocklist::BlockListError;
use super::blocklist::{BlockList, BLOCKED_REASON};
use super::channel::{open_channel, ChannelError, ConnectionCounters, SlotGuard};
use super::connection::{
    accept_one, await_preface, close_code, handshake_error, peer_of, ConnectionLost,
    ConnectionReady, ConnectionTask, HandshakingGauge, RouteChannel,
};
use super::messages::*;
use super::metrics::TransportMetrics;
use super::tls::{
    client_crypto, quic_client_crypto, quic_server_crypto, server_crypto, ExpectedPeer,
    FailureSide, LocalIdentity, RevocationBook, TlsError, SERVER_NAME,
};

/// How often draining connections are checked for emptiness.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Base delay between channel-open retries after a duplicate close.
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(25);
/// Mixed into the configured seed for quinn's own RNG, so it differs from ours.
const QUINN_SEED_SALT: u64 = 0x5175_696e_6e53_6565;
/// Client configs cached (one per peer we dial); the cache is cleared when full.
const CLIENT_CONFIGS_MAX: usize = 256;

/// Every bound the transport enforces. [`Default`] takes them from
/// `starling_protocol::limits`; tests shrink them.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Channel slots one connection may hold.
    pub channels_per_connection: usize,
    /// Channel slots one peer device may hold across its connections.
    pub channels_per_peer: usize,
    /// Undecided incoming channels per connection.
    pub pending_accepts: usize,
    /// Time an incoming channel has to send its header.
    pub header_timeout: Duration,
    /// Time an opener waits for the reply.
    pub reply_timeout: Duration,
    /// Time a handshake (with preface) may take.
    pub handshake_timeout: Duration,
    /// Idle time after which a connection closes.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Connections the endpoint holds at once.
    pub connections_max: usize,
    /// Minimum time a losing duplicate stays open.
    pub duplicate_drain_grace: Duration,
    /// Maximum time a losing duplicate stays open.
    pub duplicate_drain_timeout: Duration,
    /// First reconnection delay.
    pub reconnect_backoff_min: Duration,
    /// Largest reconnection delay.
    pub reconnect_backoff_max: Duration,
    /// Event subscribers kept.
    pub event_subscribers: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            channels_per_connection: limits::CHANNELS_PER_CONNECTION_MAX,
            channels_per_peer: limits::CHANNELS_PER_PEER_MAX,
            pending_accepts: limits::CHANNEL_PENDING_ACCEPTS_MAX,
            header_timeout: Duration::from_millis(limits::CHANNEL_HEADER_TIMEOUT_MS),
            reply_timeout: Duration::from_millis(limits::CHANNEL_REPLY_TIMEOUT_MS),
            handshake_timeout: Duration::from_millis(limits::HANDSHAKE_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(limits::CONNECTION_IDLE_TIMEOUT_MS),
            keep_alive: Duration::from_millis(limits::CONNECTION_KEEP_ALIVE_MS),
            connections_max: limits::CONNECTIONS_MAX,
            duplicate_drain_grace: Duration::from_millis(limits::DUPLICATE_DRAIN_GRACE_MS),
            duplicate_drain_timeout: Duration::from_millis(limits::DUPLICATE_DRAIN_TIMEOUT_MS),
            reconnect_backoff_min: Duration::from_millis(limits::RECONNECT_BACKOFF_MIN_MS),
            reconnect_backoff_max: Duration::from_millis(limits::RECONNECT_BACKOFF_MAX_MS),
            event_subscribers: limits::EVENT_SUBSCRIBERS_MAX,
        }
    }
}

/// Everything a transport is built from.
pub struct TransportConfig {
    /// Our device key and chain.
    pub identity: LocalIdentity,
    /// The UDP seam: a real socket ([`super::udp_socket`]) or a virtual one.
    pub socket: Arc<dyn AsyncUdpSocket>,
    /// The node's metrics registry.
    pub registry: Registry,
    /// Bounds.
    pub limits: TransportLimits,
    /// CRLs known at start (our own account's, at least).
    pub revocations: Vec<(AccountCert, RevocationList)>,
    /// Seeds every random choice the transport makes (reconnect jitter,
    /// quinn's connection ids), so a simulation run is reproducible.
    pub rng_seed: u64,
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    #[error("metrics registration: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("initial revocation list: {0}")]
    Crl(#[from] CrlError),
    #[error("limit out of range: {0}")]
    Limit(String),
}

/// Identifies a connection within one transport.
pub(super) type ConnId = u64;

struct ConnState {
    conn: quinn::Connection,
    peer: VerifiedDevice,
    device_serial: Vec<u8>,
    direction: Direction,
    /// The device that dialled this connection (decides simultaneous dials).
    dialer: DeviceId,
    counters: Arc<ConnectionCounters>,
    draining_since: Option<Instant>,
    /// Set when we close it, so the loss is counted under our reason.
    close_reason: Option<&'static str>,
}

struct Wanted {
    peer: ExpectedPeer,
    backoff: Duration,
    dialing: bool,
}

/// The transport actor. Build with [`Transport::new`] inside a running
/// actix system, then `start()` it.
pub struct Transport {
    local: LocalIdentity,
    verified: VerifiedDevice,
    endpoint: quinn::Endpoint,
    book: RevocationBook,
    /// Accounts refused at every step (contact blocks); written only here.
    blocked: BlockList,
    limits: TransportLimits,
    quic_transport: Arc<quinn::TransportConfig>,
    /// Client configs by whom they expect; building one costs a key parse.
    /// They read the shared revocation book, so caching never hides a CRL.
    client_configs: HashMap<ExpectedPeer, quinn::ClientConfig>,
    metrics: TransportMetrics,
    conns: HashMap<ConnId, ConnState>,
    active: HashMap<DeviceId, ConnId>,
    routes: Vec<(
        starling_protocol::channel::ChannelPattern,
        Recipient<IncomingChannel>,
    )>,
    subscribers: Vec<Recipient<ConnectionEvent>>,
    datagrams: watch::Sender<Option<Recipient<DatagramReceived>>>,
    wanted: HashMap<SocketAddr, Wanted>,
    /// Reconnect jitter; seeded from the config.
    rng: StdRng,
    next_conn: ConnId,
}

fn quic_transport(limits: &TransportLimits) -> Result<quinn::TransportConfig, TransportError> {
    let mut config = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|e| TransportError::Limit(format!("idle timeout: {e}")))?;
    // Peers may open a few streams beyond the channel limit so that excess
    // channels are *refused* (with a reason) rather than silently stalled by
    // QUIC flow control.
    let streams = u64::try_from(limits.channels_per_connection + limits.pending_accepts)
        .ok()
        .and_then(|n| VarInt::from_u64(n).ok())
        .ok_or_else(|| TransportError::Limit("channel limits overflow".into()))?;
    config
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_concurrent_bidi_streams(streams)
        // One uni stream: the server's connection preface.
        .max_concurrent_uni_streams(VarInt::from_u32(1));
    Ok(config)
}

/// Why a connection ended, as a bounded label.
fn loss_label(error: &quinn::ConnectionError) -> &'static str {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            match CloseCode::from_u64(close.error_code.into_inner()) {
                CloseCode::Shutdown => "peer_shutdown",
                CloseCode::Duplicate => "duplicate",
                CloseCode::Revoked => "revoked",
                _ => "peer_closed",
            }
        }
        quinn::ConnectionError::TimedOut => "timeout",
        quinn::ConnectionError::LocallyClosed => "local_close",
        quinn::ConnectionError::Reset => "reset",
        _ => "protocol_error",
    }
}

/// Whether an open that failed with `error` may be retried on another connection.
fn retryable(error: &quinn::ConnectionError) -> bool {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_u64(close.error_code.into_inner()) == CloseCode::Duplicate
        }
        quinn::ConnectionError::LocallyClosed => true,
        _ => false,
    }
}

impl Transport {
    /// Builds the endpoint on `config.socket`. Must run inside the actix system
    /// (quinn spawns its driver on the current runtime).
    pub fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let metrics = TransportMetrics::register(&config.registry)?;
        let book = RevocationBook::new();
        for (account, crl) in config.revocations {
            book.offer(&account, crl)?;
        }
        let quic_transport = Arc::new(quic_transport(&config.limits)?);
        let crypto = quic_server_crypto(server_crypto(&config.identity, &book)?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(quic_transport.clone())
            .max_incoming(config.limits.connections_max);
        let mut endpoint_config = quinn::EndpointConfig::default();
        let mut quinn_seed = [0u8; 32];
        StdRng::seed_from_u64(config.rng_seed ^ QUINN_SEED_SALT).fill_bytes(&mut quinn_seed);
        endpoint_config.rng_seed(Some(quinn_seed));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            config.socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let (datagrams, _) = watch::channel(None);
        Ok(Self {
            verified: config.identity.verified(),
            local: config.identity,
            endpoint,
            book,
            blocked: BlockList::new(),
            limits: config.limits,
            quic_transport,
            client_configs: HashMap::new(),
            metrics,
            conns: HashMap::new(),
            active: HashMap::new(),
            routes: Vec::new(),
            subscribers: Vec::new(),
            datagrams,
            wanted: HashMap::new(),
            rng: StdRng::seed_from_u64(config.rng_seed),
            next_conn: 0,
        })
    }

    /// Starts a dial; the future resolves to a verified connection that the
    /// peer has accepted (its preface arrived).
    fn dial(
        &mut self,
        addr: SocketAddr,
        expected: ExpectedPeer,
    ) -> Result<
        impl std::future::Future<Output = Result<quinn::Connection, ConnectError>>,
        ConnectError,
    > {
        if expected.device_id == Some(self.verified.device_id) {
            return Err(ConnectError::SelfDial);
        }
        if self.blocked.contains(&expected.account_id) {
            return Err(ConnectError::Blocked(expected.account_id));
        }
        let config = match self.client_configs.get(&expected) {
            Some(config) => config.clone(),
            None => {
                let crypto = quic_client_crypto(client_crypto(&self.local, &self.book, expected)?)?;
                let mut config = quinn::ClientConfig::new(Arc::new(crypto));
                config.transport_config(self.quic_transport.clone());
                if self.client_configs.len() >= CLIENT_CONFIGS_MAX {
                    self.client_configs.clear();
                }
                self.client_configs.insert(expected, config.clone());
                config
            }
        };
        let connecting = self.endpoint.connect_with(config, addr, SERVER_NAME)?;
        let metrics = self.metrics.clone();
        let timeout = self.limits.handshake_timeout;
        Ok(async move {
            let _handshaking = HandshakingGauge::new(&metrics);
            let handshake = async {
                let conn = connecting.await.map_err(|e| handshake_error(&e))?;
                await_preface(&conn).await?;
                Ok(conn)
            };
            let result = tokio::time::timeout(timeout, handshake)
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Handshake {
                        side: FailureSide::Local,
                        reason: "timeout",
                        detail: format!("no handshake within {timeout:?}"),
                    })
                });
            if let Err(ConnectError::Handshake {
                side,
                reason,
                detail,
            }) = &result
            {
                tracing::warn!(%addr, side = side.label(), reason, detail, "dial failed");
                metrics
                    .handshakes_failed
                    .with_label_values(&[side.label(), reason])
                    .inc();
            }
            result
        })
    }

    /// Whether an active connection already reaches `expected` at `addr`.
    fn connected_to(&self, expected: &ExpectedPeer, addr: SocketAddr) -> Option<VerifiedDevice> {
        self.active.values().find_map(|id| {
            let state = self.conns.get(id)?;
            let same_account = state.peer.account_id == expected.account_id;
            let same_device = match expected.device_id {
                Some(device) => device == state.peer.device_id,
                None => state.conn.remote_address() == addr,
            };
            (same_account && same_device).then_some(state.peer)
        })
    }

    /// Takes a handshaken connection into the table, de-duplicating it against
    /// an existing one to the same device.
    fn register(
        &mut self,
        conn: quinn::Connection,
        direction: Direction,
        ctx: &mut Context<Self>,
    ) -> Result<VerifiedDevice, ConnectError> {
        let (peer, device_serial) = match peer_of(&conn) {
            Ok(found) => found,
            Err(e) => {
                conn.close(close_code(CloseCode::Disconnected), b"unreadable chain");
                return Err(e);
            }
        };
        if peer.device_id == self.verified.device_id {
            conn.close(close_code(CloseCode::SelfConnection), b"self");
            return Err(ConnectError::SelfDial);
        }
        // A block may have arrived while this handshake was in flight (or
        // we dialled before it did).
        if self.blocked.contains(&peer.account_id) {
            conn.close(close_code(CloseCode::Disconnected), b"disconnected");
            self.metrics
                .handshakes_failed
                .with_label_values(&["local", BLOCKED_REASON])
                .inc();
            tracing::info!(peer = %peer.device_id, account = %peer.account_id, "connection refused: account blocked");
            return Err(ConnectError::Blocked(peer.account_id));
        }
        // Revocation news may have arrived while this handshake was in flight.
        if self
            .book
            .get(&peer.account_id)
            .is_some_and(|crl| crl.crl().is_revoked(&device_serial))
        {
            conn.close(close_code(CloseCode::Revoked), b"revoked");
            self.metrics
                .handshakes_failed
                .with_label_values(&["local", "revoked"])
                .inc();
            return Err(ConnectError::Closed(
                "the peer device was just revoked".into(),
            ));
        }
        if self.conns.len() >= self.limits.connections_max {
            conn.close(
                close_code(CloseCode::TooManyConnections),
                b"too many connections",
            );
            self.metrics
                .handshakes_failed
                .with_label_values(&["local", "too_many_connections"])
                .inc();
            return Err(ConnectError::TooManyConnections(
                self.limits.connections_max,
            ));
        }
        self.metrics.handshakes_ok.inc();
        let id = self.next_conn;
        self.next_conn += 1;
        let counters = Arc::new(ConnectionCounters::default());
        let dialer = match direction {
            Direction::Outgoing => self.verified.device_id,
            Direction::Incoming => peer.device_id,
        };
        tracing::info!(peer = %peer.device_id, account = %peer.account_id, ?direction, "connection up");
        self.spawn_connection_task(id, conn.clone(), peer, counters.clone(), ctx);
        self.conns.insert(
            id,
            ConnState {
                conn: conn.clone(),
                peer,
                device_serial,
                direction,
                dialer,
                counters,
                draining_since: None,
                close_reason: None,
            },
        );
        self.metrics
            .connections
            .with_label_values(&["active"])
            .inc();
        match self.active.get(&peer.device_id).copied() {
            None => {
                self.active.insert(peer.device_id, id);
                self.emit(ConnectionEvent {
                    peer,
                    state: PeerState::Up {
                        addr: conn.remote_address(),
                    },
                });
            }
            Some(existing) => {
                let existing_dialer = self.conns.get(&existing).map(|s| s.dialer);
                let keep_new = match existing_dialer {
                    Some(other) if other != dialer => dialer < other,
                    // Same dialler: a redial; the older one is likely stale.
                    _ => true,
                };
                let loser = if keep_new {
                    self.active.insert(peer.device_id, id);
                    existing
                } else {
                    id
                };
                self.start_drain(loser);
            }
        }
        Ok(peer)
    }

    fn start_drain(&mut self, id: ConnId) {
        if let Some(state) = self.conns.get_mut(&id) {
            if state.draining_since.is_none() {
                tracing::debug!(peer = %state.peer.device_id, "draining duplicate connection");
                state.draining_since = Some(Instant::now());
                self.metrics
                    .connections
                    .with_label_values(&["active"])
                    .dec();
                self.metrics
                    .connections
                    .with_label_values(&["draining"])
                    .inc();
            }
        }
    }

    fn check_drains(&mut self) {
        let now = Instant::now();
        for state in self.conns.values_mut() {
            let Some(since) = state.draining_since else {
                continue;
            };
            let elapsed = now.saturating_duration_since(since);
            let empty = state.counters.slots.load(Ordering::Relaxed) == 0;
            let due = (empty && elapsed >= self.limits.duplicate_drain_grace)
                || elapsed >= self.limits.duplicate_drain_timeout;
            if due && state.close_reason.is_none() {
                state.close_reason = Some("duplicate");
                state
                    .conn
                    .close(close_code(CloseCode::Duplicate), b"duplicate connection");
            }
        }
    }

    fn spawn_connection_task(
        &self,
        id: ConnId,
        conn: quinn::Connection,
        peer: VerifiedDevice,
        counters: Arc<ConnectionCounters>,
        ctx: &mut Context<Self>,
    ) {
        let task = ConnectionTask {
            id,
            conn,
            peer,
            counters,
            transport: ctx.address().downgrade(),
            metrics: self.metrics.clone(),
            pending_accepts: self.limits.pending_accepts,
            header_timeout: self.limits.header_timeout,
            datagrams: self.datagrams.subscribe(),
        };
        actix::spawn(task.run());
    }

    fn spawn_accept_loop(&self, ctx: &mut Context<Self>) {
        let endpoint = self.endpoint.clone();
        let transport = ctx.address().downgrade();
        let metrics = self.metrics.clone();
        let timeout = self.limits.handshake_timeout;
        let blocked = self.blocked.clone();
        actix::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                actix::spawn(accept_one(
                    incoming,
                    transport.clone(),
                    metrics.clone(),
                    blocked.clone(),
                    timeout,
                ));
            }
        });
    }

    fn emit(&mut self, event: ConnectionEvent) {
        let metrics = &self.metrics;
        self.subscribers
            .retain(|subscriber| match subscriber.try_send(event.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    metrics.events_dropped.inc();
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
    }

    fn schedule_dial(&mut self, addr: SocketAddr, delay: Duration, ctx: &mut Context<Self>) {
        // Up to +50% jitter, so peers that lost the same node do not all
        // come back in the same instant.
        let delay = delay.mul_f64(1.0 + self.rng.gen_range(0.0..0.5));
        ctx.run_later(delay, move |act, ctx| act.dial_wanted(addr, ctx));
    }

    fn dial_wanted(&mut self, addr: SocketAddr, ctx: &mut Context<Self>) {
        let Some(wanted) = self.wanted.get(&addr) else {
            return;
        };
        if wanted.dialing || self.connected_to(&wanted.peer, addr).is_some() {
            return;
        }
        let peer = wanted.peer;
        match self.dial(addr, peer) {
            Ok(dial) => {
                if let Some(wanted) = self.wanted.get_mut(&addr) {
                    wanted.dialing = true;
                }
                ctx.spawn(dial.into_actor(self).map(move |result, act, ctx| {
                    let result =
                        result.and_then(|conn| act.register(conn, Direction::Outgoing, ctx));
                    act.after_wanted_dial(addr, result.err(), ctx);
                }));
            }
            Err(e) => self.after_wanted_dial(addr, Some(e), ctx),
        }
    }

    fn after_wanted_dial(
        &mut self,
        addr: SocketAddr,
        error: Option<ConnectError>,
        ctx: &mut Context<Self>,
    ) {
        let max = self.limits.reconnect_backoff_max;
        let min = self.limits.reconnect_backoff_min;
        let Some(wanted) = self.wanted.get_mut(&addr) else {
            return;
        };
        wanted.dialing = false;
        match error {
            None => wanted.backoff = min,
            Some(error) => {
                let delay = wanted.backoff;
                wanted.backoff = (wanted.backoff * 2).min(max);
                tracing::info!(%addr, %error, ?delay, "reconnect failed; backing off");
                self.schedule_dial(addr, delay, ctx);
            }
        }
    }

    fn close_where(
        &mut self,
        code: CloseCode,
        reason: &'static str,
        mut which: impl FnMut(&ConnState) -> bool,
    ) {
        for state in self.conns.values_mut() {
            if which(state) && state.close_reason.is_none() {
                state.close_reason = Some(reason);
                state.conn.close(close_code(code), reason.as_bytes());
            }
        }
    }

    fn route(&self, name: &ChannelName) -> Option<&Recipient<IncomingChannel>> {
        self.routes
            .iter()
            .filter(|(pattern, _)| pattern.matches(name))
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map(|(_, handler)| handler)
    }
}

impl Actor for Transport {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(limits::TRANSPORT_MAILBOX_MESSAGES_MAX);
        self.spawn_accept_loop(ctx);
        ctx.run_interval(DRAIN_CHECK_INTERVAL, |act, _| act.check_drains());
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.endpoint
            .close(close_code(CloseCode::Shutdown), b"shutdown");
    }
}

impl Handler<ConnectionReady> for Transport {
    type Result = Result<VerifiedDevice, ConnectError>;
    fn handle(&mut self, msg: ConnectionReady, ctx: &mut Context<Self>) -> Self::Result {
        self.register(msg.conn, Direction::Incoming, ctx)
    }
}

impl Handler<ConnectionLost> for Transport {
    type Result = ();
    fn handle(&mut self, msg: ConnectionLost, ctx: &mut Context<Self>) {
        let Some(state) = self.conns.remove(&msg.id) else {
            return;
        };
        let state_label = if state.draining_since.is_some() {
            "draining"
        } else {
            "active"
        };
        self.metrics
            .connections
            .with_label_values(&[state_label])
            .dec();
        let reason = state.close_reason.unwrap_or_else(|| loss_label(&msg.error));
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
        tracing::info!(peer = %state.peer.device_id, reason, error = %msg.error, "connection closed");
        let device = state.peer.device_id;
        if self.active.get(&device) != Some(&msg.id) {
            return;
        }
        self.active.remove(&device);
        let twin = self
            .conns
            .iter_mut()
            .find(|(_, other)| other.peer.device_id == device && other.close_reason.is_none());
        if let Some((&twin_id, twin)) = twin {
            // The survivor died first; the draining twin takes over.
            if twin.draining_since.take().is_some() {
                self.metrics
                    .connections
                    .with_label_values(&["draining"])
                    .dec();
                self.metrics
                    .connections
                    .with_label_values(&["active"])
                    .inc();
            }
            self.active.insert(device, twin_id);
            return;
        }
        self.emit(ConnectionEvent {
            peer: state.peer,
            state: PeerState::Down { reason },
        });
        let remote = state.conn.remote_address();
        let redial: Vec<SocketAddr> = self
            .wanted
            .iter()
            .filter(|(addr, wanted)| {
                wanted.peer.account_id == state.peer.account_id
                    && wanted
                        .peer
                        .device_id
                        .map_or(**addr == remote, |d| d == device)
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in redial {
            let delay = self
                .wanted
                .get(&addr)
                .map_or(self.limits.reconnect_backoff_min, |w| w.backoff);
            self.schedule_dial(addr, delay, ctx);
        }
    }
}

impl Handler<RouteChannel> for Transport {
    type Result = ();
    fn handle(&mut self, msg: RouteChannel, _ctx: &mut Context<Self>) {
        let channel = msg.channel;
        let refusal = (|| {
            let Some(state) = self.conns.get(&msg.id) else {
                return Some((ReplyCode::Unavailable, "connection closing".to_owned()));
            };
            if self.blocked.contains(&state.peer.account_id) {
                // Only in the moment between a block and the close it causes.
                // The peer learns only that the connection is closing.
                tracing::info!(peer = %state.peer.device_id, "channel refused: account blocked");
                return Some((ReplyCode::Unavailable, "connection closing".to_owned()));
            }
            let on_connection = state.counters.slots.load(Ordering::Relaxed);
            if on_connection > self.limits.channels_per_connection {
                return Some((
                    ReplyCode::TooManyChannels,
                    format!(
                        "this connection already holds {} channels",
                        self.limits.channels_per_connection
                    ),
                ));
            }
            let on_peer: usize = self
                .conns
                .values()
                .filter(|other| other.peer.device_id == state.peer.device_id)
                .map(|other| other.counters.slots.load(Ordering::Relaxed))
                .sum();
            if on_peer > self.limits.channels_per_peer {
                return Some((
                    ReplyCode::TooManyChannels,
                    format!(
                        "your device already holds {} channels",
                        self.limits.channels_per_peer
                    ),
                ));
            }
            None
        })();
        if let Some((code, reason)) = refusal {
            tracing::warn!(peer = %channel.peer().device_id, channel = %channel.name(), reason, "channel refused");
            actix::spawn(async move { channel.refuse_with(code, &reason).await });
            return;
        }
        let Some(handler) = self.route(channel.name()).cloned() else {
            tracing::info!(peer = %channel.peer().device_id, channel = %channel.name(), "unknown channel name");
            let reason = format!("no service accepts channel {}", channel.name());
            actix::spawn(async move { channel.refuse_with(ReplyCode::UnknownName, &reason).await });
            return;
        };
        let offer = IncomingChannel {
            peer: channel.peer(),
            name: channel.name().clone(),
            channel,
        };
        match handler.try_send(offer) {
            Ok(()) => {}
            Err(SendError::Full(offer)) => {
                actix::spawn(async move {
                    offer
                        .channel
                        .refuse_with(ReplyCode::Busy, "the service is busy; retry later")
                        .await
                });
            }
            Err(SendError::Closed(offer)) => {
                self.routes.retain(|(_, h)| h != &handler);
                actix::spawn(async move {
                    offer
                        .channel
                        .refuse_with(ReplyCode::Unavailable, "the service has stopped")
                        .await
                });
            }
        }
    }
}

/// The connection a new channel to `peer` should use.
#[derive(Message)]
#[rtype(result = "Option<Picked>")]
struct PickConnection {
    peer: DeviceId,
}

struct Picked {
    conn: quinn::Connection,
    peer: VerifiedDevice,
    counters: Arc<ConnectionCounters>,
}

impl Transport {
    fn pick(&self, peer: DeviceId) -> Option<Picked> {
        let state = self.conns.get(self.active.get(&peer)?)?;
        if state.close_reason.is_some() {
            // We are closing it (revoked, disconnected); do not start channels on it.
            return None;
        }
        Some(Picked {
            conn: state.conn.clone(),
            peer: state.peer,
            counters: state.counters.clone(),
        })
    }
}

impl Handler<PickConnection> for Transport {
    type Result = Option<Picked>;
    fn handle(&mut self, msg: PickConnection, _ctx: &mut Context<Self>) -> Option<Picked> {
        self.pick(msg.peer)
    }
}

impl Handler<OpenChannel> for Transport {
    type Result = ResponseFuture<Result<super::Channel, ChannelError>>;

    fn handle(&mut self, msg: OpenChannel, ctx: &mut Context<Self>) -> Self::Result {
        let transport = ctx.address();
        let metrics = self.metrics.clone();
        let reply_timeout = self.limits.reply_timeout;
        let mut picked = self.pick(msg.peer);
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                let failure = match picked {
                    Some(ref p) => {
                        let slot = SlotGuard::take(&p.counters);
                        match open_channel(
                            &p.conn,
                            p.peer,
                            msg.name.clone(),
                            slot,
                            &metrics,
                            reply_timeout,
                        )
                        .await
                        {
                            Err(ChannelError::Connection(e)) if retryable(&e) => {
                                ChannelError::Connection(e)
                            }
                            other => return other,
                        }
                    }
                    // Only a retry waits for a connection; a first attempt fails fast.
                    None if attempt == 0 => return Err(ChannelError::NotConnected(msg.peer)),
                    None => ChannelError::NotConnected(msg.peer),
                };
                attempt += 1;
                if attempt > limits::CHANNEL_OPEN_RETRIES_MAX {
                    return Err(failure);
                }
                tracing::debug!(peer = %msg.peer, channel = %msg.name, attempt, "retrying channel open on the surviving connection");
                tokio::time::sleep(OPEN_RETRY_DELAY * attempt).await;
                picked = transport
                    .send(PickConnection { peer: msg.peer })
                    .await
                    .map_err(|_| ChannelError::TransportGone)?;
            }
        })
    }
}

impl Handler<Connect> for Transport {
    type Result = ResponseActFuture<Self, Result<VerifiedDevice, ConnectError>>;

    fn handle(&mut self, msg: Connect, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(peer) = self.connected_to(&msg.peer, msg.addr) {
            return Box::pin(fut::ready(Ok(peer)));
        }
        match self.dial(msg.addr, msg.peer) {
            Ok(dial) => Box::pin(dial.into_actor(self).map(|result, act, ctx| {
                result.and_then(|conn| act.register(conn, Direction::Outgoing, ctx))
            })),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
    }
}

impl Handler<WantPeer> for Transport {
    type Result = ();
    fn handle(&mut self, msg: WantPeer, ctx: &mut Context<Self>) {
        self.wanted.insert(
            msg.addr,
            Wanted {
                peer: msg.peer,
                backoff: self.limits.reconnect_backoff_min,
                dialing: false,
            },
        );
        self.dial_wanted(msg.addr, ctx);
    }
}

impl Handler<UnwantPeer> for Transport {
    type Result = ();
    fn handle(&mut self, msg: UnwantPeer, _ctx: &mut Context<Self>) {
        self.wanted.remove(&msg.addr);
    }
}

impl Handler<Disconnect> for Transport {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, _ctx: &mut Context<Self>) {
        self.wanted
            .retain(|_, wanted| wanted.peer.device_id != Some(msg.peer));
        self.close_where(CloseCode::Disconnected, "disconnected", |state| {
            state.peer.device_id == msg.peer
        });
    }
}

impl Handler<RegisterChannel> for Transport {
    type Result = Result<(), RegisterError>;
    fn handle(&mut self, msg: RegisterChannel, _ctx: &mut Context<Self>) -> Self::Result {
        if self
            .routes
            .iter()
            .any(|(pattern, _)| pattern == &msg.pattern)
        {
            return Err(RegisterError::Taken(msg.pattern));
        }
        self.routes.push((msg.pattern, msg.handler));
        Ok(())
    }
}

impl Handler<SendDatagram> for Transport {
    type Result = Result<(), DatagramError>;
    fn handle(&mut self, msg: SendDatagram, _ctx: &mut Context<Self>) -> Self::Result {
        let state = self
            .active
            .get(&msg.peer)
            .and_then(|id| self.conns.get(id))
            .ok_or(DatagramError::NotConnected(msg.peer))?;
        let found = msg.payload.len();
        state.conn.send_datagram(msg.payload).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => DatagramError::TooLarge {
                found,
                max: state.conn.max_datagram_size().unwrap_or(0),
            },
            quinn::SendDatagramError::ConnectionLost(e) => DatagramError::Connection(e),
            _ => DatagramError::Unsupported,
        })
    }
}

impl Handler<SubscribeDatagrams> for Transport {
    type Result = ();
    fn handle(&mut self, msg: SubscribeDatagrams, _ctx: &mut Context<Self>) {
        self.datagrams.send_replace(Some(msg.0));
    }
}

impl Handler<SubscribeEvents> for Transport {
    type Result = Result<(), SubscribeError>;
    fn handle(&mut self, msg: SubscribeEvents, _ctx: &mut Context<Self>) -> Self::Result {
        if self.subscribers.len() >= self.limits.event_subscribers {
            return Err(SubscribeError::Full(self.limits.event_subscribers));
        }
        self.subscribers.push(msg.0);
        Ok(())
    }
}

impl Handler<UpdateRevocations> for Transport {
    type Result = Result<bool, CrlError>;
    fn handle(&mut self, msg: UpdateRevocations, _ctx: &mut Context<Self>) -> Self::Result {
        let account = msg.account.id();
        if !self.book.offer(&msg.account, msg.crl)? {
            return Ok(false);
        }
        if let Some(crl) = self.book.get(&account) {
            self.close_where(CloseCode::Revoked, "revoked", |state| {
                state.peer.account_id == account && crl.crl().is_revoked(&state.device_serial)
            });
        }
        Ok(true)
    }
}

impl Handler<SetBlockedAccounts> for Transport {
    type Result = Result<(), BlockListError>;
    fn handle(&mut self, msg: SetBlockedAccounts, ctx: &mut Context<Self>) -> Self::Result {
        let unblocked: Vec<SocketAddr> = self
            .wanted
            .iter()
            .filter(|(_, w)| {
                self.blocked.contains(&w.peer.account_id)
                    && !msg.accounts.contains(&w.peer.account_id)
            })
            .map(|(addr, _)| *addr)
            .collect();
        let added = self.blocked.replace(msg.accounts)?;
        if !added.is_empty() {
            tracing::info!(
                accounts = added.len(),
                "blocking accounts; closing their connections"
            );
            // The generic code: a blocked peer is not told why.
            self.close_where(CloseCode::Disconnected, BLOCKED_REASON, |state| {
                added.contains(&state.peer.account_id)
            });
        }
        // Wanted peers that were blocked are dialled again now rather than
        // after their (long) backoff.
        for addr in unblocked {
            if let Some(wanted) = self.wanted.get_mut(&addr) {
                wanted.backoff = self.limits.reconnect_backoff_min;
            }
            self.dial_wanted(addr, ctx);
        }
        Ok(())
    }
}

impl Handler<Status> for Transport {
    type Result = MessageResult<Status>;
    fn handle(&mut self, _msg: Status, _ctx: &mut Context<Self>) -> Self::Result {
        let local_addr = self
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let connections = self
            .conns
            .values()
            .map(|state| ConnectionInfo {
                peer: state.peer,
                addr: state.conn.remote_address(),
                direction: state.direction,
                draining: state.draining_since.is_some(),
                channels: state.counters.slots.load(Ordering::Relaxed),
            })
            .collect();
        MessageResult(TransportStatus {
            local_addr,
            local: self.verified,
            connections,
        })
    }
}

impl Handler<Shutdown> for Transport {
    type Result = ();
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        self.wanted.clear();
        self.close_where(CloseCode::Shutdown, "shutdown", |_| true);
        self.endpoint
            .close(close_code(CloseCode::Shutdown), b"shutdown");
        ctx.stop();
    }
}
