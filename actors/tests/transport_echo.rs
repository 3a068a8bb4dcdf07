//! Two transports over real loopback UDP and over the in-memory socket pair:
//! handshake, channels opened both ways, echo, close; each side sees the
//! other's proven (account, device) identity.

mod transport_support;

use std::sync::Arc;

use quinn::AsyncUdpSocket;
use starling_actors::transport::*;
use starling_protocol::channel::ChannelName;
use transport_support::*;

async fn handshake_channels_echo_close(
    socket_a: Arc<dyn AsyncUdpSocket>,
    socket_b: Arc<dyn AsyncUdpSocket>,
) {
    let alice = Account::new(1);
    let bob = Account::new(2);
    let (da, db) = (alice.device(11), bob.device(21));
    let a = start_node(&da, socket_a, TransportLimits::default(), vec![]);
    let b = start_node(&db, socket_b, TransportLimits::default(), vec![]);
    let mut a_seen = register_echo(&a, "sync").await;
    let mut b_seen = register_echo(&b, "swarm/*").await;
    let mut b_events = subscribe_events(&b).await;

    let proven = within("connect", connect(&a, &b)).await.unwrap();
    assert_eq!(proven, db.verified());
    assert_eq!(proven.account_id, bob.cert.id());

    // A → B on a prefix pattern, B → A on an exact name, with payloads that
    // span many packets.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let back = within("echo a->b", echo_over(&a, &db, "swarm/0123abcd", &payload)).await;
    assert_eq!(back, payload);
    let (peer, name) = within("b sees channel", b_seen.recv()).await.unwrap();
    assert_eq!(peer, da.verified());
    assert_eq!(name, ChannelName::new("swarm/0123abcd").unwrap());

    let back = within("echo b->a", echo_over(&b, &da, "sync", b"hello alice")).await;
    assert_eq!(back, b"hello alice");
    let (peer, _) = within("a sees channel", a_seen.recv()).await.unwrap();
    assert_eq!(peer, db.verified());

    let up = within("b sees up", b_events.recv()).await.unwrap();
    assert_eq!(up.peer, da.verified());
    assert!(matches!(up.state, PeerState::Up { .. }));

    for node in [&a, &b] {
        assert_eq!(
            metric(
                &node.registry,
                "starling_transport_handshakes_ok_total",
                &[]
            ),
            1.0
        );
        assert!(metric(&node.registry, "starling_transport_sent_bytes_total", &[]) >= 0.0);
    }
    eventually("channels closed", || {
        metric(&a.registry, "starling_transport_channels_open", &[]) == 0.0
            && metric(&b.registry, "starling_transport_channels_open", &[]) == 0.0
    })
    .await;

    // Close: A shuts down, B sees the peer go down with A's reason.
    a.addr.send(Shutdown).await.unwrap();
    let down = within("b sees down", b_events.recv()).await.unwrap();
    assert_eq!(down.peer, da.verified());
    assert_eq!(
        down.state,
        PeerState::Down {
            reason: "peer_shutdown"
        }
    );
    assert!(status(&b).await.connections.is_empty());
    assert!(metric(&b.registry, "starling_transport_received_bytes_total", &[]) > 200_000.0);
}

#[actix::test]
async fn echo_over_loopback_udp() {
    handshake_channels_echo_close(
        udp_socket(loopback()).unwrap(),
        udp_socket(loopback()).unwrap(),
    )
    .await;
}

#[actix::test]
async fn echo_over_memory_sockets() {
    let (a, b) = MemoryNetwork::pair(memory_addr(1), memory_addr(2));
    handshake_channels_echo_close(a, b).await;
}
