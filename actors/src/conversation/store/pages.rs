//! History as people read it: the newest messages, the full display order
//! (for tests and exports), and the allowed-signers file for stock Git.

use std::collections::{BTreeMap, HashMap, HashSet};

use git2::Repository;
use starling_protocol::swarm::body::{parse_body, Body, BodyKind};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::PAGE_MESSAGES_MAX;
use starling_protocol::swarm::order::{newest_first, Dag, DagEntry, OrderKey};
use starling_protocol::{DeviceCert, DeviceId};

use super::receive::signer_device;
use super::{commit_id, display_key, oid, read_files, Store, StoreError};
use crate::conversation::sign::allowed_signers_line;

/// One entry of a history page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The commit.
    pub id: CommitId,
    /// Its place in display order.
    pub key: OrderKey,
    /// The signing device.
    pub device: Option<DeviceId>,
    /// Its body.
    pub body: Body,
}

impl Store {
    /// The newest `limit` non-merge commits, newest first (display order).
    pub fn last_messages(&mut self, limit: usize) -> Result<Vec<MessageView>, StoreError> {
        let limit = limit.min(PAGE_MESSAGES_MAX);
        let tips = self.tips.clone();
        let mut dag = StoreDag {
            repo: &self.repo,
            bodies: HashMap::new(),
        };
        let keys = newest_first(&tips, limit, &mut dag)?;
        keys.into_iter()
            .map(|key| {
                let commit = self.repo.find_commit(oid(&key.id))?;
                let body = dag
                    .bodies
                    .remove(&key.id)
                    .ok_or_else(|| StoreError::Body(key.id, "missing".into()))?;
                let device = match self.repo.extract_signature(&commit.id(), None) {
                    Ok((sig, _)) => signer_device(&sig),
                    Err(_) => None,
                };
                Ok(MessageView {
                    id: key.id,
                    key,
                    device,
                    body,
                })
            })
            .collect()
    }

    /// Every commit reachable from the tips, in display order (oldest
    /// first). Walks all history: for tests and exports, not for paging.
    pub fn full_order(&self) -> Result<Vec<CommitId>, StoreError> {
        let mut walk = self.repo.revwalk()?;
        for tip in self.tip_oids() {
            walk.push(tip)?;
        }
        let mut keys = Vec::new();
        for id in walk {
            let id = id?;
            let commit = self.repo.find_commit(id)?;
            let body = parse_body(commit.message_raw_bytes())
                .map_err(|e| StoreError::Body(commit_id(id), e.to_string()))?;
            keys.push(display_key(&self.repo, &commit, body.generation())?);
        }
        keys.sort();
        Ok(keys.into_iter().map(|k| k.id).collect())
    }

    /// The allowed-signers file for stock `git verify-commit`: every device
    /// certificate that appears in any tree of the accepted history.
    pub fn allowed_signers(&self) -> Result<String, StoreError> {
        let mut walk = self.repo.revwalk()?;
        for tip in self.tip_oids() {
            walk.push(tip)?;
        }
        let mut trees = HashSet::new();
        let mut lines = BTreeMap::new();
        for id in walk {
            let tree = self.repo.find_commit(id?)?.tree_id();
            if !trees.insert(tree) {
                continue;
            }
            for (path, content) in read_files(&self.repo, tree)? {
                if !(path.starts_with("devices/") || path.starts_with("banned/devices/")) {
                    continue;
                }
                let Ok(pem) = std::str::from_utf8(&content) else {
                    continue;
                };
                if let Ok(cert) = DeviceCert::from_pem(pem) {
                    lines.insert(cert.id(), allowed_signers_line(&cert));
                }
            }
        }
        let mut out = String::new();
        for line in lines.values() {
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }
}

struct StoreDag<'r> {
    repo: &'r Repository,
    bodies: HashMap<CommitId, Body>,
}

impl Dag for StoreDag<'_> {
    type Error = StoreError;
    fn entry(&mut self, id: &CommitId) -> Result<DagEntry, StoreError> {
        let commit = self.repo.find_commit(oid(id))?;
        let body = parse_body(commit.message_raw_bytes())
            .map_err(|e| StoreError::Body(*id, e.to_string()))?;
        let shown = !matches!(body.kind(), Some(BodyKind::Merge));
        let entry = DagEntry {
            key: display_key(self.repo, &commit, body.generation())?,
            parents: commit.parent_ids().map(commit_id).collect(),
            shown,
        };
        self.bodies.insert(*id, body);
        Ok(entry)
    }
}
