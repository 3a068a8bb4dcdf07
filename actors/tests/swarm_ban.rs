//! Ban over real QUIC on loopback, between two accounts with swarm sync:
//! alice (the only admin) invites mallory, who joins by cloning; mallory's
//! device may open `git/<id>` and `swarm/<id>` as a member. Alice's ban
//! (her vote, then the ban commit, quorum being her own vote) takes effect
//! from that commit on: the same device is refused on both channels, the
//! refusals are counted, and mallory no longer appears as a member.
//! An unban by the same admin lets it in again.

use std::time::Duration;

use actix::prelude::*;
use prometheus::Registry;
use starling_actors::account::channel_io::fetch_git;
use starling_actors::account::swarm_ops::BanVote;
use starling_actors::account::swarms::{
    AddPeer, CreateSwarm, Invite, Join, ListInvitations, Members,
};
use starling_actors::account::{Account, SwarmConfig};
use starling_actors::conversation::{Role, SwarmMetrics};
use starling_actors::transport::{ChannelError, OpenChannel};
use starling_protocol::channel::{ChannelName, ReplyCode};
use starling_protocol::swarm::body::{Mode, VoteAction};
use starling_protocol::AccountIdentity;

mod swarm_support;

use swarm_support::{counter, eventually, loopback_transport, DEADLINE};

fn refused(registry: &Registry) -> f64 {
    counter(registry, "starling_swarm_channels_refused_total", &[])
}

#[actix::test]
async fn a_banned_member_is_refused_from_the_ban_on_and_an_unban_lets_it_back() {
    let now = std::time::SystemTime::now();
    let mut rng = rand_core::OsRng;
    let alice = AccountIdentity::generate("alice", now, &mut rng).unwrap();
    let mallory = AccountIdentity::generate("mallory", now, &mut rng).unwrap();
    let (alice_account, alice_device) = (alice.account_id(), alice.device_id());
    let mallory_account = mallory.account_id();
    let dir = tempfile::tempdir().unwrap();

    let start = |identity: AccountIdentity, name: &str, registry: &Registry| {
        let transport = loopback_transport(&identity, registry, 11);
        let account = Account::with_swarms(
            identity,
            SwarmConfig {
                transport: transport.clone(),
                dir: dir.path().join(name),
                metrics: SwarmMetrics::register(registry).unwrap(),
            },
        )
        .unwrap()
        .start();
        (transport, account)
    };
    let alice_registry = Registry::new();
    let (alice_transport, alice) = start(alice, "alice", &alice_registry);
    let (mallory_transport, mallory) = start(mallory, "mallory", &Registry::new());
    let alice_addr = alice_transport
        .send(starling_actors::transport::Status)
        .await
        .unwrap()
        .local_addr;
    mallory
        .send(AddPeer {
            addr: alice_addr,
            account: alice_account,
        })
        .await
        .unwrap()
        .unwrap();

    let id = alice
        .send(CreateSwarm {
            mode: Mode::InvitesOnly,
            title: None,
        })
        .await
        .unwrap()
        .unwrap();
    alice
        .send(Invite {
            conversation: id,
            account: mallory_account,
        })
        .await
        .unwrap()
        .unwrap();
    eventually("the invitation", || async {
        let list = mallory.send(ListInvitations).await.unwrap().unwrap();
        list.iter().any(|i| i.conversation == id).then_some(())
    })
    .await;
    mallory
        .send(Join { conversation: id })
        .await
        .unwrap()
        .unwrap();
    eventually("alice to see mallory's join", || async {
        let members = alice
            .send(Members { conversation: id })
            .await
            .unwrap()
            .unwrap();
        members
            .iter()
            .any(|m| m.account_id == mallory_account && m.role == Role::Member)
            .then_some(())
    })
    .await;

    let open = |kind: &str| OpenChannel {
        peer: alice_device,
        name: ChannelName::new(&format!("{kind}/{id}")).unwrap(),
    };
    // A member's device may fetch over git/<id> (a served fetch runs to its
    // end; a channel left hanging would hold a blocking upload-pack thread).
    let fetch = |name: &'static str| {
        let transport = mallory_transport.clone();
        let path = dir.path().join(name);
        async move {
            let channel = transport
                .send(open("git"))
                .await
                .unwrap()
                .map_err(|e| format!("{e:?}"))?;
            tokio::time::timeout(DEADLINE, fetch_git(channel, path, alice_device, true))
                .await
                .unwrap()
                .map_err(|e| e.to_string())
        }
    };
    let fetched = fetch("as-member.git").await.expect("a member fetches");
    assert!(fetched.received_objects > 0);

    let before = refused(&alice_registry);
    let outcome = alice
        .send(BanVote {
            conversation: id,
            account: mallory_account,
            action: VoteAction::Ban,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.voted && outcome.done, "{outcome:?}");
    let members = alice
        .send(Members { conversation: id })
        .await
        .unwrap()
        .unwrap();
    assert!(members.iter().all(|m| m.account_id != mallory_account));
    for kind in ["git", "swarm"] {
        match mallory_transport.send(open(kind)).await.unwrap() {
            Err(ChannelError::Refused { code, reason, .. }) => {
                assert_eq!(code, ReplyCode::RefusedByHandler);
                assert!(reason.contains("not a member"), "{reason}");
            }
            other => panic!("{kind}/<id> after the ban was not refused: {other:?}"),
        }
    }
    // At least our two opens; mallory's own node may also have announced to
    // alice after the ban (its anti-entropy or a head move), refused alike.
    let counted = refused(&alice_registry) - before;
    assert!(counted >= 2.0, "refusals counted: {counted}");
    // Banning twice is refused by the rules, not silently repeated.
    let again = alice
        .send(BanVote {
            conversation: id,
            account: mallory_account,
            action: VoteAction::Ban,
        })
        .await
        .unwrap();
    assert!(again.is_err(), "{again:?}");

    let outcome = alice
        .send(BanVote {
            conversation: id,
            account: mallory_account,
            action: VoteAction::Unban,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.done, "{outcome:?}");
    fetch("after-unban.git")
        .await
        .expect("an unbanned member fetches again");
    // Close both endpoints before the runtime stops: a background fetch
    // (anti-entropy) blocked on a QUIC stream ends only when its connection does.
    for transport in [&mallory_transport, &alice_transport] {
        transport
            .send(starling_actors::transport::Shutdown)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}
