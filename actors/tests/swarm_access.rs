//! The account's access check on `git/<id>` and `swarm/<id>`, over real QUIC
//! on loopback: a device of an account that is neither member nor invited is
//! refused on both (with the typed refusal, counted) and fetches nothing;
//! once its account is invited, the same device may fetch the swarm; once
//! the invitation is withdrawn (an admin's remove), it is refused again.

use std::time::{Duration, SystemTime};

use actix::prelude::*;
use prometheus::Registry;
use starling_actors::account::channel_io::fetch_git;
use starling_actors::account::swarms::{CreateSwarm, Invite, ListSwarms, RemoveMember};
use starling_actors::account::{Account, SwarmConfig};
use starling_actors::conversation::store::{quarantine_prefix, Store};
use starling_actors::conversation::SwarmMetrics;
use starling_actors::transport::{ChannelError, Connect, ExpectedPeer, OpenChannel, Transport};
use starling_protocol::channel::{ChannelName, ReplyCode};
use starling_protocol::swarm::body::Mode;
use starling_protocol::AccountIdentity;

mod swarm_support;

use swarm_support::{counter as metric, loopback_transport};

fn transport(identity: &AccountIdentity, registry: &Registry) -> Addr<Transport> {
    loopback_transport(identity, registry, 7)
}

#[actix::test]
async fn outsiders_are_refused_until_invited() {
    let now = SystemTime::now();
    let mut rng = rand_core::OsRng;
    let alice = AccountIdentity::generate("alice", now, &mut rng).unwrap();
    let mallory = AccountIdentity::generate("mallory", now, &mut rng).unwrap();
    let (alice_account, alice_device) = (alice.account_id(), alice.device_id());
    let mallory_account = mallory.account_id();
    let dir = tempfile::tempdir().unwrap();

    let alice_registry = Registry::new();
    let alice_transport = transport(&alice, &alice_registry);
    let alice_addr = alice_transport
        .send(starling_actors::transport::Status)
        .await
        .unwrap()
        .local_addr;
    let account = Account::with_swarms(
        alice,
        SwarmConfig {
            transport: alice_transport.clone(),
            dir: dir.path().join("alice"),
            metrics: SwarmMetrics::register(&alice_registry).unwrap(),
        },
    )
    .unwrap()
    .start();
    let id = account
        .send(CreateSwarm {
            mode: Mode::InvitesOnly,
            title: None,
        })
        .await
        .unwrap()
        .unwrap();

    let mallory_transport = transport(&mallory, &Registry::new());
    mallory_transport
        .send(Connect {
            addr: alice_addr,
            peer: ExpectedPeer {
                account_id: alice_account,
                device_id: None,
            },
        })
        .await
        .unwrap()
        .unwrap();
    let open = |kind: &str| OpenChannel {
        peer: alice_device,
        name: ChannelName::new(&format!("{kind}/{id}")).unwrap(),
    };
    for kind in ["git", "swarm"] {
        match mallory_transport.send(open(kind)).await.unwrap() {
            Err(ChannelError::Refused { code, reason, .. }) => {
                assert_eq!(code, ReplyCode::RefusedByHandler);
                assert!(reason.contains("not a member"), "{reason}");
            }
            other => panic!("{kind}/<id> was not refused: {other:?}"),
        }
        assert_eq!(
            metric(
                &alice_registry,
                "starling_swarm_channels_refused_total",
                &[("kind", kind), ("reason", "not_member")]
            ),
            1.0
        );
    }
    // Nothing was fetched: there is nowhere it could have landed.
    assert!(!dir.path().join("mallory.git").exists());

    // Invited, the same device may clone (and then validate) the swarm.
    account
        .send(Invite {
            conversation: id,
            account: mallory_account,
        })
        .await
        .unwrap()
        .unwrap();
    let channel = mallory_transport
        .send(open("git"))
        .await
        .unwrap()
        .expect("an invited account may open git/<id>");
    let path = dir.path().join("mallory.git");
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        fetch_git(channel, path.clone(), alice_device, true),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(fetched.received_objects > 0);
    let repo = git2::Repository::open_bare(&path).unwrap();
    let quarantined = repo
        .references_glob(&format!("{}*", quarantine_prefix(&alice_device.to_hex())))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1, "alice's one tip is in quarantine");
    let store = Store::adopt_quarantined(repo, id, &alice_device.to_hex()).unwrap();
    assert_eq!(store.conversation(), id);
    assert_eq!(store.full_order().unwrap().len(), 2, "initial + invite");

    // Hostile frames from an allowed device: an oversize length prefix,
    // malformed JSON, a truncated frame. The account logs them and goes on.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff, b'{'],
        b"\x00\x00\x00\x05{\"ty".to_vec(),
        b"\x00\x00\x00\x09{\"type\":1}".to_vec(),
        b"\x00\x00".to_vec(),
    ] {
        let channel = mallory_transport
            .send(open("swarm"))
            .await
            .unwrap()
            .expect("an invited account may open swarm/<id>");
        let (mut send, _recv) = channel.split();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let swarms = account.send(ListSwarms).await.unwrap().unwrap();
    assert_eq!(swarms.len(), 1, "the account still answers");

    account
        .send(RemoveMember {
            conversation: id,
            account: Some(mallory_account),
        })
        .await
        .unwrap()
        .unwrap();
    for kind in ["git", "swarm"] {
        assert!(
            matches!(
                mallory_transport.send(open(kind)).await.unwrap(),
                Err(ChannelError::Refused { .. })
            ),
            "{kind}/<id> after removal"
        );
    }
    assert_eq!(
        metric(
            &alice_registry,
            "starling_swarm_channels_refused_total",
            &[("reason", "not_member")]
        ),
        4.0
    );
}
