//! The `Conversation` actor recovers from storage failures by reopening its
//! repository from disk: while the repository is unreachable its requests
//! fail with a typed error (nothing panics, the account is unaffected), and
//! once it is back the next request sees every commit made before.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use starling_actors::conversation::actor::{Author, GetView, ListMessages};
use starling_actors::conversation::{Conversation, DeviceSigner, Store, SwarmMetrics};
use starling_protocol::swarm::body::{BodyKind, Mode};
use starling_protocol::AccountIdentity;

fn text(text: &str) -> Author {
    Author {
        kind: BodyKind::Text {
            text: text.into(),
            reply_to: None,
            edit_of: None,
        },
        content: None,
    }
}

#[actix::test]
async fn a_failing_conversation_reopens_from_disk() {
    let identity =
        AccountIdentity::generate("alice", SystemTime::now(), &mut rand_core::OsRng).unwrap();
    let signer = DeviceSigner::new(
        identity.device_key.clone(),
        identity.device_cert.clone(),
        identity.account_cert.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swarm.git");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let id = Store::create(&path, &signer, Mode::InvitesOnly, now)
        .unwrap()
        .conversation();
    let registry = Registry::new();
    let metrics = SwarmMetrics::register(&registry).unwrap();
    let addr = Conversation::start_on_own_thread(path.clone(), signer, metrics);

    let (first, view) = addr.send(text("before")).await.unwrap().unwrap();
    assert_eq!((view.id, view.head), (id, first));

    let away = dir.path().join("elsewhere.git");
    std::fs::rename(&path, &away).unwrap();
    assert!(addr.send(text("lost")).await.unwrap().is_err());
    assert!(addr.send(GetView).await.unwrap().is_err());

    std::fs::rename(&away, &path).unwrap();
    let view = addr.send(GetView).await.unwrap().unwrap();
    assert_eq!(view.head, first, "the failed write left no trace");
    addr.send(text("after")).await.unwrap().unwrap();
    let bodies: Vec<String> = addr
        .send(ListMessages { limit: 10 })
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, ["after", "before"]);
    let sent = registry
        .gather()
        .iter()
        .find(|f| f.name() == "starling_messages_sent_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(sent, Some(2.0));
}
