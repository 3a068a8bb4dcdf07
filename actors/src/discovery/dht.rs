//! Internet discovery over the BitTorrent mainline DHT (crate `mainline`,
//! BEP 44 mutable items plus BEP 5 peer announcements).
//!
//! What this device publishes (formats in `starling_protocol::discovery`):
//! its **device record** (addresses, signed by the device key), the
//! **account record** (device keys, signed by the account key), and an
//! `announce_peer` of its QUIC port under its account's **rendezvous**
//! info-hash. Lookups: our own account's other devices through the signed
//! records (account key → device keys → device records → addresses); any
//! other account, known here only by its id, through the rendezvous.
//! Every answer is a hint that the TLS handshake confirms or refutes.
//!
//! mainline runs its own thread; its async API only moves messages to it, so
//! awaiting it on the actix arbiter never blocks. Building a node resolves
//! bootstrap host names, which blocks, so it runs in `spawn_blocking`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt as _;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id, MutableItem};
use starling_protocol::discovery::{
    rendezvous_hash, AccountRecord, DeviceRecord, RecordError, ACCOUNT_RECORD_SALT,
    DEVICE_RECORD_ADDRESSES_MAX, DEVICE_RECORD_SALT,
};
use starling_protocol::{AccountId, DeviceId};

use crate::account::discovered::SignedRecord;

/// Longest one DHT query (a get, a put, an announce) may take.
pub const DHT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Peer addresses taken from one rendezvous lookup at most.
pub const RENDEZVOUS_PEERS_MAX: usize = 32;

/// Why a DHT operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("the DHT node could not start: {0}")]
    Start(std::io::Error),
    #[error("no DHT node answered within {DHT_QUERY_TIMEOUT:?}")]
    Timeout,
    #[error("DHT put: {0}")]
    Put(String),
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("a device record listed by account {expected} claims account {found}")]
    WrongAccount {
        expected: AccountId,
        found: AccountId,
    },
}

/// Starts a DHT client node bootstrapped from `bootstrap` (host:port
/// strings; empty means mainline's public bootstrap nodes). Blocks on name
/// resolution: call from `spawn_blocking`.
pub fn start(bootstrap: &[String]) -> Result<AsyncDht, DhtError> {
    let mut builder = Dht::builder();
    if !bootstrap.is_empty() {
        builder.bootstrap(bootstrap);
    }
    Ok(builder.build().map_err(DhtError::Start)?.as_async())
}

/// Whether the node reached any other node.
pub async fn bootstrapped(dht: &AsyncDht) -> bool {
    tokio::time::timeout(DHT_QUERY_TIMEOUT, dht.bootstrapped())
        .await
        .unwrap_or(false)
}

fn item_of(record: &SignedRecord) -> MutableItem {
    MutableItem::new_signed_unchecked(
        record.public_key,
        record.signature,
        &record.value,
        record.seq,
        Some(record.salt),
    )
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> Result<T, DhtError> {
    tokio::time::timeout(DHT_QUERY_TIMEOUT, future)
        .await
        .map_err(|_| DhtError::Timeout)
}

/// Puts both records and announces `port` under our account's rendezvous.
pub async fn publish(
    dht: &AsyncDht,
    device: &SignedRecord,
    account: &SignedRecord,
    account_id: &AccountId,
    port: u16,
) -> Result<(), DhtError> {
    bounded(dht.put_mutable(item_of(device), None))
        .await?
        .map_err(|e| DhtError::Put(e.to_string()))?;
    // Several devices of one account publish the same list; a concurrent
    // newer copy wins and is as good as ours, so a conflict is no failure.
    if let Err(e) = bounded(dht.put_mutable(item_of(account), None)).await? {
        if !matches!(e, mainline::errors::PutMutableError::Concurrency(_)) {
            return Err(DhtError::Put(e.to_string()));
        }
    }
    let info_hash = Id::from_bytes(rendezvous_hash(account_id))
        .map_err(|e| DhtError::Put(format!("rendezvous hash: {e}")))?;
    bounded(dht.announce_peer(info_hash, Some(port)))
        .await?
        .map_err(|e| DhtError::Put(e.to_string()))?;
    Ok(())
}

/// A device the signed records say the account has, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// The device id (SHA-256 of its key in the account record).
    pub device: DeviceId,
    /// Its addresses, from its device record.
    pub addrs: Vec<SocketAddr>,
}

/// Resolves an account whose public key we hold: account record → device
/// keys → device records. Devices with no readable record are left out;
/// records claiming another account are refused as invalid.
pub async fn resolve_signed(
    dht: &AsyncDht,
    account: &AccountId,
    account_key: &[u8; 32],
) -> Result<Option<Vec<ResolvedDevice>>, DhtError> {
    let Some(item) =
        bounded(dht.get_mutable_most_recent(account_key, Some(ACCOUNT_RECORD_SALT))).await?
    else {
        return Ok(None);
    };
    let record = AccountRecord::decode(item.value())?;
    let mut devices = Vec::new();
    for (key, device) in record.device_keys.iter().zip(record.device_ids()) {
        let Some(item) =
            bounded(dht.get_mutable_most_recent(key, Some(DEVICE_RECORD_SALT))).await?
        else {
            continue;
        };
        let record = DeviceRecord::decode(item.value())?;
        if record.account != *account {
            return Err(DhtError::WrongAccount {
                expected: *account,
                found: record.account,
            });
        }
        devices.push(ResolvedDevice {
            device,
            addrs: record.addresses,
        });
    }
    Ok(Some(devices))
}

