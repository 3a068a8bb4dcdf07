//! The remaining limits: undecided channels per connection (and what the
//! opener sees when a handler drops one), idle timeout and keep-alive.

mod transport_support;

use std::time::Duration;

use actix::prelude::*;
use starling_actors::transport::*;
use starling_protocol::channel::{ChannelName, ChannelPattern, ReplyCode};
use transport_support::*;

/// Holds every channel undecided until told to drop them.
struct Ditherer(Vec<PendingChannel>);

impl Actor for Ditherer {
    type Context = Context<Self>;
}

impl Handler<IncomingChannel> for Ditherer {
    type Result = ();
    fn handle(&mut self, msg: IncomingChannel, _ctx: &mut Context<Self>) {
        self.0.push(msg.channel);
    }
}

#[derive(Message)]
#[rtype(result = "usize")]
struct DropAll;

impl Handler<DropAll> for Ditherer {
    type Result = usize;
    fn handle(&mut self, _msg: DropAll, _ctx: &mut Context<Self>) -> usize {
        let held = self.0.len();
        self.0.clear();
        held
    }
}

#[actix::test]
async fn undecided_channels_are_bounded_and_dropping_one_refuses_it() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let (sa, sb) = MemoryNetwork::pair(memory_addr(1), memory_addr(2));
    let a = start_node(&da, sa, TransportLimits::default(), vec![]);
    let limits = TransportLimits {
        pending_accepts: 2,
        ..TransportLimits::default()
    };
    let b = start_node(&db, sb, limits, vec![]);
    let ditherer = Ditherer(Vec::new()).start();
    b.addr
        .send(RegisterChannel {
            pattern: ChannelPattern::new("file/*").unwrap(),
            handler: ditherer.clone().recipient(),
        })
        .await
        .unwrap()
        .unwrap();
    within("connect", connect(&a, &b)).await.unwrap();
    let open = || {
        a.addr.send(OpenChannel {
            peer: db.cert.id(),
            name: ChannelName::new("file/1").unwrap(),
        })
    };
    // Two openers wait on an undecided handler…
    let waiting = [actix::spawn(open()), actix::spawn(open())];
    let mut held = 0;
    within("handler holds two", async {
        while held < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            held = ditherer.send(Count).await.unwrap();
        }
    })
    .await;
    // …so the third is refused as busy.
    match within("third", open()).await.unwrap() {
        Err(ChannelError::Refused { code, .. }) => assert_eq!(code, ReplyCode::Busy),
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(
        metric(
            &b.registry,
            "starling_transport_channels_refused_total",
            &[("reason", "busy")]
        ),
        1.0
    );
    // Dropping the undecided channels refuses them.
    assert_eq!(ditherer.send(DropAll).await.unwrap(), 2);
    for opener in waiting {
        match within("dropped", opener).await.unwrap().unwrap() {
            Err(ChannelError::Refused { code, .. }) => assert_eq!(code, ReplyCode::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
    assert_eq!(
        metric(
            &b.registry,
            "starling_transport_channels_refused_total",
            &[("side", "local"), ("reason", "unavailable")]
        ),
        2.0
    );
}

#[derive(Message)]
#[rtype(result = "usize")]
struct Count;

impl Handler<Count> for Ditherer {
    type Result = usize;
    fn handle(&mut self, _msg: Count, _ctx: &mut Context<Self>) -> usize {
        self.0.len()
    }
}

#[actix::test]
async fn idle_connections_close_unless_kept_alive() {
    let idle = TransportLimits {
        idle_timeout: Duration::from_millis(300),
        keep_alive: Duration::from_secs(10),
        ..TransportLimits::default()
    };
    let kept = TransportLimits {
        idle_timeout: Duration::from_millis(300),
        keep_alive: Duration::from_millis(80),
        ..TransportLimits::default()
    };
    for (limits, should_survive) in [(idle, false), (kept, true)] {
        let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
        let (sa, sb) = MemoryNetwork::pair(memory_addr(1), memory_addr(2));
        let a = start_node(&da, sa, limits.clone(), vec![]);
        let b = start_node(&db, sb, limits, vec![]);
        let mut events = subscribe_events(&a).await;
        within("connect", connect(&a, &b)).await.unwrap();
        let up = within("up", events.recv()).await.unwrap();
        assert!(matches!(up.state, PeerState::Up { .. }));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let connections = status(&a).await.connections.len();
        if should_survive {
            assert_eq!(connections, 1, "keep-alive should hold the connection");
            assert!(events.try_recv().is_err());
        } else {
            assert_eq!(connections, 0, "idle connection should have closed");
            let down = events.try_recv().unwrap();
            assert_eq!(down.state, PeerState::Down { reason: "timeout" });
        }
        a.addr.send(Shutdown).await.unwrap();
        b.addr.send(Shutdown).await.unwrap();
    }
}
