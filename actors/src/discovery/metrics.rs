//! Discovery's Prometheus metrics, registered in the node's own registry.
//!
//! Labels come from fixed tables (`source` = mdns, dht; `outcome`, `op`
//! below), never from what a record says.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Metric handles; cheap to clone.
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    /// Peer addresses learnt, by source (each (device, address) once per appearance).
    pub peers_discovered: IntCounterVec,
    /// Dials of discovered peers by source and outcome
    /// (`connected`, `verification_failed`, `unreachable`).
    pub dials: IntCounterVec,
    /// Records whose claim the TLS handshake refuted, by source.
    pub verification_failed: IntCounterVec,
    /// Records that could not be read (bad TXT, bad DHT value), by source.
    pub records_invalid: IntCounterVec,
    /// DHT operations by `op` (publish, resolve) and outcome (ok, not_found, failed).
    pub dht_operations: IntCounterVec,
    /// DHT operation latency by `op`, seconds.
    pub dht_seconds: HistogramVec,
}

impl DiscoveryMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            peers_discovered: IntCounterVec::new(
                Opts::new(
                    "starling_discovery_peers_discovered_total",
                    "Peer device addresses learnt from discovery records, by source (mdns, dht)",
                ),
                &["source"],
            )?,
            dials: IntCounterVec::new(
                Opts::new(
                    "starling_discovery_dials_total",
                    "Dials of discovered peers, by source and outcome (connected, verification_failed, unreachable)",
                ),
                &["source", "outcome"],
            )?,
            verification_failed: IntCounterVec::new(
                Opts::new(
                    "starling_discovery_verification_failed_total",
                    "Discovered records whose claimed identity the TLS handshake refuted (spoofed or stale), by source",
                ),
                &["source"],
            )?,
            records_invalid: IntCounterVec::new(
                Opts::new(
                    "starling_discovery_records_invalid_total",
                    "Discovery records that could not be read, by source",
                ),
                &["source"],
            )?,
            dht_operations: IntCounterVec::new(
                Opts::new(
                    "starling_discovery_dht_operations_total",
                    "DHT operations, by op (publish, resolve) and outcome (ok, not_found, failed)",
                ),
                &["op", "outcome"],
            )?,
            dht_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "starling_discovery_dht_seconds",
                    "Latency of DHT operations, by op (publish, resolve), in seconds",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                &["op"],
            )?,
        };
        registry.register(Box::new(metrics.peers_discovered.clone()))?;
        registry.register(Box::new(metrics.dials.clone()))?;
        registry.register(Box::new(metrics.verification_failed.clone()))?;
        registry.register(Box::new(metrics.records_invalid.clone()))?;
        registry.register(Box::new(metrics.dht_operations.clone()))?;
        registry.register(Box::new(metrics.dht_seconds.clone()))?;
        for source in ["mdns", "dht"] {
            metrics.peers_discovered.with_label_values(&[source]);
            metrics.verification_failed.with_label_values(&[source]);
            metrics.records_invalid.with_label_values(&[source]);
            for outcome in ["connected", "verification_failed", "unreachable"] {
                metrics.dials.with_label_values(&[source, outcome]);
            }
        }
        for op in ["publish", "resolve"] {
            metrics.dht_seconds.with_label_values(&[op]);
            for outcome in ["ok", "not_found", "failed"] {
                metrics.dht_operations.with_label_values(&[op, outcome]);
            }
        }
        Ok(metrics)
    }
}
