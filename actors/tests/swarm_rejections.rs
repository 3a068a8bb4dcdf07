//! A member learns when a peer refuses its commits, over real QUIC on
//! loopback: bob's replica holds a commit of his that alice's validation
//! refuses (dated a day before his certificates, as an older version with a
//! slow clock wrote them), with a message of his on top. Alice fetches both,
//! refuses both, and tells bob in a `rejected` frame; bob records each as a
//! metric by reason and a `rejected` event. Alice's refusal repeats at every
//! anti-entropy round, her notices do not: one per conversation and peer and
//! interval.

use std::time::Duration;

use actix::prelude::*;
use prometheus::Registry;
use starling_actors::account::events::Event;
use starling_actors::account::swarm_ops::SubscribeAccountEvents;
use starling_actors::account::swarms::{
    AddPeer, CreateSwarm, Invite, Join, ListInvitations, ListSwarms, SendText,
};
use starling_actors::account::{Account, SwarmConfig, SyncTuning};
use starling_actors::conversation::store::{
    oid, tree_with_changes, write_commit, HEAD_REF, TIP_REF_PREFIX,
};
use starling_actors::conversation::{DeviceSigner, SwarmMetrics};
use starling_actors::transport::{Shutdown, Status, Transport};
use starling_protocol::swarm::body::{encode_body, parse_body, BodyKind, Mode};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::validation::Changes;
use starling_protocol::AccountIdentity;

mod swarm_support;

use swarm_support::{counter, eventually, loopback_transport};

struct Node {
    identity: AccountIdentity,
    transport: Addr<Transport>,
    account: Addr<Account>,
    registry: Registry,
    dir: std::path::PathBuf,
}

impl Node {
    fn start(identity: AccountIdentity, dir: &std::path::Path) -> Self {
        let registry = Registry::new();
        let transport = loopback_transport(&identity, &registry, 11);
        let account = Account::with_swarms_tuned(
            identity.clone(),
            SwarmConfig {
                transport: transport.clone(),
                dir: dir.to_owned(),
                metrics: SwarmMetrics::register(&registry).unwrap(),
            },
            // Refusals repeat at every round: make rounds quick.
            SyncTuning {
                anti_entropy_interval: Duration::from_millis(300),
                ..SyncTuning::default()
            },
        )
        .unwrap()
        .start();
        Self {
            identity,
            transport,
            account,
            registry,
            dir: dir.to_owned(),
        }
    }

    async fn head(&self) -> Option<Vec<CommitId>> {
        let list = self.account.send(ListSwarms).await.unwrap().unwrap();
        list.first().map(|s| s.tips.clone())
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        counter(&self.registry, name, labels)
    }
}

/// Writes a text commit on `repo`'s head dated `time_secs`, bypassing
/// validation (what another implementation could have written), and makes
/// it the replica's tip on disk (the store reads its tips again before it
/// authors).
fn write_unchecked(repo: &git2::Repository, signer: &DeviceSigner, time_secs: i64) -> CommitId {
    let head = repo.refname_to_id(HEAD_REF).unwrap();
    let parent = repo.find_commit(head).unwrap();
    let generation = parse_body(parent.message_raw_bytes()).unwrap().generation() + 1;
    let body = encode_body(
        generation,
        &BodyKind::Text {
            text: "written with a slow clock".into(),
            reply_to: None,
            edit_of: None,
        },
    );
    let tree = tree_with_changes(repo, parent.tree_id(), &Changes::new()).unwrap();
    let id = write_commit(repo, signer, tree, &[head], &body, time_secs).unwrap();
    repo.reference(&format!("{TIP_REF_PREFIX}{id}"), id, true, "unchecked")
        .unwrap();
    repo.find_reference(&format!("{TIP_REF_PREFIX}{head}"))
        .unwrap()
        .delete()
        .unwrap();
    repo.reference(HEAD_REF, id, true, "unchecked").unwrap();
    starling_actors::conversation::store::commit_id(id)
}

