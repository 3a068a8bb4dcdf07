//! Transport benchmarks beside their baseline, raw quinn, in one criterion
//! group per measurement so the ratio survives a noisy machine:
//!
//! - `bulk`: 16 MiB over one channel (ours) vs one plain stream (raw quinn);
//! - `round_trip`: 100-byte request/response on one long-lived channel/stream;
//! - `connect`: connection set-up time.
//!
//! The baseline uses the same crypto provider (ring), TLS 1.3, the same
//! ed25519 certificates, mutual authentication and handshake-signature
//! checks, but no chain verification, no connection preface and no channel
//! header — exactly the cost the transport adds. In both, the serving side
//! runs on its own actix arbiter (thread), the dialling side on the main one,
//! over loopback UDP. `connect/raw_quinn` stops when the client's handshake
//! completes; `connect/raw_quinn_confirmed` also waits until the server holds
//! the connection, which is what our `Connect` waits for (the preface).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use prometheus::Registry;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use starling_actors::transport::tls::{crypto_provider, SERVER_NAME};
use starling_actors::transport::*;
use starling_protocol::channel::{ChannelName, ChannelPattern};
use starling_protocol::{AccountCert, DeviceCert};

const BULK_BYTES: usize = 16 * 1024 * 1024;
const MESSAGE_BYTES: usize = 100;
const CHUNK_BYTES: usize = 64 * 1024;

fn identity(seed: u64) -> LocalIdentity {
    let mut rng = StdRng::seed_from_u64(seed);
    let account_key = SigningKey::generate(&mut rng);
    let account = AccountCert::issue(&account_key, SystemTime::now(), &mut rng).expect("issue");
    let device_key = SigningKey::generate(&mut rng);
    let device = DeviceCert::issue(
        &account_key,
        &account,
        &device_key.verifying_key(),
        SystemTime::now(),
        &mut rng,
    )
    .expect("issue");
    LocalIdentity::new(device_key, device, account).expect("identity")
}

/// Baseline verifier: accepts any certificate, still checks the handshake signature.
#[derive(Debug)]
struct SignatureOnly(rustls::crypto::WebPkiSupportedAlgorithms);

impl SignatureOnly {
    fn check(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
}

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for SignatureOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A raw quinn server (on the server thread) and client with baseline mutual TLS.
struct Raw {
    server_addr: SocketAddr,
    client: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// One message per connection the server has finished accepting.
    accepted: tokio::sync::mpsc::Receiver<()>,
}

fn raw_pair(server_thread: &Arbiter) -> Raw {
    let provider = crypto_provider();
    let verifier = Arc::new(SignatureOnly(provider.signature_verification_algorithms));
    let (server_id, client_id) = (identity(1), identity(2));
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(server_id.chain(), server_id.private_key().expect("key"))
        .expect("server config");
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(client_id.chain(), client_id.private_key().expect("key"))
        .expect("client config");
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.resumption = rustls::client::Resumption::disabled();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).expect("quic server"),
    ));
    let client_config = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).expect("quic client"),
    ));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (tx, accepted) = tokio::sync::mpsc::channel(1024);
    let server_addr = on_thread(server_thread, move || {
        let server = quinn::Endpoint::server(server_config, loopback).expect("server endpoint");
        let addr = server.local_addr().expect("addr");
        spawn_raw_server(server, tx);
        addr
    });
    Raw {
        server_addr,
        client: quinn::Endpoint::client(loopback).expect("client endpoint"),
        client_config,
        accepted,
    }
}

/// Runs `f` on `thread` (inside its runtime) and returns its result.
fn on_thread<T: Send + 'static>(thread: &Arbiter, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread.spawn_fn(move || {
        let _ = tx.send(f());
    });
    rx.recv().expect("the server thread runs")
}

