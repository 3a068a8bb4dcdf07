//! Recovery of a conversation repository after a crash.
//!
//! libgit2 writes each ref through `<ref>.lock` and each pack through a
//! temporary file, then renames them into place. A crash (a `kill -9`, a
//! power cut) in between leaves the lock or the temporary behind, and
//! libgit2 refuses every later write of a locked ref (`code=Locked`) for
//! good. A torn disk can also leave a pack shorter than its index says, or a
//! ref file holding no object id.
//!
//! [`recover`] runs before a conversation opens its repository:
//!
//! - [`Scope::Startup`] (the daemon holds the data directory's lock, and no
//!   fetch or conversation of this repository runs yet): every `*.lock`,
//!   every temporary object or pack file, every pack missing its other half
//!   and every pack whose checksum disagrees with its index go; refs that
//!   hold no object id, or name a commit whose history is not whole, are
//!   dropped. When no tip is left, the tips fall back to the conversation's
//!   first commit and [`Recovered::rollback`] lists the whole commits still
//!   held, for the store to validate again. Whatever else that state lacks,
//!   peers supply by sync.
//! - [`Scope::Runtime`] (fetches of this repository may be running on other
//!   threads): only the locks of what the conversation actor alone writes
//!   (`HEAD`, `config`, `packed-refs`, `refs/heads/**`) go. The actor runs it
//!   before reopening its store after a failed write, when none of its own
//!   writes is in flight, so any such lock is stale.
//!
//! Packs set aside move to `damaged/` in the repository directory (outside
//! `objects/`, so stock git ignores them) rather than being deleted.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

use super::durable;
use super::store::{tip_refs, HEAD_REF, TIP_REF_PREFIX};

/// How deep recovery looks for files under a repository (refs nest as
/// `refs/starling/quarantine/<peer>/<name>`).
const WALK_DEPTH_MAX: usize = 8;
/// Files recovery looks at in one repository at most.
const WALK_FILES_MAX: usize = 1_000_000;
/// Where set-aside packs go, inside the repository directory.
pub const DAMAGED_DIR: &str = "damaged";
/// Commits a rollback scans at most (a bound on its memory).
const ROLLBACK_COMMITS_MAX: usize = 1_000_000;

/// What else may be touching the repository while it is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Nothing: the daemon is starting and holds the data directory's lock.
    Startup,
    /// Fetches may be writing packs and quarantine refs.
    Runtime,
}

/// What recovery changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Stale lock files removed.
    pub locks_removed: Vec<PathBuf>,
    /// Temporary object and pack files removed.
    pub temporaries_removed: Vec<PathBuf>,
    /// Packs (with their indexes) moved to [`DAMAGED_DIR`].
    pub packs_set_aside: Vec<PathBuf>,
    /// Refs removed because they named nothing whole.
    pub refs_dropped: Vec<String>,
    /// Set when every tip was lost: the tips are now the first commit, and
    /// these are the whole commits still held, for the store to validate
    /// again (newest first is not implied; the store orders them).
    pub rollback: Option<Vec<Oid>>,
}

impl Recovered {
    /// Whether recovery changed nothing.
    pub fn is_empty(&self) -> bool {
        self.locks_removed.is_empty()
            && self.temporaries_removed.is_empty()
            && self.packs_set_aside.is_empty()
            && self.refs_dropped.is_empty()
            && self.rollback.is_none()
    }

    /// Counts by kind, for metrics: (kind, how many).
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        [
            ("lock", self.locks_removed.len()),
            ("temporary", self.temporaries_removed.len()),
            ("pack", self.packs_set_aside.len()),
            ("ref", self.refs_dropped.len()),
        ]
    }
}

/// Why a repository could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("the conversation's first commit is not whole; the replica must be joined again")]
    RootLost,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Recovers the repository at `path` (see the module docs). Logs each
/// change it makes.
pub fn recover(path: &Path, scope: Scope) -> Result<Recovered, RecoveryError> {
    let mut recovered = Recovered::default();
    let mut files = Vec::new();
    match scope {
        Scope::Startup => list_files(path, 0, &mut files).map_err(io(path))?,
        // After a failed write, only what the conversation writes is looked
        // at: the top-level files and its refs, never the object store.
        Scope::Runtime => {
            for name in ["HEAD.lock", "config.lock", "packed-refs.lock"] {
                let file = path.join(name);
                if file.is_file() {
                    files.push(file);
                }
            }
            let heads = path.join("refs/heads");
            if heads.is_dir() {
                list_files(&heads, 0, &mut files).map_err(io(&heads))?;
            }
        }
    }
    for file in &files {
        let relative = file.strip_prefix(path).unwrap_or(file);
        if is_lock(relative, scope) {
            remove(file, &mut recovered.locks_removed)?;
        } else if scope == Scope::Startup && is_temporary(relative) {
            remove(file, &mut recovered.temporaries_removed)?;
        }
    }
    if scope == Scope::Startup {
        set_aside_broken_packs(path, &mut recovered)?;
        drop_broken_refs(path, &mut recovered)?;
    }
    for removed in recovered
        .locks_removed
        .iter()
        .chain(&recovered.temporaries_removed)
    {
        tracing::warn!(file = %removed.display(), "removed a file a crash left behind");
    }
    for pack in &recovered.packs_set_aside {
        tracing::warn!(pack = %pack.display(), "set aside a damaged pack");
    }
    for name in &recovered.refs_dropped {
        tracing::warn!(repository = %path.display(), reference = %name, "dropped a ref naming nothing whole");
    }
    Ok(recovered)
}

