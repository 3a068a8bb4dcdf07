//! The conversation store through its real path: git2 repositories on disk,
//! signed commits, fetches between replicas, and stock `git` checking them.

mod common;

use common::*;
use starling_actors::conversation::store::oid;
use starling_actors::conversation::{Store, StoreError};
use starling_protocol::swarm::body::BodyError;
use starling_protocol::swarm::body::{encode_body, BodyKind, MemberAction, Mode, VoteAction};
use starling_protocol::swarm::commit::CommitFormatError;
use starling_protocol::swarm::ids::{CommitId, ConversationNonce};
use starling_protocol::swarm::limits::BODY_BYTES_MAX;
use starling_protocol::swarm::state::{admin_path, device_path};
use starling_protocol::swarm::validation::{Changes, Rejection};
use starling_protocol::RevocationList;
use tempfile::TempDir;

/// Alice (admin) and Bob (member), each with one replica, synced.
struct Pair {
    _dir: TempDir,
    alice: Person,
    bob: Person,
    a1: starling_actors::conversation::DeviceSigner,
    b1: starling_actors::conversation::DeviceSigner,
    a: Store,
    b: Store,
    a_path: std::path::PathBuf,
    b_path: std::path::PathBuf,
}

fn pair(mode: Mode) -> Pair {
    let dir = TempDir::new().unwrap();
    let (alice, bob) = (Person::new(1), Person::new(2));
    let (a1, b1) = (alice.device(11), bob.device(21));
    let a_path = dir.path().join("alice.git");
    let b_path = dir.path().join("bob.git");
    let mut a = Store::create(&a_path, &a1, mode, NOW).unwrap();
    a.author(
        &a1,
        BodyKind::Member {
            action: MemberAction::Invite,
            account: bob.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    let mut b = Store::clone_from(&a_path, &b_path, a.conversation(), "alice").unwrap();
    b.author(
        &b1,
        BodyKind::Member {
            action: MemberAction::Join,
            account: bob.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    a.fetch_from(&b_path, "bob").unwrap();
    assert_eq!(a.head().unwrap(), b.head().unwrap());
    Pair {
        _dir: dir,
        alice,
        bob,
        a1,
        b1,
        a,
        b,
        a_path,
        b_path,
    }
}

fn text(generation: u64, t: &str) -> Vec<u8> {
    encode_body(
        generation,
        &BodyKind::Text {
            text: t.into(),
            reply_to: None,
            edit_of: None,
        },
    )
}

/// Bob's replica carries one crafted commit; Alice fetches it.
fn alice_fetches(p: &mut Pair) -> Result<Vec<Rejection>, StoreError> {
    // Crafted objects sit in Bob's staging area until persisted.
    p.b.persist_objects().unwrap();
    p.a.fetch_from(&p.b_path, "bob").map(|r| r.rejected)
}

#[test]
fn a_conversation_round_trip_passes_stock_git() {
    let mut p = pair(Mode::InvitesOnly);
    p.a.send_text(&p.a1, "hello", NOW).unwrap();
    p.b.send_text(&p.b1, "hi", NOW + 1).unwrap();
    // Concurrent writes: both fetch and hold two tips; nobody merges.
    let ra = p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert!(ra.tips.len() == 2 && ra.rejected.is_empty());
    let rb = p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert!(rb.rejected.is_empty());
    assert_eq!(p.a.tips(), p.b.tips());
    // The next message names both tips and joins the histories.
    let joined = p.a.send_text(&p.a1, "both", NOW + 3).unwrap();
    let parents =
        p.a.repository()
            .find_commit(oid(&joined))
            .unwrap()
            .parent_count();
    assert_eq!((p.a.tips(), parents), (&[joined][..], 2));
    p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert_eq!(p.b.tips(), [joined]);
    let texts: Vec<String> =
        p.a.last_messages(10)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m.body.kind() {
                Some(BodyKind::Text { text, .. }) => Some(text.clone()),
                _ => None,
            })
            .collect();
    assert_eq!(texts.len(), 3);
    assert_stock_git_accepts(&p.a, &p.a_path);
    assert_stock_git_accepts(&p.b, &p.b_path);
    // Reopening finds the same conversation and tips.
    let reopened = Store::open(&p.a_path).unwrap();
    assert_eq!(reopened.conversation(), p.a.conversation());
    assert_eq!(reopened.tips(), p.a.tips());
}

#[test]
fn every_commit_type_is_accepted_by_a_peer() {
    let mut p = pair(Mode::AdminInvitesOnly);
    let carol = Person::new(3);
    let b2 = p.bob.device(22);
    let kinds = [
        BodyKind::Reaction {
            target: p.a.head().unwrap(),
            reaction: "👍".into(),
        },
        BodyKind::File {
            name: "a.txt".into(),
            size: 3,
            sha256: "0".repeat(64),
            transfer_id: "t".into(),
        },
        BodyKind::Call {
            call_id: "c1".into(),
            duration_ms: 1000,
        },
        BodyKind::Member {
            action: MemberAction::Invite,
            account: carol.cert.id(),
        },
        BodyKind::Member {
            action: MemberAction::Remove,
            account: carol.cert.id(),
        },
        BodyKind::Vote {
            action: VoteAction::Ban,
            account: p.bob.cert.id(),
        },
        BodyKind::Member {
            action: MemberAction::Ban,
            account: p.bob.cert.id(),
        },
        BodyKind::Vote {
            action: VoteAction::Unban,
            account: p.bob.cert.id(),
        },
        BodyKind::Member {
            action: MemberAction::Unban,
            account: p.bob.cert.id(),
        },
    ];
    for kind in kinds {
        p.a.author(&p.a1, kind, None, NOW).unwrap();
    }
    p.a.author(
        &p.a1,
        BodyKind::Profile,
        Some(br#"{"title":"t"}"#.to_vec()),
        NOW,
    )
    .unwrap();
    let report = p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert!(
        p.b.members().unwrap().contains(&p.bob.cert.id()),
        "unban restored bob"
    );
    // Bob adds a second device, publishes a CRL, edits and deletes, leaves.
    p.b.author(&b2, BodyKind::Device, None, NOW).unwrap();
    let crl = RevocationList::first(&p.bob.key, &p.bob.cert, now_time()).unwrap();
    p.b.author(&p.b1, BodyKind::Crl, Some(crl.to_pem().into_bytes()), NOW)
        .unwrap();
    let first = p.b.send_text(&b2, "typo", NOW).unwrap();
    p.b.author(
        &p.b1,
        BodyKind::Text {
            text: "fixed".into(),
            reply_to: None,
            edit_of: Some(first),
        },
        None,
        NOW,
    )
    .unwrap();
    p.b.author(
        &p.b1,
        BodyKind::Text {
            text: String::new(),
            reply_to: None,
            edit_of: Some(first),
        },
        None,
        NOW,
    )
    .unwrap();
    p.b.author(
        &p.b1,
        BodyKind::Member {
            action: MemberAction::Leave,
            account: p.bob.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    let report = p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert!(!p.a.members().unwrap().contains(&p.bob.cert.id()));
    // Unknown types from newer versions are kept and shown as unsupported.
    let future = br#"{"type":"poll","generation":0,"question":"?"}"#;
    let head = head_oid(&p.a);
    let generation = p.a.last_messages(1).unwrap()[0].key.generation + 1;
    let body = String::from_utf8_lossy(future)
        .replace("\"generation\":0", &format!("\"generation\":{generation}"));
    let poll = craft(&p.a, &p.a1, head, body.as_bytes(), &Changes::new());
    assert_stock_git_accepts(&p.a, &p.a_path);
    let mut c = Store::clone_from(
        &p.a_path,
        &p._dir.path().join("c.git"),
        p.a.conversation(),
        "alice",
    )
    .unwrap();
    let newest = &c.last_messages(1).unwrap()[0];
    assert_eq!(
        newest.id,
        starling_actors::conversation::store::commit_id(poll)
    );
    assert!(newest.body.kind().is_none(), "unsupported type kept");
    assert_stock_git_accepts(&c, &p._dir.path().join("c.git"));
    assert_eq!(c.state().unwrap().files(), p.a.state().unwrap().files());
}

/// One row per rejection rule: how Bob's replica is tampered with, and the
/// reason Alice's replica must give.
#[test]
fn rejection_table() {
    type Setup = fn(&mut Pair) -> ();
    type Check = fn(&Pair, &Result<Vec<Rejection>, StoreError>) -> bool;
    let rows: Vec<(&str, Setup, Check)> = vec![
        (
            "forged signature",
            |p| {
                // Sign one text, then swap the body under the signature.
                let head = head_oid(&p.b);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let id = craft(&p.b, &p.b1, head, &text(g, "original"), &Changes::new());
                // On disk first: libgit2 reads staged objects unterminated.
                p.b.persist_objects().unwrap();
                let repo = p.b.repository();
                let (sig, payload) = repo.extract_signature(&id, None).unwrap();
                let forged = String::from_utf8(payload.to_vec())
                    .unwrap()
                    .replace("original", "forged!!");
                let forged_id = repo
                    .commit_signed(&forged, std::str::from_utf8(&sig).unwrap(), None)
                    .unwrap();
                make_tip(&p.b, forged_id, &[id]);
            },
            |_, r| {
                matches!(
                    r.as_deref(),
                    Ok([Rejection::Format(_, CommitFormatError::BadSignature)])
                )
            },
        ),
        (
            "unknown device",
            |p| {
                let b9 = p.bob.device(29);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                craft(
                    &p.b,
                    &b9,
                    head_oid(&p.b),
                    &text(g, "from nowhere"),
                    &Changes::new(),
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::UnknownDevice { .. }])),
        ),
        (
            "non-member author",
            |p| {
                let mallory = Person::new(66).device(67);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let mut changes = Changes::new();
                changes.insert(
                    device_path(&mallory.device_id()),
                    Some(mallory.device_cert().to_pem().into_bytes()),
                );
                craft(
                    &p.b,
                    &mallory,
                    head_oid(&p.b),
                    &encode_body(g, &BodyKind::Device),
                    &changes,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::NotAMember { .. }])),
        ),
        (
            "non-admin ban",
            |p| {
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let kind = BodyKind::Member {
                    action: MemberAction::Ban,
                    account: p.alice.cert.id(),
                };
                let mut changes = Changes::new();
                changes.insert(admin_path(&p.alice.cert.id()), None);
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &encode_body(g, &kind),
                    &changes,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::NotAllowed { .. }])),
        ),
        (
            "member editing another's certificate",
            |p| {
                let b2 = p.bob.device(22);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let mut changes = Changes::new();
                changes.insert(
                    device_path(&b2.device_id()),
                    Some(b2.device_cert().to_pem().into_bytes()),
                );
                changes.insert(device_path(&p.a1.device_id()), None);
                craft(
                    &p.b,
                    &b2,
                    head_oid(&p.b),
                    &encode_body(g, &BodyKind::Device),
                    &changes,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::UnexpectedChanges { missing, .. }]) if missing.is_empty()),
        ),
        (
            "extra file in a message commit",
            |p| {
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let mut changes = Changes::new();
                changes.insert("notes.txt".into(), Some(b"x".to_vec()));
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &text(g, "with a file"),
                    &changes,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::UnexpectedChanges { extra, .. }]) if extra == &vec!["notes.txt".to_string()]),
        ),
        (
            "oversize body",
            |p| {
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &text(g, &"a".repeat(BODY_BYTES_MAX)),
                    &Changes::new(),
                );
            },
            |_, r| {
                matches!(
                    r.as_deref(),
                    Ok([Rejection::Body(_, BodyError::TooLarge { .. })])
                )
            },
        ),
        (
            "wrong generation",
            |p| {
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &text(999, "time travel"),
                    &Changes::new(),
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::WrongGeneration { .. }])),
        ),
        (
            "a multi-parent commit with a change of its own beyond its type",
            |p| {
                let join = head_oid(&p.b);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let one = craft(&p.b, &p.b1, join, &text(g, "one"), &Changes::new());
                let two = craft(&p.b, &p.b1, join, &text(g, "two"), &Changes::new());
                let mut extra = Changes::new();
                extra.insert("junk".into(), Some(b"j".to_vec()));
                craft_at(
                    &p.b,
                    &p.b1,
                    &[one.min(two), one.max(two)],
                    &text(g + 1, "both"),
                    &extra,
                    NOW,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::UnexpectedChanges { .. }])),
        ),
        (
            "a multi-parent commit whose tree drops what one parent added",
            |p| {
                // Branch one adds Bob's second device; the commit joining it
                // with branch two keeps branch two's tree, which lacks it.
                let join = head_oid(&p.b);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let b2 = p.bob.device(22);
                let mut device = Changes::new();
                device.insert(
                    device_path(&b2.device_id()),
                    Some(b2.device_cert().to_pem().into_bytes()),
                );
                let one = craft(&p.b, &b2, join, &encode_body(g, &BodyKind::Device), &device);
                let two = craft(&p.b, &p.b1, join, &text(g, "two"), &Changes::new());
                let (first, second) = (one.min(two), one.max(two));
                let mut changes = Changes::new();
                if first == one {
                    changes.insert(device_path(&b2.device_id()), None);
                }
                craft_at(
                    &p.b,
                    &p.b1,
                    &[first, second],
                    &text(g + 1, "both"),
                    &changes,
                    NOW,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::UnexpectedChanges { .. }])),
        ),
        (
            "parents out of order",
            |p| {
                let join = head_oid(&p.b);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let one = craft(&p.b, &p.b1, join, &text(g, "one"), &Changes::new());
                let two = craft(&p.b, &p.b1, join, &text(g, "two"), &Changes::new());
                craft_at(
                    &p.b,
                    &p.b1,
                    &[one.max(two), one.min(two)],
                    &text(g + 1, "both"),
                    &Changes::new(),
                    NOW,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::ParentOrder(_)])),
        ),
        (
            "a merge with one parent",
            |p| {
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &encode_body(g, &BodyKind::Merge),
                    &Changes::new(),
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::MergeShape(_)])),
        ),
        (
            "revoked device",
            |p| {
                let b2 = p.bob.device(22);
                p.b.author(&b2, BodyKind::Device, None, NOW).unwrap();
                let crl = RevocationList::first(&p.bob.key, &p.bob.cert, now_time())
                    .unwrap()
                    .with_revoked(
                        &p.bob.key,
                        &p.bob.cert,
                        b2.device_cert().serial(),
                        now_time(),
                    )
                    .unwrap();
                p.b.author(&p.b1, BodyKind::Crl, Some(crl.to_pem().into_bytes()), NOW)
                    .unwrap();
                assert!(
                    p.b.send_text(&b2, "revoked", NOW).is_err(),
                    "own store refuses too"
                );
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                craft(
                    &p.b,
                    &b2,
                    head_oid(&p.b),
                    &text(g, "revoked"),
                    &Changes::new(),
                );
            },
            |_, r| {
                matches!(
                    r.as_deref(),
                    Ok([Rejection::Chain {
                        error: starling_protocol::ChainError::Revoked(_),
                        ..
                    }])
                )
            },
        ),
        (
            "banned member writing after the ban",
            |p| {
                let bob = p.bob.cert.id();
                p.a.author(
                    &p.a1,
                    BodyKind::Vote {
                        action: VoteAction::Ban,
                        account: bob,
                    },
                    None,
                    NOW,
                )
                .unwrap();
                p.a.author(
                    &p.a1,
                    BodyKind::Member {
                        action: MemberAction::Ban,
                        account: bob,
                    },
                    None,
                    NOW,
                )
                .unwrap();
                p.b.fetch_from(&p.a_path, "alice").unwrap();
                assert!(p.b.send_text(&p.b1, "still here", NOW).is_err());
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                craft(
                    &p.b,
                    &p.b1,
                    head_oid(&p.b),
                    &text(g, "still here"),
                    &Changes::new(),
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::BannedDevice { .. }])),
        ),
        (
            "commit dated before its device's certificate",
            |p| {
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let day = 24 * 3600;
                craft_at(
                    &p.b,
                    &p.b1,
                    &[head_oid(&p.b)],
                    &text(g, "yesterday"),
                    &Changes::new(),
                    NOW - day,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::DeviceNotCurrent { .. }])),
        ),
        (
            "merge that adds a file of its own",
            |p| {
                let base = head_oid(&p.b);
                let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
                let x = craft(&p.b, &p.b1, base, &text(g, "x"), &Changes::new());
                let y = craft(&p.b, &p.b1, base, &text(g, "y"), &Changes::new());
                let mut extra = Changes::new();
                extra.insert("smuggled".into(), Some(b"s".to_vec()));
                craft_at(
                    &p.b,
                    &p.b1,
                    &[x.min(y), x.max(y)],
                    &encode_body(g + 1, &BodyKind::Merge),
                    &extra,
                    NOW,
                );
            },
            |_, r| matches!(r.as_deref(), Ok([Rejection::MergeTreeMismatch(_)])),
        ),
        (
            "history from another conversation",
            |p| {
                let mut files = Changes::new();
                files.insert("mode".into(), Some(b"public".to_vec()));
                files.insert(
                    admin_path(&p.bob.cert.id()),
                    Some(p.bob.cert.to_pem().into_bytes()),
                );
                files.insert(
                    device_path(&p.b1.device_id()),
                    Some(p.b1.device_cert().to_pem().into_bytes()),
                );
                let initial = encode_body(
                    0,
                    &BodyKind::Initial {
                        mode: Mode::Public,
                        nonce: ConversationNonce::from_bytes([3; 16]),
                    },
                );
                let root = craft_at(&p.b, &p.b1, &[], &initial, &files, NOW);
                // Graft it beside the shared history so the append-only check
                // passes and the validator meets the second root itself.
                let ours = oid(&p.a.head().unwrap());
                let generation = p.a.last_messages(1).unwrap()[0].key.generation + 1;
                craft_at(
                    &p.b,
                    &p.b1,
                    &[ours.min(root), ours.max(root)],
                    &encode_body(generation, &BodyKind::Merge),
                    &Changes::new(),
                    NOW,
                );
            },
            |_, r| {
                matches!(
                    r.as_deref(),
                    Ok([
                        Rejection::ForeignRoot(_),
                        Rejection::DescendantOfRejected { .. }
                    ])
                )
            },
        ),
    ];
    for (name, setup, check) in rows {
        let mut p = pair(Mode::InvitesOnly);
        setup(&mut p);
        let crafted = head_oid(&p.b);
        let result = alice_fetches(&mut p);
        assert!(check(&p, &result), "row {name:?}: got {result:?}");
        let tips = p.a.tips().to_vec();
        assert!(
            !starling_protocol::swarm::dag::descends(
                &mut p.a,
                &tips,
                &starling_actors::conversation::store::commit_id(crafted)
            )
            .unwrap(),
            "row {name:?}: the refused commit entered history"
        );
        let counted: u64 = p.a.rejection_counts().values().sum();
        let expected = result.as_ref().map(|r| r.len() as u64).unwrap_or(1);
        assert_eq!(
            counted, expected,
            "row {name:?}: every rejection is counted"
        );
    }
}

