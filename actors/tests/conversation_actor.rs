//! The `Conversation` actor recovers from storage failures by reopening its
//! repository from disk: while the repository is unreachable its requests
//! fail with a typed error (nothing panics, the account is unaffected), and
//! once it is back the next request sees every commit made before.
//!
//! Group commit: concurrent sends share durable batches, each is
//! acknowledged only once on disk, and the batch bound holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use prometheus::Registry;
use starling_actors::conversation::actor::{
    Author, GetView, Holds, ListMessages, BATCH_COMMITS_MAX,
};
use starling_actors::conversation::durable::{PACKS_MAX, PACK_WINDOW_MEMORY};
use starling_actors::conversation::store::{oid, HEAD_REF};
use starling_actors::conversation::{Conversation, DeviceSigner, Store, SwarmMetrics};
use starling_protocol::swarm::body::{BodyKind, MemberAction, Mode};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::PAGE_MESSAGES_MAX;
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

#[actix::test]
async fn a_failing_conversation_reopens_from_disk() {
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let id = Store::create(&path, &signer, Mode::InvitesOnly, now)
        .unwrap()
        .conversation();
    let registry = Registry::new();
    let metrics = SwarmMetrics::register(&registry).unwrap();
    let addr = Conversation::start_on_own_thread(path.clone(), signer, metrics);

    let (first, view) = addr.send(text("before")).await.unwrap().unwrap();
    assert_eq!((view.id, view.tips), (id, vec![first]));

    let away = dir.path().join("elsewhere.git");
    std::fs::rename(&path, &away).unwrap();
    assert!(addr.send(text("lost")).await.unwrap().is_err());
    assert!(addr.send(GetView).await.unwrap().is_err());

    std::fs::rename(&away, &path).unwrap();
    let view = addr.send(GetView).await.unwrap().unwrap();
    assert_eq!(view.tips, [first], "the failed write left no trace");
    addr.send(text("after")).await.unwrap().unwrap();
    let bodies: Vec<String> = addr
        .send(ListMessages { limit: 10 })
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, ["after", "before"]);
    let sent = registry
        .gather()
        .iter()
        .find(|f| f.name() == "starling_messages_sent_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(sent, Some(2.0));
}

struct Swarm {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    signer: DeviceSigner,
    registry: Registry,
}

fn swarm() -> Swarm {
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Store::create(&path, &signer, Mode::InvitesOnly, now).unwrap();
    Swarm {
        _dir: dir,
        path,
        signer,
        registry: Registry::new(),
    }
}

/// Whether `id` is in the history of the head as a fresh handle reads it
/// from disk (no staging area, nothing cached).
fn on_disk(path: &std::path::Path, id: git2::Oid) -> bool {
    let repo = git2::Repository::open_bare(path).unwrap();
    let head = repo.refname_to_id(HEAD_REF).unwrap();
    repo.find_commit(id).is_ok() && (head == id || repo.graph_descendant_of(head, id).unwrap())
}