#[actix::test]
async fn a_member_is_told_which_of_its_commits_a_peer_refuses_and_why() {
    let now = std::time::SystemTime::now();
    let now_secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut rng = rand_core::OsRng;
    let dir = tempfile::tempdir().unwrap();
    let [alice, bob] = ["alice", "bob"].map(|name| {
        let identity = AccountIdentity::generate(name, now, &mut rng).unwrap();
        Node::start(identity, &dir.path().join(name))
    });
    let alice_addr = alice.transport.send(Status).await.unwrap().local_addr;
    bob.account
        .send(AddPeer {
            addr: alice_addr,
            account: alice.identity.account_id(),
        })
        .await
        .unwrap()
        .unwrap();
    let id = alice
        .account
        .send(CreateSwarm {
            mode: Mode::InvitesOnly,
            title: None,
        })
        .await
        .unwrap()
        .unwrap();
    alice
        .account
        .send(Invite {
            conversation: id,
            account: bob.identity.account_id(),
        })
        .await
        .unwrap()
        .unwrap();
    eventually("the invitation", || async {
        let list = bob.account.send(ListInvitations).await.unwrap().unwrap();
        list.iter().any(|i| i.conversation == id).then_some(())
    })
    .await;
    bob.account
        .send(Join { conversation: id })
        .await
        .unwrap()
        .unwrap();
    eventually("bob's join at alice", || async {
        let head = bob.head().await?;
        (alice.head().await.as_ref() == Some(&head)).then_some(())
    })
    .await;
    let mut events = bob
        .account
        .send(SubscribeAccountEvents)
        .await
        .unwrap()
        .unwrap();

    // A commit of bob's dated a day before his certificates, then a message
    // he sends through the API on top of it.
    let signer = DeviceSigner::new(
        bob.identity.device_key.clone(),
        bob.identity.device_cert.clone(),
        bob.identity.account_cert.clone(),
    )
    .unwrap();
    let repo = git2::Repository::open_bare(bob.dir.join(format!("{}.git", id.to_hex()))).unwrap();
    let old = write_unchecked(&repo, &signer, now_secs - 24 * 3600);
    let message = bob
        .account
        .send(SendText {
            conversation: id,
            text: "on top of it".into(),
            reply_to: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        repo.find_commit(oid(&message))
            .unwrap()
            .parent_id(0)
            .unwrap(),
        oid(&old)
    );

    // Bob hears of both, with alice's reasons.
    let mut told = Vec::new();
    while told.len() < 2 {
        let event = tokio::time::timeout(swarm_support::DEADLINE, events.next())
            .await
            .expect("bob is told within the deadline")
            .expect("bob's event stream goes on");
        if let Event::Rejected {
            conversation,
            id: commit,
            peer,
            reason,
            detail,
        } = &*event
        {
            assert_eq!(*conversation, id);
            assert_eq!(*peer, alice.identity.device_id());
            told.push((*commit, *reason, detail.clone()));
        }
    }
    told.sort_by_key(|(_, reason, _)| *reason);
    assert_eq!(
        told.iter().map(|(c, r, _)| (*c, *r)).collect::<Vec<_>>(),
        [(message, "descendant_of_rejected"), (old, "time")]
    );
    assert!(told[1].2.contains(&old.to_hex()), "{told:?}");
    let by_peers = "starling_swarm_commits_rejected_by_peers_total";
    assert_eq!(bob.count(by_peers, &[("reason", "time")]), 1.0);
    assert_eq!(
        bob.count(by_peers, &[("reason", "descendant_of_rejected")]),
        1.0
    );
    let refused = alice.count(
        "starling_swarm_commits_rejected_total",
        &[("reason", "time")],
    );
    assert!(refused >= 1.0, "{refused}");

    // Alice refuses again at the next rounds, and does not tell again.
    let notices = "starling_swarm_rejection_notices_total";
    eventually("a repeated refusal", || async {
        (alice.count(notices, &[("outcome", "suppressed")]) >= 2.0).then_some(())
    })
    .await;
    assert_eq!(alice.count(notices, &[("outcome", "sent")]), 1.0);
    assert_eq!(bob.count(notices, &[("outcome", "received")]), 1.0);
    assert_eq!(bob.count(by_peers, &[]), 2.0);
    assert_ne!(alice.head().await, bob.head().await);

    // Fetches blocked on a QUIC stream end only with their connection.
    for node in [&alice, &bob] {
        node.transport.send(Shutdown).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}
