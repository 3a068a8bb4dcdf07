//! Contacts between real `starling up` daemons on loopback with static peers,
//! driven through the CLI: a contact request carries a one-to-one swarm; the
//! other side accepts (joins it, and both talk there), declines (the
//! requester is told and withdraws its invitation) or blocks (its node
//! refuses the blocked account's connections, so its messages stop
//! arriving). Contacts and blocks survive a daemon restart.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{node::Node, wait_for};

/// How long we watch for a message that must not arrive: longer than the
/// anti-entropy interval (5 s), so a connected peer would have delivered it.
const SILENCE: Duration = Duration::from_secs(7);

/// `node`'s contact-book entry for `account`, if any.
fn contact(node: &Node, account: &str) -> Option<Value> {
    node.cli(&["contact", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["account_id"] == account)
        .cloned()
}

fn pair(root: &Path) -> (Node, Node) {
    let mut alice = Node::create(root, "alice");
    let mut bob = Node::create(root, "bob");
    alice.start(&[bob.peer_addr()], &[]);
    bob.start(&[alice.peer_addr()], &[]);
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
    assert_eq!(contact(bob, &alice.account_id).unwrap()["state"], "contact");
    wait_for("alice to see bob's join", || {
        (contact(alice, &bob.account_id)?["state"] == "contact").then_some(())
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
        alice
            .api("POST", "/v1/contacts", Some(r#"{"account_id":"zz"}"#))
            .0,
        400
    );
    let me = format!(r#"{{"account_id":"{}"}}"#, alice.account_id);
    assert_eq!(alice.api("POST", "/v1/contacts", Some(&me)).0, 400);
    let nobody = format!("/v1/contacts/{}/accept", bob.account_id);
    assert_eq!(alice.api("POST", &nobody, Some("{}")).0, 404);
    assert!(alice
        .cli(&["contact", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let (code, document) = alice.api("GET", "/v1/openapi.json", None);
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
    alice.start(&[bob.peer_addr()], &[]);
    bob.start(&[alice.peer_addr()], &[]);
    for (node, other) in [(&alice, &bob), (&bob, &alice)] {
        let entry = contact(node, &other.account_id).expect("still a contact");
        assert_eq!(entry["state"], "contact");
        assert_eq!(entry["conversation"], conversation.as_str());
    }
    assert_eq!(
        contact(&bob, &alice.account_id).unwrap()["display_name"],
        "alice"
    );
    exchange(&alice, &bob, &conversation, "after restart");
    // Already contacts: adding again is a conflict, not a second swarm.
    let again = format!(r#"{{"account_id":"{}"}}"#, bob.account_id);
    assert_eq!(alice.api("POST", "/v1/contacts", Some(&again)).0, 409);
}

#[test]
fn declined_requests_stop_and_blocked_accounts_are_refused_until_unblocked() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Node::create(root.path(), "alice");
    let mut bob = Node::create(root.path(), "bob");
    let mut carol = Node::create(root.path(), "carol");
    let bobs_peers = [alice.peer_addr(), carol.peer_addr()];
    alice.start(&[bob.peer_addr()], &[]);
    bob.start(&bobs_peers, &[]);
    carol.start(&[bob.peer_addr()], &[]);

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
        (contact(&carol, &bob.account_id)?["state"] == "declined").then_some(())
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
    assert!(contact(&bob, &carol.account_id).is_none());
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
    assert_eq!(
        contact(&bob, &alice.account_id).unwrap()["state"],
        "blocked"
    );
    wait_for("bob's node to close alice's connection", || {
        (bob.metric(
            "starling_transport_connections_closed_total",
            &[("reason", "blocked")],
        ) >= 1.0)
            .then_some(())
    });
    // Alice keeps redialling (bob is her static peer); bob refuses each time.
    wait_for("bob's node to refuse alice's connection", || {
        (bob.metric(
            "starling_transport_handshakes_failed_total",
            &[("reason", "blocked"), ("side", "local")],
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
    bob.start(&bobs_peers, &[]);
    assert_eq!(
        contact(&bob, &alice.account_id).unwrap()["state"],
        "blocked"
    );
    wait_for("bob's restarted node to refuse alice's connection", || {
        (bob.metric(
            "starling_transport_handshakes_failed_total",
            &[("reason", "blocked"), ("side", "local")],
        ) >= 1.0)
            .then_some(())
    });
    assert!(!bob
        .bodies(&conversation)
        .contains(&"while blocked".to_owned()));

    // Unblocking lets alice back in, and what she wrote meanwhile arrives.
    let unblocked = bob.cli(&["contact", "unblock", &alice.account_id]);
    assert_eq!(unblocked["unblocked"], true);
    assert_eq!(
        contact(&bob, &alice.account_id).unwrap()["state"],
        "contact"
    );
    wait_for("alice's message after the unblock", || {
        bob.bodies(&conversation)
            .contains(&"while blocked".to_owned())
            .then_some(())
    });
}
