//! One connection's life outside the actor: the accepting handshake, the
//! connection preface, and the task that serves a connection's incoming
//! streams and datagrams. These only move bytes; they report to the
//! [`Transport`](super::Transport) actor with bounded `send`s through the
//! internal messages defined here, and the actor decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix::WeakAddr;
use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use starling_protocol::channel::{CloseCode, ReplyCode, PREFACE_VERSION};
use starling_protocol::{DeviceCert, VerifiedDevice};
use tokio::sync::watch;

use super::actor::{ConnId, Transport};
use super::blocklist::{BlockList, BLOCKED_REASON};
use super::channel::{
    read_header, refuse_stream, ConnectionCounters, HeaderReadError, PendingChannel, PendingGuard,
    SlotGuard,
};
use super::messages::{ConnectError, DatagramReceived};
use super::metrics::TransportMetrics;
use super::tls::handshake_failure;

/// How often connection byte counters are folded into the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Largest connection preface we read (it is one byte).
const PREFACE_BYTES_MAX: usize = 16;

pub(super) fn close_code(code: CloseCode) -> VarInt {
    VarInt::from_u64(code.to_u64()).unwrap_or(VarInt::MAX)
}

/// Reads the (account, device) a verified connection's peer proved.
pub(super) fn peer_of(conn: &quinn::Connection) -> Result<(VerifiedDevice, Vec<u8>), ConnectError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| ConnectError::PeerIdentity("no certificates".into()))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ConnectError::PeerIdentity("not an X.509 chain".into()))?;
    let Some(device) = certs.first() else {
        return Err(ConnectError::PeerIdentity("no device certificate".into()));
    };
    // The verifier accepted exactly these bytes, including that the device
    // names the presented account; parsing again only extracts the ids.
    let device =
        DeviceCert::from_der(device).map_err(|e| ConnectError::PeerIdentity(e.to_string()))?;
    Ok((
        VerifiedDevice {
            account_id: device.claimed_account_id(),
            device_id: device.id(),
        },
        device.serial().to_vec(),
    ))
}

pub(super) fn handshake_error(error: &quinn::ConnectionError) -> ConnectError {
    let (side, reason) = handshake_failure(error);
    ConnectError::Handshake {
        side,
        reason,
        detail: error.to_string(),
    }
}

pub(super) async fn send_preface(conn: &quinn::Connection) -> Result<(), String> {
    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
    stream
        .write_all(&[PREFACE_VERSION])
        .await
        .map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())
}

pub(super) async fn await_preface(conn: &quinn::Connection) -> Result<(), ConnectError> {
    let mut stream = conn.accept_uni().await.map_err(|e| handshake_error(&e))?;
    let bytes = stream
        .read_to_end(PREFACE_BYTES_MAX)
        .await
        .map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(lost)) => {
                handshake_error(&lost)
            }
            other => ConnectError::Closed(format!("connection preface: {other}")),
        })?;
    if bytes != [PREFACE_VERSION] {
        conn.close(close_code(CloseCode::Disconnected), b"bad preface");
        return Err(ConnectError::Closed(format!(
            "connection preface {bytes:?} is not version {PREFACE_VERSION}"
        )));
    }
    Ok(())
}

/// Counts a handshake in progress for as long as it lives.
pub(super) struct HandshakingGauge(prometheus::IntGauge);

impl HandshakingGauge {
    pub(super) fn new(metrics: &TransportMetrics) -> Self {
        let gauge = metrics.connections.with_label_values(&["handshaking"]);
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for HandshakingGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One handshake on the accepting side, then the preface once registered.
pub(super) async fn accept_one(
    incoming: quinn::Incoming,
    transport: WeakAddr<Transport>,
    metrics: TransportMetrics,
    blocked: BlockList,
    timeout: Duration,
) {
    let remote = incoming.remote_address();
    let _handshaking = HandshakingGauge::new(&metrics);
    let count_failure = |side: &str, reason: &str, detail: &str| {
        tracing::warn!(%remote, side, reason, detail, "incoming handshake failed");
        metrics
            .handshakes_failed
            .with_label_values(&[side, reason])
            .inc();
    };
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            let (side, reason) = handshake_failure(&e);
            count_failure(side.label(), reason, &e.to_string());
            return;
        }
    };
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let (side, reason) = handshake_failure(&e);
            count_failure(side.label(), reason, &e.to_string());
            return;
        }
        Err(_) => {
            count_failure("local", "timeout", "handshake timed out");
            return;
        }
    };
    // A blocked account's device is refused before the preface, so its
    // dialler never counts the connection as up. It sees a generic close.
    if let Ok((peer, _)) = peer_of(&conn) {
        if blocked.contains(&peer.account_id) {
            conn.close(close_code(CloseCode::Disconnected), b"disconnected");
            tracing::info!(%remote, account = %peer.account_id, "incoming connection refused: account blocked");
            metrics
                .handshakes_failed
                .with_label_values(&["local", BLOCKED_REASON])
                .inc();
            return;
        }
    }
    let Some(transport) = transport.upgrade() else {
        conn.close(close_code(CloseCode::Shutdown), b"shutdown");
        return;
    };
    // The preface says "your certificate is accepted", which is already true;
    // send it while the actor registers the connection rather than after, to
    // save the dialler a scheduling round. A registration refusal (limits)
    // closes the connection right after.
    let (registered, preface) = futures::join!(
        transport.send(ConnectionReady { conn: conn.clone() }),
        send_preface(&conn)
    );
    match registered {
        Ok(Ok(_)) => {
            if let Err(e) = preface {
                tracing::debug!(%remote, error = e, "could not send the connection preface");
            }
        }
        // Refused (the actor closed it) or the transport is gone.
        Ok(Err(_)) | Err(_) => conn.close(close_code(CloseCode::Shutdown), b"not registered"),
    }
}

