//! Shared helpers for the transport tests: identities built through the
//! public identity API, transports on real or in-memory sockets, handler
//! actors, and metric readers. Every wait is bounded by [`within`].

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use ed25519_dalek::SigningKey;
use prometheus::Registry;
use quinn::AsyncUdpSocket;
use rand::rngs::StdRng;
use rand::SeedableRng;
use starling_actors::transport::*;
use starling_protocol::channel::{ChannelName, ChannelPattern};
use starling_protocol::{AccountCert, DeviceCert, RevocationList, VerifiedDevice};
use tokio::sync::mpsc;

/// Upper bound on any single wait in these tests.
pub const TEST_WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` or panics after [`TEST_WAIT`] naming `what`.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// An account: key and self-signed certificate.
pub struct Account {
    pub key: SigningKey,
    pub cert: AccountCert,
}

impl Account {
    pub fn new(seed: u64) -> Self {
        let key = SigningKey::generate(&mut rng(seed));
        let cert = AccountCert::issue(&key, now(), &mut rng(seed + 1_000)).unwrap();
        Self { key, cert }
    }

    /// A device of this account, certified at `at`.
    pub fn device_at(&self, seed: u64, at: SystemTime) -> Device {
        let key = SigningKey::generate(&mut rng(seed));
        let cert = DeviceCert::issue(
            &self.key,
            &self.cert,
            &key.verifying_key(),
            at,
            &mut rng(seed + 1_000),
        )
        .unwrap();
        Device {
            key,
            cert,
            account: self.cert.clone(),
        }
    }

    pub fn device(&self, seed: u64) -> Device {
        self.device_at(seed, now())
    }

    pub fn first_crl(&self) -> RevocationList {
        RevocationList::first(&self.key, &self.cert, now()).unwrap()
    }
}

/// A device: key, certificate and its account's certificate.
#[derive(Clone)]
pub struct Device {
    pub key: SigningKey,
    pub cert: DeviceCert,
    pub account: AccountCert,
}

impl Device {
    pub fn identity(&self) -> LocalIdentity {
        LocalIdentity::new(self.key.clone(), self.cert.clone(), self.account.clone()).unwrap()
    }

    pub fn verified(&self) -> VerifiedDevice {
        self.identity().verified()
    }

    pub fn expected(&self) -> ExpectedPeer {
        ExpectedPeer {
            account_id: self.account.id(),
            device_id: Some(self.cert.id()),
        }
    }
}

/// A running transport and what tests look at.
pub struct Node {
    pub addr: Addr<Transport>,
    pub registry: Registry,
    pub socket_addr: SocketAddr,
    pub device: Device,
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn memory_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

pub fn start_node(
    device: &Device,
    socket: Arc<dyn AsyncUdpSocket>,
    limits: TransportLimits,
    revocations: Vec<(AccountCert, RevocationList)>,
) -> Node {
    let registry = Registry::new();
    let socket_addr = socket.local_addr().unwrap();
    let transport = Transport::new(TransportConfig {
        identity: device.identity(),
        socket,
        registry: registry.clone(),
        limits,
        revocations,
        // Deterministic per identity; the identities come from printed seeds.
        rng_seed: u64::from_le_bytes(device.cert.id().as_bytes()[..8].try_into().unwrap()),
    })
    .unwrap();
    Node {
        addr: transport.start(),
        registry,
        socket_addr,
        device: device.clone(),
    }
}

pub fn start_udp_node(device: &Device) -> Node {
    start_node(
        device,
        udp_socket(loopback()).unwrap(),
        TransportLimits::default(),
        vec![],
    )
}

/// Value of counter or gauge `name` whose labels include `labels` (summed).
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                total += if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    total
}

/// Polls `check` every 20 ms until it holds, within [`TEST_WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Accepts every channel, reports (peer, name), and echoes bytes until EOF.
pub struct Echo {
    pub seen: mpsc::Sender<(VerifiedDevice, ChannelName)>,
}

impl Actor for Echo {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(256);
    }
}

impl Handler<IncomingChannel> for Echo {
    type Result = ();
    fn handle(&mut self, msg: IncomingChannel, _ctx: &mut Context<Self>) {
        let seen = self.seen.clone();
        actix::spawn(async move {
            let _ = seen.try_send((msg.peer, msg.name.clone()));
            let Ok(mut channel) = msg.channel.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(n)) = channel.recv.read(&mut buf).await {
                if channel.send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = channel.send.finish();
            // Keep the channel until the opener has read everything.
            let _ = channel.send.stopped().await;
        });
    }
}

/// Registers an [`Echo`] for `pattern`; returns what it sees.
pub async fn register_echo(
    node: &Node,
    pattern: &str,
) -> mpsc::Receiver<(VerifiedDevice, ChannelName)> {
    let (seen, rx) = mpsc::channel(1024);
    let echo = Echo { seen }.start();
    node.addr
        .send(RegisterChannel {
            pattern: ChannelPattern::new(pattern).unwrap(),
            handler: echo.recipient(),
        })
        .await
        .unwrap()
        .unwrap();
    rx
}

/// Refuses every channel with a fixed reason.
pub struct Refuser(pub &'static str);

impl Actor for Refuser {
    type Context = Context<Self>;
}

impl Handler<IncomingChannel> for Refuser {
    type Result = ();
    fn handle(&mut self, msg: IncomingChannel, _ctx: &mut Context<Self>) {
        let reason = self.0;
        actix::spawn(async move { msg.channel.refuse(reason).await });
    }
}

/// Collects connection events.
pub struct EventLog(pub mpsc::Sender<ConnectionEvent>);

impl Actor for EventLog {
    type Context = Context<Self>;
}

impl Handler<ConnectionEvent> for EventLog {
    type Result = ();
    fn handle(&mut self, msg: ConnectionEvent, _ctx: &mut Context<Self>) {
        let _ = self.0.try_send(msg);
    }
}

pub async fn subscribe_events(node: &Node) -> mpsc::Receiver<ConnectionEvent> {
    let (tx, rx) = mpsc::channel(1024);
    let log = EventLog(tx).start();
    node.addr
        .send(SubscribeEvents(log.recipient()))
        .await
        .unwrap()
        .unwrap();
    rx
}

/// Opens `name` to `peer`, sends `payload`, returns what came back.
pub async fn echo_over(node: &Node, peer: &Device, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut channel = node
        .addr
        .send(OpenChannel {
            peer: peer.cert.id(),
            name: ChannelName::new(name).unwrap(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(channel.peer(), peer.verified());
    channel.send.write_all(payload).await.unwrap();
    channel.send.finish().unwrap();
    channel.recv.read_to_end(16 * 1024 * 1024).await.unwrap()
}

pub async fn connect(node: &Node, peer: &Node) -> Result<VerifiedDevice, ConnectError> {
    node.addr
        .send(Connect {
            addr: peer.socket_addr,
            peer: peer.device.expected(),
        })
        .await
        .unwrap()
}

pub async fn status(node: &Node) -> TransportStatus {
    node.addr.send(Status).await.unwrap()
}
