//! Swarm store benchmarks, each beside its baseline in one group:
//! signed message commits vs raw unsigned git2 commits; validation of fetched
//! commits vs raw ed25519 verification; merging two 5,000-message branches;
//! loading the newest 50 messages of a 100,000-message history.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use git2::Oid;
use rand::SeedableRng;
use starling_actors::conversation::store::{check_signatures, commit_id, oid, write_commit};
use starling_actors::conversation::{DeviceSigner, Store};
use starling_protocol::swarm::body::{encode_body, BodyKind, MemberAction, Mode};
use starling_protocol::swarm::validation::{validate_batch, validate_batch_checked};
use starling_protocol::{AccountCert, DeviceCert};
use tempfile::TempDir;

const NOW: i64 = 1_790_000_000;

fn person(seed: u64) -> (SigningKey, AccountCert) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let key = SigningKey::generate(&mut rng);
    let at = std::time::UNIX_EPOCH + Duration::from_secs(NOW as u64);
    let cert = AccountCert::issue(&key, at, &mut rng).expect("issue");
    (key, cert)
}

fn device(account: &(SigningKey, AccountCert), seed: u64) -> DeviceSigner {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let key = SigningKey::generate(&mut rng);
    let at = std::time::UNIX_EPOCH + Duration::from_secs(NOW as u64);
    let cert = DeviceCert::issue(&account.0, &account.1, &key.verifying_key(), at, &mut rng)
        .expect("issue");
    DeviceSigner::new(key, cert, account.1.clone()).expect("signer")
}

fn text(generation: u64, n: usize) -> Vec<u8> {
    encode_body(
        generation,
        &BodyKind::Text {
            text: format!("message number {n}"),
            reply_to: None,
            edit_of: None,
        },
    )
}

/// Appends `n` signed messages without per-commit validation (fast set-up).
fn append_signed(store: &mut Store, signer: &DeviceSigner, n: usize) {
    let mut generation = store.last_messages(1).expect("page")[0].key.generation;
    let repo = store.repository();
    let mut head = oid(&store.head().expect("head"));
    let tree = repo.find_commit(head).expect("commit").tree_id();
    for i in 0..n {
        generation += 1;
        head =
            write_commit(repo, signer, tree, &[head], &text(generation, i), NOW).expect("commit");
    }
    store.persist_objects().expect("persist");
    store
        .replace_tips_unvalidated(vec![commit_id(head)])
        .expect("tips");
}

fn commits(c: &mut Criterion) {
    let dir = TempDir::new().expect("tmp");
    let alice = person(1);
    let a1 = device(&alice, 11);
    let mut store =
        Store::create(&dir.path().join("a.git"), &a1, Mode::InvitesOnly, NOW).expect("create");
    let mut group = c.benchmark_group("commit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("signed_validated_message", |b| {
        b.iter(|| store.send_text(&a1, "hello there", NOW).expect("send"))
    });
    // Two baselines: an unsigned commit object alone (what the issue names),
    // and one that also moves a branch, as any message must to be sent.
    for (name, update_ref) in [
        ("raw_git2_unsigned", None),
        ("raw_git2_unsigned_on_branch", Some("refs/heads/main")),
    ] {
        let raw =
            git2::Repository::init_bare(dir.path().join(format!("{name}.git"))).expect("init");
        let tree = raw.treebuilder(None).expect("tb").write().expect("tree");
        let sig = git2::Signature::new("a", "b", &git2::Time::new(NOW, 0)).expect("sig");
        let mut parent: Option<Oid> = None;
        group.bench_function(name, |b| {
            b.iter(|| {
                let tree = raw.find_tree(tree).expect("tree");
                let p = parent.map(|p| raw.find_commit(p).expect("parent"));
                let parents: Vec<&git2::Commit<'_>> = p.iter().collect();
                let id = raw
                    .commit(
                        update_ref,
                        &sig,
                        &sig,
                        "{\"type\":\"text\",\"text\":\"hello there\"}",
                        &tree,
                        &parents,
                    )
                    .expect("commit");
                parent = Some(id);
                id
            })
        });
    }
    group.finish();
}