fn spawn_raw_server(server: quinn::Endpoint, accepted: tokio::sync::mpsc::Sender<()>) {
    actix::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let accepted = accepted.clone();
            actix::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let _ = accepted.try_send(());
                while let Ok((send, mut recv)) = conn.accept_bi().await {
                    let mut send = send;
                    actix::spawn(async move {
                        // First byte says which service (raw has no channel header).
                        let mut kind = [0u8; 1];
                        if recv.read_exact(&mut kind).await.is_ok() {
                            serve(&mut send, &mut recv, kind[0] == 1).await;
                        }
                    });
                }
            });
        }
    });
}

/// Accepts `bench/*` channels and serves them like the raw server.
struct BenchService;

impl Actor for BenchService {
    type Context = Context<Self>;
}

impl Handler<IncomingChannel> for BenchService {
    type Result = ();
    fn handle(&mut self, msg: IncomingChannel, _ctx: &mut Context<Self>) {
        actix::spawn(async move {
            let bulk = msg.name.as_str() == "bench/bulk";
            let Ok(channel) = msg.channel.accept().await else {
                return;
            };
            let (mut send, mut recv) = channel.split();
            serve(&mut send, &mut recv, bulk).await;
        });
    }
}

/// Serves one stream: `bulk` streams are drained and answered with their
/// length; others echo fixed-size messages.
async fn serve(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, bulk: bool) {
    if bulk {
        let mut total = 0u64;
        while let Ok(Some(chunk)) = recv.read_chunk(CHUNK_BYTES, true).await {
            total += chunk.bytes.len() as u64;
        }
        let _ = send.write_all(&total.to_be_bytes()).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    } else {
        let mut buf = [0u8; MESSAGE_BYTES];
        while recv.read_exact(&mut buf).await.is_ok() {
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
    }
}

struct Ours {
    client: Addr<Transport>,
    server_transport: Addr<Transport>,
    server_addr: SocketAddr,
    server: LocalIdentity,
}

fn start_ours(server_thread: &Arbiter) -> Ours {
    let (server_id, client_id) = (identity(3), identity(4));
    let start = |id: &LocalIdentity| {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let socket = udp_socket(loopback).expect("socket");
        let addr = socket.local_addr().expect("addr");
        let transport = Transport::new(TransportConfig {
            identity: id.clone(),
            socket,
            registry: Registry::new(),
            limits: TransportLimits::default(),
            revocations: vec![],
            rng_seed: 7,
        })
        .expect("transport");
        (transport.start(), addr)
    };
    let server_identity = server_id.clone();
    let (server_addr, server_transport) = on_thread(server_thread, move || {
        let (server, server_addr) = start(&server_identity);
        let server_transport = server.clone();
        let service = BenchService.start();
        actix::spawn(async move {
            server
                .send(RegisterChannel {
                    pattern: ChannelPattern::new("bench/*").expect("pattern"),
                    handler: service.recipient(),
                })
                .await
                .expect("actor")
                .expect("register");
            // Keep the server transport alive for the whole run.
            std::future::pending::<()>().await;
        });
        (server_addr, server_transport)
    });
    let (client, _) = start(&client_id);
    Ours {
        client,
        server_transport,
        server_addr,
        server: server_id,
    }
}

fn expected(id: &LocalIdentity) -> ExpectedPeer {
    ExpectedPeer {
        account_id: id.verified().account_id,
        device_id: Some(id.verified().device_id),
    }
}

async fn ours_connect(ours: &Ours) {
    ours.client
        .send(Connect {
            addr: ours.server_addr,
            peer: expected(&ours.server),
        })
        .await
        .expect("actor")
        .expect("connect");
}

async fn ours_open(ours: &Ours, name: &str) -> Channel {
    ours.client
        .send(OpenChannel {
            peer: ours.server.verified().device_id,
            name: ChannelName::new(name).expect("name"),
        })
        .await
        .expect("actor")
        .expect("open")
}

async fn bulk_send(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, data: &[u8]) {
    for chunk in data.chunks(CHUNK_BYTES) {
        send.write_all(chunk).await.expect("write");
    }
    send.finish().expect("finish");
    let mut total = [0u8; 8];
    recv.read_exact(&mut total).await.expect("ack");
    assert_eq!(u64::from_be_bytes(total) as usize, data.len());
}

async fn round_trips(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    iters: u64,
) -> Duration {
    let request = [7u8; MESSAGE_BYTES];
    let mut response = [0u8; MESSAGE_BYTES];
    let start = Instant::now();
    for _ in 0..iters {
        send.write_all(&request).await.expect("write");
        recv.read_exact(&mut response).await.expect("read");
    }
    start.elapsed()
}

fn transport_benches(c: &mut Criterion) {
    let system = System::new();
    // The serving side runs on its own thread, as another device would.
    let server_thread = system.block_on(async { Arbiter::new() });
    let mut raw = system.block_on(async { raw_pair(&server_thread) });
    let raw_server_addr = raw.server_addr;
    let ours = system.block_on(async { start_ours(&server_thread) });
    system.block_on(ours_connect(&ours));
    let raw_conn = system.block_on(async {
        raw.client
            .connect_with(raw.client_config.clone(), raw_server_addr, SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake")
    });
    system.block_on(raw.accepted.recv());
    let data = vec![0xa5u8; BULK_BYTES];

    let mut group = c.benchmark_group("bulk");
    group.throughput(Throughput::Bytes(BULK_BYTES as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("raw_quinn", "16MiB"), |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (mut send, mut recv) = raw_conn.open_bi().await.expect("open");
                    send.write_all(&[1]).await.expect("kind");
                    bulk_send(&mut send, &mut recv, &data).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function(BenchmarkId::new("starling", "16MiB"), |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let channel = ours_open(&ours, "bench/bulk").await;
                    let (mut send, mut recv) = channel.split();
                    bulk_send(&mut send, &mut recv, &data).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("raw_quinn", "100B"), |b| {
        let (mut send, mut recv) = system.block_on(async {
            let (mut send, recv) = raw_conn.open_bi().await.expect("open");
            send.write_all(&[0]).await.expect("kind");
            (send, recv)
        });
        b.iter_custom(|iters| system.block_on(round_trips(&mut send, &mut recv, iters)))
    });
    group.bench_function(BenchmarkId::new("starling", "100B"), |b| {
        let channel = system.block_on(ours_open(&ours, "bench/rt"));
        let (mut send, mut recv) = channel.split();
        b.iter_custom(|iters| system.block_on(round_trips(&mut send, &mut recv, iters)))
    });
    group.finish();

    let mut group = c.benchmark_group("connect");
    // Until the server holds the connection too: what our Connect waits for
    // (the connection preface), so the like-for-like baseline.
    group.bench_function("raw_quinn_confirmed", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let conn = raw
                        .client
                        .connect_with(raw.client_config.clone(), raw_server_addr, SERVER_NAME)
                        .expect("connect")
                        .await
                        .expect("handshake");
                    raw.accepted.recv().await.expect("server accepted");
                    spent += start.elapsed();
                    conn.close(0u32.into(), b"done");
                }
                spent
            })
        })
    });
    group.bench_function("raw_quinn", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let conn = raw
                        .client
                        .connect_with(raw.client_config.clone(), raw_server_addr, SERVER_NAME)
                        .expect("connect")
                        .await
                        .expect("handshake");
                    spent += start.elapsed();
                    conn.close(0u32.into(), b"done");
                }
                spent
            })
        })
    });
    group.bench_function("starling", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut spent = Duration::ZERO;
                let peer = ours.server.verified().device_id;
                for _ in 0..iters {
                    // Untimed: drop the previous connection and wait until
                    // both sides have let go of it.
                    ours.client.send(Disconnect { peer }).await.expect("actor");
                    for side in [&ours.client, &ours.server_transport] {
                        while !side
                            .send(Status)
                            .await
                            .expect("actor")
                            .connections
                            .is_empty()
                        {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    }
                    let start = Instant::now();
                    ours_connect(&ours).await;
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = transport_benches
}
criterion_main!(benches);
