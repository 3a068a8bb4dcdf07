//! Starling's sans-I/O core.
//!
//! Everything here is plain data in, data out: identities and their encodings,
//! certificate-chain verification, revocation lists, the encrypted account
//! archive, and (as later issues land) wire frames, the swarm rules and the
//! gossip state machines. Time and randomness are inputs (`now: SystemTime`,
//! `rng: &mut impl CryptoRngCore`), never read from the environment.
//!
//! This crate must never depend on an async runtime, a socket library or git2;
//! `tests/tidy.rs` enforces that, and `clippy.toml` forbids reading the clock or
//! an unseeded RNG here.

pub mod archive;
pub mod cert;
pub mod chain;
pub mod channel;
pub mod clock_offset;
pub mod contact;
pub mod crl;
pub mod discovery;
pub mod fetch_schedule;
pub mod id;
pub mod identity;
pub mod limits;
pub mod swarm;
pub mod upload_pack;
mod x509;

pub use archive::{AccountArchive, ArchiveError, KdfParams, KnownDevice};

pub use cert::{AccountCert, CertError, DeviceCert};
pub use chain::{
    verify_device_chain, verify_device_of, verify_device_signature, ChainError, VerifiedAccount,
    VerifiedCrl, VerifiedDevice,
};
pub use crl::{CrlError, RevocationList};
pub use id::{AccountId, DeviceId, IdParseError};
pub use identity::{AccountIdentity, DeviceStatus, IdentityError};
