//! The pack protocol end to end: our upload-pack server and stock libgit2 as
//! client over real sockets, our client against stock `git upload-pack`, and
//! refusals of peers that break the protocol.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use starling_actors::git_wire::client::{fetch, fetch_watched, FetchWatch, Fetched};
use starling_actors::git_wire::server::{serve_upload_pack, Served};
use starling_actors::git_wire::GitWireError;

const REFSPEC: &str = "+refs/heads/*:refs/remotes/peer/*";

fn bare(path: &Path) -> git2::Repository {
    git2::Repository::init_bare(path).unwrap()
}

/// Adds `count` commits to refs/heads/main, each with its own blob and tree
/// (three new objects per commit).
fn add_commits(repo: &git2::Repository, count: usize, label: &str) -> git2::Oid {
    let signature = git2::Signature::new(
        "test",
        "test@example.invalid",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    let mut parent = repo.refname_to_id("refs/heads/main").ok();
    for i in 0..count {
        let blob = repo.blob(format!("{label} {i}").as_bytes()).unwrap();
        let mut tree = repo.treebuilder(None).unwrap();
        tree.insert("message", blob, 0o100644).unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let parents: Vec<_> = parent
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let parent_refs: Vec<_> = parents.iter().collect();
        let id = repo
            .commit(
                None,
                &signature,
                &signature,
                &format!("{label} {i}"),
                &tree,
                &parent_refs,
            )
            .unwrap();
        repo.reference("refs/heads/main", id, true, "test").unwrap();
        parent = Some(id);
    }
    repo.set_head("refs/heads/main").unwrap();
    parent.unwrap()
}

/// Serves one fetch of `server` on a thread and fetches it into `client`.
fn fetch_pair(
    server: &Path,
    client: &git2::Repository,
) -> (Result<Served, String>, Result<Fetched, GitWireError>) {
    let (server_end, client_end) = UnixStream::pair().unwrap();
    let server_path = server.to_owned();
    let serving = std::thread::spawn(move || {
        let repo = git2::Repository::open_bare(server_path).unwrap();
        let mut stream = server_end;
        serve_upload_pack(&repo, &mut stream).map_err(|e| e.to_string())
    });
    let fetched = fetch(client, client_end, &[REFSPEC]);
    (serving.join().unwrap(), fetched)
}

#[test]
fn fetches_everything_then_only_what_is_new_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare(&dir.path().join("server.git"));
    let client = bare(&dir.path().join("client.git"));
    let first_head = add_commits(&server, 5, "first");

    let (served, fetched) = fetch_pair(server.path(), &client);
    let Served::Pack { objects, bytes } = served.unwrap() else {
        panic!("a pack was due")
    };
    let fetched = fetched.unwrap();
    assert_eq!((objects, fetched.received_objects), (15, 15));
    assert!(
        fetched.received_bytes > bytes,
        "the client read the advertisement, the ACKs and the whole pack"
    );
    assert_eq!(
        client.refname_to_id("refs/remotes/peer/main").unwrap(),
        first_head
    );

    // Negotiation finds the common history: only the three new commits travel.
    let second_head = add_commits(&server, 3, "second");
    let (served, fetched) = fetch_pair(server.path(), &client);
    assert!(matches!(served.unwrap(), Served::Pack { objects: 9, .. }));
    assert_eq!(fetched.unwrap().received_objects, 9);
    assert_eq!(
        client.refname_to_id("refs/remotes/peer/main").unwrap(),
        second_head
    );

    let (served, fetched) = fetch_pair(server.path(), &client);
    assert_eq!(served.unwrap(), Served::NothingWanted);
    assert_eq!(fetched.unwrap().received_objects, 0);

    // Stock git agrees the result is sound.
    let fsck = Command::new("git")
        .args(["fsck", "--strict"])
        .current_dir(client.path())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// Stdin and stdout of a `git upload-pack` process as one stream.
struct ProcessStream {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Read for ProcessStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for ProcessStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stdin.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.flush()
    }
}

