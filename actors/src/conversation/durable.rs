//! Durable writes for conversation repositories: group commit.
//!
//! A message is acknowledged only once it is on disk, and a ref never points
//! at an object that is not. Three pieces make that cheap:
//!
//! - libgit2's own fsync switch (`GIT_OPT_ENABLE_FSYNC_GITDIR`, turned on
//!   process-wide by [`configure_libgit2`] before any repository is opened): every
//!   pack it indexes (fetches, our batches) and every ref it moves is fsync'd,
//!   file and parent directory.
//! - a [`Staging`] area: an in-memory object backend (libgit2's mempack) in
//!   front of the repository's object database, so every object a store
//!   writes (blobs, trees, commits, merges) lands in memory. [`Staging::persist`]
//!   turns everything staged into **one** pack (one fsync'd pack and index,
//!   whatever the number of commits), which is what lets the conversation
//!   actor group many messages into one durable write.
//! - [`consolidate_packs`]: one pack per batch would pile up packs (and
//!   slow every lookup), so past [`PACKS_MAX`] the smaller half is rewritten
//!   as one pack, durably, before the old ones are removed. Objects are
//!   copied by the ids the old indexes list, so nothing is lost, including
//!   quarantined objects a fetch left.
//!
//! Order of durability, always: objects (pack fsync'd) → ref (fsync'd).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use git2::{Mempack, Odb, Oid, Repository};

/// Packs a repository may hold before the smaller half is merged into one.
pub const PACKS_MAX: usize = 24;
/// Objects one consolidation copies at most (a bound on its work and memory);
/// larger packs are left alone.
pub const CONSOLIDATE_OBJECTS_MAX: usize = 2_000_000;
/// Priority of the staging backend: above libgit2's loose (1) and pack (2)
/// backends, so writes go to it and reads see staged objects first.
const STAGING_PRIORITY: i32 = 1_000;
/// A pack with no objects: 12 bytes of header, 20 of checksum.
const EMPTY_PACK_BYTES: usize = 32;

/// Sets libgit2's process-wide switches: fsync of packs, loose objects and
/// refs on, and the hashing of every object again at each read off.
/// Must run before a repository is opened (libgit2 reads the fsync switch
/// when it sets up a repository's backends); every opener in this crate
/// calls it, and calls after the first are free.
///
/// Every object enters an object database hashed: a fetched or inline pack
/// is indexed (libgit2's indexer hashes each object it holds), and what we
/// write ourselves is hashed as it is written; a pack also ends in a
/// checksum, and each object's zlib stream in its own. Hashing again at every
/// read (libgit2's default, which stock git does not do) guards only against
/// the disk, and took 5 % of all CPU in a 50-node simulation, where
/// revision walks read the same commits over and over.
pub fn configure_libgit2() {
    static ENABLE: Once = Once::new();
    ENABLE.call_once(|| {
        libgit2_sys::init();
        git2::opts::strict_hash_verification(false);
        // SAFETY: git_libgit2_opts with GIT_OPT_ENABLE_FSYNC_GITDIR takes one
        // int argument and only stores it in a global flag; `Once` keeps it
        // from racing itself, and it runs before this crate opens any
        // repository.
        let rc = unsafe {
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_ENABLE_FSYNC_GITDIR as std::ffi::c_int,
                1 as std::ffi::c_int,
            )
        };
        if rc != 0 {
            tracing::error!(
                rc,
                "libgit2 refused to enable fsync: writes are not durable"
            );
        }
    });
}

/// Opens a bare repository with durable writes on.
pub fn open_bare(path: &Path) -> Result<Repository, git2::Error> {
    configure_libgit2();
    Repository::open_bare(path)
}

/// Creates a bare repository with durable writes on and packing tuned
/// ([`tune_packing`]).
pub fn init_bare(path: &Path) -> Result<Repository, git2::Error> {
    configure_libgit2();
    let repo = Repository::init_bare(path)?;
    tune_packing(&repo)?;
    Ok(repo)
}

/// The repository setting that bounds libgit2's delta search, and the value
/// [`tune_packing`] gives it.
pub const PACK_WINDOW_MEMORY: (&str, i64) = ("pack.windowMemory", 1);

