//! Chain verification: device certificate → account certificate.
//!
//! This is the one function that decides whether a device speaks for an
//! account. The TLS verifiers, swarm validation and account sync all call it,
//! so its checks are the union of what each needs: both certificates' shapes
//! (done when parsing), the account's self-signature, the device's signature
//! by the account key, both validity windows at `now`, the issuer naming that
//! account, and the account's CRL (verified as the account's own) not listing
//! the device.
//!
//! Callers that check many chains against the same account keep a
//! [`VerifiedAccount`] and [`VerifiedCrl`] and call [`verify_device_of`], which
//! verifies one signature instead of three; callers that judge signatures
//! apart from time (swarm validation checks time per commit) call
//! [`verify_device_signature`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cert::{AccountCert, DeviceCert};
use crate::crl::{CrlError, RevocationList};
use crate::id::{AccountId, DeviceId};
use crate::x509;

/// Why a device certificate does not speak for an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("account certificate {0} is not validly self-signed")]
    AccountSignature(AccountId),
    #[error("account certificate {0} is not valid at this time (expired or not yet valid)")]
    AccountNotCurrent(AccountId),
    #[error("device {device} names account {claimed} as issuer, not {account}")]
    OtherAccount {
        device: DeviceId,
        claimed: AccountId,
        account: AccountId,
    },
    #[error("device certificate {0} is not signed by its account's key")]
    DeviceSignature(DeviceId),
    #[error("device certificate {0} has expired")]
    DeviceExpired(DeviceId),
    #[error("device certificate {0} is not valid yet")]
    DeviceNotYetValid(DeviceId),
    #[error("the revocation list is not the account's own: {0}")]
    Crl(CrlError),
    #[error("device {0} is revoked by its account")]
    Revoked(DeviceId),
}

/// The identity a verified chain proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifiedDevice {
    /// The account the device speaks for.
    pub account_id: AccountId,
    /// The device itself.
    pub device_id: DeviceId,
}

/// An account certificate whose self-signature has been checked. Its validity
/// window is still checked at every use; holding one only saves re-verifying
/// the signature (callers such as the TLS verifiers keep a few).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAccount(AccountCert);

impl VerifiedAccount {
    /// Checks the self-signature (and nothing that depends on time).
    pub fn verify(account: AccountCert) -> Result<Self, ChainError> {
        x509::verify_envelope(account.der(), account.public_key())
            .map_err(|_| ChainError::AccountSignature(account.id()))?;
        Ok(Self(account))
    }

    /// The certificate.
    pub fn cert(&self) -> &AccountCert {
        &self.0
    }
}

/// A CRL proven to be its account's own (signed by the account key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl(RevocationList);

impl VerifiedCrl {
    /// Checks that `account` issued and signed `crl`.
    pub fn verify(crl: RevocationList, account: &AccountCert) -> Result<Self, CrlError> {
        crl.verify(account)?;
        Ok(Self(crl))
    }

    /// The list.
    pub fn crl(&self) -> &RevocationList {
        &self.0
    }
}

/// Checks what does not depend on time: `device` names `account` as issuer,
/// is signed by its key, and (given its CRL) is not revoked.
pub fn verify_device_signature(
    device: &DeviceCert,
    account: &VerifiedAccount,
    crl: Option<&VerifiedCrl>,
) -> Result<VerifiedDevice, ChainError> {
    let account = account.cert();
    let account_id = account.id();
    let device_id = device.id();
    if device.claimed_account_id() != account_id {
        return Err(ChainError::OtherAccount {
            device: device_id,
            claimed: device.claimed_account_id(),
            account: account_id,
        });
    }
    x509::verify_envelope(device.der(), account.public_key())
        .map_err(|_| ChainError::DeviceSignature(device_id))?;
    if let Some(crl) = crl {
        if crl.crl().issuer() != account_id {
            return Err(ChainError::Crl(CrlError::WrongAccount {
                expected: account_id,
                found: crl.crl().issuer(),
            }));
        }
        if crl.crl().is_revoked(device.serial()) {
            return Err(ChainError::Revoked(device_id));
        }
    }
    Ok(VerifiedDevice {
        account_id,
        device_id,
    })
}

