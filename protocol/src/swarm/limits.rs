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

/// Most parents a commit may name. An author names every tip it holds;
/// with more tips than this it first folds them in merge commits of its
/// own.
pub const PARENTS_MAX: usize = 16;

/// How far ahead of its own clock an author dates a commit to keep it no
/// earlier than its parents, in seconds (two days: the clock error Starling
/// absorbs, as the TLS verifier's `CERT_CLOCK_SKEW_SECS_MAX` does). Bounds
/// how far a member dating commits in the future drags everyone's times.
pub const COMMIT_TIME_LEAD_SECS_MAX: i64 = 2 * 24 * 3600;

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

// The bounded gossip overlay (`overlay`): every view, table, queue and timer
// of one conversation's overlay instance. Past a count bound the overlay
// drops (and counts) rather than grows.

/// Most neighbours in the active view (the peers this device holds overlay
/// links to). A swarm of at most this many other member devices is a full
/// mesh.
pub const ACTIVE_VIEW_MAX: usize = 6;

/// Below this many neighbours, a refused neighbour request is followed by
/// another at once; at or above it, at the next maintenance (so a device one
/// neighbour short does not chain requests through peers whose views are
/// full).
pub const ACTIVE_VIEW_RETRY_BELOW: usize = ACTIVE_VIEW_MAX / 2;

/// Most peers in the passive view (known members to repair the active view
/// from).
pub const PASSIVE_VIEW_MAX: usize = 30;

/// Hops a `forward_join` random walk takes before its last holder asks the
/// joiner to be its neighbour (HyParView's ARWL).
pub const ACTIVE_WALK_HOPS: u8 = 6;

/// Hops left on a `forward_join` walk at which its holder also puts the
/// joiner in its passive view (HyParView's PRWL).
pub const PASSIVE_WALK_HOPS: u8 = 3;

/// Hops a `shuffle` random walk takes before its last holder answers.
pub const SHUFFLE_WALK_HOPS: u8 = 6;

/// Longest random walk a frame may ask for, in hops; a frame asking more is
/// malformed.
pub const RANDOM_WALK_HOPS_MAX: u8 = 6;

/// Active-view peers a shuffle offers (besides the shuffler itself).
pub const SHUFFLE_ACTIVE_PEERS: usize = 3;

/// Passive-view peers a shuffle offers.
pub const SHUFFLE_PASSIVE_PEERS: usize = 4;

/// Most peers one `shuffle` or `shuffle_reply` frame may list.
pub const SHUFFLE_PEERS_MAX: usize = 1 + SHUFFLE_ACTIVE_PEERS + SHUFFLE_PASSIVE_PEERS;

/// Mean time between two shuffles of one overlay instance (each is drawn
/// between half and one and a half times this).
pub const SHUFFLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Neighbour requests (and joins) in flight at once.
pub const NEIGHBOR_REQUESTS_IN_FLIGHT_MAX: usize = 2 * ACTIVE_VIEW_MAX;

/// A neighbour request unanswered after this long counts as failed.
pub const NEIGHBOR_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often an overlay instance checks its views: repairs an active view
/// below its bound, refills a passive view run dry, expires old entries.
pub const OVERLAY_MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A peer whose link failed is not picked again from the member list for
/// this long.
pub const FAILED_PEER_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Most peers remembered as recently failed (the oldest is forgotten first).
pub const FAILED_PEERS_REMEMBERED_MAX: usize = 256;

/// Most member devices one overlay instance accepts in its member list.
pub const OVERLAY_MEMBERS_MAX: usize = 65_536;

/// Largest overlay frame payload, in bytes (the JSON after the length
/// prefix).
pub const OVERLAY_FRAME_BYTES_MAX: usize = 16 * 1024;

/// Largest payload following a `push` frame, in bytes (an inline pack).
pub const PUSH_PAYLOAD_BYTES_MAX: usize = super::gossip::INLINE_PACK_BYTES_MAX;

/// Most ids one `ihave` frame announces.
pub const IHAVE_BATCH_IDS_MAX: usize = 128;

/// Most ids one `graft` frame asks for.
pub const GRAFT_BATCH_IDS_MAX: usize = 128;

/// How long announcements wait to be batched into one `ihave` per lazy
/// neighbour.
pub const LAZY_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// An id announced by `ihave` and not received after this long is grafted
/// from its announcer.
pub const GRAFT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1_000);

/// After a graft, how long to wait before grafting the next announcer.
pub const GRAFT_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Most ids announced to this device and not yet received.
pub const MISSING_IDS_MAX: usize = 1_024;

/// Most of those one neighbour's announcements may occupy, so one peer's
/// flood cannot crowd out the others'.
pub const MISSING_IDS_PER_PEER_MAX: usize = MISSING_IDS_MAX / 4;

/// Announcers remembered per missing id (grafts go to them in turn).
pub const ANNOUNCERS_PER_ID_MAX: usize = ACTIVE_VIEW_MAX;

/// Most received messages waiting for the caller's verdict (check and
/// store); past it the oldest is forgotten and its id may be grafted again.
pub const AWAITING_VERDICT_MAX: usize = 256;

/// A received message the caller gave no verdict on after this long is
/// forgotten (and its id may be grafted again). Longer than a fetch may take.
pub const AWAITING_VERDICT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Most message ids remembered as held (to prune duplicates and answer
/// grafts without asking the store).
pub const MESSAGE_IDS_REMEMBERED_MAX: usize = 4_096;

/// A held message id is forgotten after this long.
pub const MESSAGE_ID_RETENTION: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Most payloads kept to answer grafts; a graft for an older message gets a
/// `push` without payload, and the grafter fetches it out of band.
pub const PAYLOADS_CACHED_MAX: usize = 32;

/// A cached payload is dropped after this long.
pub const PAYLOAD_RETENTION: std::time::Duration = std::time::Duration::from_secs(30);

/// A lazy neighbour that announced a message before its eager copy came
/// replaces the upstream neighbour that pushed it when its average delivery
/// depth is lower by at least this much, in sixteenths of a hop (one hop).
pub const TREE_OPTIMIZATION_DEPTH_MIN_SIXTEENTHS: u32 = 16;

/// Deliveries a device averages before it advertises its depth (and before
/// it optimizes the tree).
pub const DEPTH_SAMPLES_MIN: u32 = 4;

/// A device advertises its average delivery depth again to its neighbours
/// once it has moved by this much since last advertised, in sixteenths of a
/// hop (one hop).
pub const DEPTH_ADVERTISE_STEP_SIXTEENTHS: u32 = 16;

/// Most outputs queued for the caller; the caller drains them after every
/// call, so reaching this is a caller bug, counted and dropped.
pub const OVERLAY_OUTPUTS_QUEUED_MAX: usize = 4_096;