/// Candidate addresses of `account`'s devices from its rendezvous.
pub async fn resolve_rendezvous(
    dht: &AsyncDht,
    account: &AccountId,
) -> Result<Vec<SocketAddr>, DhtError> {
    let info_hash = Id::from_bytes(rendezvous_hash(account))
        .map_err(|e| DhtError::Put(format!("rendezvous hash: {e}")))?;
    let mut stream = dht.get_peers(info_hash);
    let mut found = BTreeSet::new();
    let collect = async {
        while let Some(batch) = stream.next().await {
            found.extend(batch.into_iter().map(SocketAddr::V4));
            if found.len() >= RENDEZVOUS_PEERS_MAX {
                break;
            }
        }
    };
    // A lookup that runs out of time still yields what it found so far.
    let _ = tokio::time::timeout(DHT_QUERY_TIMEOUT, collect).await;
    Ok(found.into_iter().take(RENDEZVOUS_PEERS_MAX).collect())
}

/// This host's non-loopback IPv4 addresses with `port`, for the device record.
pub fn local_addresses(port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|interface| !interface.is_loopback())
        .filter_map(|interface| match interface.ip() {
            IpAddr::V4(ip) => Some(SocketAddr::new(IpAddr::V4(ip), port)),
            IpAddr::V6(_) => None,
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(DEVICE_RECORD_ADDRESSES_MAX);
    addrs
}

/// DHT server nodes for a private network (tests, or operators without
/// internet who still want a DHT): the first listens on `advertised`'s port
/// with no bootstrap, the others bootstrap from it at `advertised`. They run
/// on mainline's threads for as long as the returned handles live.
pub fn start_bootstrap_nodes(
    advertised: std::net::SocketAddrV4,
    count: usize,
) -> Result<Vec<Dht>, DhtError> {
    let mut nodes = Vec::with_capacity(count);
    let first = Dht::builder()
        .server_mode()
        .no_bootstrap()
        .port(advertised.port())
        .build()
        .map_err(DhtError::Start)?;
    nodes.push(first);
    let bootstrap = [advertised.to_string()];
    for _ in 1..count {
        let node = Dht::builder()
            .server_mode()
            .bootstrap(&bootstrap)
            .build()
            .map_err(DhtError::Start)?;
        nodes.push(node);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use actix::Actor as _;
    use starling_protocol::AccountIdentity;

    use super::*;
    use crate::account::discovered::SignDhtRecords;
    use crate::account::Account;

    /// Records signed by the account actor's keys go onto a local testnet
    /// (never the public DHT) and come back through both lookups; a newer
    /// sequence number replaces the old addresses.
    #[actix::test]
    async fn records_publish_and_resolve_on_a_local_testnet() {
        let testnet = tokio::task::spawn_blocking(|| mainline::Testnet::new(3))
            .await
            .unwrap()
            .unwrap();
        let identity =
            AccountIdentity::generate("Alice", SystemTime::now(), &mut rand_core::OsRng).unwrap();
        let (account_id, device_id) = (identity.account_id(), identity.device_id());
        let account_key = identity.account_key.verifying_key().to_bytes();
        let account = Account::new(identity).start();
        let nodes: Vec<AsyncDht> = {
            let bootstrap = testnet.bootstrap.clone();
            tokio::task::spawn_blocking(move || {
                (0..2).map(|_| start(&bootstrap).unwrap()).collect()
            })
            .await
            .unwrap()
        };
        let (writer, reader) = (&nodes[0], &nodes[1]);

        for (seq, addr) in [(1, "10.1.2.3:7420"), (2, "10.9.8.7:7421")] {
            let addr: SocketAddr = addr.parse().unwrap();
            let signed = account
                .send(SignDhtRecords {
                    addresses: vec![addr],
                    seq,
                })
                .await
                .unwrap()
                .unwrap();
            publish(
                writer,
                &signed.device,
                &signed.account,
                &account_id,
                addr.port(),
            )
            .await
            .unwrap();
            let devices = resolve_signed(reader, &account_id, &account_key)
                .await
                .unwrap()
                .expect("the account record is found");
            assert_eq!(
                devices,
                vec![ResolvedDevice {
                    device: device_id,
                    addrs: vec![addr],
                }]
            );
        }
        let peers = resolve_rendezvous(reader, &account_id).await.unwrap();
        assert!(
            peers.iter().any(|p| p.port() == 7421),
            "rendezvous lists our port: {peers:?}"
        );
        let stranger = AccountId::from_bytes([9; 32]);
        assert!(resolve_rendezvous(reader, &stranger)
            .await
            .unwrap()
            .is_empty());
        assert!(resolve_signed(reader, &stranger, &[9; 32])
            .await
            .unwrap()
            .is_none());
    }
}
