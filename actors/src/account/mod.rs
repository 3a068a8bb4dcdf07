//! The `Account` actor: owns one account's identity on this device, and
//! (when given a transport) its conversation registry and swarm sync.
//!
//! Nobody else holds the keys or the CRL; other actors and the API ask it by
//! message. [`swarms`] holds the registry of `Conversation` actors, the
//! access check on `swarm/<id>` and `git/<id>` channels, head announcements,
//! anti-entropy and fetch scheduling; [`contacts`] the contact book, contact
//! requests and blocks; [`discovered`] what the account does with discovery
//! hints; [`events`] is the account's event stream; [`swarm_ops`] holds the
//! requests that edit, react, ban and page (built on `swarms`);
//! [`channel_io`] moves the bytes; [`conversation_health`] shows and
//! retries conversations that cannot write; [`clock`] estimates this device's clock
//! offset from its peers' and warns when it is off; [`rejections`] tells
//! peers which of their commits we refuse, and records what peers refuse
//! of ours.

pub mod channel_io;
pub mod clock;
pub mod contacts;
pub mod conversation_health;
pub mod discovered;
pub mod events;
pub mod rejections;
pub mod swarm_ops;
pub mod swarms;

use actix::prelude::*;
use starling_protocol::{AccountId, AccountIdentity, DeviceId};

pub use swarms::{SwarmConfig, SwarmError, SyncTuning};

/// Messages the account's mailbox holds (API requests, incoming channels,
/// frames, connection events); the transport's `try_send` refuses channels
/// beyond it rather than queueing without bound.
pub const ACCOUNT_MAILBOX_CAPACITY: usize = 1_024;

/// One account, as this device holds it.
pub struct Account {
    identity: AccountIdentity,
    swarms: Option<swarms::Swarms>,
    contacts: contacts::Contacts,
}

impl Account {
    /// An actor owning `identity`, with no network (status only).
    pub fn new(identity: AccountIdentity) -> Self {
        Self {
            identity,
            swarms: None,
            contacts: contacts::Contacts::default(),
        }
    }

    /// An actor owning `identity` that syncs swarms through `config.transport`.
    pub fn with_swarms(identity: AccountIdentity, config: SwarmConfig) -> Result<Self, SwarmError> {
        Self::with_swarms_tuned(identity, config, SyncTuning::default())
    }

    /// [`Account::with_swarms`] with sync timers and fault injection set
    /// (the simulator's entry point).
    pub fn with_swarms_tuned(
        identity: AccountIdentity,
        config: SwarmConfig,
        tuning: SyncTuning,
    ) -> Result<Self, SwarmError> {
        let swarms = swarms::Swarms::new(&identity, config, tuning)?;
        Ok(Self {
            identity,
            swarms: Some(swarms),
            contacts: contacts::Contacts::default(),
        })
    }
}

impl Actor for Account {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(ACCOUNT_MAILBOX_CAPACITY);
        if self.swarms.is_some() {
            swarms::start(self, ctx);
            contacts::start(self, ctx);
        }
    }
}

/// Asks for the account's public facts.
#[derive(Message)]
#[rtype(result = "AccountStatus")]
pub struct GetStatus;

/// The account's public facts, safe to show anyone who may see the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountStatus {
    /// The account's id.
    pub account_id: AccountId,
    /// This device's id.
    pub device_id: DeviceId,
    /// The account's display name.
    pub display_name: String,
    /// The number of the newest CRL.
    pub crl_number: u64,
    /// Every known device.
    pub devices: Vec<KnownDeviceStatus>,
    /// This device's clock against its peers' (`None` without swarm sync).
    pub clock: Option<clock::ClockStatus>,
    /// Conversations that cannot write right now.
    pub conversations_unhealthy: Vec<conversation_health::UnhealthyConversation>,
}

/// One known device in [`AccountStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KnownDeviceStatus {
    /// The device's id.
    pub device_id: DeviceId,
    /// Listed in the account's CRL.
    pub revoked: bool,
    /// The device running this node.
    pub this_device: bool,
}

impl Handler<GetStatus> for Account {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let identity = &self.identity;
        MessageResult(AccountStatus {
            account_id: identity.account_id(),
            device_id: identity.device_id(),
            display_name: identity.display_name.clone(),
            crl_number: identity.crl.number(),
            devices: identity
                .devices()
                .into_iter()
                .map(|d| KnownDeviceStatus {
                    device_id: d.cert.id(),
                    revoked: d.revoked,
                    this_device: d.this_device,
                })
                .collect(),
            clock: self.swarms.as_ref().map(|sw| sw.clock.status()),
            conversations_unhealthy: self
                .swarms
                .as_ref()
                .map(|sw| sw.health.list())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn status_reports_the_identity_it_owns() {
        let identity =
            AccountIdentity::generate("Alice", std::time::SystemTime::now(), &mut rand_core::OsRng)
                .unwrap();
        let expected = (identity.account_id(), identity.device_id());
        let account = Account::new(identity).start();
        let status = account.send(GetStatus).await.unwrap();
        assert_eq!((status.account_id, status.device_id), expected);
        assert_eq!(status.display_name, "Alice");
        assert_eq!(status.devices.len(), 1);
        assert!(status.devices[0].this_device && !status.devices[0].revoked);
    }
}
