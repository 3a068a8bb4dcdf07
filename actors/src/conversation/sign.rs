//! The device's signing identity and the allowed-signers export.
//!
//! Commits are signed in Git's SSH signature format (see
//! `starling_protocol::swarm::commit`), so stock Git verifies them given an
//! allowed-signers file: one line per device certificate that ever appeared
//! in the conversation's tree, `<device-id> namespaces="git" ssh-ed25519 …`.

use ed25519_dalek::SigningKey;
use starling_protocol::swarm::commit::openssh_public_key;
use starling_protocol::swarm::validation::authored_time_secs;
use starling_protocol::{AccountCert, AccountId, DeviceCert, DeviceId};

/// Why a key and certificates do not make a signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    #[error("the signing key is not the key certified for device {0}")]
    KeyNotCertified(DeviceId),
    #[error("device {device} is not certified by account {account}")]
    OtherAccount {
        device: DeviceId,
        account: AccountId,
    },
}

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
    /// Bundles a device key with its certificate and its account's. The key
    /// must be the certificate's, and the certificate the account's: the
    /// store skips re-verifying its own fresh signatures on that basis.
    pub fn new(
        key: SigningKey,
        device: DeviceCert,
        account: AccountCert,
    ) -> Result<Self, SignerError> {
        if key.verifying_key() != *device.public_key() {
            return Err(SignerError::KeyNotCertified(device.id()));
        }
        if device.claimed_account_id() != account.id() {
            return Err(SignerError::OtherAccount {
                device: device.id(),
                account: account.id(),
            });
        }
        Ok(Self {
            key,
            device,
            account,
        })
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
    /// The committer time to give a commit signed at `now_secs` (this
    /// device's clock) on parents dated `parents_secs`: no earlier than
    /// them (within a bound) nor than either certificate's `notBefore`
    /// (see [`authored_time_secs`]).
    pub fn commit_time_secs(&self, now_secs: i64, parents_secs: &[i64]) -> i64 {
        authored_time_secs(
            now_secs,
            parents_secs.iter().copied(),
            &self.device,
            &self.account,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_signer_needs_the_certified_key_and_its_account() {
        let at = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let key = |b: u8| SigningKey::from_bytes(&[b; 32]);
        let mut rng = rand_core::OsRng;
        let account = AccountCert::issue(&key(1), at, &mut rng).unwrap();
        let other = AccountCert::issue(&key(2), at, &mut rng).unwrap();
        let device =
            DeviceCert::issue(&key(1), &account, &key(3).verifying_key(), at, &mut rng).unwrap();
        assert!(DeviceSigner::new(key(3), device.clone(), account.clone()).is_ok());
        assert_eq!(
            DeviceSigner::new(key(4), device.clone(), account).unwrap_err(),
            SignerError::KeyNotCertified(device.id())
        );
        assert!(matches!(
            DeviceSigner::new(key(3), device, other),
            Err(SignerError::OtherAccount { .. })
        ));
        let line = allowed_signers_line(
            &DeviceCert::issue(
                &key(1),
                &AccountCert::issue(&key(1), at, &mut rng).unwrap(),
                &key(5).verifying_key(),
                at,
                &mut rng,
            )
            .unwrap(),
        );
        assert!(line.contains(" namespaces=\"git\" ssh-ed25519 "), "{line}");
    }
}