fn validation(c: &mut Criterion) {
    const BATCH: usize = 1_000;
    let dir = TempDir::new().expect("tmp");
    let alice = person(1);
    let a1 = device(&alice, 11);
    let mut store =
        Store::create(&dir.path().join("a.git"), &a1, Mode::InvitesOnly, NOW).expect("create");
    let base = store.head().expect("head");
    append_signed(&mut store, &a1, BATCH);
    let mut walk = store.repository().revwalk().expect("walk");
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .expect("sort");
    walk.push(oid(&store.head().expect("head"))).expect("push");
    walk.hide(oid(&base)).expect("hide");
    let ids: Vec<Oid> = walk.map(|r| r.expect("oid")).collect();
    let conversation = store.conversation();
    let mut group = c.benchmark_group("validation");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("parse_and_validate_fetched_commits", |b| {
        b.iter(|| {
            let candidates: Vec<_> = ids
                .iter()
                .map(|id| store.candidate(*id).expect("candidate"))
                .collect();
            let verdict = validate_batch(&candidates, &mut store, Some(conversation));
            assert_eq!(verdict.accepted.len(), BATCH);
            verdict.accepted.len()
        })
    });
    group.bench_function(
        "parse_and_validate_fetched_commits_signatures_on_all_cores",
        |b| {
            b.iter(|| {
                let candidates: Vec<_> = ids
                    .iter()
                    .map(|id| store.candidate(*id).expect("candidate"))
                    .collect();
                let signatures = check_signatures(&candidates);
                let verdict = validate_batch_checked(
                    &candidates,
                    &signatures,
                    &mut store,
                    Some(conversation),
                );
                assert_eq!(verdict.accepted.len(), BATCH);
                verdict.accepted.len()
            })
        },
    );
    let key = SigningKey::from_bytes(&[9; 32]);
    let messages: Vec<Vec<u8>> = (0..BATCH).map(|i| text(i as u64, i)).collect();
    let signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
    let public = key.verifying_key();
    group.bench_function("raw_ed25519_verify", |b| {
        b.iter(|| {
            for (m, s) in messages.iter().zip(&signatures) {
                public.verify_strict(m, s).expect("verify");
            }
        })
    });
    group.finish();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn merge(c: &mut Criterion) {
    const BRANCH: usize = 5_000;
    let dir = TempDir::new().expect("tmp");
    let (alice, bob) = (person(1), person(2));
    let (a1, b1) = (device(&alice, 11), device(&bob, 21));
    let a_path = dir.path().join("a.git");
    let b_path = dir.path().join("b.git");
    let mut a = Store::create(&a_path, &a1, Mode::InvitesOnly, NOW).expect("create");
    a.author(
        &a1,
        BodyKind::Member {
            action: MemberAction::Invite,
            account: bob.1.id(),
        },
        None,
        NOW,
    )
    .expect("invite");
    let mut b = Store::clone_from(&a_path, &b_path, a.conversation(), "alice").expect("clone");
    b.author(
        &b1,
        BodyKind::Member {
            action: MemberAction::Join,
            account: bob.1.id(),
        },
        None,
        NOW,
    )
    .expect("join");
    a.fetch_from(&b_path, "bob").expect("sync");
    append_signed(&mut a, &a1, BRANCH);
    append_signed(&mut b, &b1, BRANCH);
    let mut group = c.benchmark_group("receive");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BRANCH as u64));
    let mut round = 0;
    group.bench_function("fetch_validate_concurrent_2x5000", |bench| {
        bench.iter_batched(
            || {
                round += 1;
                let copy = dir.path().join(format!("a-copy-{round}.git"));
                copy_dir(&a_path, &copy);
                Store::open(&copy).expect("open")
            },
            |mut store| {
                let report = store.fetch_from(&b_path, "bob").expect("fetch");
                assert!(report.tips.len() == 2 && report.accepted == BRANCH);
                report
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn history_page(c: &mut Criterion) {
    const HISTORY: usize = 100_000;
    let dir = TempDir::new().expect("tmp");
    let alice = person(1);
    let a1 = device(&alice, 11);
    let path = dir.path().join("a.git");
    let mut store = Store::create(&path, &a1, Mode::InvitesOnly, NOW).expect("create");
    append_signed(&mut store, &a1, HISTORY);
    let mut store = Store::open(&path).expect("open");
    let mut group = c.benchmark_group("history");
    group.bench_function("last_50_of_100000", |b| {
        b.iter(|| {
            let page = store.last_messages(50).expect("page");
            assert_eq!(page.len(), 50);
            page
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = commits, validation, merge, history_page
}
criterion_main!(benches);
