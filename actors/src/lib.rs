//! Starling's actors: the parts that own state and do I/O.
//!
//! Each account, device link, swarm conversation and call is an isolated actix
//! actor exchanging typed messages; a transport actor multiplexes named
//! channels over QUIC. Every I/O library has exactly one owner here: quinn and
//! rustls only in the transport, git2 only in conversation storage, gstreamer
//! only in the call actor. Rules and formats are not decided here: they live
//! in `starling-protocol` as pure functions, which these actors call.
//!
//! Modules: the account actor, the transport, conversation storage (the
//! swarm store and the pack protocol); then conversations as actors,
//! discovery and calls.

pub mod account;
pub mod conversation;
pub mod discovery;
pub mod git_wire;
pub mod transport;
