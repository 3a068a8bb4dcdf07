//! A crash never wedges a conversation: what a `kill -9` leaves in a
//! repository (stale locks, temporary packs, a torn ref, a truncated pack)
//! is recovered when the conversation opens it, and a lock that appears
//! while it runs is cleared when it reopens after the failed write. Every
//! case ends writable, with the history stock `git fsck --strict` accepts.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use starling_actors::conversation::actor::{Author, GetView, ListMessages, Probe};
use starling_actors::conversation::recovery::{recover, Scope, DAMAGED_DIR};
use starling_actors::conversation::store::{tip_refs, HEAD_REF, TIP_REF_PREFIX};
use starling_actors::conversation::{Conversation, DeviceSigner, Store, SwarmMetrics};
use starling_protocol::swarm::body::{BodyKind, Mode};
use starling_protocol::AccountIdentity;

fn text(text: &str) -> Author {
    Author {
        kind: BodyKind::Text {
            text: text.into(),
            reply_to: None,
            edit_of: None,
        },
        content: None,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Swarm {
    _dir: tempfile::TempDir,
    path: PathBuf,
    signer: DeviceSigner,
}

/// A conversation with `batches` messages, each its own durable batch
/// (so its own pack).
fn swarm_with(batches: usize) -> Swarm {
    let identity =
        AccountIdentity::generate("alice", SystemTime::now(), &mut rand_core::OsRng).unwrap();
    let signer = DeviceSigner::new(
        identity.device_key.clone(),
        identity.device_cert.clone(),
        identity.account_cert.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swarm.git");
    let mut store = Store::create(&path, &signer, Mode::InvitesOnly, now()).unwrap();
    for i in 0..batches {
        store.send_text(&signer, &format!("m{i}"), now()).unwrap();
    }
    Swarm {
        _dir: dir,
        path,
        signer,
    }
}

fn start(s: &Swarm) -> (actix::Addr<Conversation>, Registry) {
    let registry = Registry::new();
    let metrics = SwarmMetrics::register(&registry).unwrap();
    let addr = Conversation::start_on_own_thread(s.path.clone(), s.signer.clone(), metrics);
    (addr, registry)
}

async fn bodies(addr: &actix::Addr<Conversation>) -> Vec<String> {
    addr.send(ListMessages { limit: 1_000 })
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

fn fsck(path: &Path) {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(path)
        .args(["fsck", "--strict", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git fsck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn recovered_total(registry: &Registry, kind: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "starling_repository_recoveries_total")
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| m.get_label().iter().any(|l| l.value() == kind))
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// Every kind of lock and temporary file libgit2 leaves when killed.
fn leftovers(path: &Path) -> Vec<PathBuf> {
    let repo = git2::Repository::open_bare(path).unwrap();
    let tip = tip_refs(&repo)[0];
    let pack_dir = path.join("objects/pack");
    let some_pack = std::fs::read_dir(&pack_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .unwrap();
    let loose_dir = path.join("objects/ab");
    std::fs::create_dir_all(&loose_dir).unwrap();
    vec![
        path.join(format!("{HEAD_REF}.lock")),
        path.join(format!("{TIP_REF_PREFIX}{tip}.lock")),
        path.join("HEAD.lock"),
        path.join("config.lock"),
        path.join("packed-refs.lock"),
        some_pack.with_extension("idx.lock"),
        pack_dir.join("pack_git2_Xa81Bq"),
        loose_dir.join("tmp_object_git2_Qz3f0c"),
    ]
}

/// Without recovery, a stale ref lock refuses every write: the case the
/// recovery exists for, shown on a bare store.
#[test]
fn a_stale_ref_lock_refuses_writes_without_recovery() {
    let s = swarm_with(1);
    std::fs::write(s.path.join(format!("{HEAD_REF}.lock")), b"").unwrap();
    let mut store = Store::open(&s.path).unwrap();
    let err = store.send_text(&s.signer, "wedged", now()).unwrap_err();
    assert_eq!(err.health_reason(), Some("locked"), "{err}");
}

#[actix::test]
async fn every_lock_and_temporary_a_crash_leaves_is_removed_on_open() {
    let s = swarm_with(2);
    let planted = leftovers(&s.path);
    for file in &planted {
        std::fs::write(file, b"half written").unwrap();
    }
    let (addr, registry) = start(&s);
    addr.send(text("after the crash")).await.unwrap().unwrap();
    assert_eq!(bodies(&addr).await, ["after the crash", "m1", "m0"]);
    for file in &planted {
        assert!(!file.exists(), "{} is still there", file.display());
    }
    assert_eq!(recovered_total(&registry, "lock"), 6.0);
    assert_eq!(recovered_total(&registry, "temporary"), 2.0);
    drop(addr);
    fsck(&s.path);
}

#[actix::test]
async fn a_lock_that_appears_while_running_is_cleared_by_the_reopen() {
    let s = swarm_with(1);
    let (addr, registry) = start(&s);
    addr.send(GetView).await.unwrap().unwrap();
    // Another crashed process of ours, or a bug: a lock appears under the
    // running conversation. The batch that meets it fails part way (the new
    // tip written, the old one not removed, or `main` not moved); the actor
    // reopens the store through recovery, finds the commit held, and only
    // then acknowledges it. Nothing that is not on disk is acknowledged.
    let repo = git2::Repository::open_bare(&s.path).unwrap();
    let tip = tip_refs(&repo)[0];
    std::fs::write(s.path.join(format!("{TIP_REF_PREFIX}{tip}.lock")), b"").unwrap();
    addr.send(text("past a tip lock")).await.unwrap().unwrap();
    std::fs::write(s.path.join(format!("{HEAD_REF}.lock")), b"").unwrap();
    addr.send(text("past main's lock")).await.unwrap().unwrap();
    addr.send(text("after")).await.unwrap().unwrap();
    assert_eq!(
        bodies(&addr).await,
        ["after", "past main's lock", "past a tip lock", "m0"]
    );
    let repo = git2::Repository::open_bare(&s.path).unwrap();
    assert_eq!(tip_refs(&repo).len(), 1, "the old tip ref went too");
    let main = repo.refname_to_id(HEAD_REF).unwrap();
    assert_eq!(main, tip_refs(&repo)[0], "main follows the tip");
    assert_eq!(recovered_total(&registry, "lock"), 2.0);
    assert_eq!(addr.send(Probe).await.unwrap(), None, "the probe writes");
    drop(addr);
    fsck(&s.path);
}

#[test]
fn at_run_time_recovery_leaves_what_a_fetch_may_be_writing() {
    let s = swarm_with(1);
    let fetch_temp = s.path.join("objects/pack/pack_git2_InFlight");
    let quarantine_lock = s.path.join("refs/starling/quarantine/peer/x.lock");
    std::fs::create_dir_all(quarantine_lock.parent().unwrap()).unwrap();
    std::fs::write(&fetch_temp, b"PACK").unwrap();
    std::fs::write(&quarantine_lock, b"").unwrap();
    let main_lock = s.path.join(format!("{HEAD_REF}.lock"));
    std::fs::write(&main_lock, b"").unwrap();
    let recovered = recover(&s.path, Scope::Runtime).unwrap();
    assert_eq!(recovered.locks_removed, [main_lock]);
    assert!(fetch_temp.exists() && quarantine_lock.exists());
}

#[actix::test]
async fn a_torn_tip_ref_is_rolled_back_and_history_accepted_again() {
    let s = swarm_with(3);
    let repo = git2::Repository::open_bare(&s.path).unwrap();
    let tip = tip_refs(&repo)[0];
    drop(repo);
    // A ref file cut short by the crash: no object id in it.
    std::fs::write(s.path.join(format!("{TIP_REF_PREFIX}{tip}")), b"3f2a").unwrap();
    std::fs::write(s.path.join(HEAD_REF), b"").unwrap();
    let (addr, registry) = start(&s);
    assert_eq!(bodies(&addr).await, ["m2", "m1", "m0"], "nothing was lost");
    addr.send(text("after")).await.unwrap().unwrap();
    assert!(recovered_total(&registry, "ref") >= 1.0);
    drop(addr);
    fsck(&s.path);
}

#[actix::test]
async fn a_truncated_pack_is_set_aside_and_the_rest_kept() {
    let s = swarm_with(3);
    // The newest pack holds the last batch (m2): cut it short.
    let pack_dir = s.path.join("objects/pack");
    let newest = std::fs::read_dir(&pack_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let (addr, registry) = start(&s);
    assert_eq!(
        bodies(&addr).await,
        ["m1", "m0"],
        "rolled back to the last whole state"
    );
    addr.send(text("after")).await.unwrap().unwrap();
    assert_eq!(recovered_total(&registry, "pack"), 1.0);
    assert!(s.path.join(DAMAGED_DIR).read_dir().unwrap().count() >= 1);
    drop(addr);
    fsck(&s.path);
}
