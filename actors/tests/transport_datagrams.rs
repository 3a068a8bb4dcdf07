//! Datagrams per connection: delivered to the subscriber with the sender's
//! proven identity, oversize ones refused with a typed error, and ones nobody
//! subscribed to dropped and counted.

mod transport_support;

use actix::prelude::*;
use bytes::Bytes;
use starling_actors::transport::*;
use tokio::sync::mpsc;
use transport_support::*;

struct Sink(mpsc::Sender<DatagramReceived>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<DatagramReceived> for Sink {
    type Result = ();
    fn handle(&mut self, msg: DatagramReceived, _ctx: &mut Context<Self>) {
        let _ = self.0.try_send(msg);
    }
}

#[actix::test]
async fn datagrams_both_ways() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let (sa, sb) = MemoryNetwork::pair(memory_addr(1), memory_addr(2));
    let a = start_node(&da, sa, TransportLimits::default(), vec![]);
    let b = start_node(&db, sb, TransportLimits::default(), vec![]);
    within("connect", connect(&a, &b)).await.unwrap();

    // Nobody subscribed on B yet: dropped and counted.
    a.addr
        .send(SendDatagram {
            peer: db.cert.id(),
            payload: Bytes::from_static(b"lost"),
        })
        .await
        .unwrap()
        .unwrap();
    eventually("drop counted", || {
        metric(
            &b.registry,
            "starling_transport_datagrams_dropped_total",
            &[],
        ) == 1.0
    })
    .await;

    let (tx, mut rx) = mpsc::channel(16);
    b.addr
        .send(SubscribeDatagrams(Sink(tx).start().recipient()))
        .await
        .unwrap();
    let (tx_a, mut rx_a) = mpsc::channel(16);
    a.addr
        .send(SubscribeDatagrams(Sink(tx_a).start().recipient()))
        .await
        .unwrap();
    a.addr
        .send(SendDatagram {
            peer: db.cert.id(),
            payload: Bytes::from_static(b"frame 1"),
        })
        .await
        .unwrap()
        .unwrap();
    let got = within("b receives", rx.recv()).await.unwrap();
    assert_eq!(got.peer, da.verified());
    assert_eq!(&got.payload[..], b"frame 1");
    b.addr
        .send(SendDatagram {
            peer: da.cert.id(),
            payload: Bytes::from_static(b"frame 2"),
        })
        .await
        .unwrap()
        .unwrap();
    let got = within("a receives", rx_a.recv()).await.unwrap();
    assert_eq!(got.peer, db.verified());
    assert_eq!(&got.payload[..], b"frame 2");

    let result = a
        .addr
        .send(SendDatagram {
            peer: db.cert.id(),
            payload: Bytes::from(vec![0u8; 100_000]),
        })
        .await
        .unwrap();
    assert!(
        matches!(result, Err(DatagramError::TooLarge { found: 100_000, max }) if max > 1000),
        "{result:?}"
    );
    let stranger = Account::new(3).device(31);
    let result = a
        .addr
        .send(SendDatagram {
            peer: stranger.cert.id(),
            payload: Bytes::from_static(b"x"),
        })
        .await
        .unwrap();
    assert!(matches!(result, Err(DatagramError::NotConnected(_))));
}
