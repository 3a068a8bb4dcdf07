//! Moving swarm bytes over transport channels: one-frame `swarm/<id>`
//! exchanges, and the git pack protocol on `git/<id>` run by blocking
//! libgit2 code through a sync bridge inside `spawn_blocking`.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_protocol::swarm::gossip::{FrameError, SwarmFrame, FRAME_LENGTH_BYTES};
use starling_protocol::DeviceId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::SyncIoBridge;

use crate::conversation::durable;
use crate::conversation::store::receive::quarantine_refspec;
use crate::git_wire::client::FetchWatch;
use crate::git_wire::{self, GitWireError};
use crate::transport::{Channel, ChannelRecv, ChannelSend};

/// How long a `swarm/<id>` frame may take to arrive once the channel is open.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelIoError {
    #[error("channel stream: {0}")]
    Io(#[from] io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer sent no frame within {0:?}")]
    Timeout(Duration),
    #[error("pack protocol: {0}")]
    Git(#[from] GitWireError),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error("git: {0}")]
    Repository(#[from] git2::Error),
}

/// Both halves of a channel as one tokio stream.
pub struct ChannelStream {
    send: ChannelSend,
    recv: ChannelRecv,
}

impl ChannelStream {
    /// Joins an open channel's halves.
    pub fn new(channel: Channel) -> Self {
        let (send, recv) = channel.split();
        Self { send, recv }
    }
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut *self.send), cx, buf).map_err(io::Error::from)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut *self.send), cx).map_err(io::Error::from)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut *self.send), cx).map_err(io::Error::from)
    }
}

/// Writes one frame and finishes the stream.
pub async fn send_frame(channel: Channel, frame: &SwarmFrame) -> Result<(), ChannelIoError> {
    send_frame_with(channel, frame, &[]).await
}

/// Milliseconds since the Unix epoch by this device's clock (0 before it).
pub fn clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes one frame stamped with our clock (peers estimate their clock's
/// offset from it), then `trailer` (the pack of a `heads_pack` frame, whose
/// `pack_bytes` says its length), and finishes the stream.
pub async fn send_frame_with(
    channel: Channel,
    frame: &SwarmFrame,
    trailer: &[u8],
) -> Result<(), ChannelIoError> {
    // Stamped once the channel is open, as close to the write as can be.
    let mut bytes = frame.encode_sent_at(clock_ms())?;
    bytes.extend_from_slice(trailer);
    let mut stream = ChannelStream::new(channel);
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    Ok(())
}

/// One frame read from a `swarm/<id>` channel.
#[derive(Debug)]
pub struct ReceivedFrame {
    /// The frame.
    pub frame: SwarmFrame,
    /// The pack that followed a `heads_pack` frame.
    pub pack: Option<Vec<u8>>,
    /// The sender's clock when it wrote the frame and ours when it arrived
    /// (milliseconds since the Unix epoch), when the sender stamped it.
    pub clock_ms: Option<(i64, i64)>,
}

/// Reads the one frame a `swarm/<id>` channel carries, and the pack that
/// follows a `heads_pack` frame (its length is bounded by the frame check).
pub async fn receive_frame(channel: Channel) -> Result<ReceivedFrame, ChannelIoError> {
    let mut stream = ChannelStream::new(channel);
    let read = async {
        let mut prefix = [0u8; FRAME_LENGTH_BYTES];
        stream.read_exact(&mut prefix).await?;
        let len = SwarmFrame::payload_len(prefix)?;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        let received_at_ms = clock_ms();
        let (frame, sent_at_ms) = SwarmFrame::decode_payload_sent_at(&payload)?;
        let pack = match &frame {
            SwarmFrame::HeadsPack { pack_bytes, .. } => {
                let mut pack = vec![0u8; *pack_bytes];
                stream.read_exact(&mut pack).await?;
                Some(pack)
            }
            _ => None,
        };
        Ok::<_, ChannelIoError>(ReceivedFrame {
            frame,
            pack,
            clock_ms: sent_at_ms.map(|sent| (sent, received_at_ms)),
        })
    };
    tokio::time::timeout(FRAME_READ_TIMEOUT, read)
        .await
        .map_err(|_| ChannelIoError::Timeout(FRAME_READ_TIMEOUT))?
}

/// Serves one upload-pack session of the repository at `path` on `channel`.
pub async fn serve_git(channel: Channel, path: PathBuf) -> Result<(), ChannelIoError> {
    let mut bridge = SyncIoBridge::new(ChannelStream::new(channel));
    tokio::task::spawn_blocking(move || {
        let repo = durable::open_bare(&path)?;
        git_wire::server::serve_upload_pack(&repo, &mut bridge)?;
        bridge.shutdown()?;
        Ok(())
    })
    .await
    .map_err(|e| ChannelIoError::Join(e.to_string()))?
}

/// Fetches the peer's head over `channel` into the repository at `path`,
/// under the quarantine ref of `peer` (validation is the store's business).
/// With `init`, creates the bare repository first (a clone).
pub async fn fetch_git(
    channel: Channel,
    path: PathBuf,
    peer: DeviceId,
    init: bool,
) -> Result<git_wire::client::Fetched, ChannelIoError> {
    fetch_git_watched(channel, path, peer, init, FetchWatch::default()).await
}

/// [`fetch_git`], sharing `watch` with the caller, who sees its progress.
/// Dropping the future (a caller that gave up) abandons the fetch: the
/// blocking libgit2 work stops at its next read or write instead of
/// running on beside a retry.
pub async fn fetch_git_watched(
    channel: Channel,
    path: PathBuf,
    peer: DeviceId,
    init: bool,
    watch: FetchWatch,
) -> Result<git_wire::client::Fetched, ChannelIoError> {
    let bridge = SyncIoBridge::new(ChannelStream::new(channel));
    // Lives as long as this future: dropped unfinished, it abandons the fetch.
    let _abandon_when_dropped = AbandonWhenDropped(watch.clone());
    tokio::task::spawn_blocking(move || {
        // Durable opens: the fetched pack is fsync'd before the conversation
        // moves any ref to it.
        let repo = if init {
            durable::init_bare(&path)?
        } else {
            durable::open_bare(&path)?
        };
        let refspec = quarantine_refspec(&peer.to_hex());
        Ok(git_wire::client::fetch_watched(
            &repo,
            bridge,
            &[refspec.as_str()],
            watch,
        )?)
    })
    .await
    .map_err(|e| ChannelIoError::Join(e.to_string()))?
}

/// Abandons its fetch when dropped (see [`fetch_git_watched`]); after the
/// fetch finished, that is a no-op.
struct AbandonWhenDropped(FetchWatch);

impl Drop for AbandonWhenDropped {
    fn drop(&mut self) {
        self.0.abandon();
    }
}
