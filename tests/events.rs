//! The event stream and the swarm operations, through real daemons:
//!
//! - three daemons (alice, bob, carol) on loopback; bob follows
//!   `GET /v1/events` with a real WebSocket client (and `starling events
//!   --json` as a second, CLI, subscriber); alice sends, replies, edits,
//!   reacts, deletes, changes the profile and bans carol; bob's stream shows
//!   each of those as events, and bob's `messages --json` shows them applied
//!   (pages with `--limit` and `--before`). Carol, banned, is refused and
//!   gets nothing alice writes afterwards. `starling events` ends cleanly
//!   when bob's daemon stops.
//! - a subscriber that does not read while hundreds of large messages are
//!   written gets a `lagged` event with the number lost, then the stream
//!   goes on, and the daemon's memory stays bounded (the dropped counter
//!   moves; the daemon keeps answering).
//! - `promtool check metrics` (Debian's prometheus package) accepts
//!   `/metrics` with the event-stream metrics in it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

mod support;

use support::{node::Node, wait_for, STARTUP_DEADLINE, SYNC_DEADLINE};

/// A WebSocket subscriber of `/v1/events` and every event it has read.
struct Events {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    seen: Vec<Value>,
}

impl Events {
    /// Opens `/v1/events` on `node` with `token`.
    fn open(node: &Node, token: &str) -> Result<Events, tungstenite::Error> {
        let url = format!("{}/v1/events", node.api.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tungstenite::connect(request)?;
        Ok(Events {
            socket,
            seen: Vec::new(),
        })
    }

    /// Opens `/v1/events` on `node` on a socket whose receive buffer is small
    /// and fixed (no autotuning), so a client that does not read pushes back
    /// on the daemon after kilobytes rather than megabytes.
    fn open_small_buffer(node: &Node) -> Events {
        use std::os::fd::AsRawFd;
        let address = node.api.trim_start_matches("http://");
        let stream = TcpStream::connect(address).unwrap();
        let bytes: libc::c_int = SMALL_RECEIVE_BUFFER_BYTES;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &bytes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
        let url = format!("ws://{address}/v1/events");
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", node.token).parse().unwrap(),
        );
        let (socket, _) = tungstenite::client(request, MaybeTlsStream::Plain(stream)).unwrap();
        Events {
            socket,
            seen: Vec::new(),
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) {
        if let MaybeTlsStream::Plain(stream) = self.socket.get_mut() {
            stream.set_read_timeout(Some(timeout)).unwrap();
        }
    }

    /// Reads one event, or `None` if none came within the read timeout.
    fn read_one(&mut self) -> Option<Value> {
        match self.socket.read() {
            Ok(Message::Text(text)) => {
                let event: Value = serde_json::from_str(&text).expect("events are JSON");
                assert!(
                    event["type"].is_string(),
                    "an event without a type: {event}"
                );
                self.seen.push(event.clone());
                Some(event)
            }
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("event stream: {e}"),
        }
    }

    /// The first event (already read or arriving) that `matches`.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|e| matches(e)) {
            return found.clone();
        }
        self.set_read_timeout(Duration::from_millis(200));
        let deadline = Instant::now() + SYNC_DEADLINE;
        loop {
            if let Some(event) = self.read_one() {
                if matches(&event) {
                    return event;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event within {SYNC_DEADLINE:?}; seen: {:#?}",
                self.seen.iter().map(summary).collect::<Vec<_>>()
            );
        }
    }
}

/// An event without its (possibly huge) body, for failure messages.
fn summary(event: &Value) -> String {
    let mut event = event.clone();
    if let Some(body) = event.get_mut("body") {
        let text = body.as_str().unwrap_or("");
        *body = Value::from(text.chars().take(40).collect::<String>());
    }
    event.to_string()
}

fn is_message(event: &Value, kind: &str, id: &str) -> bool {
    event["type"] == "message" && event["kind"] == kind && event["id"] == id
}

#[test]
fn bobs_event_stream_and_listing_follow_alices_edits_reactions_profile_and_ban() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    let mut bob = Node::create(tmp.path(), "bob");
    let mut carol = Node::create(tmp.path(), "carol");
    let (a, b, c) = (alice.peer_addr(), bob.peer_addr(), carol.peer_addr());
    alice.start(&[b.clone(), c.clone()], &[]);
    bob.start(&[a.clone(), c.clone()], &[]);
    carol.start(&[a.clone(), b.clone()], &[]);

