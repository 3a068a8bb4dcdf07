//! Process-level tests of `starling up`: a real daemon process, its local API
//! over real HTTP, its lock, and a clean shutdown on SIGTERM.

use serde_json::{json, Value};

mod support;

use support::{json, node::Node, starling, Daemon};

#[test]
fn daemon_serves_its_identity_guards_the_api_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let created = json(starling(
        &dir,
        &["--json", "account", "create", "--display-name", "Alice"],
    ));
    let daemon = Daemon::start(&dir);

    use std::os::unix::fs::PermissionsExt;
    let token_mode = std::fs::metadata(dir.join("api.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(token_mode & 0o777, 0o600);

    // The CLI finds the daemon through the data dir and asks it.
    let status = json(starling(&dir, &["--json", "status"]));
    assert_eq!(status["account_id"], created["account_id"]);
    assert_eq!(status["device_id"], created["device_id"]);
    assert_eq!(status["api"], daemon.api.as_str());

    // The API itself: token required, JSON errors, metrics open and counting
    // (the CLI call above is the first 200 on /v1/status).
    let (code, body) = daemon.get("/v1/status", None);
    assert_eq!(code, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "unauthorized"
    );
    assert_eq!(daemon.get("/v1/status", Some("0000")).0, 401);
    let (code, body) = daemon.get("/v1/status", Some(&daemon.token));
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["display_name"],
        "Alice"
    );
    let (code, body) = daemon.get("/v1/no-such-thing", Some(&daemon.token));
    assert_eq!(
        (
            code,
            serde_json::from_str::<Value>(&body).unwrap()["code"]
                .as_str()
                .unwrap()
        ),
        (404, "not_found")
    );
    let (code, body) = daemon.get("/v1/openapi.json", Some(&daemon.token));
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["paths"]["/v1/status"].is_object());
    let (code, metrics) = daemon.get("/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"starling_api_requests_total{route="/v1/status",status="401"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"starling_api_requests_total{route="/v1/status",status="200"} 2"#),
        "{metrics}"
    );

    // One daemon per data dir.
    let second = starling(
        &dir,
        &[
            "up",
            "--no-mdns",
            "--no-dht",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already runs"));

    let run_file = daemon.data_dir.join("run.json");
    assert!(daemon.terminate(), "SIGTERM is a clean exit");
    assert!(!run_file.exists(), "run.json is removed at shutdown");
    let after = starling(&dir, &["status"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("no daemon is running"));
}

#[test]
fn daemon_refuses_to_start_without_an_account_or_with_a_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = starling(
        &tmp.path().join("empty"),
        &[
            "up",
            "--no-mdns",
            "--no-dht",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no account"));

    let dir = tmp.path().join("node");
    json(starling(
        &dir,
        &["--json", "account", "create", "--display-name", "Bob"],
    ));
    std::fs::write(dir.join("starling.toml"), "apj = \"127.0.0.1:0\"\n").unwrap();
    let typo = starling(&dir, &["up"]);
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("unknown field"));
}

/// Conversations created back to back, one after another and eight at a
/// time, each get their own id: the initial commit carries a random nonce,
/// so neither the clock's second nor the device and mode make two ids meet.
/// The same holds for the one-to-one conversations of contact requests sent
/// in one burst, each inviting its own account.
#[test]
fn conversations_created_in_a_burst_get_distinct_ids() {
    use std::collections::BTreeSet;
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    alice.start(&[], &[]);
    let create = |title: String| -> String {
        let (code, body) = alice.api(
            "POST",
            "/v1/swarms",
            Some(&json!({ "title": title }).to_string()),
        );
        assert_eq!(code, 201, "create {title}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let mut ids: Vec<String> = (0..50).map(|i| create(format!("sequential {i}"))).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let create = &create;
                scope.spawn(move || {
                    (0..50)
                        .filter(|i| i % 8 == worker)
                        .map(|i| create(format!("parallel {i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            ids.extend(worker.join().unwrap());
        }
    });
    assert_eq!(ids.len(), 100);
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 100, "every creation has its own id");
    let listed: BTreeSet<String> = alice
        .cli(&["swarm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        distinct.iter().all(|id| listed.contains(*id)),
        "every created conversation is listed"
    );

    // Twenty contact requests at once, to twenty accounts that need not be
    // online: an invitation names only the account id.
    let accounts: Vec<String> = (0..20u8).map(hex_id).collect();
    let conversations: Vec<(String, String)> = std::thread::scope(|scope| {
        let requests: Vec<_> = accounts
            .iter()
            .map(|account| {
                let alice = &alice;
                scope.spawn(move || {
                    let body = json!({ "account_id": account }).to_string();
                    let (code, reply) = alice.api("POST", "/v1/contacts", Some(&body));
                    assert_eq!(code, 201, "contact add {account}: {reply}");
                    let entry: Value = serde_json::from_str(&reply).unwrap();
                    (
                        account.clone(),
                        entry["conversation"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = conversations.iter().map(|(_, c)| c).collect();
    assert_eq!(distinct.len(), 20, "one conversation per contact");
    for (account, conversation) in &conversations {
        let members = alice.cli(&["swarm", "members", conversation]);
        let invited: Vec<&str> = members
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "invited")
            .map(|m| m["account_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            invited,
            [account.as_str()],
            "{conversation} invites its own account"
        );
    }
    alice.stop();
}

/// A well-formed account id (64 lowercase hex digits) that no key needs to
/// back: an invitation names only the id.
fn hex_id(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}
