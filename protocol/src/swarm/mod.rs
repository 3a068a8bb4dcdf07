//! Swarm rules: a conversation is a Git repository whose commits are signed
//! messages and whose tree says who may write.
//!
//! Everything here judges plain values the store hands over; nothing touches
//! Git, a disk or a clock. The format is specified in `docs/PROTOCOL.md` §9.
//!
//! - [`ids`]: commit ids (the conversation id is its initial commit's id).
//! - [`body`]: the JSON commit bodies, one `type` each.
//! - [`commit`]: the signed payload and Git's SSH signature (sshsig).
//! - [`gossip`]: frames on `swarm/<id>` channels (head announcements, invitations).
//! - [`state`]: the tree layout and the membership state it describes.
//! - [`validation`]: may a fetched commit enter history?
//! - [`merge`]: the tree merge rule and the oscillation-free head choice.
//! - [`order`]: the display order and the bounded newest-first walk.
//! - [`timeline`]: a page of messages as shown, with edits, deletions and reactions applied.
//! - [`limits`]: every bound, with units.

pub mod body;
pub mod commit;
pub mod gossip;
pub mod ids;
pub mod limits;
pub mod merge;
pub mod order;
pub mod state;
pub mod timeline;
pub mod validation;

pub use body::{Body, BodyKind, MemberAction, Mode, VoteAction};
pub use ids::CommitId;
pub use state::{Files, SwarmState};
pub use validation::{Candidate, Rejection};
