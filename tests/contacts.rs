//! Contacts between real `starling up` daemons on loopback with static peers,
//! driven through the CLI: a contact request carries a one-to-one swarm; the
//! other side accepts (joins it, and both talk there), declines (the
//! requester is told and withdraws its invitation) or blocks (its node
//! refuses the blocked account's connections, so its messages stop
//! arriving). Contacts and blocks survive a daemon restart.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{json, starling};

/// How long a daemon may take to publish run.json or to stop.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a request, an answer or a message may take to travel.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long we watch for a message that must not arrive: longer than the
/// anti-entropy interval (5 s), so a connected peer would have delivered it.
const SILENCE: Duration = Duration::from_secs(7);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    name: &'static str,
    dir: PathBuf,
    account_id: String,
    port: u16,
    peers: Vec<String>,
    child: Option<Child>,
    api: String,
}

impl Node {
    fn create(root: &Path, name: &'static str) -> Node {
        let dir = root.join(name);
        json(starling(
            &dir,
            &["--json", "account", "create", "--display-name", name],
        ));
        let shown = json(starling(&dir, &["--json", "account", "show"]));
        Node {
            name,
            dir,
            account_id: shown["account_id"].as_str().unwrap().to_owned(),
            port: free_udp_port(),
            peers: Vec::new(),
            child: None,
            api: String::new(),
        }
    }