#[test]
fn clocks_a_year_fast_and_a_day_slow_write_commits_every_replica_accepts() {
    let mut p = pair(Mode::InvitesOnly);
    let (year, day) = (365 * 24 * 3600, 24 * 3600);
    let lead = starling_protocol::swarm::limits::COMMIT_TIME_LEAD_SECS_MAX;
    // Alice's clock runs a year fast; Bob's a day slow, behind the clock
    // his certificates were issued with (their notBefore is NOW - 1 h).
    let (alice_now, bob_now) = (NOW + year, NOW - day);
    let time_of = |store: &Store, id| {
        store
            .repository()
            .find_commit(starling_actors::conversation::store::oid(&id))
            .unwrap()
            .committer()
            .when()
            .seconds()
    };
    let alone = Store::create(
        &p._dir.path().join("alone.git"),
        &p.b1,
        Mode::InvitesOnly,
        bob_now,
    )
    .unwrap();
    let root = alone.head().unwrap();
    assert_eq!(time_of(&alone, root), NOW - 3600, "never before notBefore");
    let a_msg = p.a.send_text(&p.a1, "from next year", alice_now).unwrap();
    let b_msg = p.b.send_text(&p.b1, "from yesterday", bob_now).unwrap();
    assert_eq!(time_of(&p.a, a_msg), alice_now, "a fast clock is kept");
    assert_eq!(time_of(&p.b, b_msg), NOW, "a slow one follows its parent");
    let ra = p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert!(ra.rejected.is_empty(), "{:?}", ra.rejected);
    let rb = p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert!(rb.rejected.is_empty(), "{:?}", rb.rejected);
    // A reply to a message a year ahead follows it only so far.
    let reply = p.b.send_text(&p.b1, "answer", bob_now).unwrap();
    assert_eq!(time_of(&p.b, reply), bob_now + lead);
    let ra = p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert!(ra.rejected.is_empty(), "{:?}", ra.rejected);
    assert_eq!(p.a.head().unwrap(), p.b.head().unwrap());
    assert_eq!(p.a.full_order().unwrap(), p.b.full_order().unwrap());
    assert_stock_git_accepts(&p.b, &p.b_path);
}

