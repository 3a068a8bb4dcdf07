//! Tree and commit I/O: reading a tree into files (bounded), writing a
//! tree with changes, and writing a signed commit without reading it back.

use git2::{Oid, Repository};
use starling_protocol::swarm::commit::sign_payload;
use starling_protocol::swarm::limits::{TREE_FILES_MAX, TREE_FILE_BYTES_MAX};
use starling_protocol::swarm::state::Files;
use starling_protocol::swarm::validation::{Candidate, Changes};

use super::{commit_id, StoreError, TREE_DEPTH_MAX};
use crate::conversation::sign::DeviceSigner;

/// Reads every file of a tree, enforcing the tree bounds.
pub fn read_files(repo: &Repository, tree: Oid) -> Result<Files, StoreError> {
    let mut files = Files::new();
    read_dir(repo, tree, "", 0, &mut files)?;
    Ok(files)
}

fn read_dir(
    repo: &Repository,
    tree: Oid,
    prefix: &str,
    depth: usize,
    files: &mut Files,
) -> Result<(), StoreError> {
    let bound = |what: String| StoreError::TreeBound {
        tree: tree.to_string(),
        what,
    };
    if depth > TREE_DEPTH_MAX {
        return Err(bound(format!("deeper than {TREE_DEPTH_MAX}")));
    }
    let tree_obj = repo.find_tree(tree)?;
    for entry in tree_obj.iter() {
        let name = entry
            .name()
            .ok_or_else(|| bound("entry name is not UTF-8".into()))?;
        let path = format!("{prefix}{name}");
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                read_dir(repo, entry.id(), &format!("{path}/"), depth + 1, files)?
            }
            Some(git2::ObjectType::Blob) if entry.filemode() == 0o100644 => {
                let blob = repo.find_blob(entry.id())?;
                if blob.size() > TREE_FILE_BYTES_MAX {
                    return Err(bound(format!("{path} is {} bytes", blob.size())));
                }
                files.insert(path, blob.content().to_vec());
                if files.len() > TREE_FILES_MAX {
                    return Err(bound(format!("more than {TREE_FILES_MAX} files")));
                }
            }
            _ => return Err(bound(format!("{path} is not a regular file or directory"))),
        }
    }
    Ok(())
}

/// The changes that turn `before` into `after`.
pub fn diff_files(before: &Files, after: &Files) -> Changes {
    starling_protocol::swarm::validation::diff(before, after)
}

/// Writes the tree `base` with `changes` applied.
pub fn tree_with_changes(
    repo: &Repository,
    base: Oid,
    changes: &Changes,
) -> Result<Oid, StoreError> {
    if changes.is_empty() {
        return Ok(base);
    }
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, change) in changes {
        match change {
            Some(content) => {
                let blob = repo.blob(content)?;
                update.upsert(path.as_str(), blob, git2::FileMode::Blob);
            }
            None => {
                update.remove(path.as_str());
            }
        }
    }
    let base = repo.find_tree(base)?;
    Ok(update.create_updated(repo, &base)?)
}

/// The candidate of a commit this store just wrote, from the bytes in hand.
/// Never `Store::candidate` on a staged commit: libgit2's in-memory backend
/// hands out object data without the NUL terminator `extract_signature`
/// scans for.
pub(super) fn staged_candidate(written: WrittenCommit, changes: Changes) -> Candidate {
    Candidate {
        id: commit_id(written.id),
        signature: Some(written.signature.into_bytes()),
        payload: written.payload,
        changes,
    }
}

/// A commit as written: its id, the signed payload and the armored signature.
#[derive(Debug, Clone)]
pub struct WrittenCommit {
    /// The new commit's id.
    pub id: Oid,
    /// The commit object without its `gpgsig` header (what was signed).
    pub payload: Vec<u8>,
    /// The armored sshsig stored in the `gpgsig` header.
    pub signature: String,
}

/// The signed payload of a commit: exactly the object Git would write, and
/// what `git verify-commit` hands to `ssh-keygen` (author and committer are
/// the account id and the device id, at `now_secs` UTC).
pub fn commit_payload(
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let ident = format!(
        "{} <{}> {now_secs} +0000",
        signer.account_id(),
        signer.device_id()
    );
    let mut head = format!("tree {tree}\n");
    for parent in parents {
        let _ = writeln!(head, "parent {parent}");
    }
    let _ = write!(head, "author {ident}\ncommitter {ident}\n\n");
    let mut payload = head.into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// Writes a commit signed by `signer`, without reading anything back: the
/// payload is formatted here, signed, and the `gpgsig` header inserted after
/// `committer` with continuation lines, as Git does.
pub fn write_commit_parts(
    repo: &Repository,
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Result<WrittenCommit, StoreError> {
    let payload = commit_payload(signer, tree, parents, body, now_secs);
    let signature = sign_payload(signer.key(), &payload);
    let split = payload
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a payload always has a blank line before its body")
        + 1;
    let mut object = Vec::with_capacity(payload.len() + signature.len() + 16);
    object.extend_from_slice(&payload[..split]);
    object.extend_from_slice(b"gpgsig ");
    object.extend_from_slice(
        signature
            .trim_end_matches('\n')
            .replace('\n', "\n ")
            .as_bytes(),
    );
    object.push(b'\n');
    object.extend_from_slice(&payload[split..]);
    let id = repo.odb()?.write(git2::ObjectType::Commit, &object)?;
    Ok(WrittenCommit {
        id,
        payload,
        signature,
    })
}

/// Writes a commit signed by `signer`; returns its id.
pub fn write_commit(
    repo: &Repository,
    signer: &DeviceSigner,
    tree: Oid,
    parents: &[Oid],
    body: &[u8],
    now_secs: i64,
) -> Result<Oid, StoreError> {
    Ok(write_commit_parts(repo, signer, tree, parents, body, now_secs)?.id)
}