/// The loop that serves one connection's incoming streams and datagrams.
pub(super) struct ConnectionTask {
    pub(super) id: ConnId,
    pub(super) conn: quinn::Connection,
    pub(super) peer: VerifiedDevice,
    pub(super) counters: Arc<ConnectionCounters>,
    /// Weak, so live connections do not keep a dropped transport alive.
    pub(super) transport: WeakAddr<Transport>,
    pub(super) metrics: TransportMetrics,
    pub(super) pending_accepts: usize,
    pub(super) header_timeout: Duration,
    pub(super) datagrams: watch::Receiver<Option<Recipient<DatagramReceived>>>,
}

impl ConnectionTask {
    pub(super) async fn run(self) {
        let mut ticker = tokio::time::interval(STATS_INTERVAL);
        let mut counted = (0u64, 0u64);
        let error = loop {
            tokio::select! {
                accepted = self.conn.accept_bi() => match accepted {
                    Ok((send, recv)) => self.serve_stream(send, recv),
                    Err(e) => break e,
                },
                datagram = self.conn.read_datagram() => match datagram {
                    Ok(payload) => self.deliver_datagram(payload),
                    Err(e) => break e,
                },
                _ = ticker.tick() => self.count_bytes(&mut counted),
            }
        };
        self.count_bytes(&mut counted);
        // If the actor is gone there is nobody left to tell.
        if let Some(transport) = self.transport.upgrade() {
            let _ = transport.send(ConnectionLost { id: self.id, error }).await;
        }
    }

    fn count_bytes(&self, counted: &mut (u64, u64)) {
        let stats = self.conn.stats();
        let (sent, received) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        self.metrics
            .bytes_sent
            .inc_by(sent.saturating_sub(counted.0));
        self.metrics
            .bytes_received
            .inc_by(received.saturating_sub(counted.1));
        *counted = (sent, received);
    }

    fn deliver_datagram(&self, payload: bytes::Bytes) {
        let subscriber = self.datagrams.borrow().clone();
        let delivered = subscriber.is_some_and(|subscriber| {
            subscriber
                .try_send(DatagramReceived {
                    peer: self.peer,
                    payload,
                })
                .is_ok()
        });
        if !delivered {
            self.metrics.datagrams_dropped.inc();
        }
    }

    fn serve_stream(&self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let slot = SlotGuard::take(&self.counters);
        let metrics = self.metrics.clone();
        if self.counters.pending.load(Ordering::Relaxed) >= self.pending_accepts {
            tracing::warn!(peer = %self.peer.device_id, "too many channels awaiting a decision");
            actix::spawn(async move {
                refuse_stream(
                    send,
                    recv,
                    ReplyCode::Busy,
                    "too many channels awaiting a decision",
                    &metrics,
                )
                .await;
                drop(slot);
            });
            return;
        }
        let pending = PendingGuard::take(&self.counters);
        let transport = self.transport.clone();
        let timeout = self.header_timeout;
        let peer = self.peer;
        let id = self.id;
        actix::spawn(async move {
            match read_header(&mut recv, timeout).await {
                Ok(header) => {
                    let channel =
                        PendingChannel::new(peer, header.name, send, recv, slot, pending, metrics);
                    // If the actor is gone, dropping the channel resets the stream.
                    if let Some(transport) = transport.upgrade() {
                        let _ = transport.send(RouteChannel { id, channel }).await;
                    }
                }
                Err(HeaderReadError::Header(e)) => {
                    tracing::warn!(peer = %peer.device_id, error = %e, "bad channel header");
                    refuse_stream(send, recv, e.reply_code(), &e.to_string(), &metrics).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.device_id, error = %e, "no channel header");
                    metrics
                        .channels_refused
                        .with_label_values(&["local", "no_header"])
                        .inc();
                }
            }
        });
    }
}

/// An incoming handshake finished; take the connection in.
#[derive(Message)]
#[rtype(result = "Result<VerifiedDevice, ConnectError>")]
pub(super) struct ConnectionReady {
    pub(super) conn: quinn::Connection,
}

/// A connection's task ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ConnectionLost {
    pub(super) id: ConnId,
    pub(super) error: quinn::ConnectionError,
}

/// A header arrived; route the channel to its handler or refuse it.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RouteChannel {
    pub(super) id: ConnId,
    pub(super) channel: PendingChannel,
}