#[test]
fn a_commit_dated_before_its_parent_is_valid_and_shown_at_the_parents_time() {
    let mut p = pair(Mode::InvitesOnly);
    let later = NOW + 1_000;
    let first = p.a.send_text(&p.a1, "first", later).unwrap();
    p.b.fetch_from(&p.a_path, "alice").unwrap();
    // An author that did not follow its parent's time (an older or other
    // implementation): valid, and shown no earlier than what it answers.
    let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
    let earlier = craft_at(
        &p.b,
        &p.b1,
        &[head_oid(&p.b)],
        &text(g, "second"),
        &Changes::new(),
        NOW,
    );
    let report = alice_fetches(&mut p).unwrap();
    assert!(report.is_empty(), "{report:?}");
    let newest = p.a.last_messages(2).unwrap();
    let ids: Vec<_> = newest.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [
            starling_actors::conversation::store::commit_id(earlier),
            first
        ]
    );
    assert_eq!(newest[0].key.time_secs, later, "clamped to its parent");
    assert_eq!(newest[1].key.time_secs, later);
}

#[test]
fn a_bad_commit_rejects_its_descendants_but_not_the_branch_beside_it() {
    let mut p = pair(Mode::InvitesOnly);
    let base = head_oid(&p.b);
    let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
    // Branch 1: a valid message. Branch 2: an invalid one, then a child.
    let good = craft(&p.b, &p.b1, base, &text(g, "good"), &Changes::new());
    let mut extra = Changes::new();
    extra.insert("junk".into(), Some(b"j".to_vec()));
    let bad = craft(&p.b, &p.b1, base, &text(g, "bad"), &extra);
    let child = craft(&p.b, &p.b1, bad, &text(g + 1, "child"), &Changes::new());
    // Bob's tip: a merge of both branches.
    let repo = p.b.repository();
    let tree = repo.find_commit(bad).unwrap().tree_id();
    let merge = starling_actors::conversation::store::write_commit(
        repo,
        &p.b1,
        tree,
        &[good.min(child), good.max(child)],
        &encode_body(g + 2, &BodyKind::Merge),
        NOW,
    )
    .unwrap();
    p.b.persist_objects().unwrap();
    make_tip(&p.b, merge, &[good, child]);
    let report = p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert_eq!(report.accepted, 1, "{:?}", report.rejected);
    assert_eq!(report.rejected.len(), 3);
    assert_eq!(head_oid(&p.a), good, "the valid branch fast-forwards");
}

