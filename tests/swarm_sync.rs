//! Three real `starling up` daemons (alice, bob, carol) on loopback with
//! static peers, driven only through the CLI (a client of the API): a swarm
//! is created, invitations travel over the network, invitees join by cloning
//! over QUIC, everyone writes, and every replica lists the same messages in
//! the same order. Carol then goes offline while the others write, and comes
//! back first while alice is still online and then when only bob is; she
//! catches up both times. Stock git checks her replica at the end, and the
//! API's refusals (bad token, bad JSON, unknown conversation, oversize text)
//! leave state untouched.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{node::Node, wait_for, SYNC_DEADLINE};

/// (id, author, body) of every message, newest first.
fn messages(node: &Node, conversation: &str) -> Vec<(String, String, String)> {
    let list = node.cli(&["messages", conversation, "--limit", "1000"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["timestamp"].as_i64().unwrap() > 0);
            (
                m["id"].as_str().unwrap().to_owned(),
                m["author"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until every node lists the same `expected` bodies (as a set) in the
/// same order; returns that list.
fn converge(
    nodes: &[&Node],
    conversation: &str,
    expected: &BTreeSet<String>,
) -> Vec<(String, String, String)> {
    let started = Instant::now();
    let list = wait_for("replicas to converge", || {
        let lists: Vec<_> = nodes.iter().map(|n| messages(n, conversation)).collect();
        let bodies: BTreeSet<String> = lists[0].iter().map(|m| m.2.clone()).collect();
        (lists.windows(2).all(|w| w[0] == w[1]) && &bodies == expected).then(|| lists[0].clone())
    });
    eprintln!(
        "converged on {} messages across {} nodes in {:?}",
        list.len(),
        nodes.len(),
        started.elapsed()
    );
    list
}

fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn three_daemons_sync_a_swarm_and_catch_up_after_downtime() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    let mut bob = Node::create(tmp.path(), "bob");
    let mut carol = Node::create(tmp.path(), "carol");
    let (a, b, c) = (alice.peer_addr(), bob.peer_addr(), carol.peer_addr());
    alice.start(&[b.clone(), c.clone()], &[]);
    bob.start(&[a.clone(), c.clone()], &[]);
    carol.start(&[a.clone(), b.clone()], &[]);
    let status = alice.cli(&["status"]);
    assert_eq!(status["listen"], alice.listen.as_str());
    assert_eq!(status["account_id"], alice.account_id.as_str());

    let id = alice.cli(&["swarm", "create", "--title", "Flock"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.cli(&["swarm", "invite", &id, &bob.account_id]);
    alice.cli(&["swarm", "invite", &id, &carol.account_id]);
    for invitee in [&bob, &carol] {
        wait_for("the invitation to arrive", || {
            let invites = invitee.cli(&["swarm", "invites"]);
            invites
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["conversation"] == id.as_str())
                .then_some(())
        });
        let invites = invitee.cli(&["swarm", "invites"]);
        assert_eq!(invites[0]["title"], "Flock");
        assert_eq!(invites[0]["from"][0], alice.account_id.as_str());
        invitee.cli(&["swarm", "join", &id]);
    }
    let members = wait_for("alice to see both joins", || {
        let members = alice.cli(&["swarm", "members", &id]);
        let roles: Vec<(String, String)> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["account_id"].as_str().unwrap().to_owned(),
                    m["role"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        roles
            .iter()
            .all(|(_, role)| role != "invited")
            .then_some(roles)
    });
    assert_eq!(members.len(), 3);
    let listed = carol.cli(&["swarm", "list"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["title"], "Flock");
    assert!(members.contains(&(alice.account_id.clone(), "admin".into())));
    assert!(members.contains(&(bob.account_id.clone(), "member".into())));
    assert!(members.contains(&(carol.account_id.clone(), "member".into())));

    let mut expected = BTreeSet::new();
    for node in [&alice, &bob, &carol] {
        let text = format!("hello from {}", node.name);
        node.send(&id, &text);
        expected.insert(text);
    }
    let list = converge(&[&alice, &bob, &carol], &id, &expected);
    for (_, author, body) in &list {
        let node = [&alice, &bob, &carol]
            .into_iter()
            .find(|n| body.ends_with(n.name))
            .unwrap();
        assert_eq!(author, &node.account_id, "author of {body:?}");
    }

    // Carol goes offline; alice and bob keep writing; carol comes back.
    carol.stop();
    for i in 0..2 {
        for node in [&alice, &bob] {
            let text = format!("{} while carol is away #{i}", node.name);
            node.send(&id, &text);
            expected.insert(text);
        }
    }
    carol.start(&[a.clone(), b.clone()], &[]);
    converge(&[&alice, &bob, &carol], &id, &expected);

    // Again, but only bob is online when carol returns: she catches up from
    // him, including what alice wrote before leaving.
    carol.stop();
    for node in [&alice, &bob] {
        let text = format!("{} before alice leaves", node.name);
        node.send(&id, &text);
        expected.insert(text);
    }
    converge(&[&alice, &bob], &id, &expected);
    alice.stop();
    let text = "bob alone".to_owned();
    bob.send(&id, &text);
    expected.insert(text);
    carol.start(&[a.clone(), b.clone()], &[]);
    let list = converge(&[&bob, &carol], &id, &expected);
    assert_eq!(list.len(), expected.len());
    assert!(carol.metric("starling_swarm_fetches_total", &[]) >= 1.0);
    assert!(carol.metric("starling_messages_received_total", &[]) >= 1.0);
    assert_eq!(carol.metric("starling_conversations", &[]), 1.0);

    // The API's refusals leave state untouched.
    let before = messages(&carol, &id);
    let path = format!("/v1/swarms/{id}/messages");
    let (code, _) = carol.request("POST", &path, "wrong", Some(r#"{"text":"x"}"#));
    assert_eq!(code, 401);
    let (code, body) = carol.request("POST", &path, &carol.token, Some(r#"{"text":"#));
    assert_eq!(code, 400, "{body}");
    let unknown = format!("/v1/swarms/{}/messages", "0".repeat(40));
    let (code, body) = carol.request("POST", &unknown, &carol.token, Some(r#"{"text":"x"}"#));
    assert_eq!(code, 404, "{body}");
    let big = serde_json::json!({ "text": "x".repeat(40 * 1024) }).to_string();
    let (code, body) = carol.request("POST", &path, &carol.token, Some(&big));
    assert_eq!(code, 413, "{body}");
    assert_eq!(messages(&carol, &id), before);

    // Stock git on carol's replica.
    let members_before = carol.cli(&["swarm", "members", &id]);
    carol.stop();
    let repo = carol.dir.join("swarms").join(format!("{id}.git"));
    let (ok, out) = git(&repo, &["fsck", "--strict", "--no-dangling"]);
    assert!(ok && !out.contains("warning"), "git fsck --strict: {out}");
    // Restart persistence: with no peers of her own, carol still lists
    // the same messages and members (bob has nothing newer to give her).
    carol.start(&[], &[]);
    assert_eq!(messages(&carol, &id), before);
    assert_eq!(carol.cli(&["swarm", "members", &id]), members_before);
    let signers = tmp.path().join("allowed_signers");
    carol.cli(&[
        "swarm",
        "allowed-signers",
        &id,
        "--out",
        signers.to_str().unwrap(),
    ]);
    let (ok, list) = git(&repo, &["rev-list", "HEAD"]);
    assert!(ok, "{list}");
    assert!(list.lines().count() >= expected.len() + 4);
    let file = format!("gpg.ssh.allowedSignersFile={}", signers.display());
    for commit in list.lines() {
        let (ok, out) = git(
            &repo,
            &["-c", "gpg.format=ssh", "-c", &file, "verify-commit", commit],
        );
        assert!(ok, "git verify-commit {commit}: {out}");
    }
}

/// Messages timed by the latency measurement.
const LATENCY_MESSAGES: usize = 50;

/// Two daemons: time from `POST …/messages` on alice answering to bob's API
/// listing the message (polled every millisecond), over `LATENCY_MESSAGES`
/// messages. Prints p50 and p99; fails only if a message never arrives.
#[test]
fn message_latency_between_two_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    let mut bob = Node::create(tmp.path(), "bob");
    let (a, b) = (alice.peer_addr(), bob.peer_addr());
    alice.start(std::slice::from_ref(&b), &[]);
    bob.start(std::slice::from_ref(&a), &[]);
    let id = alice.cli(&["swarm", "create"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.cli(&["swarm", "invite", &id, &bob.account_id]);
    wait_for("the invitation", || {
        bob.cli(&["swarm", "invites"])
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["conversation"] == id.as_str())
            .then_some(())
    });
    bob.cli(&["swarm", "join", &id]);
    wait_for("alice to see bob join", || {
        alice
            .cli(&["swarm", "members", &id])
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] != "invited")
            .then_some(())
    });
    let post = format!("/v1/swarms/{id}/messages");
    let newest = format!("/v1/swarms/{id}/messages?limit=1");
    for limit in ["0", "1001"] {
        let path = format!("/v1/swarms/{id}/messages?limit={limit}");
        let (code, answer) = bob.request("GET", &path, &bob.token, None);
        assert_eq!(code, 400, "limit={limit} is refused, not clamped: {answer}");
        assert!(answer.contains("1..=1000"), "{answer}");
    }
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for i in 0..LATENCY_MESSAGES {
        let body = serde_json::json!({ "text": format!("ping {i}") }).to_string();
        let (code, answer) = alice.request("POST", &post, &alice.token, Some(&body));
        assert_eq!(code, 201, "{answer}");
        let sent = Instant::now();
        let message: Value = serde_json::from_str(&answer).unwrap();
        let deadline = sent + SYNC_DEADLINE;
        loop {
            let (code, list) = bob.request("GET", &newest, &bob.token, None);
            assert_eq!(code, 200);
            if list.contains(message["id"].as_str().unwrap()) {
                latencies.push(sent.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "message {i} never reached bob");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "latency alice API -> bob API over {} messages: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );

    // Sustained writes into the swarm from one client, then how long bob
    // takes to hold all of them.
    let started = Instant::now();
    let mut last = String::new();
    for i in 0..THROUGHPUT_MESSAGES {
        let body = serde_json::json!({ "text": format!("burst {i}") }).to_string();
        let (code, answer) = alice.request("POST", &post, &alice.token, Some(&body));
        assert_eq!(code, 201, "{answer}");
        last = serde_json::from_str::<Value>(&answer).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let written = started.elapsed();
    wait_for("bob to hold the burst", || {
        let (_, list) = bob.request("GET", &newest, &bob.token, None);
        list.contains(&last).then_some(())
    });
    eprintln!(
        "{THROUGHPUT_MESSAGES} messages written at {:.0}/s (one client, sequential); bob held all {:?} after the first",
        THROUGHPUT_MESSAGES as f64 / written.as_secs_f64(),
        started.elapsed()
    );
}

/// Messages written back to back for the throughput figure.
const THROUGHPUT_MESSAGES: usize = 300;