/// [`verify_device_chain`] for an account and CRL verified earlier: one
/// signature verification instead of three.
///
/// The validity windows are checked against `now` give or take `skew`: the
/// chain passes when both certificates are valid at some instant within
/// `skew` of `now`, for a verifier whose clock may be off by that much (the
/// TLS verifiers use [`CERT_CLOCK_SKEW_SECS_MAX`](crate::limits::CERT_CLOCK_SKEW_SECS_MAX)).
/// Signatures, issuer and revocation do not depend on time, so no skew
/// weakens them.
pub fn verify_device_of(
    device: &DeviceCert,
    account: &VerifiedAccount,
    crl: Option<&VerifiedCrl>,
    now: SystemTime,
    skew: Duration,
) -> Result<VerifiedDevice, ChainError> {
    // Saturating: a clock near the epoch, or a huge skew, never panics.
    let earliest = now.checked_sub(skew).unwrap_or(UNIX_EPOCH);
    let latest = now.checked_add(skew).unwrap_or(now);
    let cert = account.cert();
    if latest < cert.not_before() || earliest > cert.not_after() {
        return Err(ChainError::AccountNotCurrent(cert.id()));
    }
    let verified = verify_device_signature(device, account, crl)?;
    if earliest > device.not_after() {
        return Err(ChainError::DeviceExpired(verified.device_id));
    }
    if latest < device.not_before() {
        return Err(ChainError::DeviceNotYetValid(verified.device_id));
    }
    Ok(verified)
}