/// Bounds the delta search of every pack this repository builds (batches,
/// consolidations, packs served to fetching peers) to one candidate base per
/// object instead of libgit2's fixed ten. A window that never fits in one
/// byte keeps exactly the previous object of the size-sorted list, which is
/// where a swarm's deltas are: on a 10,000-message replica stock git packs
/// 2.2 MB with one candidate (`--window=2`) and with ten alike, 5.0 MB with
/// none. Ten candidates cost about ten times the CPU for nothing, on every
/// batch, consolidation and fetch. Written to the repository's own config
/// (stock git honours it the same way); rewritten only when it differs.
pub fn tune_packing(repo: &Repository) -> Result<(), git2::Error> {
    let (key, value) = PACK_WINDOW_MEMORY;
    let mut config = repo.config()?;
    if config.get_i64(key).ok() != Some(value) {
        config.set_i64(key, value)?;
    }
    Ok(())
}

/// The in-memory object backend in front of a repository's object database.
pub struct Staging {
    // Field order is drop order: `mempack` points into the odb `odb` holds.
    mempack: Mempack<'static>,
    // Boxed so its address (which `mempack` borrows) never moves.
    _odb: Box<Odb<'static>>,
}

impl Staging {
    /// Puts a staging backend in front of `repo`'s object database. Call once
    /// per `Repository` value; the staging must not outlive it.
    pub fn attach(repo: &Repository) -> Result<Self, git2::Error> {
        let odb = repo.odb()?;
        // SAFETY: an `Odb` handle owns a libgit2 reference count on the
        // object database, so it stays valid on its own; the lifetime only
        // ties it to the `Repository` borrow by convention. The box gives it
        // a stable address for `mempack` to borrow, and `mempack` (a pointer
        // to a backend the odb owns and frees) is dropped first.
        let odb: Box<Odb<'static>> =
            Box::new(unsafe { std::mem::transmute::<Odb<'_>, Odb<'static>>(odb) });
        let mempack = odb.add_new_mempack_backend(STAGING_PRIORITY)?;
        let mempack: Mempack<'static> =
            unsafe { std::mem::transmute::<Mempack<'_>, Mempack<'static>>(mempack) };
        Ok(Self { mempack, _odb: odb })
    }

    /// Writes every staged object into one pack in `repo`, fsync'd (pack,
    /// index and directory), then empties the staging area. Returns the pack
    /// it wrote (`None` when nothing was staged): a self-contained pack of
    /// exactly the new objects, which is what a peer holding the previous
    /// head needs.
    pub fn persist(&mut self, repo: &Repository) -> Result<Option<Vec<u8>>, git2::Error> {
        let mut pack = git2::Buf::new();
        self.mempack.dump(repo, &mut pack)?;
        // An empty dump is a pack with a header and no objects: nothing to do.
        let written = if pack.len() > EMPTY_PACK_BYTES {
            write_pack(repo, &pack)?;
            Some(pack.to_vec())
        } else {
            None
        };
        self.mempack.reset()?;
        Ok(written)
    }
}

impl Staging {
    /// Writes every object reachable from `tip` and from none of `bases`
    /// into one pack in `repo`, fsync'd, then empties the staging area.
    /// Returns that pack: unlike a dump of the staging area, it also carries
    /// objects the object database held already (libgit2 writes an existing
    /// object only once, so a batch's tree may never have been staged),
    /// which makes it complete for any peer that holds every base. `bases`
    /// must be ancestors of `tip`; staged objects `tip` does not reach are
    /// dropped (nothing refers to them).
    pub fn persist_range(
        &mut self,
        repo: &Repository,
        tip: Oid,
        bases: &[Oid],
    ) -> Result<Vec<u8>, git2::Error> {
        let mut walk = repo.revwalk()?;
        walk.push(tip)?;
        for base in bases {
            walk.hide(*base)?;
        }
        let mut builder = repo.packbuilder()?;
        builder.insert_walk(&mut walk)?;
        let mut pack = git2::Buf::new();
        builder.write_buf(&mut pack)?;
        write_pack(repo, &pack)?;
        self.mempack.reset()?;
        Ok(pack.to_vec())
    }
}

/// The file name libgit2 gives the pack `pack` once indexed: its trailing
/// checksum.
pub fn pack_file_name(pack: &[u8]) -> Option<String> {
    pack.len()
        .checked_sub(20)
        .map(|at| format!("pack-{}.pack", hex_of(&pack[at..])))
}

/// Whether `pack` (the same bytes) is indexed in `repo` already.
pub fn pack_is_indexed(repo: &Repository, pack: &[u8]) -> bool {
    pack_file_name(pack).is_some_and(|name| pack_dir(repo).join(name).exists())
}

