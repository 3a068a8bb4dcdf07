//! Shared fixtures for the conversation store tests: accounts, devices and
//! crafted (possibly invalid) commits written with the store's own git code.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use ed25519_dalek::SigningKey;
use git2::Oid;
use rand::SeedableRng;
use starling_actors::conversation::store::{
    oid, tree_with_changes, write_commit, HEAD_REF, TIP_REF_PREFIX,
};
use starling_actors::conversation::{DeviceSigner, Store};
use starling_protocol::swarm::validation::Changes;
use starling_protocol::{AccountCert, DeviceCert};

/// A fixed "now" for deterministic tests (2026-09-21).
pub const NOW: i64 = 1_790_000_000;

pub fn now_time() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW as u64)
}

/// An account with its key.
pub struct Person {
    pub key: SigningKey,
    pub cert: AccountCert,
}

impl Person {
    pub fn new(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let key = SigningKey::generate(&mut rng);
        let cert = AccountCert::issue(&key, now_time(), &mut rng).unwrap();
        Self { key, cert }
    }

    pub fn device(&self, seed: u64) -> DeviceSigner {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let key = SigningKey::generate(&mut rng);
        let cert = DeviceCert::issue(
            &self.key,
            &self.cert,
            &key.verifying_key(),
            now_time(),
            &mut rng,
        )
        .unwrap();
        DeviceSigner::new(key, cert, self.cert.clone()).unwrap()
    }
}

/// Writes a commit on `parent` with any body and changes, bypassing
/// validation (what a hostile or buggy peer could do), and points HEAD at it.
pub fn craft(
    store: &Store,
    signer: &DeviceSigner,
    parent: Oid,
    body: &[u8],
    changes: &Changes,
) -> Oid {
    craft_at(store, signer, &[parent], body, changes, NOW)
}

/// Like [`craft`], with any parents (changes apply to the first's tree) and time.
pub fn craft_at(
    store: &Store,
    signer: &DeviceSigner,
    parents: &[Oid],
    body: &[u8],
    changes: &Changes,
    time: i64,
) -> Oid {
    // A handle of its own: the store's stages writes in memory until it
    // persists them, and a crafted commit must be on disk like a fetched one.
    let repo = &git2::Repository::open_bare(store.repository().path()).unwrap();
    let base = match parents.first() {
        Some(p) => repo.find_commit(*p).unwrap().tree_id(),
        None => repo.treebuilder(None).unwrap().write().unwrap(),
    };
    let tree = tree_with_changes(repo, base, changes).unwrap();
    let id = write_commit(repo, signer, tree, parents, body, time).unwrap();
    // On disk, as a peer fetching this replica sees it: the crafted commit
    // is a tip, its parents no longer are (the store's own handle keeps
    // its tips in memory).
    for parent in parents {
        if let Ok(mut reference) = repo.find_reference(&format!("{TIP_REF_PREFIX}{parent}")) {
            reference.delete().unwrap();
        }
    }
    repo.reference(&format!("{TIP_REF_PREFIX}{id}"), id, true, "craft")
        .unwrap();
    repo.reference(HEAD_REF, id, true, "craft").unwrap();
    id
}

/// Makes `id` a tip of `store`'s replica on disk in place of `replaces`
/// (for commits written by hand, as a peer fetching this replica sees them).
pub fn make_tip(store: &Store, id: Oid, replaces: &[Oid]) {
    let repo = store.repository();
    for old in replaces {
        if let Ok(mut reference) = repo.find_reference(&format!("{TIP_REF_PREFIX}{old}")) {
            reference.delete().unwrap();
        }
    }
    repo.reference(&format!("{TIP_REF_PREFIX}{id}"), id, true, "by hand")
        .unwrap();
    repo.reference(HEAD_REF, id, true, "by hand").unwrap();
}

pub fn head_oid(store: &Store) -> Oid {
    oid(&store.head().unwrap())
}

/// Runs stock git; returns (success, combined output).
pub fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("git is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asserts `git fsck --strict` is clean and `git verify-commit` passes for
/// every commit reachable from HEAD, with the store's allowed-signers export.
pub fn assert_stock_git_accepts(store: &Store, dir: &Path) {
    let (ok, out) = git(dir, &["fsck", "--strict", "--no-dangling"]);
    assert!(ok && !out.contains("warning"), "git fsck --strict: {out}");
    let signers = dir.join("allowed_signers");
    std::fs::write(&signers, store.allowed_signers().unwrap()).unwrap();
    let (ok, list) = git(dir, &["rev-list", "--all"]);
    assert!(ok, "{list}");
    let file = format!("gpg.ssh.allowedSignersFile={}", signers.display());
    for id in list.lines() {
        let (ok, out) = git(
            dir,
            &["-c", "gpg.format=ssh", "-c", &file, "verify-commit", id],
        );
        assert!(ok, "git verify-commit {id}: {out}");
    }
}
