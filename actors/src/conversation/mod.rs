//! Conversation storage: a swarm conversation as a signed Git repository.
//!
//! The only place git2 is used (with `git_wire`). [`store::Store`] turns
//! repositories into the plain values `starling_protocol::swarm` judges and
//! applies its verdicts; [`sign::DeviceSigner`] holds what a device needs to
//! sign commits; [`actor::Conversation`] owns one store on its own thread
//! and groups authored commits into durable batches ([`durable`]);
//! [`recovery`] clears what a crash leaves in a repository before it opens;
//! [`history`] reads pages and head moves for people and the event stream;
//! [`metrics`] are the swarm layer's per-node metrics.

pub mod actor;
pub mod durable;
pub mod history;
pub mod metrics;
pub mod recovery;
pub mod sign;
pub mod store;

pub use actor::{
    Conversation, ConversationError, HealthChanged, Listeners, MessageItem, Role, SwarmView,
};
pub use metrics::SwarmMetrics;
pub use sign::{DeviceSigner, SignerError};
pub use store::{BatchPack, FetchReport, MessageView, Store, StoreError};
