//! A transport told to block an account closes that account's connections,
//! refuses its new ones before the preface (counting `blocked`), does not
//! dial it, and takes it back once unblocked; the blocked side learns only
//! that it was refused.

mod transport_support;

use std::collections::BTreeSet;

use starling_actors::transport::*;
use transport_support::*;

fn count(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&node.registry, name, labels)
}

async fn block(node: &Node, accounts: BTreeSet<starling_protocol::AccountId>) {
    within("block", node.addr.send(SetBlockedAccounts { accounts }))
        .await
        .unwrap()
        .unwrap();
}

#[actix::test]
async fn a_blocked_account_is_closed_refused_and_not_dialled_until_unblocked() {
    let alice = Account::new(41).device(411);
    let bob = Account::new(42).device(421);
    let a = start_udp_node(&alice);
    let b = start_udp_node(&bob);
    within("first connect", connect(&a, &b)).await.unwrap();

    block(&b, [alice.account.id()].into()).await;
    eventually("bob closes alice's connection", || {
        count(
            &b,
            "starling_transport_connections_closed_total",
            &[("reason", "blocked")],
        ) == 1.0
    })
    .await;
    within("alice sees it gone", async {
        while !status(&a).await.connections.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    // Alice dials again: the handshake completes but bob closes before the
    // preface, so alice never counts the connection as up.
    let refused = within("refused connect", connect(&a, &b)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        count(
            &b,
            "starling_transport_handshakes_failed_total",
            &[("side", "local"), ("reason", "blocked")]
        ),
        1.0
    );
    assert!(status(&a).await.connections.is_empty());
    assert!(status(&b).await.connections.is_empty());

    // Bob does not dial alice either.
    let dialled = within("bob dials", connect(&b, &a)).await;
    assert!(matches!(dialled, Err(ConnectError::Blocked(id)) if id == alice.account.id()));

    // An oversize list is refused and changes nothing.
    let many: BTreeSet<_> = (0..=starling_protocol::contact::BLOCKED_ACCOUNTS_MAX as u32)
        .map(|i| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            starling_protocol::AccountId::from_bytes(bytes)
        })
        .collect();
    let oversize = within(
        "oversize",
        b.addr.send(SetBlockedAccounts { accounts: many }),
    )
    .await
    .unwrap();
    assert!(oversize.is_err());
    assert!(within("still refused", connect(&a, &b)).await.is_err());

    block(&b, BTreeSet::new()).await;
    within("connect after unblock", connect(&a, &b))
        .await
        .unwrap();
}
