//! Every bound on swarm input, in one place, with its unit in the name.
//!
//! A peer that exceeds one gets a typed rejection (and the store counts it);
//! nothing here is ever a panic.

/// Largest commit message (the JSON body), in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest signed commit payload (headers plus body), in bytes.
pub const COMMIT_PAYLOAD_BYTES_MAX: usize = BODY_BYTES_MAX + 4 * 1024;

/// Largest armored SSH signature in a `gpgsig` header, in bytes. An ed25519
/// sshsig is about 300 bytes armored.
pub const SIGNATURE_BYTES_MAX: usize = 4 * 1024;

/// Most files one conversation tree may hold (certificates, votes, profile).
pub const TREE_FILES_MAX: usize = 20_000;

/// Largest single file in a conversation tree, in bytes (the profile with its
/// avatar is the largest legitimate one).
pub const TREE_FILE_BYTES_MAX: usize = 256 * 1024;

/// Largest conversation profile document, in bytes.
pub const PROFILE_BYTES_MAX: usize = TREE_FILE_BYTES_MAX;

/// Most commits one fetch may bring for validation. A longer catch-up is
/// refused with a typed error; the sync layer then fetches an older head first.
pub const FETCH_COMMITS_MAX: usize = 50_000;

/// Parents of a merge commit: merges are always pairwise.
pub const MERGE_PARENTS: usize = 2;

/// How far in the future (by the validating device's clock) a commit's
/// committer time may be, in seconds.
pub const COMMIT_FUTURE_SKEW_SECS_MAX: i64 = 10 * 60;

/// Longest text message, reaction, file name or call id, in bytes of UTF-8
/// (all also bounded by [`BODY_BYTES_MAX`]).
pub const TEXT_BYTES_MAX: usize = 32 * 1024;

/// Longest reaction (an emoji sequence), in bytes of UTF-8.
pub const REACTION_BYTES_MAX: usize = 64;

/// Longest file name in a file announcement, in bytes of UTF-8.
pub const FILE_NAME_BYTES_MAX: usize = 1024;

/// Most messages one history page may return.
pub const PAGE_MESSAGES_MAX: usize = 1_000;

/// Commits one message page may walk past (newest first) to reach its
/// cursor and fill itself; a deeper cursor is refused.
pub const PAGE_WALK_COMMITS_MAX: usize = 100_000;

/// Bytes of edit texts a page walk holds while it waits for their targets;
/// edits beyond it are not applied to that page (the message shows unedited).
pub const PAGE_EDIT_TEXT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Decoded signing keys one signature check batch keeps (a swarm's devices;
/// past this, keys are decoded per commit, which is only slower).
pub const KEY_CACHE_ENTRIES_MAX: usize = 1_024;
