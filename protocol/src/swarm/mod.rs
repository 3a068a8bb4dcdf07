//! Swarm rules: a conversation is a Git repository whose commits are signed
//! messages and whose tree says who may write.
//!
//! Everything here judges plain values the store hands over; nothing touches
//! Git, a disk or a clock. The format is specified in `docs/PROTOCOL.md` §9.
//!
//! - [`ids`]: commit ids (the conversation id is its initial commit's id).
//! - [`body`]: the JSON commit bodies, one `type` each.
//! - [`commit`]: the signed payload and Git's SSH signature (sshsig).
//! - [`dag`]: walks over the commit graph (ancestry, unknown commits, merge bases, tips).
//! - [`gossip`]: frames on `swarm/<id>` channels (head announcements, invitations).
//! - [`overlay`]: the bounded gossip overlay (neighbour views, broadcast tree)
//!   the sync layer runs per conversation, with its frames.
//! - [`state`]: the tree layout and the membership state it describes.
//! - [`validation`]: may a fetched commit enter history?
//! - [`merge`]: the tree merge rule and the oscillation-free head choice.
//! - [`order`]: the display order and the bounded newest-first walk.
//! - [`sync`]: one conversation's sync rules (overlay, anti-entropy between neighbours, fetches).
//! - [`timeline`]: a page of messages as shown, with edits, deletions and reactions applied.
//! - [`limits`]: every bound, with units.

pub mod body;
pub mod commit;
pub mod dag;
pub mod gossip;
pub mod ids;
pub mod limits;
pub mod merge;
pub mod order;
pub mod overlay;
pub mod state;
pub mod sync;
pub mod timeline;
pub mod validation;

pub use body::{Body, BodyKind, MemberAction, Mode, VoteAction};
pub use ids::CommitId;
pub use state::{Files, SwarmState};
pub use validation::{Candidate, Rejection};