fn list_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if depth > WALK_DEPTH_MAX {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if entry.file_name() != DAMAGED_DIR {
                list_files(&path, depth + 1, out)?;
            }
        } else if kind.is_file() && out.len() < WALK_FILES_MAX {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `relative` (a path inside the repository) is a lock recovery
/// may remove in `scope`.
fn is_lock(relative: &Path, scope: Scope) -> bool {
    if relative.extension().is_none_or(|e| e != "lock") {
        return false;
    }
    match scope {
        Scope::Startup => true,
        Scope::Runtime => {
            let top = ["HEAD.lock", "config.lock", "packed-refs.lock"];
            top.iter().any(|name| relative == Path::new(name)) || relative.starts_with("refs/heads")
        }
    }
}

/// Whether `relative` is a temporary file libgit2 writes objects and packs
/// through (`tmp_object_git2_*`, `pack_git2_*`, `*.tmp`).
fn is_temporary(relative: &Path) -> bool {
    if !relative.starts_with("objects") {
        return false;
    }
    let name = relative
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with("tmp_") || name.starts_with("pack_git2_") || name.ends_with(".tmp")
}

fn remove(file: &Path, into: &mut Vec<PathBuf>) -> Result<(), RecoveryError> {
    match fs::remove_file(file) {
        Ok(()) => {
            into.push(file.to_owned());
            Ok(())
        }
        // Gone already (removed by its owner meanwhile): nothing to recover.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RecoveryError::Io {
            path: file.to_owned(),
            source: e,
        }),
    }
}

/// Moves packs that miss their index or disagree with it (and indexes that
/// miss their pack) to [`DAMAGED_DIR`].
fn set_aside_broken_packs(repo: &Path, recovered: &mut Recovered) -> Result<(), RecoveryError> {
    let packs_dir = repo.join("objects/pack");
    let Ok(entries) = fs::read_dir(&packs_dir) else {
        return Ok(());
    };
    let mut stems = BTreeSet::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pack" || e == "idx") {
            if let Some(stem) = path.file_stem() {
                stems.insert(stem.to_owned());
            }
        }
    }
    for stem in stems {
        let pack = packs_dir.join(&stem).with_extension("pack");
        let index = packs_dir.join(&stem).with_extension("idx");
        if pack_matches_index(&pack, &index) {
            continue;
        }
        let damaged = repo.join(DAMAGED_DIR);
        fs::create_dir_all(&damaged).map_err(io(&damaged))?;
        for file in [&pack, &index] {
            if file.exists() {
                let target = damaged.join(file.file_name().expect("a pack file has a name"));
                fs::rename(file, &target).map_err(io(file))?;
            }
        }
        recovered.packs_set_aside.push(pack);
    }
    Ok(())
}

/// Whether `pack` starts as a pack does and ends in the checksum its
/// `index` records (an index ends in the pack's SHA-1, then its own).
/// Reads 32 bytes of each file, never the whole pack.
fn pack_matches_index(pack: &Path, index: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const SHA1: usize = 20;
    let read_at_end = |path: &Path, back: u64, len: usize| -> Option<Vec<u8>> {
        let mut file = fs::File::open(path).ok()?;
        let size = file.metadata().ok()?.len();
        if size < back {
            return None;
        }
        file.seek(SeekFrom::Start(size - back)).ok()?;
        let mut bytes = vec![0; len];
        file.read_exact(&mut bytes).ok()?;
        Some(bytes)
    };
    let header = fs::File::open(pack).ok().and_then(|mut f| {
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).ok().map(|_| magic)
    });
    if header != Some(*b"PACK") {
        return false;
    }
    let trailer = read_at_end(pack, SHA1 as u64, SHA1);
    let recorded = read_at_end(index, 2 * SHA1 as u64, SHA1);
    trailer.is_some() && trailer == recorded
}