    fn peer_addr(&self) -> String {
        format!("{}@127.0.0.1:{}", self.account_id, self.port)
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("run.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["up", "--api", "127.0.0.1:0", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .env_remove("STARLING_API")
            .env_remove("STARLING_LISTEN")
            .env("STARLING_PEERS", self.peers.join(","))
            // No test touches the public DHT or another test's LAN.
            .env("STARLING_MDNS", "false")
            .env("STARLING_DHT", "false")
            .env("STARLING_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starling up starts");
        let run_file = self.dir.join("run.json");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let run: Value = loop {
            if let Some(run) = std::fs::read_to_string(&run_file)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .filter(|run| run["pid"] == child.id())
            {
                break run;
            }
            assert!(Instant::now() < deadline, "{} did not start", self.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        self.api = run["api"].as_str().unwrap().to_owned();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not stop within {STARTUP_DEADLINE:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_cli(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = starling(&self.dir, &all);
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).expect("--json prints JSON"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{} {args:?}: {e}", self.name))
    }

    /// This node's contact list, as `account id → entry`.
    fn contact(&self, account: &str) -> Option<Value> {
        self.cli(&["contact", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["account_id"] == account)
            .cloned()
    }

    fn bodies(&self, conversation: &str) -> Vec<String> {
        self.cli(&["messages", conversation, "--limit", "1000"])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The sum of every sample of `name` whose labels contain all of `labels`.
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.api))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Calls the API with the token: (status, body). An empty body sends none.
    fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let token = std::fs::read_to_string(self.dir.join("api.token")).unwrap();
        let request = ureq::request(method, &format!("{}{path}", self.api))
            .timeout(Duration::from_secs(10))
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .set("Content-Type", "application/json");
        let result = if body.is_empty() {
            request.call()
        } else {
            request.send_string(body)
        };
        match result {
            Ok(response) => (response.status(), response.into_string().unwrap()),
            Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
            Err(other) => panic!("{method} {path}: {other}"),
        }
    }

    fn api_status(&self, method: &str, path: &str, body: &str) -> u16 {
        self.api(method, path, body).0
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("daemon.log")) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {} log (last lines, newest first) ---", self.name);
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SYNC_DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pair(root: &Path) -> (Node, Node) {
    let mut alice = Node::create(root, "alice");
    let mut bob = Node::create(root, "bob");
    alice.peers = vec![bob.peer_addr()];
    bob.peers = vec![alice.peer_addr()];
    alice.start();
    bob.start();
    (alice, bob)
}

/// Alice asks, bob sees the request and accepts; both list each other as
/// contacts and talk in the one-to-one swarm; all of it survives a restart.
/// Returns the conversation.
fn befriend(alice: &Node, bob: &Node) -> String {
    let sent = alice.cli(&["contact", "add", &bob.account_id]);
    assert_eq!(sent["state"], "requested");
    assert_eq!(sent["account_id"], bob.account_id.as_str());
    let conversation = sent["conversation"].as_str().unwrap().to_owned();
    // Adding again re-sends the same request; it creates no second swarm.
    let again = alice.cli(&["contact", "add", &bob.account_id]);
    assert_eq!(again["conversation"], conversation.as_str());

    let request = wait_for("bob to see alice's request", || {
        bob.cli(&["contact", "requests"])
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["account_id"] == alice.account_id.as_str())
            .cloned()
    });
    assert_eq!(request["conversation"], conversation.as_str());
    assert_eq!(request["display_name"], "alice");
    assert!(request["received"].as_i64().unwrap() > 0);

    let accepted = bob.cli(&["contact", "accept", &alice.account_id]);
    assert_eq!(accepted["state"], "contact");
    assert_eq!(accepted["conversation"], conversation.as_str());
    assert_eq!(accepted["display_name"], "alice");
    assert!(bob
        .cli(&["contact", "requests"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(bob.contact(&alice.account_id).unwrap()["state"], "contact");
    wait_for("alice to see bob's join", || {
        (alice.contact(&bob.account_id)?["state"] == "contact").then_some(())
    });
    let members = bob.cli(&["swarm", "members", &conversation]);
    let mut roles: Vec<(String, String)> = members
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
    roles.sort();
    let mut expected = vec![
        (alice.account_id.clone(), "admin".to_owned()),
        (bob.account_id.clone(), "member".to_owned()),
    ];
    expected.sort();
    assert_eq!(roles, expected, "a one-to-one swarm of exactly the two");
    conversation
}

fn exchange(alice: &Node, bob: &Node, conversation: &str, tag: &str) {
    let from_alice = format!("alice {tag}");
    let from_bob = format!("bob {tag}");
    alice.cli(&["send", conversation, &from_alice]);
    bob.cli(&["send", conversation, &from_bob]);
    for node in [alice, bob] {
        wait_for("both messages on both sides", || {
            let bodies = node.bodies(conversation);
            (bodies.contains(&from_alice) && bodies.contains(&from_bob)).then_some(())
        });
    }
}

#[test]
fn a_contact_request_accepted_gives_a_one_to_one_swarm_that_survives_restarts() {
    let root = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = pair(root.path());

    // Refusals leave the book untouched.
    assert_eq!(
        alice.api_status("POST", "/v1/contacts", r#"{"account_id":"zz"}"#),
        400
    );
    let me = format!(r#"{{"account_id":"{}"}}"#, alice.account_id);
    assert_eq!(alice.api_status("POST", "/v1/contacts", &me), 400);
    let nobody = format!("/v1/contacts/{}/accept", bob.account_id);
    assert_eq!(alice.api_status("POST", &nobody, "{}"), 404);
    assert!(alice
        .cli(&["contact", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let (code, document) = alice.api("GET", "/v1/openapi.json", "");
    assert_eq!(code, 200);
    let document: Value = serde_json::from_str(&document).unwrap();
    for path in [
        "/v1/contacts",
        "/v1/contacts/requests",
        "/v1/contacts/{account}/accept",
        "/v1/contacts/{account}/decline",
        "/v1/contacts/{account}/block",
        "/v1/contacts/{account}/unblock",
    ] {
        assert!(
            document["paths"][path].is_object(),
            "{path} in the OpenAPI document"
        );
    }
    assert!(document["components"]["schemas"]["Contact"].is_object());

    let conversation = befriend(&alice, &bob);
    exchange(&alice, &bob, &conversation, "before restart");
    assert_eq!(
        alice.metric("starling_contacts", &[]),
        1.0,
        "the contacts gauge counts bob"
    );

    let book = bob.dir.join("contacts.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&book).unwrap().permissions().mode() & 0o777,
        0o600
    );

    alice.stop();
    bob.stop();
    alice.start();
    bob.start();
    for (node, other) in [(&alice, &bob), (&bob, &alice)] {
        let entry = node.contact(&other.account_id).expect("still a contact");
        assert_eq!(entry["state"], "contact");
        assert_eq!(entry["conversation"], conversation.as_str());
    }
    assert_eq!(
        bob.contact(&alice.account_id).unwrap()["display_name"],
        "alice"
    );
    exchange(&alice, &bob, &conversation, "after restart");
    // Already contacts: adding again is a conflict, not a second swarm.
    let again = format!(r#"{{"account_id":"{}"}}"#, bob.account_id);
    assert_eq!(alice.api_status("POST", "/v1/contacts", &again), 409);
}

#[test]
fn declined_requests_stop_and_blocked_accounts_are_refused_until_unblocked() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Node::create(root.path(), "alice");
    let mut bob = Node::create(root.path(), "bob");
    let mut carol = Node::create(root.path(), "carol");
    alice.peers = vec![bob.peer_addr()];
    bob.peers = vec![alice.peer_addr(), carol.peer_addr()];
    carol.peers = vec![bob.peer_addr()];
    for node in [&mut alice, &mut bob, &mut carol] {
        node.start();
    }

    // Decline: carol asks, bob declines; carol is told, stops asking and
    // withdraws the invitation from the swarm.
    let asked = carol.cli(&["contact", "add", &bob.account_id]);
    let carols = asked["conversation"].as_str().unwrap().to_owned();
    wait_for("bob to see carol's request", || {
        bob.cli(&["contact", "requests"])
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["account_id"] == carol.account_id.as_str())
            .then_some(())
    });
    let declined = bob.cli(&["contact", "decline", &carol.account_id]);
    assert_eq!(declined["state"], "declined");
    assert!(bob
        .cli(&["contact", "requests"])
        .as_array()
        .unwrap()
        .is_empty());
    wait_for("carol to hear of the decline", || {
        (carol.contact(&bob.account_id)?["state"] == "declined").then_some(())
    });
    wait_for("carol to withdraw the invitation", || {
        let members = carol.cli(&["swarm", "members", &carols]);
        (!members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["account_id"] == bob.account_id.as_str()))
        .then_some(())
    });
    assert!(bob.contact(&carol.account_id).is_none());
    assert!(
        bob.try_cli(&["contact", "accept", &carol.account_id])
            .is_err(),
        "a declined request cannot be accepted"
    );

    // Block: alice and bob are contacts and talk; bob blocks alice.
    let conversation = befriend(&alice, &bob);
    exchange(&alice, &bob, &conversation, "before the block");
    let blocked = bob.cli(&["contact", "block", &alice.account_id]);
    assert_eq!(blocked["state"], "blocked");
    assert_eq!(bob.contact(&alice.account_id).unwrap()["state"], "blocked");
    wait_for("bob's node to close alice's connection", || {
        (bob.metric(
            "starling_transport_connections_closed_total",
            &["reason=\"blocked\""],
        ) >= 1.0)
            .then_some(())
    });
    // Alice keeps redialling (bob is her static peer); bob refuses each time.
    wait_for("bob's node to refuse alice's connection", || {
        (bob.metric(
            "starling_transport_handshakes_failed_total",
            &["reason=\"blocked\"", "side=\"local\""],
        ) >= 1.0)
            .then_some(())
    });
    alice.cli(&["send", &conversation, "while blocked"]);
    std::thread::sleep(SILENCE);
    assert!(
        !bob.bodies(&conversation)
            .contains(&"while blocked".to_owned()),
        "a blocked account's message arrived"
    );
    // Carol, not blocked, still reaches bob.
    assert!(
        bob.metric("starling_peers_connected", &[]) >= 1.0,
        "carol stays connected"
    );

    // The block survives bob's restart.
    bob.stop();
    bob.start();
    assert_eq!(bob.contact(&alice.account_id).unwrap()["state"], "blocked");
    wait_for("bob's restarted node to refuse alice's connection", || {
        (bob.metric(
            "starling_transport_handshakes_failed_total",
            &["reason=\"blocked\"", "side=\"local\""],
        ) >= 1.0)
            .then_some(())
    });
    assert!(!bob
        .bodies(&conversation)
        .contains(&"while blocked".to_owned()));

    // Unblocking lets alice back in, and what she wrote meanwhile arrives.
    let unblocked = bob.cli(&["contact", "unblock", &alice.account_id]);
    assert_eq!(unblocked["unblocked"], true);
    assert_eq!(bob.contact(&alice.account_id).unwrap()["state"], "contact");
    wait_for("alice's message after the unblock", || {
        bob.bodies(&conversation)
            .contains(&"while blocked".to_owned())
            .then_some(())
    });
}