/// Many concurrent sends: each is acknowledged only once it is on disk, they
/// share batches (fewer heads than messages), no batch exceeds its bound,
/// and all are there after the actor is gone.
#[actix::test]
async fn concurrent_sends_are_grouped_and_each_acknowledged_once_durable() {
    let s = swarm();
    let metrics = SwarmMetrics::register(&s.registry).unwrap();
    let addr = Conversation::start_on_own_thread(s.path.clone(), s.signer.clone(), metrics);
    let sends = BATCH_COMMITS_MAX + 44;
    let mut pending: FuturesUnordered<_> = (0..sends)
        .map(|i| {
            let addr = addr.clone();
            async move { (i, addr.send(text(&format!("m{i}"))).await) }
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut per_head: BTreeMap<CommitId, usize> = BTreeMap::new();
    while let Some((i, reply)) = pending.next().await {
        let (id, view) = reply.unwrap().unwrap_or_else(|e| panic!("send {i}: {e}"));
        assert!(
            on_disk(&s.path, oid(&id)),
            "send {i} was acknowledged before it was durable"
        );
        ids.insert(id);
        *per_head.entry(view.tips[0]).or_default() += 1;
    }
    assert_eq!(ids.len(), sends, "every send made its own commit");
    assert!(
        per_head.len() < sends,
        "{sends} concurrent sends made {} batches: nothing was grouped",
        per_head.len()
    );
    assert!(
        per_head.values().all(|&n| n <= BATCH_COMMITS_MAX),
        "a batch exceeded {BATCH_COMMITS_MAX}: {per_head:?}"
    );
    let sent = s
        .registry
        .gather()
        .iter()
        .find(|f| f.name() == "starling_messages_sent_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(sent, Some(sends as f64));
    drop(addr);

    let mut reopened = Store::open(&s.path).unwrap();
    let listed: BTreeSet<CommitId> = reopened
        .last_messages(PAGE_MESSAGES_MAX)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(ids.is_subset(&listed), "a message was lost on reopening");
    let fsck = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&s.path)
        .args(["fsck", "--strict", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A commit the rules refuse, in the middle of a batch, is refused alone:
/// the messages around it in the same batch are acknowledged and kept.
#[actix::test]
async fn a_refused_commit_does_not_fail_its_batch() {
    let s = swarm();
    let metrics = SwarmMetrics::register(&s.registry).unwrap();
    let addr = Conversation::start_on_own_thread(s.path.clone(), s.signer.clone(), metrics);
    let stranger = AccountIdentity::generate("bob", SystemTime::now(), &mut rand_core::OsRng)
        .unwrap()
        .account_id();
    let before = addr.send(text("one"));
    // Removing an account that is not a member is refused by the rules.
    let refused = addr.send(Author {
        kind: BodyKind::Member {
            action: MemberAction::Remove,
            account: stranger,
        },
        content: None,
    });
    let after = addr.send(text("two"));
    let (before, refused, after) = futures::join!(before, refused, after);
    let (first, _) = before.unwrap().unwrap();
    assert!(refused.unwrap().is_err());
    let (second, view) = after.unwrap().unwrap();
    assert_eq!(view.tips, [second]);
    assert!(on_disk(&s.path, oid(&first)) && on_disk(&s.path, oid(&second)));
}

/// Packs do not pile up: one batch per message still leaves a bounded
/// number of packs, and every commit readable.
#[test]
fn sequential_batches_keep_the_pack_count_bounded() {
    let s = swarm();
    let mut store = Store::open(&s.path).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut ids = Vec::new();
    for i in 0..3 * PACKS_MAX {
        ids.push(store.send_text(&s.signer, &format!("m{i}"), now).unwrap());
    }
    let packs = std::fs::read_dir(s.path.join("objects/pack"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pack")
        })
        .count();
    assert!(packs <= PACKS_MAX, "{packs} packs");
    for id in ids {
        assert!(on_disk(&s.path, oid(&id)));
    }
}

/// Questions about held heads (one per announcement a peer makes) arrive
/// between sends under load. They are answered from the durable head and
/// leave the batch being gathered alone: interleaved with as many sends,
/// they neither split the sends into a batch each nor lose one, and they
/// answer right (the durable head held, an unknown commit not).
#[actix::test]
async fn held_questions_between_sends_do_not_split_batches() {
    let s = swarm();
    let metrics = SwarmMetrics::register(&s.registry).unwrap();
    let addr = Conversation::start_on_own_thread(s.path.clone(), s.signer.clone(), metrics);
    let start = addr.send(GetView).await.unwrap().unwrap().tips[0];
    let unknown = CommitId::from_bytes([7; 20]);
    let sends = 60;
    let mut acks = FuturesUnordered::new();
    let mut answers = FuturesUnordered::new();
    for i in 0..sends {
        acks.push(addr.send(text(&format!("m{i}"))));
        answers.push(addr.send(Holds(vec![start, unknown])));
    }
    let mut per_head: BTreeMap<CommitId, usize> = BTreeMap::new();
    while let Some(reply) = acks.next().await {
        let (id, view) = reply.unwrap().unwrap();
        assert!(on_disk(&s.path, oid(&id)), "acknowledged before durable");
        *per_head.entry(view.tips[0]).or_default() += 1;
    }
    while let Some(answer) = answers.next().await {
        assert_eq!(answer.unwrap().unwrap(), BTreeSet::from([start]));
    }
    assert_eq!(per_head.values().sum::<usize>(), sends);
    assert!(
        per_head.len() <= sends / 4,
        "{sends} sends between as many questions made {} batches",
        per_head.len()
    );
}

/// Every conversation repository bounds libgit2's delta search to one
/// candidate base (`pack.windowMemory`), set when it is created and added
/// when an older one is opened, and its packs still hold deltas.
#[test]
fn repositories_bound_the_delta_search_and_still_delta() {
    let s = swarm();
    let (key, value) = PACK_WINDOW_MEMORY;
    let config_value = |path: &std::path::Path| {
        git2::Repository::open_bare(path)
            .unwrap()
            .config()
            .unwrap()
            .snapshot()
            .unwrap()
            .get_i64(key)
            .ok()
    };
    assert_eq!(config_value(&s.path), Some(value));
    git2::Repository::open_bare(&s.path)
        .unwrap()
        .config()
        .unwrap()
        .remove(key)
        .unwrap();
    assert_eq!(config_value(&s.path), None);

    let mut store = Store::open(&s.path).unwrap();
    assert_eq!(config_value(&s.path), Some(value), "added on opening");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for i in 0..2 * PACKS_MAX {
        store
            .send_text(&s.signer, &format!("message number {i}"), now)
            .unwrap();
    }
    // Consolidation has merged batches into a larger pack by now.
    let largest = std::fs::read_dir(s.path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .max_by_key(|p| std::fs::metadata(p.with_extension("pack")).unwrap().len())
        .unwrap();
    let verify = std::process::Command::new("git")
        .args(["verify-pack", "-v"])
        .arg(&largest)
        .output()
        .unwrap();
    assert!(verify.status.success());
    let listing = String::from_utf8_lossy(&verify.stdout);
    assert!(
        listing.contains("chain length = 1"),
        "no object of the consolidated pack is a delta:\n{listing}"
    );
}
