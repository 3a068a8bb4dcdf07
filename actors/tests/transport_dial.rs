//! Simultaneous dial (100 runs: exactly one connection survives on both
//! sides, the same one, and no channel opened during the race is lost) and
//! reconnection with backoff after the peer restarts.

mod transport_support;

use std::time::Duration;

use starling_actors::transport::*;
use transport_support::*;

fn fast_limits() -> TransportLimits {
    TransportLimits {
        duplicate_drain_grace: Duration::from_millis(100),
        handshake_timeout: Duration::from_millis(500),
        reconnect_backoff_min: Duration::from_millis(50),
        reconnect_backoff_max: Duration::from_millis(400),
        ..TransportLimits::default()
    }
}

/// Which socket a run uses.
#[derive(Clone, Copy, Debug)]
enum Net {
    Memory,
    Udp,
}

#[actix::test]
async fn simultaneous_dial_keeps_exactly_one_connection_in_memory() {
    simultaneous_dial(Net::Memory, 10_000).await;
}

#[actix::test]
async fn simultaneous_dial_keeps_exactly_one_connection_over_udp() {
    simultaneous_dial(Net::Udp, 20_000).await;
}

async fn simultaneous_dial(net: Net, base_seed: u64) {
    let runs = 100u64;
    let mut raced = 0;
    for run in 0..runs {
        // Fresh identities each run, so either side may hold the smaller id.
        let seed = base_seed + run * 10;
        println!("{net:?} run {run} seed {seed}");
        let (da, db) = (
            Account::new(seed).device(seed + 1),
            Account::new(seed + 2).device(seed + 3),
        );
        let network = MemoryNetwork::new();
        let socket = |port| -> std::sync::Arc<dyn quinn::AsyncUdpSocket> {
            match net {
                Net::Memory => network.bind(memory_addr(port)),
                Net::Udp => udp_socket(loopback()).unwrap(),
            }
        };
        let a = start_node(&da, socket(1), fast_limits(), vec![]);
        let b = start_node(&db, socket(2), fast_limits(), vec![]);
        let _a_seen = register_echo(&a, "sync").await;
        let _b_seen = register_echo(&b, "sync").await;
        let mut a_events = subscribe_events(&a).await;
        let mut b_events = subscribe_events(&b).await;

        let (ab, ba) = within("both dial", async {
            futures::join!(connect(&a, &b), connect(&b, &a))
        })
        .await;
        assert_eq!(ab.unwrap(), db.verified());
        assert_eq!(ba.unwrap(), da.verified());
        // Channels opened during the race, both ways, all arrive.
        let payload = format!("run {run}").into_bytes();
        let (x, y, z) = within("race channels", async {
            futures::join!(
                echo_over(&a, &db, "sync", &payload),
                echo_over(&b, &da, "sync", &payload),
                echo_over(&a, &db, "sync", &payload),
            )
        })
        .await;
        assert_eq!(
            (x.as_slice(), y.as_slice(), z.as_slice()),
            (&payload[..], &payload[..], &payload[..])
        );

        let mut a_status = status(&a).await;
        let mut b_status = status(&b).await;
        within("one connection left", async {
            while a_status.connections.len() != 1 || b_status.connections.len() != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                a_status = status(&a).await;
                b_status = status(&b).await;
            }
        })
        .await;
        let (ca, cb) = (&a_status.connections[0], &b_status.connections[0]);
        assert!(!ca.draining && !cb.draining);
        // The survivor is the connection dialled by the smaller device id, on both sides.
        let a_dials = da.cert.id() < db.cert.id();
        let expected_a = if a_dials {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        let expected_b = if a_dials {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        assert_eq!(
            (ca.direction, cb.direction),
            (expected_a, expected_b),
            "run {run}"
        );
        if metric(
            &a.registry,
            "starling_transport_connections_closed_total",
            &[("reason", "duplicate")],
        ) > 0.0
        {
            raced += 1;
        }
        // Each side saw the peer come up once and never go down.
        for (events, peer) in [(&mut a_events, &db), (&mut b_events, &da)] {
            let first = events.try_recv().expect("an Up event");
            assert_eq!(first.peer, peer.verified());
            assert!(
                matches!(first.state, PeerState::Up { .. }),
                "run {run}: {first:?}"
            );
            assert!(events.try_recv().is_err(), "run {run}: extra event");
        }
        a.addr.send(Shutdown).await.unwrap();
        b.addr.send(Shutdown).await.unwrap();
    }
    println!("{raced} of {runs} runs had two connections to de-duplicate");
    assert!(
        raced > 0,
        "the race never happened; the test proves nothing"
    );
}

#[actix::test]
async fn reconnects_with_backoff_after_the_peer_restarts() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let network = MemoryNetwork::new();
    let a = start_node(&da, network.bind(memory_addr(1)), fast_limits(), vec![]);
    let b = start_node(&db, network.bind(memory_addr(2)), fast_limits(), vec![]);
    let _b_seen = register_echo(&b, "sync").await;
    let mut events = subscribe_events(&a).await;
    a.addr
        .send(WantPeer {
            addr: b.socket_addr,
            peer: db.expected(),
        })
        .await
        .unwrap();
    let up = within("up", events.recv()).await.unwrap();
    assert_eq!(up.peer, db.verified());
    assert_eq!(
        within("echo", echo_over(&a, &db, "sync", b"one")).await,
        b"one"
    );

    // B stops; A sees it go and keeps trying while B is away.
    b.addr.send(Shutdown).await.unwrap();
    let down = within("down", events.recv()).await.unwrap();
    assert_eq!(
        down.state,
        PeerState::Down {
            reason: "peer_shutdown"
        }
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let failures = metric(
        &a.registry,
        "starling_transport_handshakes_failed_total",
        &[],
    );
    assert!(failures >= 1.0, "A should have retried while B was away");
    // Backoff: attempts double from 50 ms to a 400 ms cap, so 1.2 s holds
    // only a handful of attempts (each also waits its 500 ms handshake timeout).
    assert!(failures <= 6.0, "{failures} attempts in 1.2 s: no backoff");

    // B restarts at the same address with the same identity.
    let b2 = start_node(&db, network.bind(memory_addr(2)), fast_limits(), vec![]);
    let _b2_seen = register_echo(&b2, "sync").await;
    let up = within("up again", events.recv()).await.unwrap();
    assert_eq!(up.peer, db.verified());
    assert!(matches!(up.state, PeerState::Up { .. }));
    assert_eq!(
        within("echo again", echo_over(&a, &db, "sync", b"two")).await,
        b"two"
    );
}
