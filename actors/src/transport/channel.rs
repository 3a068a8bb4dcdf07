//! Channels over QUIC streams: opening one (header out, reply in), serving
//! one (header in, decision out), and the handles handlers and openers hold.
//!
//! Every channel holds a *slot* on its connection from the moment its stream
//! exists until both halves are dropped; the slot counts toward the
//! per-connection and per-peer limits and tells the transport when a draining
//! connection has emptied. An incoming channel also holds a *pending* slot
//! until its handler accepts or refuses it, which bounds how many undecided
//! channels a peer can pile up.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use quinn::{ReadExactError, RecvStream, SendStream, VarInt};
use starling_protocol::channel::{
    decode_reply, header_name_len, reply_reason_len, ChannelHeader, ChannelName, ChannelReply,
    HeaderError, ReplyCode, ReplyError, HEADER_PREFIX_BYTES, REPLY_PREFIX_BYTES,
    STREAM_RESET_UNDECIDED,
};
use starling_protocol::{DeviceId, VerifiedDevice};

use super::metrics::TransportMetrics;

/// Why a channel could not be opened or served.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no connection to device {0}; connect first")]
    NotConnected(DeviceId),
    #[error("peer refused channel {name} ({}): {reason}", code.label())]
    Refused {
        name: ChannelName,
        code: ReplyCode,
        reason: String,
    },
    #[error("connection lost while opening the channel: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("channel stream failed: {0}")]
    Stream(String),
    #[error("peer sent an invalid channel reply: {0}")]
    BadReply(#[from] ReplyError),
    #[error("peer did not answer the channel header within {0:?}")]
    ReplyTimeout(Duration),
    #[error("the transport actor is gone")]
    TransportGone,
}

/// Per-connection counts shared by the connection's state and its channels.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    /// Streams held (open channels plus undecided incoming ones).
    pub(crate) slots: AtomicUsize,
    /// Incoming channels not yet accepted or refused.
    pub(crate) pending: AtomicUsize,
}

/// One stream slot; released on drop.
#[derive(Debug)]
pub(crate) struct SlotGuard(Arc<ConnectionCounters>);

