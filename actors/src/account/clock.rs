//! Telling the person when this device's clock is off.
//!
//! Every swarm frame a peer sends carries its clock reading; the account
//! feeds each one into a [`ClockOffsets`] (the median over connected peers,
//! see `starling_protocol::clock_offset`) and shows the result three ways:
//! the gauge `starling_clock_offset_seconds` (with
//! `starling_clock_offset_peers`), the `clock` section of `/v1/status` with
//! a warning past [`CLOCK_OFFSET_WARNING_MS`], and a `clock` event on
//! `/v1/events` each time the estimate crosses that threshold (either way).
//! Nothing else depends on it: validation takes no time, and certificate
//! windows get their own slack.

use prometheus::{Gauge, IntGauge, Registry};
use starling_protocol::clock_offset::{ClockEstimate, ClockOffsets, CLOCK_OFFSET_WARNING_MS};
use starling_protocol::DeviceId;

use super::events::{ClockState, Event, EventBus};

/// The clock metrics.
#[derive(Clone)]
pub struct ClockMetrics {
    offset_seconds: Gauge,
    peers: IntGauge,
}

impl ClockMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let offset_seconds = Gauge::new(
            "starling_clock_offset_seconds",
            "How far this device's clock is ahead of its connected peers' (median; negative: behind), in seconds, from the clock readings in their swarm frames; 0 without a peer (see starling_clock_offset_peers).",
        )?;
        let peers = IntGauge::new(
            "starling_clock_offset_peers",
            "Connected peers whose clock readings the clock offset estimate rests on.",
        )?;
        registry.register(Box::new(offset_seconds.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        Ok(Self {
            offset_seconds,
            peers,
        })
    }
}

/// The `clock` part of the account's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClockStatus {
    /// This device's clock minus its peers' (the median), in whole seconds;
    /// `None` until a connected peer has sent a clock reading.
    pub offset_seconds: Option<i64>,
    /// Peers the estimate rests on.
    pub peers: usize,
    /// What to tell the person, when the offset is past the threshold.
    pub warning: Option<String>,
}

/// The account's clock offset estimate and what it has told so far.
pub struct ClockWatch {
    offsets: ClockOffsets<DeviceId>,
    /// Whether the last estimate was past the threshold (an event is
    /// published when this changes).
    skewed: bool,
    metrics: ClockMetrics,
}

impl ClockWatch {
    /// No estimate yet.
    pub fn new(metrics: ClockMetrics) -> Self {
        Self {
            offsets: ClockOffsets::new(),
            skewed: false,
            metrics,
        }
    }

    /// A frame from `peer`, stamped `sent_at_ms` by its clock, arrived at
    /// `received_at_ms` by ours.
    pub fn observe(
        &mut self,
        peer: DeviceId,
        sent_at_ms: i64,
        received_at_ms: i64,
        events: &EventBus,
    ) {
        if self.offsets.observe(peer, sent_at_ms, received_at_ms) {
            self.update(events);
        }
    }

    /// `peer` disconnected: its clock no longer counts.
    pub fn forget(&mut self, peer: &DeviceId, events: &EventBus) {
        self.offsets.forget(peer);
        self.update(events);
    }

    /// The status as `/v1/status` shows it.
    pub fn status(&self) -> ClockStatus {
        let estimate = self.offsets.estimate();
        ClockStatus {
            offset_seconds: estimate.map(|e| e.offset_ms / 1000),
            peers: estimate.map_or(0, |e| e.peers),
            warning: estimate.filter(ClockEstimate::is_skewed).map(warning),
        }
    }

