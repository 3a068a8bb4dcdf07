//! Shared pieces of the in-process swarm tests over real QUIC on loopback:
//! a transport on a loopback UDP socket, counter sums from a node's
//! registry, and polling until a condition holds.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::Registry;
use starling_actors::transport::{
    udp_socket, LocalIdentity, Transport, TransportConfig, TransportLimits,
};
use starling_protocol::AccountIdentity;

/// Longest any awaited condition may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A transport for `identity` on a fresh loopback port, its metrics in
/// `registry`.
pub fn loopback_transport(
    identity: &AccountIdentity,
    registry: &Registry,
    rng_seed: u64,
) -> Addr<Transport> {
    Transport::new(TransportConfig {
        identity: LocalIdentity::new(
            identity.device_key.clone(),
            identity.device_cert.clone(),
            identity.account_cert.clone(),
        )
        .unwrap(),
        socket: udp_socket("127.0.0.1:0".parse().unwrap()).unwrap(),
        registry: registry.clone(),
        limits: TransportLimits::default(),
        revocations: vec![(identity.account_cert.clone(), identity.crl.clone())],
        rng_seed,
    })
    .unwrap()
    .start()
}

/// The sum of counter `name` over the series carrying every one of `labels`.
pub fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// Polls `check` every 50 ms until it gives a value; panics after [`DEADLINE`].
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