impl SlotGuard {
    pub(crate) fn take(counters: &Arc<ConnectionCounters>) -> Self {
        counters.slots.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One undecided incoming channel; released on drop.
#[derive(Debug)]
pub(crate) struct PendingGuard(Arc<ConnectionCounters>);

impl PendingGuard {
    pub(crate) fn take(counters: &Arc<ConnectionCounters>) -> Self {
        counters.pending.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps an open channel counted in its slot and the open-channels gauge.
#[derive(Debug)]
struct OpenGuard {
    _slot: SlotGuard,
    gauge: IntGauge,
}

impl OpenGuard {
    fn new(slot: SlotGuard, metrics: &TransportMetrics, name: &ChannelName) -> Self {
        let gauge = metrics
            .channels_open
            .with_label_values(&[name.metric_kind()]);
        gauge.inc();
        Self { _slot: slot, gauge }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The sending half of an open channel (a QUIC send stream).
#[derive(Debug)]
pub struct ChannelSend {
    stream: SendStream,
    _open: Arc<OpenGuard>,
}

impl Deref for ChannelSend {
    type Target = SendStream;
    fn deref(&self) -> &SendStream {
        &self.stream
    }
}

impl DerefMut for ChannelSend {
    fn deref_mut(&mut self) -> &mut SendStream {
        &mut self.stream
    }
}

/// The receiving half of an open channel (a QUIC receive stream).
#[derive(Debug)]
pub struct ChannelRecv {
    stream: RecvStream,
    _open: Arc<OpenGuard>,
}

impl Deref for ChannelRecv {
    type Target = RecvStream;
    fn deref(&self) -> &RecvStream {
        &self.stream
    }
}

impl DerefMut for ChannelRecv {
    fn deref_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }
}

/// An open channel to a verified peer. Application bytes flow on `send` and
/// `recv`; the channel counts as open until both are dropped.
#[derive(Debug)]
pub struct Channel {
    peer: VerifiedDevice,
    name: ChannelName,
    /// Bytes to the peer.
    pub send: ChannelSend,
    /// Bytes from the peer.
    pub recv: ChannelRecv,
}

impl Channel {
    fn new(
        peer: VerifiedDevice,
        name: ChannelName,
        send: SendStream,
        recv: RecvStream,
        slot: SlotGuard,
        metrics: &TransportMetrics,
    ) -> Self {
        let open = Arc::new(OpenGuard::new(slot, metrics, &name));
        Self {
            peer,
            name,
            send: ChannelSend {
                stream: send,
                _open: open.clone(),
            },
            recv: ChannelRecv {
                stream: recv,
                _open: open,
            },
        }
    }

    /// Who is at the other end, as proven by its certificate chain.
    pub fn peer(&self) -> VerifiedDevice {
        self.peer
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Separates the halves, e.g. to read and write from different tasks.
    pub fn split(self) -> (ChannelSend, ChannelRecv) {
        (self.send, self.recv)
    }
}

/// An incoming channel waiting for its handler's decision. Dropping it
/// undecided resets the stream; the opener sees [`ReplyCode::Unavailable`].
#[derive(Debug)]
pub struct PendingChannel {
    peer: VerifiedDevice,
    name: ChannelName,
    streams: Option<(SendStream, RecvStream)>,
    slot: Option<SlotGuard>,
    _pending: PendingGuard,
    metrics: TransportMetrics,
}

impl PendingChannel {
    pub(crate) fn new(
        peer: VerifiedDevice,
        name: ChannelName,
        send: SendStream,
        recv: RecvStream,
        slot: SlotGuard,
        pending: PendingGuard,
        metrics: TransportMetrics,
    ) -> Self {
        Self {
            peer,
            name,
            streams: Some((send, recv)),
            slot: Some(slot),
            _pending: pending,
            metrics,
        }
    }

    /// Who asks, as proven by its certificate chain.
    pub fn peer(&self) -> VerifiedDevice {
        self.peer
    }

    /// The channel name asked for.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Accepts: tells the opener and returns the open channel.
    pub async fn accept(mut self) -> Result<Channel, ChannelError> {
        let (mut send, recv) = self
            .streams
            .take()
            .expect("streams are only taken by accept/refuse, which consume self");
        let slot = self
            .slot
            .take()
            .expect("the slot is only taken by accept, which consumes self");
        send.write_all(&ChannelReply::accepted().encode())
            .await
            .map_err(|e| ChannelError::Stream(e.to_string()))?;
        Ok(Channel::new(
            self.peer,
            self.name.clone(),
            send,
            recv,
            slot,
            &self.metrics,
        ))
    }

    /// Refuses with `reason`, which the opener receives.
    pub async fn refuse(self, reason: &str) {
        self.refuse_with(ReplyCode::RefusedByHandler, reason).await
    }

    /// Refuses with a transport code (unknown name, limits, …).
    pub(crate) async fn refuse_with(mut self, code: ReplyCode, reason: &str) {
        if let Some((send, recv)) = self.streams.take() {
            refuse_stream(send, recv, code, reason, &self.metrics).await;
        }
    }
}

impl Drop for PendingChannel {
    fn drop(&mut self) {
        if let Some((mut send, _recv)) = self.streams.take() {
            tracing::debug!(channel = %self.name, "pending channel dropped undecided");
            self.metrics
                .channels_refused
                .with_label_values(&["local", ReplyCode::Unavailable.label()])
                .inc();
            // Already reset or the connection is gone: nothing left to tell.
            let _ = send.reset(VarInt::from_u64(STREAM_RESET_UNDECIDED).unwrap_or(VarInt::MAX));
        }
    }
}

/// Writes a refusal, counts it, and ends the stream.
pub(crate) async fn refuse_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    code: ReplyCode,
    reason: &str,
    metrics: &TransportMetrics,
) {
    metrics
        .channels_refused
        .with_label_values(&["local", code.label()])
        .inc();
    // Best effort: the opener may already be gone, and then it needs no answer.
    let _ = send
        .write_all(&ChannelReply::refused(code, reason).encode())
        .await;
    let _ = send.finish();
    let _ = recv.stop(VarInt::from_u32(0));
}

/// Why an incoming header was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderReadError {
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("stream ended before the header: {0}")]
    Stream(String),
    #[error("no header within {0:?}")]
    Timeout(Duration),
}

/// Reads a channel header, checking the length before reading the name.
pub(crate) async fn read_header(
    recv: &mut RecvStream,
    timeout: Duration,
) -> Result<ChannelHeader, HeaderReadError> {
    let read = async {
        let mut prefix = [0u8; HEADER_PREFIX_BYTES];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|e| HeaderReadError::Stream(e.to_string()))?;
        let len = header_name_len(prefix)?;
        let mut whole = vec![0u8; HEADER_PREFIX_BYTES + len];
        whole[..HEADER_PREFIX_BYTES].copy_from_slice(&prefix);
        recv.read_exact(&mut whole[HEADER_PREFIX_BYTES..])
            .await
            .map_err(|e| HeaderReadError::Stream(e.to_string()))?;
        match starling_protocol::channel::decode_header(&whole)? {
            Some((header, _)) => Ok(header),
            None => Err(HeaderReadError::Stream(
                "header shorter than its length".into(),
            )),
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HeaderReadError::Timeout(timeout))?
}

fn read_exact_error(error: ReadExactError, name: &ChannelName) -> ChannelError {
    match error {
        ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => {
            ChannelError::Connection(e)
        }
        ReadExactError::ReadError(quinn::ReadError::Reset(code))
            if code.into_inner() == STREAM_RESET_UNDECIDED =>
        {
            ChannelError::Refused {
                name: name.clone(),
                code: ReplyCode::Unavailable,
                reason: "the handler dropped the channel undecided".into(),
            }
        }
        other => ChannelError::Stream(other.to_string()),
    }
}

/// Opens `name` on `conn` to `peer`: header out, reply in.
pub(crate) async fn open_channel(
    conn: &quinn::Connection,
    peer: VerifiedDevice,
    name: ChannelName,
    slot: SlotGuard,
    metrics: &TransportMetrics,
    reply_timeout: Duration,
) -> Result<Channel, ChannelError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = ChannelHeader { name: name.clone() };
    send.write_all(&header.encode())
        .await
        .map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => ChannelError::Connection(e),
            other => ChannelError::Stream(other.to_string()),
        })?;
    let read_reply = async {
        let mut prefix = [0u8; REPLY_PREFIX_BYTES];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|e| read_exact_error(e, &name))?;
        let len = reply_reason_len(prefix)?;
        let mut whole = vec![0u8; REPLY_PREFIX_BYTES + len];
        whole[..REPLY_PREFIX_BYTES].copy_from_slice(&prefix);
        recv.read_exact(&mut whole[REPLY_PREFIX_BYTES..])
            .await
            .map_err(|e| read_exact_error(e, &name))?;
        match decode_reply(&whole)? {
            Some((reply, _)) => Ok(reply),
            None => Err(ChannelError::Stream("reply shorter than its length".into())),
        }
    };
    let reply = tokio::time::timeout(reply_timeout, read_reply)
        .await
        .map_err(|_| ChannelError::ReplyTimeout(reply_timeout))?;
    let reply = match reply {
        Ok(reply) => reply,
        Err(ChannelError::Refused { name, code, reason }) => {
            metrics
                .channels_refused
                .with_label_values(&["remote", code.label()])
                .inc();
            return Err(ChannelError::Refused { name, code, reason });
        }
        Err(other) => return Err(other),
    };
    if reply.code != ReplyCode::Accepted {
        metrics
            .channels_refused
            .with_label_values(&["remote", reply.code.label()])
            .inc();
        return Err(ChannelError::Refused {
            name,
            code: reply.code,
            reason: reply.reason,
        });
    }
    Ok(Channel::new(peer, name, send, recv, slot, metrics))
}