/// Drops refs that hold no object id or name a commit whose history is not
/// whole; falls back to the first commit when no tip is left.
fn drop_broken_refs(path: &Path, recovered: &mut Recovered) -> Result<(), RecoveryError> {
    let refs_dir = path.join("refs");
    let mut files = Vec::new();
    if refs_dir.is_dir() {
        list_files(&refs_dir, 0, &mut files).map_err(io(&refs_dir))?;
    }
    let mut direct = Vec::new();
    for file in files {
        let name = file
            .strip_prefix(path)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&file).unwrap_or_default();
        match Oid::from_str(text.trim()) {
            Ok(oid) if text.trim().len() == 40 => direct.push((name, file, oid)),
            _ => {
                fs::remove_file(&file).map_err(io(&file))?;
                recovered.refs_dropped.push(name);
            }
        }
    }
    let head = path.join("HEAD");
    let head_text = fs::read_to_string(&head).unwrap_or_default();
    if head_text.trim() != format!("ref: {HEAD_REF}") {
        fs::write(&head, format!("ref: {HEAD_REF}\n")).map_err(io(&head))?;
        recovered.refs_dropped.push("HEAD".into());
    }
    let repo = durable::open_bare(path)?;
    let mut whole = Wholeness::new(&repo)?;
    // Only after damage was found is every ref's history walked: a clean
    // start checks that each ref names a commit held, no more.
    let deep = !recovered.packs_set_aside.is_empty() || !recovered.refs_dropped.is_empty();
    for (name, file, oid) in direct {
        let ok = if deep {
            whole.history_is_whole(oid)?
        } else {
            whole.commit_is_held(oid)
        };
        if !ok {
            fs::remove_file(&file).map_err(io(&file))?;
            recovered.refs_dropped.push(name);
        }
    }
    if !tip_refs(&repo).is_empty() {
        return Ok(());
    }
    let root = repo
        .config()?
        .get_string("starling.conversation")
        .ok()
        .and_then(|hex| Oid::from_str(&hex).ok());
    let Some(root) = root.filter(|root| whole.history_is_whole(*root).unwrap_or(false)) else {
        return Err(RecoveryError::RootLost);
    };
    let held = whole.all_whole_commits()?;
    repo.reference(
        &format!("{TIP_REF_PREFIX}{root}"),
        root,
        true,
        "recovery: every tip was lost",
    )?;
    repo.reference(HEAD_REF, root, true, "recovery: every tip was lost")?;
    recovered.rollback = Some(held.into_iter().filter(|c| *c != root).collect());
    Ok(())
}

/// Which commits are whole: held, with their tree, and with whole parents.
struct Wholeness<'r> {
    repo: &'r Repository,
    odb: git2::Odb<'r>,
    known: HashMap<Oid, bool>,
}

impl<'r> Wholeness<'r> {
    fn new(repo: &'r Repository) -> Result<Self, git2::Error> {
        Ok(Self {
            repo,
            odb: repo.odb()?,
            known: HashMap::new(),
        })
    }

    fn commit_is_held(&self, oid: Oid) -> bool {
        self.repo.find_commit(oid).is_ok()
    }

    /// Whether `oid` and every commit under it is held with its tree.
    /// Iterative, so a long history does not exhaust the stack.
    fn history_is_whole(&mut self, oid: Oid) -> Result<bool, RecoveryError> {
        let mut stack = vec![(oid, false)];
        while let Some((id, parents_done)) = stack.pop() {
            if self.known.contains_key(&id) {
                continue;
            }
            let Ok(commit) = self.repo.find_commit(id) else {
                self.known.insert(id, false);
                continue;
            };
            if !self.odb.exists(commit.tree_id()) || self.repo.find_tree(commit.tree_id()).is_err()
            {
                self.known.insert(id, false);
                continue;
            }
            if parents_done {
                let whole = commit
                    .parent_ids()
                    .all(|p| self.known.get(&p).copied().unwrap_or(false));
                self.known.insert(id, whole);
                continue;
            }
            stack.push((id, true));
            for parent in commit.parent_ids() {
                if !self.known.contains_key(&parent) {
                    stack.push((parent, false));
                }
            }
            if self.known.len() + stack.len() > ROLLBACK_COMMITS_MAX {
                return Ok(false);
            }
        }
        Ok(self.known.get(&oid).copied().unwrap_or(false))
    }

    /// Every whole commit the object database holds.
    fn all_whole_commits(&mut self) -> Result<Vec<Oid>, RecoveryError> {
        let mut commits = Vec::new();
        self.odb.foreach(|oid| {
            if commits.len() < ROLLBACK_COMMITS_MAX {
                commits.push(*oid);
            }
            true
        })?;
        let mut whole = Vec::new();
        for oid in commits {
            let is_commit = self
                .odb
                .read_header(oid)
                .is_ok_and(|(_, kind)| kind == ObjectType::Commit);
            if is_commit && self.history_is_whole(oid)? {
                whole.push(oid);
            }
        }
        Ok(whole)
    }
}