/// A fetch large enough that the store checks its signatures on several
/// threads: one forged signature among many is named, its descendants fall
/// with it, and everything before it is accepted.
#[test]
fn one_forged_signature_in_a_large_fetch_is_named() {
    const BEFORE: usize = 90;
    const AFTER: usize = 40;
    let mut p = pair(Mode::InvitesOnly);
    let mut head = head_oid(&p.b);
    let mut g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
    for i in 0..BEFORE {
        head = craft(
            &p.b,
            &p.b1,
            head,
            &text(g, &format!("m{i}")),
            &Changes::new(),
        );
        g += 1;
    }
    let last_good = head;
    // The right device's real signature, over a payload it never signed.
    let genuine = craft(&p.b, &p.b1, head, &text(g, "original"), &Changes::new());
    let repo = p.b.repository();
    let (sig, payload) = repo.extract_signature(&genuine, None).unwrap();
    let forged_payload = String::from_utf8(payload.to_vec())
        .unwrap()
        .replace("original", "forged!!");
    let forged = repo
        .commit_signed(&forged_payload, std::str::from_utf8(&sig).unwrap(), None)
        .unwrap();
    // On disk, where `craft`'s own handle finds the parent.
    p.b.persist_objects().unwrap();
    make_tip(&p.b, forged, &[genuine]);
    head = forged;
    g += 1;
    for i in 0..AFTER {
        head = craft(
            &p.b,
            &p.b1,
            head,
            &text(g, &format!("after {i}")),
            &Changes::new(),
        );
        g += 1;
    }
    const { assert!(BEFORE + AFTER + 1 >= starling_actors::conversation::store::SIGNATURE_PARALLEL_MIN) };
    let rejected = alice_fetches(&mut p).unwrap();
    assert_eq!(rejected.len(), AFTER + 1, "{rejected:?}");
    assert_eq!(
        rejected[0],
        Rejection::Format(
            starling_actors::conversation::store::commit_id(forged),
            CommitFormatError::BadSignature
        )
    );
    assert!(rejected[1..].iter().all(|r| matches!(
        r,
        Rejection::DescendantOfRejected { rejected, .. }
            if *rejected == starling_actors::conversation::store::commit_id(forged)
    )));
    assert_eq!(
        head_oid(&p.a),
        last_good,
        "everything before the forgery is accepted"
    );
    assert_eq!(
        p.a.rejection_counts().values().sum::<u64>(),
        (AFTER + 1) as u64
    );
}

