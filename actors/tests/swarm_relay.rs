//! Inline packs are passed on, over real QUIC on loopback: alice, bob and
//! carol share a swarm, connected in a line (alice – bob – carol). A message
//! alice sends reaches bob as an inline pack; bob takes it and passes the
//! same pack on, so carol, who is not connected to alice, takes the message
//! without a fetch. Before, bob announced only the head and carol fetched it.
//! A join commit goes out with its pack too: the inviter takes it without a
//! fetch.

use std::time::Duration;

use actix::prelude::*;
use prometheus::Registry;
use starling_actors::account::swarms::{
    AddPeer, CreateSwarm, Invite, Join, ListInvitations, ListSwarms, SendText,
};
use starling_actors::account::{Account, SwarmConfig};
use starling_actors::conversation::SwarmMetrics;
use starling_actors::transport::{Disconnect, Status, Transport, UnwantPeer};
use starling_protocol::swarm::body::Mode;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::AccountIdentity;

mod swarm_support;

use swarm_support::{counter, eventually, loopback_transport};

struct Node {
    identity: AccountIdentity,
    transport: Addr<Transport>,
    account: Addr<Account>,
    registry: Registry,
}

impl Node {
    fn start(identity: AccountIdentity, dir: &std::path::Path) -> Self {
        let registry = Registry::new();
        let transport = loopback_transport(&identity, &registry, 7);
        let account = Account::with_swarms(
            identity.clone(),
            SwarmConfig {
                transport: transport.clone(),
                dir: dir.to_owned(),
                metrics: SwarmMetrics::register(&registry).unwrap(),
            },
        )
        .unwrap()
        .start();
        Self {
            identity,
            transport,
            account,
            registry,
        }
    }

    async fn addr(&self) -> std::net::SocketAddr {
        self.transport.send(Status).await.unwrap().local_addr
    }

    async fn add_peer(&self, other: &Node) {
        self.account
            .send(AddPeer {
                addr: other.addr().await,
                account: other.identity.account_id(),
            })
            .await
            .unwrap()
            .unwrap();
    }

    async fn head(&self) -> Option<Vec<CommitId>> {
        let list = self.account.send(ListSwarms).await.unwrap().unwrap();
        list.first().map(|s| s.tips.clone())
    }

    fn fetches(&self) -> f64 {
        counter(&self.registry, "starling_swarm_fetches_total", &[])
    }
}

async fn same_head(nodes: &[&Node]) -> Option<Vec<CommitId>> {
    let first = nodes[0].head().await?;
    for node in &nodes[1..] {
        if node.head().await.as_ref() != Some(&first) {
            return None;
        }
    }
    Some(first)
}

#[actix::test]
async fn a_member_passes_an_inline_pack_on_and_the_next_one_needs_no_fetch() {
    let now = std::time::SystemTime::now();
    let mut rng = rand_core::OsRng;
    let dir = tempfile::tempdir().unwrap();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|name| {
        let identity = AccountIdentity::generate(name, now, &mut rng).unwrap();
        Node::start(identity, &dir.path().join(name))
    });

    // Both join by cloning from alice, the swarm's creator.
    bob.add_peer(&alice).await;
    carol.add_peer(&alice).await;
    let id = alice
        .account
        .send(CreateSwarm {
            mode: Mode::InvitesOnly,
            title: None,
        })
        .await
        .unwrap()
        .unwrap();
    for invitee in [&bob, &carol] {
        alice
            .account
            .send(Invite {
                conversation: id,
                account: invitee.identity.account_id(),
            })
            .await
            .unwrap()
            .unwrap();
        eventually("the invitation", || async {
            let list = invitee
                .account
                .send(ListInvitations)
                .await
                .unwrap()
                .unwrap();
            list.iter().any(|i| i.conversation == id).then_some(())
        })
        .await;
        invitee
            .account
            .send(Join { conversation: id })
            .await
            .unwrap()
            .unwrap();
    }

    let line = [&alice, &bob, &carol];
    eventually("both joins everywhere", || same_head(&line)).await;
    // A join commit goes out with its pack.
    assert_eq!(
        alice.fetches(),
        0.0,
        "alice took both joins without a fetch"
    );

    // Then the line: carol leaves alice for bob.
    carol.add_peer(&bob).await;
    carol
        .transport
        .send(UnwantPeer {
            addr: alice.addr().await,
        })
        .await
        .unwrap();
    carol
        .transport
        .send(Disconnect {
            peer: alice.identity.device_id(),
        })
        .await
        .unwrap();
    eventually("carol connected to bob only", || async {
        let connections = carol.transport.send(Status).await.unwrap().connections;
        let peers: Vec<_> = connections.iter().map(|c| c.peer.device_id).collect();
        (peers == [bob.identity.device_id()]).then_some(())
    })
    .await;
    // Anti-entropy may still be settling a fetch; let it finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetches_before = carol.fetches();

    alice
        .account
        .send(SendText {
            conversation: id,
            text: "hello down the line".into(),
            reply_to: None,
        })
        .await
        .unwrap()
        .unwrap();
    let head = eventually("the message on alice", || async {
        let head = alice.head().await?;
        (bob.head().await.as_ref() == Some(&head)).then_some(head)
    })
    .await;
    eventually("carol to take the message", || async {
        (carol.head().await.as_ref() == Some(&head)).then_some(())
    })
    .await;
    assert_eq!(
        carol.fetches(),
        fetches_before,
        "carol took alice's message from the pack bob passed on, without a fetch"
    );
}