/// Removes the indexed copy of `pack` (pack and index) from `repo`. Only for
/// a pack whose objects nothing refers to yet.
pub fn remove_pack(repo: &Repository, pack: &[u8]) -> std::io::Result<()> {
    let Some(name) = pack_file_name(pack) else {
        return Ok(());
    };
    let path = pack_dir(repo).join(name);
    std::fs::remove_file(path.with_extension("idx"))?;
    std::fs::remove_file(path)
}

/// Indexes `pack` into `repo`'s object database (fsync'd: libgit2's switch).
/// libgit2's indexer checks the pack's format and checksums; a pack from a
/// peer is no more trusted than a fetched one: nothing references its
/// objects until validation accepts them.
pub fn write_pack(repo: &Repository, pack: &[u8]) -> Result<(), git2::Error> {
    let odb = repo.odb()?;
    let mut writer = odb.packwriter()?;
    writer
        .write_all(pack)
        .map_err(|e| git2::Error::from_str(&format!("pack write: {e}")))?;
    writer.commit()?;
    Ok(())
}

/// A pack file and its index on disk.
#[derive(Debug, Clone)]
struct PackFiles {
    pack: PathBuf,
    index: PathBuf,
    bytes: u64,
}

fn pack_dir(repo: &Repository) -> PathBuf {
    repo.path().join("objects").join("pack")
}

fn list_packs(dir: &Path) -> std::io::Result<Vec<PackFiles>> {
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pack") {
            let index = path.with_extension("idx");
            if !index.exists() {
                continue; // being written by an indexer right now
            }
            let bytes = std::fs::metadata(&path)?.len();
            packs.push(PackFiles {
                pack: path,
                index,
                bytes,
            });
        }
    }
    Ok(packs)
}

/// The object ids a version-2 pack index lists.
pub fn index_object_ids(index: &[u8]) -> Result<Vec<Oid>, String> {
    const HEADER: [u8; 8] = [0xff, b't', b'O', b'c', 0, 0, 0, 2];
    const FANOUT_BYTES: usize = 256 * 4;
    if index.len() < HEADER.len() + FANOUT_BYTES || index[..8] != HEADER {
        return Err("not a version-2 pack index".into());
    }
    let last = &index[8 + FANOUT_BYTES - 4..8 + FANOUT_BYTES];
    let count = u32::from_be_bytes([last[0], last[1], last[2], last[3]]) as usize;
    let start = 8 + FANOUT_BYTES;
    let end = count
        .checked_mul(20)
        .and_then(|n| n.checked_add(start))
        .filter(|&end| end <= index.len())
        .ok_or("pack index shorter than its object count")?;
    index[start..end]
        .chunks_exact(20)
        .map(|id| Oid::from_bytes(id).map_err(|e| e.to_string()))
        .collect()
}

/// Past [`PACKS_MAX`] packs, merges the smaller half into one new pack
/// (durable before anything is removed), then removes the merged ones.
/// Returns how many packs it merged (0 when under the bound).
pub fn consolidate_packs(repo: &Repository) -> Result<usize, git2::Error> {
    let io = |e: std::io::Error| git2::Error::from_str(&format!("pack directory: {e}"));
    let dir = pack_dir(repo);
    let mut packs = match list_packs(&dir) {
        Ok(packs) => packs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    if packs.len() <= PACKS_MAX {
        return Ok(0);
    }
    packs.sort_by_key(|p| p.bytes);
    let merged: Vec<PackFiles> = packs.into_iter().take(PACKS_MAX / 2 + 1).collect();
    let mut builder = repo.packbuilder()?;
    let mut objects = 0usize;
    for pack in &merged {
        let index = std::fs::read(&pack.index).map_err(io)?;
        let ids = index_object_ids(&index)
            .map_err(|e| git2::Error::from_str(&format!("{}: {e}", pack.index.display())))?;
        objects += ids.len();
        if objects > CONSOLIDATE_OBJECTS_MAX {
            return Ok(0);
        }
        for id in ids {
            builder.insert_object(id, None)?;
        }
    }
    let mut bytes = git2::Buf::new();
    builder.write_buf(&mut bytes)?;
    write_pack(repo, &bytes)?;
    let odb = repo.odb()?;
    // The new pack is fsync'd (libgit2's switch); only now drop the old ones,
    // never the new one (libgit2 names a pack after its trailing checksum; a
    // merge identical to an old pack would share its name).
    let new_name = pack_file_name(&bytes);
    for pack in &merged {
        let is_new = pack
            .pack
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| Some(n) == new_name.as_deref());
        if !is_new {
            let _ = std::fs::remove_file(&pack.index);
            let _ = std::fs::remove_file(&pack.pack);
        }
    }
    odb.refresh()?;
    Ok(merged.len())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
