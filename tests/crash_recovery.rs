//! Crashes at any moment lose nothing acknowledged and wedge nothing.
//!
//! Real `starling up` processes on loopback. The deterministic case plants
//! every lock and temporary file a `kill -9` leaves in a replica while its
//! daemon is down; restarted, it writes at once and catches up from its
//! peer within 5 s. The randomized case runs rounds of concurrent writes on
//! three daemons and `kill -9`s one at a random moment of each (while it
//! authors, receives packs, consolidates); after each restart and at the
//! end, every acknowledged message is on every node, in the same order
//! everywhere, and stock `git fsck --strict` is clean. The seed is printed;
//! `STARLING_CRASH_SEED` replays one, `STARLING_CRASH_ROUNDS` sets the rounds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;

use support::{node::Node, wait_for, wait_within};

/// How long a restarted replica may take to catch up with its peers.
const CATCH_UP: Duration = Duration::from_secs(5);
/// Rounds of the randomized test unless `STARLING_CRASH_ROUNDS` says.
const ROUNDS: u64 = 6;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn replica(node: &Node, conversation: &str) -> PathBuf {
    node.dir.join("swarms").join(format!("{conversation}.git"))
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
        "git fsck {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Message ids, newest first, as `node` lists them.
fn ids(node: &Node, conversation: &str) -> Vec<String> {
    node.cli(&["messages", conversation, "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A swarm of `nodes[0]` with every other node joined.
fn swarm(nodes: &[&Node]) -> String {
    let owner = nodes[0];
    let id = owner.id_of(&["swarm", "create", "--title", "crashes"]);
    for invitee in &nodes[1..] {
        owner.cli(&["swarm", "invite", &id, &invitee.account_id]);
        wait_for("the invitation to arrive", || {
            invitee
                .cli(&["swarm", "invites"])
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["conversation"] == id.as_str())
                .then_some(())
        });
        invitee.cli(&["swarm", "join", &id]);
    }
    wait_for("every join to reach the owner", || {
        (owner
            .cli(&["swarm", "members", &id])
            .as_array()
            .unwrap()
            .len()
            == nodes.len())
        .then_some(())
    });
    id
}

/// Every lock and temporary file libgit2 leaves when killed mid-write.
fn plant_leftovers(repo: &Path) -> Vec<PathBuf> {
    let mut planted = vec![
        repo.join("refs/heads/main.lock"),
        repo.join("HEAD.lock"),
        repo.join("config.lock"),
        repo.join("objects/pack/pack_git2_d3adb33f"),
    ];
    let tips = repo.join("refs/heads/tips");
    for tip in std::fs::read_dir(&tips).unwrap().flatten() {
        let mut lock = tip.path().into_os_string();
        lock.push(".lock");
        planted.push(PathBuf::from(lock));
    }
    for file in &planted {
        std::fs::write(file, b"torn").unwrap();
    }
    planted
}

#[test]
fn a_replica_killed_mid_write_writes_and_catches_up_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    let mut bob = Node::create(tmp.path(), "bob");
    let (a, b) = (alice.peer_addr(), bob.peer_addr());
    alice.start(std::slice::from_ref(&b), &[]);
    bob.start(std::slice::from_ref(&a), &[]);
    let id = swarm(&[&alice, &bob]);
    bob.send(&id, "before the crash");
    wait_for("alice to see bob's message", || {
        (ids(&alice, &id).len() == 1).then_some(())
    });

    bob.kill();
    let planted = plant_leftovers(&replica(&bob, &id));
    let sent_meanwhile: BTreeSet<String> = (0..3)
        .map(|i| alice.send(&id, &format!("while bob is down {i}")))
        .collect();
    bob.start(std::slice::from_ref(&a), &[]);
    let after = bob.send(&id, "after the restart");
    let began = Instant::now();
    wait_within(
        CATCH_UP,
        Duration::from_millis(50),
        "bob to catch up with alice",
        || {
            let held: BTreeSet<String> = ids(&bob, &id).into_iter().collect();
            sent_meanwhile.is_subset(&held).then_some(())
        },
    );
    eprintln!("bob caught up {:?} after his restart", began.elapsed());
    wait_for("alice to see bob's message after his restart", || {
        ids(&alice, &id).contains(&after).then_some(())
    });
    for file in &planted {
        assert!(!file.exists(), "{} is still there", file.display());
    }
    let status = bob.cli(&["status"]);
    assert_eq!(status["conversations_unhealthy"], serde_json::json!([]));
    let recovered = bob.metric("starling_repository_recoveries_total", &[("kind", "lock")]);
    assert!(recovered >= 4.0, "locks removed: {recovered}");

    // A fault recovery cannot clear (the tips' directory replaced by a
    // file): the conversation shows as unhealthy in status and metrics,
    // and once the fault is gone a probe finds it writing again.
    let tips = replica(&bob, &id).join("refs/heads/tips");
    let away = replica(&bob, &id).join("tips.away");
    std::fs::rename(&tips, &away).unwrap();
    std::fs::write(&tips, b"not a directory").unwrap();
    let (code, _) = bob.api(
        "POST",
        &format!("/v1/swarms/{id}/messages"),
        Some(r#"{"text":"cannot land"}"#),
    );
    assert!(code >= 500, "a failed write is an error, got {code}");
    let unhealthy = wait_for("bob's status to show the conversation", || {
        let list = bob.cli(&["status"])["conversations_unhealthy"].clone();
        (list.as_array().unwrap().len() == 1).then_some(list)
    });
    assert_eq!(unhealthy[0]["conversation"], id.as_str());
    assert!(bob.cli_text(&["status"]).contains("cannot write"));
    let gauge = |reason| bob.metric("starling_conversations_unhealthy", &[("reason", reason)]);
    assert_eq!(gauge(unhealthy[0]["reason"].as_str().unwrap()), 1.0);
    std::fs::remove_file(&tips).unwrap();
    std::fs::rename(&away, &tips).unwrap();
    wait_for("a probe to find bob's conversation writing", || {
        let list = bob.cli(&["status"])["conversations_unhealthy"].clone();
        list.as_array().unwrap().is_empty().then_some(())
    });
    bob.send(&id, "after the fault");
    assert!(
        !bob.log().contains('\u{1b}'),
        "a log written to a file carries no terminal colour codes"
    );
    bob.stop();
    alice.stop();
    fsck(&replica(&bob, &id));
}

/// Sends messages to `conversation` through `api` until `stop`, recording
/// the id of each one acknowledged (201). A refused or failed request is
/// not acknowledged and may or may not be in history; a killed daemon ends
/// the loop.
fn write_until(
    api: String,
    token: String,
    conversation: String,
    label: String,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = serde_json::json!({ "text": format!("{label} {n}") }).to_string();
        n += 1;
        let response = ureq::post(&format!("{api}/v1/swarms/{conversation}/messages"))
            .timeout(Duration::from_secs(10))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(&body);
        match response {
            Ok(r) if r.status() == 201 => {
                let reply: serde_json::Value = r.into_json().unwrap();
                acknowledged
                    .lock()
                    .unwrap()
                    .push(reply["id"].as_str().unwrap().to_owned());
            }
            Ok(_) | Err(ureq::Error::Status(..)) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn random_kills_during_concurrent_writes_lose_nothing_acknowledged() {
    let seed = std::env::var("STARLING_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds = std::env::var("STARLING_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    eprintln!("seed {seed} (STARLING_CRASH_SEED={seed} replays it), {rounds} rounds");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = vec![
        Node::create(tmp.path(), "alice"),
        Node::create(tmp.path(), "bob"),
        Node::create(tmp.path(), "carol"),
    ];
    let addrs: Vec<String> = nodes.iter().map(|n| n.peer_addr()).collect();
    let peers_of = |i: usize| -> Vec<String> {
        addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect()
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        node.start(&peers_of(i), &[]);
    }
    let id = swarm(&nodes.iter().collect::<Vec<_>>());
    let acknowledged = Arc::new(Mutex::new(Vec::new()));

    for round in 0..rounds {
        let victim = rng.below(nodes.len() as u64) as usize;
        let kill_after = Duration::from_millis(100 + rng.below(1_400));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (api, token, conversation) = (node.api.clone(), node.token.clone(), id.clone());
                let label = format!("{} r{round}", node.name);
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    write_until(api, token, conversation, label, stop, acknowledged)
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        eprintln!(
            "round {round}: killed {} after {kill_after:?}; {} acknowledged so far",
            nodes[victim].name,
            acknowledged.lock().unwrap().len()
        );
        nodes[victim].start(&peers_of(victim), &[]);
        fsck(&replica(&nodes[victim], &id));
    }

    let expected: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert!(!expected.is_empty(), "no write was acknowledged");
    let began = Instant::now();
    let order = wait_for("every node to hold every acknowledged message", || {
        let lists: Vec<Vec<String>> = nodes.iter().map(|n| ids(n, &id)).collect();
        let held: BTreeSet<String> = lists[0].iter().cloned().collect();
        (expected.is_subset(&held) && lists.windows(2).all(|w| w[0] == w[1]))
            .then(|| lists[0].clone())
    });
    eprintln!(
        "{} acknowledged, {} listed, same order on {} nodes, {:?} after the last restart",
        expected.len(),
        order.len(),
        nodes.len(),
        began.elapsed()
    );
    for node in &nodes {
        let status = node.cli(&["status"]);
        assert_eq!(
            status["conversations_unhealthy"],
            serde_json::json!([]),
            "{}",
            node.name
        );
    }
    for node in &mut nodes {
        node.stop();
        fsck(&replica(node, &id));
    }
}