    // Header auth only: a wrong token is refused before the upgrade.
    match Events::open(&bob, "wrong") {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(other) => panic!("expected 401, got {other}"),
        Ok(_) => panic!("a wrong token opened the event stream"),
    }
    let mut stream = Events::open(&bob, &bob.token).unwrap();
    // The CLI follows the same stream, as JSON lines.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(&bob.dir)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let cli_out = cli.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(cli_out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    wait_for("bob's two subscribers", || {
        (bob.metric("starling_events_subscribers", &[]) == 2.0).then_some(())
    });

    let id = alice.id_of(&["swarm", "create", "--title", "Flock"]);
    alice.cli(&["swarm", "invite", &id, &bob.account_id]);
    alice.cli(&["swarm", "invite", &id, &carol.account_id]);
    for invitee in [&bob, &carol] {
        wait_for("the invitation", || {
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
    wait_for("alice to see both joins", || {
        let members = alice.cli(&["swarm", "members", &id]);
        let members = members.as_array().unwrap();
        (members.len() == 3 && members.iter().all(|m| m["role"] != "invited")).then_some(())
    });
    // Bob's own join is a member event on his stream.
    stream.wait_for("bob's join", |e| {
        e["type"] == "member" && e["action"] == "join" && e["account_id"] == bob.account_id.as_str()
    });
    // Connections were up before bob subscribed; carol's join reaches bob by sync.
    stream.wait_for("carol's join", |e| {
        e["type"] == "member"
            && e["action"] == "join"
            && e["account_id"] == carol.account_id.as_str()
    });

    let hello = alice.id_of(&["send", &id, "hello"]);
    let second = alice.id_of(&["send", &id, "second thought"]);
    let reply = carol.id_of(&["send", &id, "hi alice", "--reply-to", &hello]);
    let edit = alice.id_of(&["edit", &id, &hello, "hello, flock"]);
    let reaction = carol.id_of(&["react", &id, &hello, "👍"]);
    let deletion = alice.id_of(&["delete", &id, &second]);
    // Carol may not edit alice's message: the rules let the commit in, the
    // display ignores it.
    carol.cli(&["edit", &id, &hello, "carol was here"]);
    let profile = alice.id_of(&[
        "swarm",
        "profile",
        &id,
        "--title",
        "Flock II",
        "--description",
        "birds",
    ]);

    let event = stream.wait_for("hello", |e| is_message(e, "text", &hello));
    assert_eq!(event["conversation"], id.as_str());
    assert_eq!(event["author"], alice.account_id.as_str());
    assert_eq!(event["body"], "hello");
    assert!(event["timestamp"].as_i64().unwrap() > 0);
    let event = stream.wait_for("the reply", |e| is_message(e, "reply", &reply));
    assert_eq!(
        (event["reply_to"].as_str(), event["author"].as_str()),
        (Some(hello.as_str()), Some(carol.account_id.as_str()))
    );
    let event = stream.wait_for("the edit", |e| is_message(e, "edit", &edit));
    assert_eq!(
        (event["target"].as_str(), event["body"].as_str()),
        (Some(hello.as_str()), Some("hello, flock"))
    );
    let event = stream.wait_for("the reaction", |e| is_message(e, "reaction", &reaction));
    assert_eq!(
        (event["target"].as_str(), event["body"].as_str()),
        (Some(hello.as_str()), Some("👍"))
    );
    let event = stream.wait_for("the deletion", |e| is_message(e, "delete", &deletion));
    assert_eq!(
        (event["target"].as_str(), event["body"].as_str()),
        (Some(second.as_str()), Some(""))
    );
    let event = stream.wait_for("the profile change", |e| {
        e["type"] == "profile" && e["id"] == profile.as_str()
    });
    assert_eq!(event["by"], alice.account_id.as_str());
    let event = stream.wait_for("a sync", |e| e["type"] == "sync" && e["state"] == "fetched");
    assert_eq!(event["conversation"], id.as_str());
    assert!(event["peer"].as_str().unwrap().len() == 64);

    // Bob's listing applies what the events said (newest first).
    let listed = wait_for("bob's listing to hold everything", || {
        let list = bob.cli(&["messages", &id]);
        let list = list.as_array().unwrap().clone();
        let hello_item = list.iter().find(|m| m["id"] == hello.as_str())?;
        (list.len() == 3 && hello_item["reactions"].is_array() && hello_item["edited"] == true)
            .then_some(list)
    });
    let by_id = |want: &str| listed.iter().find(|m| m["id"] == want).unwrap().clone();
    let item = by_id(&hello);
    assert_eq!(
        (item["body"].as_str(), item["author"].as_str()),
        (Some("hello, flock"), Some(alice.account_id.as_str()))
    );
    assert_eq!(item["reactions"][0]["reaction"], "👍");
    assert_eq!(item["reactions"][0]["count"], 1);
    assert_eq!(
        item["reactions"][0]["accounts"][0],
        carol.account_id.as_str()
    );
    let item = by_id(&second);
    assert_eq!(
        (item["deleted"].as_bool(), item["body"].as_str()),
        (Some(true), Some(""))
    );
    let item = by_id(&reply);
    assert_eq!(item["reply_to"], hello.as_str());
    // Newest first: what descends from hello is listed before it.
    let position = |want: &str| listed.iter().position(|m| m["id"] == want).unwrap();
    assert!(position(&reply) < position(&hello) && position(&second) < position(&hello));
    // Pages: one at a time with the cursor.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["messages", id.as_str(), "--limit", "1"];
        if let Some(c) = &cursor {
            args.extend(["--before", c.as_str()]);
        }
        let page = bob.cli(&args);
        let page = page.as_array().unwrap();
        let Some(item) = page.first() else { break };
        assert_eq!(page.len(), 1);
        cursor = Some(item["id"].as_str().unwrap().to_owned());
        paged.push(item["id"].clone());
        assert!(paged.len() <= 3, "paging did not end");
    }
    let ids: Vec<Value> = listed.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(paged, ids);
    let profile = bob.cli(&["swarm", "profile", &id]);
    assert_eq!(
        (profile["title"].as_str(), profile["description"].as_str()),
        (Some("Flock II"), Some("birds"))
    );

    // Only admins ban; carol is not one.
    assert!(carol
        .try_cli(&["swarm", "ban", &id, &bob.account_id])
        .is_err());
    // Alice, the only admin, votes and bans at once.
    let banned = alice.cli(&["swarm", "ban", &id, &carol.account_id]);
    assert_eq!(
        (banned["voted"].as_bool(), banned["done"].as_bool()),
        (Some(true), Some(true))
    );
    stream.wait_for("carol's ban", |e| {
        e["type"] == "member"
            && e["action"] == "ban"
            && e["account_id"] == carol.account_id.as_str()
    });
    stream.wait_for("alice's vote", |e| {
        e["type"] == "member" && e["action"] == "vote_ban" && e["by"] == alice.account_id.as_str()
    });
    let members = bob.cli(&["swarm", "members", &id]);
    assert!(members
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["account_id"] != carol.account_id.as_str()));

    // From the ban on, carol gets nothing new: alice refuses her channels.
    let refused_before = alice.metric("starling_swarm_channels_refused_total", &[]);
    let after = alice.id_of(&["send", &id, "after the ban"]);
    stream.wait_for("the message after the ban", |e| {
        is_message(e, "text", &after)
    });
    wait_for("alice to refuse carol", || {
        (alice.metric("starling_swarm_channels_refused_total", &[]) > refused_before).then_some(())
    });
    let carols = carol.cli(&["messages", &id]);
    assert!(
        carols
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != after.as_str()),
        "carol, banned, got a message written after her ban"
    );

    // The CLI saw the same events, as JSON lines.
    let mut cli_events = Vec::new();
    let deadline = Instant::now() + SYNC_DEADLINE;
    while !cli_events
        .iter()
        .any(|e: &Value| is_message(e, "text", &after))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("starling events printed the events");
        cli_events.push(serde_json::from_str(&line).expect("--json prints JSON lines"));
    }
    assert!(cli_events.iter().any(|e| is_message(e, "edit", &edit)));

    // `starling events` ends with status 0 when the daemon goes away.
    drop(stream);
    bob.stop();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let status = loop {
        if let Some(status) = cli.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            panic!("starling events did not end after the daemon stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "starling events exited with {status}");
}

/// Messages written while the subscriber does not read; each is large, so
/// together (about 20 MB) they overflow what lies between the bus and the
/// reader: the bus ring (256 events), actix-ws's 32 frames, the daemon's
/// socket send buffer (at most 4 MB here) and the reader's small receive
/// buffer.
const FLOOD_MESSAGES: usize = 640;
const FLOOD_TEXT_BYTES: usize = 32_000;
/// The slow reader's fixed socket receive buffer.
const SMALL_RECEIVE_BUFFER_BYTES: libc::c_int = 16 * 1024;
/// How long a write may take during the flood, while the daemon also pushes
/// megabytes of events at its subscribers.
const FLOOD_POST_TIMEOUT: Duration = Duration::from_secs(30);

fn post_under_load(node: &Node, path: &str, body: &str) -> (u16, String) {
    node.request_within(FLOOD_POST_TIMEOUT, "POST", path, &node.token, Some(body))
}

#[test]
fn a_subscriber_that_does_not_read_is_told_what_it_lost_and_the_stream_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    alice.start(&[], &[]);
    let id = alice.id_of(&["swarm", "create"]);
    let mut slow = Events::open_small_buffer(&alice);
    let mut prompt = Events::open(&alice, &alice.token).unwrap();
    prompt.set_read_timeout(Duration::from_millis(20));
    let text = "x".repeat(FLOOD_TEXT_BYTES);
    let path = format!("/v1/swarms/{id}/messages");
    let mut last = String::new();
    for n in 0..FLOOD_MESSAGES {
        let body = serde_json::json!({ "text": format!("{n} {text}") }).to_string();
        let (code, answer) = post_under_load(&alice, &path, &body);
        assert_eq!(code, 201, "{answer}");
        last = serde_json::from_str::<Value>(&answer).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // The prompt subscriber keeps up, so only the slow one lags.
        while prompt.read_one().is_some() {}
    }
    prompt.wait_for("the last message", |e| is_message(e, "text", &last));
    assert!(
        !prompt.seen.iter().any(|e| e["type"] == "lagged"),
        "a subscriber that keeps up lost events"
    );
    // The slow one now reads: it learns how many it lost, then goes on to the end.
    let lagged = slow.wait_for("lagged", |e| e["type"] == "lagged");
    let dropped = lagged["dropped"].as_u64().unwrap();
    assert!(dropped > 0);
    slow.wait_for("the last message", |e| is_message(e, "text", &last));
    let received = slow.seen.iter().filter(|e| e["type"] == "message").count();
    assert!(
        received < FLOOD_MESSAGES,
        "the slow subscriber got all {received} messages: nothing was bounded"
    );
    assert!(alice.metric("starling_events_dropped_total", &[]) >= dropped as f64);
    eprintln!("slow subscriber: {received} of {FLOOD_MESSAGES} messages, told {dropped} lost");
    // The daemon answers as before.
    let (code, _) = post_under_load(&alice, &path, r#"{"text":"still here"}"#);
    assert_eq!(code, 201);
}

#[test]
fn promtool_accepts_the_daemons_metrics() {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing; scripts/install-deps.sh installs Debian's prometheus package"
        );
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    alice.start(&[], &[]);
    let id = alice.id_of(&["swarm", "create"]);
    let _subscriber = Events::open(&alice, &alice.token).unwrap();
    alice.cli(&["send", &id, "for the counters"]);
    let text = alice.metrics_text();
    for name in [
        "starling_events_subscribers",
        "starling_events_dropped_total",
        "starling_events_published_total",
        "starling_messages_sent_total",
        "starling_transport_handshakes_ok_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn openapi_describes_the_event_stream_and_the_swarm_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = Node::create(tmp.path(), "alice");
    alice.start(&[], &[]);
    let document: Value = ureq::get(&format!("{}/v1/openapi.json", alice.api))
        .set("Authorization", &format!("Bearer {}", alice.token))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    for path in [
        "/v1/events",
        "/v1/swarms/{id}/messages/{message}/edit",
        "/v1/swarms/{id}/messages/{message}/delete",
        "/v1/swarms/{id}/messages/{message}/reactions",
        "/v1/swarms/{id}/ban",
        "/v1/swarms/{id}/unban",
        "/v1/swarms/{id}/profile",
    ] {
        assert!(document["paths"][path].is_object(), "openapi lacks {path}");
    }
    let variants: Vec<&str> = document["components"]["schemas"]["Event"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    for kind in [
        "message",
        "member",
        "profile",
        "sync",
        "connection",
        "lagged",
        "omitted",
    ] {
        assert!(variants.contains(&kind), "the Event schema lacks {kind}");
    }
    let parameters = document["paths"]["/v1/swarms/{id}/messages"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(parameters.iter().any(|p| p["name"] == "before"));
    // A plain GET (no upgrade) is a 400, not a hang; without a token, 401.
    let plain = ureq::get(&format!("{}/v1/events", alice.api))
        .set("Authorization", &format!("Bearer {}", alice.token))
        .call();
    assert!(
        matches!(plain, Err(ureq::Error::Status(400, _))),
        "{plain:?}"
    );
    let anonymous = ureq::get(&format!("{}/v1/events", alice.api)).call();
    assert!(
        matches!(anonymous, Err(ureq::Error::Status(401, _))),
        "{anonymous:?}"
    );
}
