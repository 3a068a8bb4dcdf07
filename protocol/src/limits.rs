//! Every bound on input this crate accepts, in one place, with its unit in the
//! name. Exceeding one is a typed error at the call site, never a panic.

/// Largest DER certificate we parse. Ours are about 400 bytes; the margin is
/// for future extensions, not for peers to spend our memory.
pub const CERT_DER_BYTES_MAX: usize = 8 * 1024;

/// Largest PEM document (certificate or CRL) we read from a file or a peer.
pub const PEM_BYTES_MAX: usize = 1024 * 1024;

/// Largest DER CRL we parse (about 40 bytes per revoked serial).
pub const CRL_DER_BYTES_MAX: usize = 512 * 1024;

/// Most serials one account CRL may list. An account has few devices; this
/// bounds the work a hostile CRL can cause.
pub const CRL_REVOKED_SERIALS_MAX: usize = 10_000;

/// Most devices an account archive may carry.
pub const ARCHIVE_DEVICES_MAX: usize = 1_000;

/// Largest encrypted account archive we open.
pub const ARCHIVE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Longest display name, in bytes of UTF-8.
pub const DISPLAY_NAME_BYTES_MAX: usize = 256;

/// Argon2id cost ceilings accepted when *opening* an archive. They stop a
/// crafted header from making us allocate or spin without end; the defaults we
/// write are far below them.
pub const ARGON2_MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// See [`ARGON2_MEMORY_KIB_MAX`].
pub const ARGON2_ITERATIONS_MAX: u32 = 64;
/// See [`ARGON2_MEMORY_KIB_MAX`].
pub const ARGON2_LANES_MAX: u32 = 16;
