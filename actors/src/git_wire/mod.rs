//! Git's pack protocol over any byte stream: the wire half of conversation
//! storage.
//!
//! `server` answers a fetch with `protocol::upload_pack`'s state machine and
//! libgit2's pack builder; `client` fetches with stock libgit2 through a
//! custom smart transport whose "connection" is whatever stream the caller
//! hands in (a QUIC channel in the daemon, a socket pair or a `git
//! upload-pack` process in tests). Both are blocking, like libgit2 itself:
//! callers run them off the actor arbiters.
//!
//! Besides the swarm store, this is the only module that touches git2.

pub mod client;
pub mod server;

/// Largest pack a fetch will accept or a server will send. Swarm commits are
/// small JSON documents; a 10,000-message history packs to a few MiB.
pub const PACK_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Why a fetch or a serve failed.
#[derive(Debug, thiserror::Error)]
pub enum GitWireError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer broke the pack protocol: {0}")]
    Protocol(#[from] starling_protocol::upload_pack::UploadPackError),
    #[error("the peer hung up before the negotiation finished")]
    HungUp,
    #[error("pack exceeds {PACK_BYTES_MAX} bytes")]
    PackTooLarge,
}
