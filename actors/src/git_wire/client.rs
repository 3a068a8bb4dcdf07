//! Fetching with stock libgit2 over a stream the caller supplies.
//!
//! libgit2 finds transports by URL scheme, through a process-wide registry.
//! We register the `starling` scheme once; each fetch parks its stream in a
//! table under a fresh number and fetches from `starling://<number>`, and the
//! transport takes the stream back out of the table. The table is the one
//! piece of global state here, forced by libgit2's design.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

use super::{GitWireError, PACK_BYTES_MAX};

const SCHEME: &str = "starling";

/// A bidirectional byte stream libgit2 can fetch over.
pub trait FetchStream: Read + Write + Send + 'static {}
impl<T: Read + Write + Send + 'static> FetchStream for T {}

type ParkedStreams = Mutex<HashMap<u64, Box<dyn SmartSubtransportStream>>>;

fn parked() -> &'static ParkedStreams {
    static STREAMS: std::sync::OnceLock<ParkedStreams> = std::sync::OnceLock::new();
    STREAMS.get_or_init(Default::default)
}

static NEXT_FETCH: AtomicU64 = AtomicU64::new(1);

fn register_scheme() -> Result<(), git2::Error> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        // SAFETY: git2 requires registration to be serialised with transport
        // creation; `Once` runs it exactly once, before any starling:// fetch.
        result = unsafe {
            git2::transport::register(SCHEME, |remote| {
                Transport::smart(remote, false, ParkedStreamTransport)
            })
        };
    });
    result
}

struct ParkedStreamTransport;

impl SmartSubtransport for ParkedStreamTransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        if action != Service::UploadPackLs {
            return Err(git2::Error::from_str("starling transport only fetches"));
        }
        let key = url
            .strip_prefix("starling://")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| git2::Error::from_str("malformed starling:// url"))?;
        parked()
            .lock()
            .expect("parked-stream table is never poisoned: no panics while held")
            .remove(&key)
            .ok_or_else(|| git2::Error::from_str("no stream parked for this fetch"))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// What a fetch on its blocking thread shares with the caller waiting for
/// it: the bytes read so far (is it making progress?) and a flag that
/// abandons it (fails its next read or write, so libgit2 stops instead of
/// downloading, indexing and writing a ref nobody waits for).
#[derive(Debug, Clone, Default)]
pub struct FetchWatch {
    abandoned: Arc<AtomicBool>,
    read_bytes: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
}

impl FetchWatch {
    /// Whether the fetch has returned (whatever its outcome).
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Abandons the fetch at its next read or write.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// Bytes the fetch has read from its stream so far.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }
}

/// Counts bytes read and refuses to read past a bound, so a peer cannot feed
/// libgit2 an endless pack; fails every read and write once the fetch is
/// abandoned, so libgit2 stops.
struct BoundedStream<S> {
    inner: S,
    watch: FetchWatch,
    limit_bytes: u64,
}

impl<S> BoundedStream<S> {
    fn check_abandoned(&self) -> io::Result<()> {
        if self.watch.abandoned.load(Ordering::Relaxed) {
            return Err(io::Error::other("fetch abandoned by its caller"));
        }
        Ok(())
    }
}

impl<S: Read> Read for BoundedStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_abandoned()?;
        if self.watch.read_bytes() >= self.limit_bytes {
            return Err(io::Error::other(format!(
                "peer sent more than {} bytes",
                self.limit_bytes
            )));
        }
        let n = self.inner.read(buf)?;
        self.watch.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<S: Write> Write for BoundedStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check_abandoned()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a fetch brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Objects received in the pack (0 when already up to date).
    pub received_objects: usize,
    /// Bytes read from the stream: advertisement, negotiation and pack.
    pub received_bytes: u64,
}

/// Fetches `refspecs` into `repo` over `stream`.
pub fn fetch(
    repo: &git2::Repository,
    stream: impl FetchStream,
    refspecs: &[&str],
) -> Result<Fetched, GitWireError> {
    fetch_watched(repo, stream, refspecs, FetchWatch::default())
}

/// [`fetch`], sharing `watch` with the caller: it can see the bytes read
/// and abandon the fetch (see [`FetchWatch`]).
pub fn fetch_watched(
    repo: &git2::Repository,
    stream: impl FetchStream,
    refspecs: &[&str],
    watch: FetchWatch,
) -> Result<Fetched, GitWireError> {
    register_scheme()?;
    let key = NEXT_FETCH.fetch_add(1, Ordering::Relaxed);
    let bounded = BoundedStream {
        inner: stream,
        watch: watch.clone(),
        limit_bytes: PACK_BYTES_MAX,
    };
    parked()
        .lock()
        .expect("parked-stream table is never poisoned")
        .insert(key, Box::new(bounded));
    let outcome = (|| {
        let mut remote = repo.remote_anonymous(&format!("{SCHEME}://{key}"))?;
        let mut options = git2::FetchOptions::new();
        options.download_tags(git2::AutotagOption::None);
        remote.fetch(refspecs, Some(&mut options), None)?;
        let stats = remote.stats();
        Ok(Fetched {
            received_objects: stats.received_objects(),
            received_bytes: watch.read_bytes(),
        })
    })();
    watch.finished.store(true, Ordering::Relaxed);
    // If libgit2 failed before taking the stream, don't leave it parked.
    parked()
        .lock()
        .expect("parked-stream table is never poisoned")
        .remove(&key);
    outcome
}
