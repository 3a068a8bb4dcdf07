//! The device's signing identity and the allowed-signers export.
//!
//! Commits are signed in Git's SSH signature format (see
//! `starling_protocol::swarm::commit`), so stock Git verifies them given an
//! allowed-signers file: one line per device certificate that ever appeared
//! in the conversation's tree, `<device-id> namespaces="git" ssh-ed25519 …`.

use ed25519_dalek::SigningKey;
use starling_protocol::swarm::commit::openssh_public_key;
use starling_protocol::{AccountCert, AccountId, DeviceCert, DeviceId};

/// What a device needs to author commits: its key and its certificate chain.
#[derive(Clone)]
pub struct DeviceSigner {
    key: SigningKey,
    device: DeviceCert,
    account: AccountCert,
}

impl std::fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("DeviceSigner")
            .field("device", &self.device.id())
            .field("account", &self.account.id())
            .finish()
    }
}

impl DeviceSigner {
    /// Bundles a device key with its certificate and its account's.
    pub fn new(key: SigningKey, device: DeviceCert, account: AccountCert) -> Self {
        Self {
            key,
            device,
            account,
        }
    }
    /// The device's signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
    /// The device certificate.
    pub fn device_cert(&self) -> &DeviceCert {
        &self.device
    }
    /// The account certificate.
    pub fn account_cert(&self) -> &AccountCert {
        &self.account
    }
    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        self.device.id()
    }
    /// The account id.
    pub fn account_id(&self) -> AccountId {
        self.account.id()
    }
}

/// One allowed-signers line for a device certificate.
pub fn allowed_signers_line(device: &DeviceCert) -> String {
    format!(
        "{} namespaces=\"git\" {}",
        device.id(),
        openssh_public_key(device.public_key())
    )
}