/// Verifies that `device` is a current, unrevoked device of `account` at `now`.
pub fn verify_device_chain(
    device: &DeviceCert,
    account: &AccountCert,
    crl: Option<&RevocationList>,
    now: SystemTime,
) -> Result<VerifiedDevice, ChainError> {
    let account = VerifiedAccount::verify(account.clone())?;
    let crl = crl
        .map(|crl| VerifiedCrl::verify(crl.clone(), account.cert()))
        .transpose()
        .map_err(ChainError::Crl)?;
    verify_device_of(device, &account, crl.as_ref(), now, Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{account, device, now, rng};
    use crate::cert::{AccountCert, DeviceCert, DEVICE_CERT_VALIDITY, NOT_BEFORE_BACKDATE};
    use crate::limits::CERT_CLOCK_SKEW_SECS_MAX;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_fresh_device_verifies() {
        let (key, cert) = account(1);
        let (dkey, dcert) = device(&key, &cert, 2);
        let crl = RevocationList::first(&key, &cert, now()).unwrap();
        let verified = verify_device_chain(&dcert, &cert, Some(&crl), now()).unwrap();
        assert_eq!(
            verified,
            VerifiedDevice {
                account_id: cert.id(),
                device_id: DeviceId::of_key(&dkey.verifying_key())
            }
        );
    }

    #[test]
    fn rejections() {
        let (key, cert) = account(1);
        let (_, dcert) = device(&key, &cert, 2);
        let (other_key, other_cert) = account(3);
        let (_, foreign) = device(&other_key, &other_cert, 4);

        // One row per rule: the chain to check and the verdict expected.
        let later = now() + DEVICE_CERT_VALIDITY + Duration::from_secs(60);
        let earlier = now() - NOT_BEFORE_BACKDATE - Duration::from_secs(60);
        let revoked = RevocationList::first(&key, &cert, now())
            .unwrap()
            .with_revoked(&key, &cert, dcert.serial(), now())
            .unwrap();
        let foreign_crl = RevocationList::first(&other_key, &other_cert, now()).unwrap();
        // A device certificate claiming `cert`'s account but signed by another key.
        let forged = DeviceCert::issue(
            &other_key,
            &cert,
            &SigningKey::generate(&mut rng(5)).verifying_key(),
            now(),
            &mut rng(6),
        )
        .unwrap();
        // An account certificate for `cert`'s name and key, signed by someone else is impossible to
        // build through issue(); flip a signature byte instead.
        let mut bad_self_sig = cert.der().to_vec();
        let last = bad_self_sig.len() - 1;
        bad_self_sig[last] ^= 1;
        let bad_self_sig = AccountCert::from_der(&bad_self_sig).unwrap();

        // A device certificate issued tomorrow is not valid today.
        let tomorrow = now() + Duration::from_secs(86_400);
        let future = DeviceCert::issue(
            &key,
            &cert,
            &SigningKey::generate(&mut rng(7)).verifying_key(),
            tomorrow,
            &mut rng(8),
        )
        .unwrap();

        /// (name, device, account, CRL, time, expected verdict)
        type Case<'a> = (
            &'a str,
            &'a DeviceCert,
            &'a AccountCert,
            Option<&'a RevocationList>,
            SystemTime,
            ChainError,
        );
        let cases: Vec<Case> = vec![
            (
                "device not yet valid",
                &future,
                &cert,
                None,
                now(),
                ChainError::DeviceNotYetValid(future.id()),
            ),
            (
                "other account's device",
                &foreign,
                &cert,
                None,
                now(),
                ChainError::OtherAccount {
                    device: foreign.id(),
                    claimed: other_cert.id(),
                    account: cert.id(),
                },
            ),
            (
                "forged issuer",
                &forged,
                &cert,
                None,
                now(),
                ChainError::DeviceSignature(forged.id()),
            ),
            (
                "expired",
                &dcert,
                &cert,
                None,
                later,
                ChainError::DeviceExpired(dcert.id()),
            ),
            (
                "account not yet valid",
                &dcert,
                &cert,
                None,
                earlier,
                ChainError::AccountNotCurrent(cert.id()),
            ),
            (
                "revoked",
                &dcert,
                &cert,
                Some(&revoked),
                now(),
                ChainError::Revoked(dcert.id()),
            ),
            (
                "foreign CRL",
                &dcert,
                &cert,
                Some(&foreign_crl),
                now(),
                ChainError::Crl(CrlError::WrongAccount {
                    expected: cert.id(),
                    found: other_cert.id(),
                }),
            ),
            (
                "broken self-signature",
                &dcert,
                &bad_self_sig,
                None,
                now(),
                ChainError::AccountSignature(cert.id()),
            ),
        ];
        for (name, device, account, crl, at, expected) in cases {
            assert_eq!(
                verify_device_chain(device, account, crl, at),
                Err(expected),
                "case {name}"
            );
        }
    }

    #[test]
    fn a_clock_off_by_less_than_the_skew_accepts_windows_but_never_revocation() {
        let (key, cert) = account(1);
        let (_, dcert) = device(&key, &cert, 2);
        let skew = Duration::from_secs(CERT_CLOCK_SKEW_SECS_MAX);
        let day = Duration::from_secs(86_400);
        let account = VerifiedAccount::verify(cert.clone()).unwrap();
        let check = |at, skew, crl: Option<&VerifiedCrl>| {
            verify_device_of(&dcert, &account, crl, at, skew).map(|v| v.device_id)
        };
        // Issued with a correct clock, checked by a clock a day slow.
        let slow = now() - day;
        assert_eq!(
            check(slow, Duration::ZERO, None),
            Err(ChainError::AccountNotCurrent(cert.id()))
        );
        assert_eq!(check(slow, skew, None), Ok(dcert.id()));
        // A day past the device's end, by a clock a day fast.
        let fast = dcert.not_after() + day;
        assert_eq!(
            check(fast, Duration::ZERO, None),
            Err(ChainError::DeviceExpired(dcert.id()))
        );
        assert_eq!(check(fast, skew, None), Ok(dcert.id()));
        // Beyond the skew, windows hold; revocation holds whatever the skew.
        assert_eq!(
            check(now() - skew - NOT_BEFORE_BACKDATE - day, skew, None),
            Err(ChainError::AccountNotCurrent(cert.id()))
        );
        assert_eq!(
            check(dcert.not_after() + skew + day, skew, None),
            Err(ChainError::DeviceExpired(dcert.id()))
        );
        let revoked = RevocationList::first(&key, &cert, now())
            .unwrap()
            .with_revoked(&key, &cert, dcert.serial(), now())
            .unwrap();
        let revoked = VerifiedCrl::verify(revoked, &cert).unwrap();
        assert_eq!(
            check(now(), skew, Some(&revoked)),
            Err(ChainError::Revoked(dcert.id()))
        );
        // No clock reading or skew panics.
        let _ = check(UNIX_EPOCH, Duration::MAX, None);
        let _ = check(now(), Duration::MAX, None);
    }
}
