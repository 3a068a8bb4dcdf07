//! The observer: a thread that reads every replica's head from disk every
//! [`SAMPLE_INTERVAL`] and records when each commit first appeared at each
//! node. It reads repositories directly (never asks an actor), so watching
//! costs the nodes nothing but disk reads, and crashed nodes are watched
//! too. Delivery times are therefore known to within one sample interval.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde::Serialize;
use starling_actors::conversation::store::tip_refs;
use starling_protocol::swarm::body::{parse_body, Body, BodyKind};

/// How often heads are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Samples kept for the timeline plots; later ones are thinned out.
pub const SAMPLES_MAX: usize = 20_000;

/// One look at every replica.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the clock started.
    pub t_s: f64,
    /// Distinct heads among online nodes.
    pub distinct_heads: usize,
    /// Text messages each node holds.
    pub held: Vec<usize>,
}

/// What the observer knows so far.
#[derive(Default)]
pub struct Live {
    /// Each node's head at the last look.
    pub heads: Vec<Option<Vec<Oid>>>,
    /// Each node's commits, with the time (s) each was first seen there.
    pub seen: Vec<HashMap<Oid, f64>>,
    /// Text message commits seen anywhere.
    pub texts: HashSet<Oid>,
    /// Which nodes run (the runner keeps this true).
    pub online: Vec<bool>,
    /// Text messages each node holds.
    pub held: Vec<usize>,
    /// Timeline samples.
    pub samples: Vec<Sample>,
}

/// A running observer.
pub struct Observer {
    /// Shared with the runner.
    pub live: Arc<Mutex<Live>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    /// Watches `repos` (node `i`'s repository path) with `t0` as time zero.
    pub fn start(repos: Vec<PathBuf>, t0: Instant) -> std::io::Result<Self> {
        let n = repos.len();
        let live = Arc::new(Mutex::new(Live {
            heads: vec![None; n],
            seen: vec![HashMap::new(); n],
            online: vec![true; n],
            held: vec![0; n],
            ..Live::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (live.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sim-observer".into())
            .spawn(move || watch(repos, t0, l, s))?;
        Ok(Self {
            live,
            stop,
            thread: Some(thread),
        })
    }

    /// Takes one last look and stops.
    pub fn stop(mut self) -> Arc<Mutex<Live>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.live.clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whether commit `id` in `repo` is a text message.
pub fn is_text(repo: &Repository, id: Oid) -> bool {
    repo.find_commit(id)
        .ok()
        .and_then(|c| parse_body(c.message_raw_bytes()).ok())
        .is_some_and(|b| {
            matches!(
                b,
                Body::Known {
                    kind: BodyKind::Text { .. },
                    ..
                }
            )
        })
}

fn watch(repos: Vec<PathBuf>, t0: Instant, live: Arc<Mutex<Live>>, stop: Arc<AtomicBool>) {
    let mut open: Vec<Option<Repository>> = repos.iter().map(|_| None).collect();
    loop {
        let last = stop.load(Ordering::SeqCst);
        let t_s = t0.elapsed().as_secs_f64();
        for (i, path) in repos.iter().enumerate() {
            if open[i].is_none() {
                open[i] = Repository::open_bare(path).ok();
            }
            let Some(repo) = &open[i] else { continue };
            let tips = tip_refs(repo);
            if tips.is_empty() {
                continue;
            }
            let old = live.lock().unwrap_or_else(|p| p.into_inner()).heads[i].clone();
            if old.as_ref() == Some(&tips) {
                continue;
            }
            let mut fresh = Vec::new();
            if let Ok(mut walk) = repo.revwalk() {
                for tip in &tips {
                    let _ = walk.push(*tip);
                }
                for old in old.iter().flatten() {
                    let _ = walk.hide(*old);
                }
                for id in walk.flatten() {
                    fresh.push((id, is_text(repo, id)));
                }
            }
            let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
            l.heads[i] = Some(tips);
            for (id, text) in fresh {
                let new = !l.seen[i].contains_key(&id);
                l.seen[i].entry(id).or_insert(t_s);
                if text {
                    l.texts.insert(id);
                    if new {
                        l.held[i] += 1;
                    }
                }
            }
        }
        {
            let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
            let distinct: HashSet<&Vec<Oid>> = l
                .heads
                .iter()
                .zip(&l.online)
                .filter_map(|(h, on)| if *on { h.as_ref() } else { None })
                .collect();
            let distinct = distinct.len();
            let held = l.held.clone();
            if l.samples.len() >= SAMPLES_MAX {
                // Keep every other sample: the timeline stays whole, coarser.
                let kept: Vec<Sample> = l.samples.iter().step_by(2).cloned().collect();
                l.samples = kept;
            }
            l.samples.push(Sample {
                t_s,
                distinct_heads: distinct,
                held,
            });
        }
        if last {
            return;
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
}
