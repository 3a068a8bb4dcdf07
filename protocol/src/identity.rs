//! An account as one device holds it: keys, certificates, CRL, known devices.
//!
//! This is the value the data directory persists, the archive carries and the
//! account actor owns. Its operations (make an account, restore one as a new
//! device, revoke a device) are pure: time and randomness are arguments.

use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;

use crate::archive::{AccountArchive, KnownDevice};
use crate::cert::{AccountCert, CertError, DeviceCert};
use crate::crl::{CrlError, RevocationList};
use crate::id::{AccountId, DeviceId};

/// Why an identity operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Crl(#[from] CrlError),
    #[error("{0} is this device; revoke it from another device of the account")]
    RevokeSelf(DeviceId),
    #[error("device {device} is not a device of account {account}")]
    UnknownDevice {
        device: DeviceId,
        account: AccountId,
    },
    #[error("device {0} is already revoked")]
    AlreadyRevoked(DeviceId),
}

/// An account held on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountIdentity {
    /// The name others see.
    pub display_name: String,
    /// The account's secret key (every device of an account holds it, so any
    /// device can issue certificates for new devices and revoke lost ones).
    pub account_key: SigningKey,
    /// The account certificate.
    pub account_cert: AccountCert,
    /// This device's secret key.
    pub device_key: SigningKey,
    /// This device's certificate.
    pub device_cert: DeviceCert,
    /// The account's newest CRL.
    pub crl: RevocationList,
    /// Every device the account knows, this one included, sorted by id.
    pub known_devices: Vec<DeviceCert>,
}

/// A known device and its state, as `account show` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus<'a> {
    /// The device's certificate.
    pub cert: &'a DeviceCert,
    /// Listed in the account's CRL.
    pub revoked: bool,
    /// The device holding this identity.
    pub this_device: bool,
}

impl AccountIdentity {
    /// A brand-new account whose first device is this one.
    pub fn generate(
        display_name: &str,
        now: SystemTime,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, IdentityError> {
        let account_key = SigningKey::generate(rng);
        let account_cert = AccountCert::issue(&account_key, now, rng)?;
        let crl = RevocationList::first(&account_key, &account_cert, now)?;
        Self::new_device_of(
            display_name.to_owned(),
            account_key,
            account_cert,
            crl,
            Vec::new(),
            now,
            rng,
        )
    }

    /// The account an archive carries, restored as a new device of it.
    pub fn from_archive(
        archive: AccountArchive,
        now: SystemTime,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, IdentityError> {
        let known = archive.devices.into_iter().map(|d| d.cert).collect();
        Self::new_device_of(
            archive.display_name,
            archive.account_key,
            archive.account_cert,
            archive.crl,
            known,
            now,
            rng,
        )
    }

    fn new_device_of(
        display_name: String,
        account_key: SigningKey,
        account_cert: AccountCert,
        crl: RevocationList,
        mut known_devices: Vec<DeviceCert>,
        now: SystemTime,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, IdentityError> {
        let device_key = SigningKey::generate(rng);
        let device_cert = DeviceCert::issue(
            &account_key,
            &account_cert,
            &device_key.verifying_key(),
            now,
            rng,
        )?;
        known_devices.push(device_cert.clone());
        known_devices.sort_by_key(DeviceCert::id);
        Ok(Self {
            display_name,
            account_key,
            account_cert,
            device_key,
            device_cert,
            crl,
            known_devices,
        })
    }

    /// The account's id.
    pub fn account_id(&self) -> AccountId {
        self.account_cert.id()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_cert.id()
    }

    /// What an archive of this account carries.
    pub fn to_archive(&self) -> AccountArchive {
        AccountArchive {
            display_name: self.display_name.clone(),
            account_key: self.account_key.clone(),
            account_cert: self.account_cert.clone(),
            crl: self.crl.clone(),
            devices: self
                .known_devices
                .iter()
                .cloned()
                .map(|cert| KnownDevice { cert })
                .collect(),
        }
    }

    /// Every known device with its state, this device first.
    pub fn devices(&self) -> Vec<DeviceStatus<'_>> {
        let mut list: Vec<_> = self
            .known_devices
            .iter()
            .map(|cert| DeviceStatus {
                cert,
                revoked: self.crl.is_revoked(cert.serial()),
                this_device: cert.id() == self.device_id(),
            })
            .collect();
        list.sort_by_key(|d| (!d.this_device, d.cert.id()));
        list
    }

    /// The CRL that revokes `device`; the caller persists it, then stores it
    /// here with [`Self::adopt_crl`].
    pub fn revocation_of(
        &self,
        device: DeviceId,
        now: SystemTime,
    ) -> Result<RevocationList, IdentityError> {
        if device == self.device_id() {
            return Err(IdentityError::RevokeSelf(device));
        }
        let target = self.known_devices.iter().find(|c| c.id() == device).ok_or(
            IdentityError::UnknownDevice {
                device,
                account: self.account_id(),
            },
        )?;
        if self.crl.is_revoked(target.serial()) {
            return Err(IdentityError::AlreadyRevoked(device));
        }
        Ok(self
            .crl
            .with_revoked(&self.account_key, &self.account_cert, target.serial(), now)?)
    }

    /// Replaces the CRL with a newer one of this account.
    pub fn adopt_crl(&mut self, crl: RevocationList) -> Result<(), IdentityError> {
        crl.verify(&self.account_cert)?;
        debug_assert!(
            crl.supersedes(&self.crl),
            "a CRL is only ever replaced by a newer one"
        );
        self.crl = crl;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{now, rng};
    use crate::chain::{verify_device_chain, ChainError};

    #[test]
    fn a_restored_device_revokes_the_first_one() {
        let phone = AccountIdentity::generate("Alice", now(), &mut rng(1)).unwrap();
        let laptop = AccountIdentity::from_archive(phone.to_archive(), now(), &mut rng(2)).unwrap();
        assert_eq!(laptop.account_id(), phone.account_id());
        assert_ne!(laptop.device_id(), phone.device_id());
        assert_eq!(laptop.known_devices.len(), 2);

        let mut laptop = laptop;
        assert_eq!(
            laptop.revocation_of(laptop.device_id(), now()),
            Err(IdentityError::RevokeSelf(laptop.device_id()))
        );
        let crl = laptop.revocation_of(phone.device_id(), now()).unwrap();
        laptop.adopt_crl(crl).unwrap();
        assert_eq!(
            laptop.revocation_of(phone.device_id(), now()),
            Err(IdentityError::AlreadyRevoked(phone.device_id()))
        );
        let verdict = verify_device_chain(
            &phone.device_cert,
            &laptop.account_cert,
            Some(&laptop.crl),
            now(),
        );
        assert_eq!(verdict, Err(ChainError::Revoked(phone.device_id())));
        assert!(verify_device_chain(
            &laptop.device_cert,
            &laptop.account_cert,
            Some(&laptop.crl),
            now()
        )
        .is_ok());
        let statuses = laptop.devices();
        assert!(statuses[0].this_device && !statuses[0].revoked);
        assert!(!statuses[1].this_device && statuses[1].revoked);
    }
}
