//! Serving a fetch: advertise refs, negotiate with the sans-I/O state
//! machine, stream a pack built by libgit2.

use std::io::{Read, Write};

use starling_protocol::upload_pack::{AdvertisedRef, ObjectId, ServerStep, UploadPackServer};

use super::{GitWireError, PACK_BYTES_MAX};
use crate::conversation::store::{commit_id, oid};

/// How a served session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The client was up to date and wanted nothing.
    NothingWanted,
    /// A pack was sent.
    Pack { objects: usize, bytes: u64 },
}

/// Bytes read from the client per `read` call.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The refs a fetch may want: every branch, and HEAD when it resolves.
pub fn advertised_refs(repo: &git2::Repository) -> Result<Vec<AdvertisedRef>, git2::Error> {
    let mut refs = Vec::new();
    if let Ok(head) = repo.head() {
        if let Some(target) = head.target() {
            refs.push(AdvertisedRef {
                name: "HEAD".into(),
                id: commit_id(target),
            });
        }
    }
    for reference in repo.references_glob("refs/heads/*")? {
        let reference = reference?;
        if let (Some(name), Some(target)) = (reference.name(), reference.resolve()?.target()) {
            refs.push(AdvertisedRef {
                name: name.to_owned(),
                id: commit_id(target),
            });
        }
    }
    Ok(refs)
}

/// Serves one fetch of `repo` over `stream`, until the pack is sent or the
/// client says it wants nothing.
pub fn serve_upload_pack(
    repo: &git2::Repository,
    stream: &mut (impl Read + Write),
) -> Result<Served, GitWireError> {
    let agent = concat!("starling/", env!("CARGO_PKG_VERSION"));
    let (mut session, advertisement) = UploadPackServer::new(&advertised_refs(repo)?, agent)?;
    stream.write_all(&advertisement)?;
    stream.flush()?;
    let odb = repo.odb()?;
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(GitWireError::HungUp);
        }
        // A have is common only if we hold it as a commit: holding a commit
        // means holding its whole history, which is what the pack relies on.
        let mut has_commit = |id: &ObjectId| {
            odb.read_header(oid(id))
                .map(|(_, kind)| kind == git2::ObjectType::Commit)
                .unwrap_or(false)
        };
        for step in session.receive(&buffer[..read], &mut has_commit)? {
            match step {
                ServerStep::Send(bytes) => stream.write_all(&bytes)?,
                ServerStep::Close => {
                    stream.flush()?;
                    return Ok(Served::NothingWanted);
                }
                ServerStep::SendPack { wants, common } => {
                    let served = write_pack(repo, &wants, &common, stream)?;
                    stream.flush()?;
                    return Ok(served);
                }
            }
        }
        stream.flush()?;
    }
}

fn write_pack(
    repo: &git2::Repository,
    wants: &[ObjectId],
    common: &[ObjectId],
    stream: &mut impl Write,
) -> Result<Served, GitWireError> {
    let mut walk = repo.revwalk()?;
    for want in wants {
        walk.push(oid(want))?;
    }
    for have in common {
        walk.hide(oid(have))?;
    }
    let mut builder = repo.packbuilder()?;
    // The delta search is most of the serving side's work in a catch-up
    // (thousands of small commits); 0 lets libgit2 use every core.
    builder.set_threads(0);
    builder.insert_walk(&mut walk)?;
    let objects = builder.object_count();
    let mut bytes = 0u64;
    let mut failure = None;
    builder.foreach(|chunk| {
        bytes += chunk.len() as u64;
        if bytes > PACK_BYTES_MAX {
            failure = Some(GitWireError::PackTooLarge);
            return false;
        }
        match stream.write_all(chunk) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(GitWireError::Io(e));
                false
            }
        }
    })?;
    match failure {
        Some(error) => Err(error),
        None => Ok(Served::Pack { objects, bytes }),
    }
}
