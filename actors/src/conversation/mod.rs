//! Conversation storage: a swarm conversation as a signed Git repository.
//!
//! The only place git2 is used. [`store::Store`] turns repositories into the
//! plain values `starling_protocol::swarm` judges and applies its verdicts;
//! [`sign::DeviceSigner`] holds what a device needs to sign commits.

pub mod sign;
pub mod store;

pub use sign::{DeviceSigner, SignerError};
pub use store::{FetchReport, MessageView, Store, StoreError};