    fn update(&mut self, events: &EventBus) {
        let estimate = self.offsets.estimate();
        self.metrics
            .offset_seconds
            .set(estimate.map_or(0.0, |e| e.offset_ms as f64 / 1000.0));
        self.metrics
            .peers
            .set(estimate.map_or(0, |e| i64::try_from(e.peers).unwrap_or(i64::MAX)));
        let skewed = estimate.is_some_and(|e| e.is_skewed());
        if skewed == self.skewed {
            return;
        }
        self.skewed = skewed;
        let (offset_ms, peers) = estimate.map_or((0, 0), |e| (e.offset_ms, e.peers));
        if let Some(estimate) = estimate.filter(|_| skewed) {
            tracing::warn!(offset_ms, peers, "{}", warning(estimate));
        } else {
            tracing::info!(
                offset_ms,
                peers,
                "clock back within {} s of peers'",
                CLOCK_OFFSET_WARNING_MS / 1000
            );
        }
        events.publish(Event::Clock {
            offset_seconds: offset_ms / 1000,
            peers,
            state: if skewed {
                ClockState::Skewed
            } else {
                ClockState::Ok
            },
        });
    }
}

/// What a person is told about a clock `estimate` says is off.
fn warning(estimate: ClockEstimate) -> String {
    let direction = if estimate.offset_ms > 0 {
        "ahead of"
    } else {
        "behind"
    };
    let whose = if estimate.peers == 1 {
        "the one connected peer's (one of the two clocks is wrong)".to_owned()
    } else {
        format!("the median of {} connected peers'", estimate.peers)
    };
    format!(
        "this device's clock is {} {direction} {whose}; check its date, time and time zone",
        human_duration(estimate.offset_ms.unsigned_abs() / 1000)
    )
}

/// `1 d 0 h 20 min`, `20 min 3 s`, `45 s`.
fn human_duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    if days > 0 {
        format!("{days} d {hours} h {minutes} min")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min {seconds} s")
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::events::EventMetrics;

    fn device(n: u8) -> DeviceId {
        format!("{n:02x}").repeat(32).parse().unwrap()
    }

    const NOW_MS: i64 = 1_790_000_000_000;
    const MINUTE_MS: i64 = 60_000;

    #[tokio::test]
    async fn a_skewed_clock_is_shown_counted_and_told_once_each_way() {
        let registry = Registry::new();
        let metrics = ClockMetrics::register(&registry).unwrap();
        let bus = EventBus::new(EventMetrics::unregistered());
        let mut events = bus.subscribe().unwrap();
        let mut watch = ClockWatch::new(metrics.clone());
        assert_eq!(
            watch.status(),
            ClockStatus {
                offset_seconds: None,
                peers: 0,
                warning: None
            }
        );
        // A peer whose clock reads 20 minutes ahead of ours: we are behind.
        watch.observe(device(1), NOW_MS + 20 * MINUTE_MS, NOW_MS, &bus);
        let status = watch.status();
        assert_eq!((status.offset_seconds, status.peers), (Some(-1_200), 1));
        let warning = status.warning.unwrap();
        assert!(warning.contains("20 min 0 s behind"), "{warning}");
        assert_eq!(metrics.offset_seconds.get(), -1_200.0);
        assert_eq!(metrics.peers.get(), 1);
        // The same again tells nothing new.
        watch.observe(device(1), NOW_MS + 20 * MINUTE_MS, NOW_MS, &bus);
        // The peer leaves: no estimate, no warning, told once.
        watch.forget(&device(1), &bus);
        assert_eq!(watch.status().warning, None);
        assert_eq!(metrics.peers.get(), 0);
        // A marker after them: what comes before it is all that was told.
        let marker = Event::Lagged { dropped: 0 };
        bus.publish(marker.clone());
        let mut told = Vec::new();
        while let Some(event) = events.next().await {
            if *event == marker {
                break;
            }
            told.push((*event).clone());
        }
        assert_eq!(
            told,
            [
                Event::Clock {
                    offset_seconds: -1_200,
                    peers: 1,
                    state: ClockState::Skewed
                },
                Event::Clock {
                    offset_seconds: 0,
                    peers: 0,
                    state: ClockState::Ok
                }
            ]
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(45), "45 s");
        assert_eq!(human_duration(20 * 60 + 3), "20 min 3 s");
        assert_eq!(human_duration(3 * 3_600 + 60), "3 h 1 min");
        assert_eq!(human_duration(86_400 + 20 * 60), "1 d 0 h 20 min");
    }
}
