//! The swarm layer's per-node metrics: messages, commits, fetches,
//! conversations, refused channels. Registered in the registry the node hands
//! in; names are a stable API.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Upper bounds of the fetch-duration histogram, in seconds.
const FETCH_SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds of the commits-per-durable-batch histogram.
const BATCH_COMMITS_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Cheap handles on the swarm metrics (clones share the same series).
#[derive(Clone)]
pub struct SwarmMetrics {
    /// Text messages this node authored.
    pub messages_sent: IntCounter,
    /// Commits from peers accepted into history.
    pub commits_accepted: IntCounter,
    rejected: IntCounterVec,
    fetches: IntCounterVec,
    /// Fetch durations (channel open to merge).
    pub fetch_seconds: Histogram,
    /// Conversations this node holds.
    pub conversations: IntGauge,
    /// Peer devices with a connection up.
    pub peers_connected: IntGauge,
    refused: IntCounterVec,
    /// Invitations received over the network.
    pub invitations_received: IntCounter,
    /// Authored commits made durable together (group commit).
    pub batch_commits: Histogram,
    /// The account's event stream (`/v1/events`).
    pub events: crate::account::events::EventMetrics,
    /// The clock offset estimate.
    pub clock: crate::account::clock::ClockMetrics,
    /// Refused commits told to peers and learnt from them.
    pub rejections: crate::account::rejections::RejectionMetrics,
    recoveries: IntCounterVec,
    /// Conversations that cannot write, by reason.
    pub unhealthy: IntGaugeVec,
}

impl SwarmMetrics {
    /// Registers the swarm metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let messages_sent = IntCounter::new(
            "starling_messages_sent_total",
            "Text messages authored on this node (commits created through the API).",
        )?;
        let commits_accepted = IntCounter::new(
            "starling_messages_received_total",
            "Commits received from peers and accepted into a swarm's history.",
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "starling_swarm_commits_rejected_total",
                "Commits from peers refused by validation, by reason.",
            ),
            &["reason"],
        )?;
        let fetches = IntCounterVec::new(
            Opts::new(
                "starling_swarm_fetches_total",
                "Fetches over git/<id> channels, by outcome (ok, failed).",
            ),
            &["outcome"],
        )?;
        let fetch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "starling_swarm_fetch_duration_seconds",
                "Time from opening a git/<id> channel to the merged result, in seconds.",
            )
            .buckets(FETCH_SECONDS_BUCKETS.to_vec()),
        )?;
        let conversations = IntGauge::new(
            "starling_conversations",
            "Swarm conversations held on this node.",
        )?;
        let peers_connected = IntGauge::new(
            "starling_peers_connected",
            "Peer devices with at least one authenticated connection up.",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "starling_swarm_channels_refused_total",
                "swarm/ and git/ channels refused by the access check, by channel kind and reason.",
            ),
            &["kind", "reason"],
        )?;
        let invitations_received = IntCounter::new(
            "starling_swarm_invitations_received_total",
            "Swarm invitations received from peers.",
        )?;
        let batch_commits = Histogram::with_opts(
            HistogramOpts::new(
                "starling_swarm_batch_commits",
                "Authored commits made durable by one pack fsync and one head move (group commit size).",
            )
            .buckets(BATCH_COMMITS_BUCKETS.to_vec()),
        )?;
        let recoveries = IntCounterVec::new(
            Opts::new(
                "starling_repository_recoveries_total",
                "Leftovers of a crash removed from conversation repositories, by kind (lock, temporary, pack, ref).",
            ),
            &["kind"],
        )?;
        let unhealthy = IntGaugeVec::new(
            Opts::new(
                "starling_conversations_unhealthy",
                "Conversations that cannot write or be read right now, by reason (locked, io, damaged, format).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(recoveries.clone()))?;
        registry.register(Box::new(unhealthy.clone()))?;
        registry.register(Box::new(batch_commits.clone()))?;
        registry.register(Box::new(messages_sent.clone()))?;
        registry.register(Box::new(commits_accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(fetches.clone()))?;
        registry.register(Box::new(fetch_seconds.clone()))?;
        registry.register(Box::new(conversations.clone()))?;
        registry.register(Box::new(peers_connected.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(invitations_received.clone()))?;
        let events = crate::account::events::EventMetrics::register(registry)?;
        let clock = crate::account::clock::ClockMetrics::register(registry)?;
        let rejections = crate::account::rejections::RejectionMetrics::register(registry)?;
        Ok(Self {
            events,
            clock,
            rejections,
            messages_sent,
            commits_accepted,
            rejected,
            fetches,
            fetch_seconds,
            conversations,
            peers_connected,
            refused,
            invitations_received,
            batch_commits,
            recoveries,
            unhealthy,
        })
    }

    /// Counts what a repository recovery removed.
    pub fn recovered(&self, recovered: &super::recovery::Recovered) {
        for (kind, n) in recovered.counts() {
            if n > 0 {
                self.recoveries.with_label_values(&[kind]).inc_by(n as u64);
            }
        }
    }

    /// Counts `n` rejected commits with `reason`.
    pub fn rejected(&self, reason: &str, n: u64) {
        self.rejected.with_label_values(&[reason]).inc_by(n);
    }

    /// Counts a fetch that ended with `outcome` (`ok` or `failed`).
    pub fn fetched(&self, outcome: &str) {
        self.fetches.with_label_values(&[outcome]).inc();
    }

    /// Counts a refused channel.
    pub fn refused(&self, kind: &str, reason: &str) {
        self.refused.with_label_values(&[kind, reason]).inc();
    }
}
