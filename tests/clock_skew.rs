//! Two real `starling up` daemons whose clocks disagree by more than a day,
//! each run under Debian's `faketime`: alice's clock 20 minutes fast, bob's
//! a day slow. Both accounts are created first with the machine's clock, so
//! bob's certificates are dated a day ahead of his own clock, as after a
//! device's clock went wrong.
//!
//! Bob joins alice's swarm and both write: joins and messages flow both ways
//! within seconds, both list the same messages in the same order, nothing is
//! rejected, and `status` on each (text and `--json`), `/metrics` and alice's
//! event stream say that this device's clock is off against its peer's.
//!
//! The daemons preload libfaketime from Debian's `faketime` package (see
//! `support::node::libfaketime`). Without it the test prints SKIPPED and
//! returns, except under `CI=true`, where it fails: CI installs it
//! (`scripts/install-deps.sh`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::node::{faketime_env, libfaketime, Node};
use support::{wait_for, SYNC_DEADLINE};

/// Whether libfaketime moves a process's clock here; `false` (after saying
/// so) where it does not and the test may skip, a panic where it must run
/// (CI).
fn faketime_works() -> bool {
    let why = match libfaketime() {
        None => "libfaketime is not installed".to_owned(),
        Some(library) => {
            let date = |env: Vec<(String, String)>| {
                let output = Command::new("date").arg("+%s").envs(env).output().ok()?;
                String::from_utf8(output.stdout)
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()
            };
            match (date(Vec::new()), date(faketime_env(&library, "-1d"))) {
                (Some(real), Some(fake)) if (real - fake - 86_400).abs() < 60 => return true,
                (real, fake) => format!(
                    "{} does not move the clock a day back (date says {real:?}, then {fake:?})",
                    library.display()
                ),
            }
        }
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI installs faketime (scripts/install-deps.sh), so it must run: {why}");
    }
    // stdout: nextest shows it even on a pass (see .config/nextest.toml).
    println!("SKIPPED clock_skew: {why}; install Debian's faketime package");
    false
}

/// (id, body) of every message, newest first.
fn messages(node: &Node, conversation: &str) -> Vec<(String, String)> {
    node.cli(&["messages", conversation, "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until `node` lists every body of `bodies`; how long that took.
fn until_listed(node: &Node, conversation: &str, bodies: &[&str]) -> Duration {
    let started = Instant::now();
    wait_for(&format!("{} to list {bodies:?}", node.name), || {
        let listed = messages(node, conversation);
        bodies
            .iter()
            .all(|b| listed.iter().any(|(_, body)| body == b))
            .then_some(())
    });
    started.elapsed()
}

#[test]
fn daemons_a_day_apart_sync_both_ways_and_each_warns_about_its_clock() {
    if !faketime_works() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    let mut bob = Node::create(tmp.path(), "bob");
    alice.faketime = Some("+20m".into());
    bob.faketime = Some("-1d".into());
    let (a, b) = (alice.peer_addr(), bob.peer_addr());
    alice.start(&[b], &[]);

    // Alice's event stream, open before bob's clock can reach her.
    let mut events = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(&alice.dir)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    wait_for("alice's event subscriber", || {
        (alice.metric("starling_events_subscribers", &[]) == 1.0).then_some(())
    });
    bob.start(&[a], &[]);

    let id = alice.id_of(&["swarm", "create", "--title", "Skew"]);
    alice.cli(&["swarm", "invite", &id, &bob.account_id]);
    wait_for("the invitation to reach bob", || {
        bob.cli(&["swarm", "invites"])
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["conversation"] == id.as_str())
            .then_some(())
    });
    let started = Instant::now();
    bob.cli(&["swarm", "join", &id]);
    wait_for("alice to see bob's join", || {
        alice
            .cli(&["swarm", "members", &id])
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["account_id"] == bob.account_id.as_str() && m["role"] == "member")
            .then_some(())
    });
    eprintln!("bob's join reached alice in {:?}", started.elapsed());

    alice.send(&id, "from alice, 20 minutes ahead");
    eprintln!(
        "alice -> bob in {:?}",
        until_listed(&bob, &id, &["from alice, 20 minutes ahead"])
    );
    bob.send(&id, "from bob, a day behind");
    eprintln!(
        "bob -> alice in {:?}",
        until_listed(&alice, &id, &["from bob, a day behind"])
    );
    // Concurrent writes merge; both replicas then list one order.
    alice.send(&id, "alice again");
    bob.send(&id, "bob again");
    let all = [
        "from alice, 20 minutes ahead",
        "from bob, a day behind",
        "alice again",
        "bob again",
    ];
    let list = wait_for("both to list the same messages in one order", || {
        let (at_alice, at_bob) = (messages(&alice, &id), messages(&bob, &id));
        let complete = all.iter().all(|b| at_alice.iter().any(|(_, x)| x == b));
        (complete && at_alice == at_bob).then_some(at_alice)
    });
    assert_eq!(list.len(), all.len(), "{list:?}");
    for node in [&alice, &bob] {
        assert_eq!(
            node.metric("starling_swarm_commits_rejected_total", &[]),
            0.0,
            "{} rejected commits",
            node.name
        );
    }

    // Each daemon says that its clock is off against its peer's.
    for (node, direction, sign) in [(&alice, "ahead of", 1.0), (&bob, "behind", -1.0)] {
        let status = wait_for(&format!("{}'s clock warning", node.name), || {
            let status = node.cli(&["status"]);
            status["clock"]["warning"].is_string().then_some(status)
        });
        let warning = status["clock"]["warning"].as_str().unwrap();
        assert!(warning.contains(direction), "{}: {warning}", node.name);
        let offset = status["clock"]["offset_seconds"].as_i64().unwrap();
        // A day and 20 minutes apart, give or take transit time.
        assert!(
            (offset.abs() - 86_400 - 1_200).abs() < 60 && offset.signum() as f64 == sign,
            "{}: offset {offset}",
            node.name
        );
        let text = node.cli_text(&["status"]);
        assert!(text.contains("WARNING: this device's clock"), "{text}");
        let gauge = node.metric("starling_clock_offset_seconds", &[]);
        assert!(gauge * sign > 86_000.0, "{}: gauge {gauge}", node.name);
        assert_eq!(node.metric("starling_clock_offset_peers", &[]), 1.0);
    }
    let deadline = Instant::now() + SYNC_DEADLINE;
    let clock_event = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("alice's event stream told of her clock");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["type"] == "clock" {
            break event;
        }
    };
    assert_eq!(clock_event["state"], "skewed", "{clock_event}");
    assert!(clock_event["offset_seconds"].as_i64().unwrap() > 86_000);
    let _ = events.kill();
    let _ = events.wait();
    alice.stop();
    bob.stop();
}