impl Drop for ProcessStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn our_client_fetches_from_stock_git_upload_pack() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare(&dir.path().join("server.git"));
    let client = bare(&dir.path().join("client.git"));
    let head = add_commits(&server, 4, "stock");
    let mut child = Command::new("git")
        .args(["upload-pack", "--strict"])
        .arg(server.path())
        .env_remove("GIT_PROTOCOL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stream = ProcessStream {
        stdin: child.stdin.take().unwrap(),
        stdout: child.stdout.take().unwrap(),
        child,
    };
    let fetched = fetch(&client, stream, &[REFSPEC]).unwrap();
    assert_eq!(fetched.received_objects, 12);
    assert_eq!(
        client.refname_to_id("refs/remotes/peer/main").unwrap(),
        head
    );
}

#[test]
fn a_client_that_wants_an_unadvertised_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare(&dir.path().join("server.git"));
    add_commits(&server, 1, "x");
    let (mut ours, mut theirs) = UnixStream::pair().unwrap();
    let path = server.path().to_owned();
    let serving = std::thread::spawn(move || {
        serve_upload_pack(&git2::Repository::open_bare(path).unwrap(), &mut ours)
    });
    let mut advertisement = [0u8; 4];
    theirs.read_exact(&mut advertisement).unwrap();
    theirs
        .write_all(format!("0032want {}\n0000", "ab".repeat(20)).as_bytes())
        .unwrap();
    let error = serving.join().unwrap().unwrap_err();
    assert!(error.to_string().contains("did not advertise"), "{error}");
}

#[test]
fn a_server_that_speaks_garbage_fails_the_fetch_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let client = bare(&dir.path().join("client.git"));
    let (mut fake_server, client_end) = UnixStream::pair().unwrap();
    let talking = std::thread::spawn(move || {
        let _ = fake_server.write_all(b"this is not a pkt-line stream at all\n");
        let mut sink = Vec::new();
        let _ = fake_server.read_to_end(&mut sink);
    });
    assert!(fetch(&client, client_end, &[REFSPEC]).is_err());
    talking.join().unwrap();
    // The repository is untouched.
    assert!(client.references().unwrap().next().is_none());
}

#[test]
fn a_peer_that_hangs_up_mid_negotiation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare(&dir.path().join("server.git"));
    add_commits(&server, 1, "x");
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let result = serve_upload_pack(&server, &mut ours);
    assert!(
        matches!(result, Err(GitWireError::HungUp) | Err(GitWireError::Io(_))),
        "{result:?}"
    );
}

/// A client stream that abandons its fetch once the server has answered
/// once (the ref advertisement): the caller gave up mid-fetch.
struct GiveUpAfterFirstRead {
    inner: UnixStream,
    watch: FetchWatch,
}

impl Read for GiveUpAfterFirstRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.watch.abandon();
        Ok(n)
    }
}

impl Write for GiveUpAfterFirstRead {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A fetch whose caller gave up stops at its next read or write: it does
/// not download the pack or write the ref, and the serving side sees the
/// client go away instead of serving to the end. Until then the watch shows
/// its progress.
#[test]
fn an_abandoned_fetch_stops_at_its_next_read_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare(&dir.path().join("server.git"));
    let client = bare(&dir.path().join("client.git"));
    add_commits(&server, 200, "many");
    let (server_end, client_end) = UnixStream::pair().unwrap();
    let server_path = server.path().to_owned();
    let serving = std::thread::spawn(move || {
        let repo = git2::Repository::open_bare(server_path).unwrap();
        let mut stream = server_end;
        serve_upload_pack(&repo, &mut stream).map_err(|e| e.to_string())
    });
    let watch = FetchWatch::default();
    let stream = GiveUpAfterFirstRead {
        inner: client_end,
        watch: watch.clone(),
    };
    let fetched = fetch_watched(&client, stream, &[REFSPEC], watch.clone());
    let error = fetched.expect_err("an abandoned fetch fails").to_string();
    assert!(error.contains("abandoned"), "{error}");
    assert!(watch.read_bytes() > 0, "the advertisement was read");
    assert!(
        client.references().unwrap().next().is_none(),
        "no ref is written"
    );
    assert!(
        serving.join().unwrap().is_err(),
        "the server saw the client go"
    );
}
