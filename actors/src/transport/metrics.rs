//! The transport's Prometheus metrics, registered in the node's own registry.
//!
//! Never global: each transport registers into the `Registry` it is handed, so
//! one process can host many nodes (the simulator does). Names are a stable
//! API; every label has a bounded set of values (reasons and kinds come from
//! fixed tables, never from peer-controlled strings).

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Metric handles; cheap to clone (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    /// Connections by state (`handshaking`, `active`, `draining`).
    pub connections: IntGaugeVec,
    /// Open channels by kind (`sync`, `swarm`, `git`, `file`, `call`, `other`).
    pub channels_open: IntGaugeVec,
    /// Completed handshakes.
    pub handshakes_ok: IntCounter,
    /// Failed handshakes by side (`local`: we rejected; `remote`: they did) and reason.
    pub handshakes_failed: IntCounterVec,
    /// Channels refused by side (`local`: we refused; `remote`: they refused ours) and reason.
    pub channels_refused: IntCounterVec,
    /// UDP payload bytes sent on connections.
    pub bytes_sent: IntCounter,
    /// UDP payload bytes received on connections.
    pub bytes_received: IntCounter,
    /// Connections closed by reason (`duplicate`, `revoked`, `idle`, `peer_closed`, …).
    pub connections_closed: IntCounterVec,
    /// Datagrams received and dropped because the subscriber's queue was full or absent.
    pub datagrams_dropped: IntCounter,
    /// Connection events not delivered because a subscriber's mailbox was full.
    pub events_dropped: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl TransportMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            connections: IntGaugeVec::new(
                opts(
                    "starling_transport_connections",
                    "QUIC connections to peer devices, by state (handshaking, active, draining)",
                ),
                &["state"],
            )?,
            channels_open: IntGaugeVec::new(
                opts(
                    "starling_transport_channels_open",
                    "Channels currently open (both directions), by kind",
                ),
                &["kind"],
            )?,
            handshakes_ok: IntCounter::with_opts(opts(
                "starling_transport_handshakes_ok_total",
                "Handshakes that authenticated both sides",
            ))?,
            handshakes_failed: IntCounterVec::new(
                opts(
                    "starling_transport_handshakes_failed_total",
                    "Failed handshakes, by side that refused (local, remote) and reason",
                ),
                &["side", "reason"],
            )?,
            channels_refused: IntCounterVec::new(
                opts(
                    "starling_transport_channels_refused_total",
                    "Refused channels, by side that refused (local, remote) and reason",
                ),
                &["side", "reason"],
            )?,
            bytes_sent: IntCounter::with_opts(opts(
                "starling_transport_sent_bytes_total",
                "UDP payload bytes sent on peer connections, in bytes",
            ))?,
            bytes_received: IntCounter::with_opts(opts(
                "starling_transport_received_bytes_total",
                "UDP payload bytes received on peer connections, in bytes",
            ))?,
            connections_closed: IntCounterVec::new(
                opts(
                    "starling_transport_connections_closed_total",
                    "Connections closed, by reason",
                ),
                &["reason"],
            )?,
            datagrams_dropped: IntCounter::with_opts(opts(
                "starling_transport_datagrams_dropped_total",
                "Received datagrams dropped because no subscriber could take them",
            ))?,
            events_dropped: IntCounter::with_opts(opts(
                "starling_transport_events_dropped_total",
                "Connection events not delivered because a subscriber's mailbox was full",
            ))?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.channels_open.clone()))?;
        registry.register(Box::new(metrics.handshakes_ok.clone()))?;
        registry.register(Box::new(metrics.handshakes_failed.clone()))?;
        registry.register(Box::new(metrics.channels_refused.clone()))?;
        registry.register(Box::new(metrics.bytes_sent.clone()))?;
        registry.register(Box::new(metrics.bytes_received.clone()))?;
        registry.register(Box::new(metrics.connections_closed.clone()))?;
        registry.register(Box::new(metrics.datagrams_dropped.clone()))?;
        registry.register(Box::new(metrics.events_dropped.clone()))?;
        Ok(metrics)
    }
}
