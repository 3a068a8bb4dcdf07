//! Conversations that cannot write, made visible and retried.
//!
//! A conversation actor reports when its writes (or its opening) start
//! failing and when they work again ([`HealthChanged`]). The account keeps
//! the list, shows it in `/v1/status` (`conversations_unhealthy`), in the
//! gauge `starling_conversations_unhealthy{reason}` and as `health` events,
//! and probes each unhealthy conversation with back-off ([`Probe`]: reopen
//! through recovery, then a real ref write) until it writes again. A
//! conversation that could not even be loaded at startup is retried the same
//! way, and joins the registry once it loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use starling_protocol::swarm::ids::CommitId;

use super::events::{Event, HealthState};
use super::swarms::swarms;
use super::Account;
use crate::conversation::actor::{GetView, HealthChanged, Probe};
use crate::conversation::Conversation;

/// First wait before probing an unhealthy conversation again.
pub const PROBE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between probes.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often the account looks for probes that are due.
pub const PROBE_TICK: Duration = Duration::from_millis(500);

/// One conversation that cannot write, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnhealthyConversation {
    /// The conversation (from its repository's name).
    pub conversation: Option<CommitId>,
    /// `locked`, `io`, `damaged` or `format`.
    pub reason: &'static str,
    /// The error, for people.
    pub detail: String,
    /// Since when, seconds since the Unix epoch.
    pub since: i64,
    /// Whether it is loaded (listed, readable); a conversation that failed
    /// to load at startup is not, until a probe loads it.
    pub loaded: bool,
}

struct Unhealthy {
    shown: UnhealthyConversation,
    backoff: Duration,
    next_probe: Instant,
    probing: bool,
}

/// The account's unhealthy conversations, by repository path.
#[derive(Default)]
pub struct ConversationHealth {
    unhealthy: BTreeMap<PathBuf, Unhealthy>,
    /// Conversations that failed to load, with their actors.
    unloaded: BTreeMap<PathBuf, Addr<Conversation>>,
}

fn conversation_of(path: &Path) -> Option<CommitId> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".git")?
        .parse()
        .ok()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ConversationHealth {
    /// Unhealthy conversations, sorted by repository.
    pub fn list(&self) -> Vec<UnhealthyConversation> {
        self.unhealthy
            .iter()
            .map(|(path, u)| UnhealthyConversation {
                loaded: !self.unloaded.contains_key(path),
                ..u.shown.clone()
            })
            .collect()
    }

    /// Remembers a conversation that failed to load at startup.
    pub(super) fn not_loaded(
        &mut self,
        path: PathBuf,
        addr: Addr<Conversation>,
        reason: &'static str,
        detail: String,
    ) {
        self.unloaded.insert(path.clone(), addr);
        self.mark(path, Some(reason), detail);
    }

    /// Records a change; returns whether anything changed.
    fn mark(&mut self, path: PathBuf, reason: Option<&'static str>, detail: String) -> bool {
        match reason {
            Some(reason) => {
                if let Some(known) = self.unhealthy.get_mut(&path) {
                    let changed = known.shown.reason != reason;
                    known.shown.reason = reason;
                    known.shown.detail = detail;
                    return changed;
                }
                self.unhealthy.insert(
                    path.clone(),
                    Unhealthy {
                        shown: UnhealthyConversation {
                            conversation: conversation_of(&path),
                            reason,
                            detail,
                            since: now_secs(),
                            loaded: true,
                        },
                        backoff: PROBE_BACKOFF_MIN,
                        next_probe: Instant::now() + PROBE_BACKOFF_MIN,
                        probing: false,
                    },
                );
                true
            }
            None => self.unhealthy.remove(&path).is_some(),
        }
    }

    fn gauge(&self, metrics: &prometheus::IntGaugeVec) {
        for reason in ["locked", "io", "damaged", "format"] {
            let n = self
                .unhealthy
                .values()
                .filter(|u| u.shown.reason == reason)
                .count();
            metrics.with_label_values(&[reason]).set(n as i64);
        }
    }
}

impl Handler<HealthChanged> for Account {
    type Result = ();

    fn handle(&mut self, msg: HealthChanged, _: &mut Self::Context) {
        let Some(sw) = self.swarms.as_mut() else {
            return;
        };
        let conversation = conversation_of(&msg.path);
        if !sw.health.mark(msg.path, msg.unhealthy, msg.detail.clone()) {
            return;
        }
        sw.health.gauge(&sw.metrics.unhealthy);
        if let Some(conversation) = conversation {
            sw.events.publish(Event::Health {
                conversation,
                state: match msg.unhealthy {
                    Some(_) => HealthState::Unhealthy,
                    None => HealthState::Healthy,
                },
                reason: msg.unhealthy,
                detail: msg.detail,
            });
        }
    }
}

/// Starts probing unhealthy conversations.
pub(super) fn start(ctx: &mut Context<Account>) {
    ctx.run_interval(PROBE_TICK, probe_due);
}

fn probe_due(account: &mut Account, ctx: &mut Context<Account>) {
    let Ok(sw) = swarms(account) else {
        return;
    };
    let now = Instant::now();
    let due: Vec<PathBuf> = sw
        .health
        .unhealthy
        .iter()
        .filter(|(_, u)| !u.probing && u.next_probe <= now)
        .map(|(path, _)| path.clone())
        .collect();
    let mut probes = Vec::new();
    for path in due {
        let unloaded = sw.health.unloaded.get(&path).cloned();
        let addr = unloaded.clone().or_else(|| sw.addr_by_path(&path));
        let Some(addr) = addr else {
            // Gone from the registry (left, removed): nothing to probe.
            sw.health.unhealthy.remove(&path);
            sw.health.gauge(&sw.metrics.unhealthy);
            continue;
        };
        if let Some(u) = sw.health.unhealthy.get_mut(&path) {
            u.probing = true;
        }
        probes.push((path, addr, unloaded.is_some()));
    }
    for (path, addr, loading) in probes {
        ctx.spawn(
            async move {
                let probed = addr.send(Probe).await.unwrap_or(Some("io"));
                let view = match (probed, loading) {
                    (None, true) => addr.send(GetView).await.ok().and_then(Result::ok),
                    _ => None,
                };
                (probed, view, addr)
            }
            .into_actor(account)
            .map(move |(probed, view, addr), act, _| {
                let Ok(sw) = swarms(act) else {
                    return;
                };
                if let Some(view) = view {
                    sw.health.unloaded.remove(&path);
                    sw.insert_loaded(addr, view, path.clone());
                }
                if let Some(u) = sw.health.unhealthy.get_mut(&path) {
                    u.probing = false;
                    if probed.is_some() {
                        u.backoff = (u.backoff * 2).min(PROBE_BACKOFF_MAX);
                        u.next_probe = Instant::now() + u.backoff;
                    }
                }
            }),
        );
    }
}
