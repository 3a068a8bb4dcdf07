//! What the account does with discovery: it decides which discovered devices
//! are worth a connection, dials them through the transport, tells discovery
//! which accounts to look up, and signs this device's DHT records.
//!
//! Discovery only reports hints (`PeerDiscovered`); the account filters them
//! (our own other devices, members and invitees of our swarms) and asks the
//! transport to `Connect` with the claimed account and device as the
//! `ExpectedPeer`. The TLS handshake then decides identity: a record that
//! lies yields a failed verification, reported back so discovery counts it.
//!
//! The keys never leave the account: discovery hands it the record contents
//! and gets back signatures over BEP 44's signable bytes.

use std::net::SocketAddr;

use actix::prelude::*;
use ed25519_dalek::Signer as _;
use starling_protocol::discovery::{
    bep44_signable, AccountRecord, DeviceRecord, RecordError, ACCOUNT_RECORD_DEVICES_MAX,
    ACCOUNT_RECORD_SALT, DEVICE_RECORD_SALT,
};
use starling_protocol::{AccountId, DeviceId};

use super::Account;
use crate::discovery::DiscoverySource;
use crate::transport::{Connect, ConnectError, ExpectedPeer};

/// Accounts [`WatchedAccounts`] returns at most (the DHT resolves each).
pub const WATCHED_ACCOUNTS_MAX: usize = 1_024;

/// Discovery saw a device that claims `account` (and `device`, if known) at `addr`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "DiscoveredOutcome")]
pub struct PeerDiscovered {
    /// The account the record claims.
    pub account: AccountId,
    /// The device the record claims, if it names one.
    pub device: Option<DeviceId>,
    /// Where it says the device listens.
    pub addr: SocketAddr,
    /// Which mechanism found it.
    pub source: DiscoverySource,
}

/// What became of a [`PeerDiscovered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveredOutcome {
    /// Not an account we talk to (or our own device).
    Ignored,
    /// Already connected to it.
    AlreadyConnected,
    /// Dialled, and the peer proved the claimed identity.
    Connected,
    /// The handshake failed on identity: the record lied (or the device was
    /// revoked). The reason is a bounded label.
    VerificationFailed(&'static str),
    /// Nothing answered in time, or the dial could not start.
    Unreachable(String),
}

impl Handler<PeerDiscovered> for Account {
    type Result = ResponseFuture<DiscoveredOutcome>;

    fn handle(&mut self, msg: PeerDiscovered, _: &mut Self::Context) -> Self::Result {
        let me = self.identity.account_id();
        let my_device = self.identity.device_id();
        let Some(sw) = self.swarms.as_ref() else {
            return Box::pin(async { DiscoveredOutcome::Ignored });
        };
        if msg.device == Some(my_device)
            || (msg.account != me && !sw.accounts_of_interest().contains(&msg.account))
        {
            return Box::pin(async { DiscoveredOutcome::Ignored });
        }
        if sw.reaches(&msg.account, msg.device.as_ref()) {
            return Box::pin(async { DiscoveredOutcome::AlreadyConnected });
        }
        let transport = sw.transport().clone();
        let connect = Connect {
            addr: msg.addr,
            peer: ExpectedPeer {
                account_id: msg.account,
                device_id: msg.device,
            },
        };
        Box::pin(async move {
            match transport.send(connect).await {
                Err(e) => DiscoveredOutcome::Unreachable(format!("transport mailbox: {e}")),
                Ok(Ok(peer)) => {
                    tracing::info!(account = %peer.account_id, device = %peer.device_id, addr = %msg.addr, source = msg.source.label(), "discovered peer connected");
                    DiscoveredOutcome::Connected
                }
                Ok(Err(ConnectError::Handshake { reason, .. }))
                    if !matches!(
                        reason,
                        "timeout" | "closed" | "transport_error" | "too_many_connections"
                    ) =>
                {
                    tracing::warn!(claimed_account = %msg.account, addr = %msg.addr, source = msg.source.label(), reason, "discovered record failed verification");
                    DiscoveredOutcome::VerificationFailed(reason)
                }
                Ok(Err(ConnectError::SelfDial)) => DiscoveredOutcome::Ignored,
                Ok(Err(e)) => DiscoveredOutcome::Unreachable(e.to_string()),
            }
        })
    }
}

/// Asks for the accounts discovery should look up: ours (for our other
/// devices) and every member and invitee of our swarms that no connected
/// device speaks for.
#[derive(Message, Debug)]
#[rtype(result = "Vec<AccountId>")]
pub struct WatchedAccounts;

impl Handler<WatchedAccounts> for Account {
    type Result = MessageResult<WatchedAccounts>;

    fn handle(&mut self, _: WatchedAccounts, _: &mut Self::Context) -> Self::Result {
        let me = self.identity.account_id();
        let mut accounts = vec![me];
        if let Some(sw) = self.swarms.as_ref() {
            accounts.extend(
                sw.accounts_of_interest()
                    .into_iter()
                    .filter(|a| *a != me && !sw.reaches(a, None))
                    .take(WATCHED_ACCOUNTS_MAX - 1),
            );
        }
        MessageResult(accounts)
    }
}

/// One BEP 44 mutable item, signed; discovery puts it on the DHT as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// The signer's raw ed25519 public key (the item's `k`).
    pub public_key: [u8; 32],
    /// The salt the item lives under.
    pub salt: &'static [u8],
    /// Sequence number.
    pub seq: i64,
    /// The value.
    pub value: Vec<u8>,
    /// ed25519 signature over [`bep44_signable`].
    pub signature: [u8; 64],
}

/// Signs this device's records: its addresses with the device key, and the
/// account's device list with the account key.
#[derive(Message, Debug)]
#[rtype(result = "Result<SignedRecords, RecordError>")]
pub struct SignDhtRecords {
    /// Where this device listens.
    pub addresses: Vec<SocketAddr>,
    /// The sequence number (seconds since the Unix epoch, so it only grows).
    pub seq: i64,
}

/// The two records of [`SignDhtRecords`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecords {
    /// Device record (device key).
    pub device: SignedRecord,
    /// Account record (account key).
    pub account: SignedRecord,
}

fn sign(
    key: &ed25519_dalek::SigningKey,
    salt: &'static [u8],
    seq: i64,
    value: Vec<u8>,
) -> Result<SignedRecord, RecordError> {
    let signable = bep44_signable(seq, &value, Some(salt))?;
    Ok(SignedRecord {
        public_key: key.verifying_key().to_bytes(),
        salt,
        seq,
        signature: key.sign(&signable).to_bytes(),
        value,
    })
}

impl Handler<SignDhtRecords> for Account {
    type Result = Result<SignedRecords, RecordError>;

    fn handle(&mut self, msg: SignDhtRecords, _: &mut Self::Context) -> Self::Result {
        let identity = &self.identity;
        let device_value = DeviceRecord {
            account: identity.account_id(),
            addresses: msg.addresses,
        }
        .encode()?;
        let device_keys = identity
            .devices()
            .into_iter()
            .filter(|d| !d.revoked)
            .map(|d| d.cert.public_key().to_bytes())
            .take(ACCOUNT_RECORD_DEVICES_MAX)
            .collect();
        let account_value = AccountRecord { device_keys }.encode()?;
        Ok(SignedRecords {
            device: sign(
                &identity.device_key,
                DEVICE_RECORD_SALT,
                msg.seq,
                device_value,
            )?,
            account: sign(
                &identity.account_key,
                ACCOUNT_RECORD_SALT,
                msg.seq,
                account_value,
            )?,
        })
    }
}