#[test]
fn ban_beats_a_concurrent_join() {
    let mut p = pair(Mode::InvitesOnly);
    let carol = Person::new(3);
    let c1 = carol.device(31);
    let c_path = p._dir.path().join("carol.git");
    p.a.author(
        &p.a1,
        BodyKind::Member {
            action: MemberAction::Invite,
            account: carol.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    let mut c = Store::clone_from(&p.a_path, &c_path, p.a.conversation(), "alice").unwrap();
    // Concurrently: Alice bans the invitation; Carol joins.
    p.a.author(
        &p.a1,
        BodyKind::Vote {
            action: VoteAction::Ban,
            account: carol.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    p.a.author(
        &p.a1,
        BodyKind::Member {
            action: MemberAction::Ban,
            account: carol.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    c.author(
        &c1,
        BodyKind::Member {
            action: MemberAction::Join,
            account: carol.cert.id(),
        },
        None,
        NOW,
    )
    .unwrap();
    let report = p.a.fetch_from(&c_path, "carol").unwrap();
    assert!(
        report.tips.len() == 2 && report.rejected.is_empty(),
        "{:?}",
        report.rejected
    );
    let state = p.a.state().unwrap();
    assert!(state.is_banned(&carol.cert.id()));
    assert!(!state.is_member(&carol.cert.id()));
    assert!(
        state.is_banned_device(&c1.device_id()),
        "her device moved to banned/devices"
    );
    // Bob merges the same pair independently and reaches the same membership.
    p.b.fetch_from(&c_path, "carol").unwrap();
    p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert_eq!(p.b.state().unwrap().files(), state.files());
    p.a.fetch_from(&p.b_path, "bob").unwrap();
    assert_eq!(p.a.tips(), p.b.tips());
    // Carol's writes on top of the merged state are refused.
    c.fetch_from(&p.a_path, "alice").unwrap();
    assert!(matches!(
        c.send_text(&c1, "let me in", NOW),
        Err(StoreError::Own(r)) if matches!(*r, Rejection::BannedDevice { .. })
    ));
    assert_stock_git_accepts(&p.a, &p.a_path);
}

#[test]
fn cloning_the_wrong_conversation_fails_and_leaves_nothing_openable() {
    let p = pair(Mode::InvitesOnly);
    let path = p._dir.path().join("wrong.git");
    let other: CommitId = "ab".repeat(20).parse().unwrap();
    match Store::clone_from(&p.a_path, &path, other, "alice") {
        Err(StoreError::Rejected(reasons)) => {
            assert!(
                matches!(reasons.first(), Some(Rejection::ForeignRoot(_))),
                "{reasons:?}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::NotAConversation(_))
    ));
}

/// Receiving a commit we already hold (an older tip of the same peer,
/// arriving after a newer one, as when a fetch races an inline pack)
/// changes nothing and counts nothing.
#[test]
fn an_older_tip_of_the_same_peer_changes_nothing() {
    let mut p = pair(Mode::InvitesOnly);
    p.a.send_text(&p.a1, "one", NOW).unwrap();
    p.b.fetch_from(&p.a_path, "alice").unwrap();
    let older = p.a.head().unwrap();
    p.a.send_text(&p.a1, "two", NOW).unwrap();
    p.b.fetch_from(&p.a_path, "alice").unwrap();
    let tips = p.b.tips().to_vec();
    let report = p.b.receive(&[older]).unwrap();
    assert_eq!(report.accepted, 0);
    assert!(report.rejected.is_empty());
    assert_eq!(p.b.tips(), tips);
    assert!(
        p.b.rejection_counts().is_empty(),
        "nothing counted as a rejection"
    );
}

/// An inline pack (the objects of the batch that made a head, relative to
/// the head before it) lets a peer that holds that base take the head
/// without a fetch; one that lacks the base refuses it before indexing
/// anything, and a pack that lies about its base is removed again, so a
/// fetch still brings the head whole (kept, its commits would sit in the
/// object database without their history, and libgit2 never fetches what
/// it already holds).
#[test]
fn an_inline_batch_pack_is_received_only_on_top_of_its_base() {
    let mut p = pair(Mode::InvitesOnly);
    let b_start = p.b.head().unwrap();
    p.a.author_staged(&p.a1, text_kind("one"), None, NOW)
        .unwrap();
    p.a.commit_staged().unwrap();
    let first =
        p.a.take_batch_pack()
            .expect("a small batch has an inline pack");
    let first_head = p.a.head().unwrap();
    assert_eq!(
        (first.bases.clone(), first.tip),
        (vec![b_start], first_head)
    );
    for i in 0..3 {
        p.a.author_staged(&p.a1, text_kind(&format!("m{i}")), None, NOW)
            .unwrap();
    }
    p.a.commit_staged().unwrap();
    let second = p.a.take_batch_pack().expect("pack");
    let second_head = p.a.head().unwrap();
    assert_eq!(
        (second.bases.clone(), second.tip),
        (vec![first_head], second_head)
    );

    let packs_before = pack_count(&p.b_path);
    let refused =
        p.b.receive_pack(&[second_head], &second.bases, &second.bytes);
    assert!(
        matches!(refused, Err(StoreError::PackBaseMissing(base)) if base == first_head),
        "the second batch alone lacks its base: {refused:?}"
    );
    assert_eq!(
        head_oid(&p.b),
        oid(&b_start),
        "a refused pack moves nothing"
    );
    assert_eq!(pack_count(&p.b_path), packs_before, "and indexes nothing");

    // A peer that lies about the base: the pack is indexed, validation
    // misses the parent, and the pack goes again.
    let lied = p.b.receive_pack(&[second_head], &[b_start], &second.bytes);
    assert!(lied.is_err(), "the parent is missing: {lied:?}");
    assert_eq!(head_oid(&p.b), oid(&b_start));
    assert_eq!(
        pack_count(&p.b_path),
        packs_before,
        "the lying pack is removed"
    );
    assert!(
        p.b.repository().find_commit(oid(&second_head)).is_err(),
        "no commit is left without its history"
    );

    let report = p.b.receive_pack(&[first_head], &first.bases, &first.bytes);
    assert_eq!(report.unwrap().accepted, 1);
    let report =
        p.b.receive_pack(&[second_head], &second.bases, &second.bytes);
    assert_eq!(report.unwrap().accepted, 3);
    assert_eq!(p.b.head().unwrap(), second_head);
    assert_stock_git_accepts(&p.b, &p.b_path);
}

/// The bug the fleet test found: a head whose commits were indexed without
/// their parent (an inline pack received out of order) could never be
/// fetched again. Now the failed receipt leaves nothing behind and a fetch
/// from the author brings everything.
#[test]
fn a_fetch_after_a_refused_inline_pack_brings_the_head_whole() {
    let mut p = pair(Mode::InvitesOnly);
    let b_start = p.b.head().unwrap();
    p.a.send_text(&p.a1, "one", NOW).unwrap();
    p.a.author_staged(&p.a1, text_kind("two"), None, NOW)
        .unwrap();
    p.a.commit_staged().unwrap();
    let second = p.a.take_batch_pack().expect("pack");
    let head = p.a.head().unwrap();
    assert!(p
        .b
        .receive_pack(&[head], &[b_start], &second.bytes)
        .is_err());
    let report = p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert_eq!(report.accepted, 2);
    assert_eq!(p.b.head().unwrap(), head);
    assert_stock_git_accepts(&p.b, &p.b_path);
}

fn pack_count(repo: &std::path::Path) -> usize {
    std::fs::read_dir(repo.join("objects/pack"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

fn text_kind(text: &str) -> BodyKind {
    BodyKind::Text {
        text: text.into(),
        reply_to: None,
        edit_of: None,
    }
}

/// The generation-pruned ancestry walk answers as libgit2's merge-base
/// search does, on a history with concurrent branches joined by
/// multi-parent commits.
#[test]
fn descends_agrees_with_libgit2_on_a_criss_cross_history() {
    use starling_actors::conversation::store::commit_id;
    use starling_protocol::swarm::dag::descends;
    let mut p = pair(Mode::InvitesOnly);
    for round in 0..4 {
        p.a.send_text(&p.a1, &format!("a{round}"), NOW).unwrap();
        p.b.send_text(&p.b1, &format!("b{round}"), NOW).unwrap();
        p.b.send_text(&p.b1, &format!("b{round}'"), NOW).unwrap();
        p.a.fetch_from(&p.b_path, "bob").unwrap();
        p.b.send_text(&p.b1, &format!("b{round}''"), NOW).unwrap();
        p.b.fetch_from(&p.a_path, "alice").unwrap();
    }
    p.a.fetch_from(&p.b_path, "bob").unwrap();
    let commits: Vec<_> = {
        let repo = p.a.repository();
        let mut walk = repo.revwalk().unwrap();
        for tip in p.a.tips() {
            walk.push(oid(tip)).unwrap();
        }
        walk.map(Result::unwrap).collect()
    };
    assert!(commits.len() > 15, "{} commits", commits.len());
    let joins = commits
        .iter()
        .filter(|id| p.a.repository().find_commit(**id).unwrap().parent_count() > 1)
        .count();
    assert!(joins >= 4, "{joins} multi-parent commits");
    for x in &commits {
        for y in &commits {
            let expected = x == y || p.a.repository().graph_descendant_of(*x, *y).unwrap();
            assert_eq!(
                descends(&mut p.a, &[commit_id(*x)], &commit_id(*y)).unwrap(),
                expected,
                "{x} descends from {y}"
            );
        }
    }
    let stranger = CommitId::from_bytes([7; 20]);
    let tips = p.a.tips().to_vec();
    assert!(!descends(&mut p.a, &tips, &stranger).unwrap());
}

/// Setting the profile to what it already is changes no file, which every
/// peer refuses (`profile.json` is missing from the changes): the author's
/// own store must refuse it too, never publish it. Shrunk from
/// `replicas_converge`.
#[test]
fn a_profile_change_that_changes_nothing_is_refused_by_its_author() {
    let mut p = pair(Mode::InvitesOnly);
    let profile = br#"{"title":"t239"}"#.to_vec();
    p.a.author(&p.a1, BodyKind::Profile, Some(profile.clone()), NOW)
        .unwrap();
    let again = p.a.author(&p.a1, BodyKind::Profile, Some(profile), NOW);
    assert!(
        matches!(&again, Err(StoreError::Own(r)) if matches!(**r, Rejection::UnexpectedChanges { .. })),
        "{again:?}"
    );
    let report = p.b.fetch_from(&p.a_path, "alice").unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(p.b.head().unwrap(), p.a.head().unwrap());
}

/// A peer whose tips move to a fork beside what we took from it rewrites
/// nothing here: what we accepted stays, and the fork is one more tip.
#[test]
fn a_fork_beside_accepted_history_is_one_more_tip() {
    let mut p = pair(Mode::InvitesOnly);
    let join = head_oid(&p.b);
    let g = p.b.last_messages(1).unwrap()[0].key.generation + 1;
    let one = craft(&p.b, &p.b1, join, &text(g, "one"), &Changes::new());
    p.b.persist_objects().unwrap();
    assert!(alice_fetches(&mut p).unwrap().is_empty());
    // Bob's replica forgets `one` and forks at its parent.
    let two = craft(&p.b, &p.b1, join, &text(g, "two"), &Changes::new());
    make_tip(&p.b, two, &[one]);
    assert!(alice_fetches(&mut p).unwrap().is_empty());
    let mut tips = vec![
        starling_actors::conversation::store::commit_id(one),
        starling_actors::conversation::store::commit_id(two),
    ];
    tips.sort();
    assert_eq!(p.a.tips(), tips);
    assert!(p.a.rejection_counts().is_empty());
}
