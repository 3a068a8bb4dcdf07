//! Account revocation lists.
//!
//! A device is revoked by listing its certificate serial in an X.509 v2 CRL
//! signed by the account key. Each CRL carries a cRLNumber; a CRL with a
//! higher number supersedes any older one from the same account, and a new CRL
//! always lists every serial its predecessor listed (revocation is forever).
//! `nextUpdate` is set [`CRL_NEXT_UPDATE`] ahead only because stock OpenSSL
//! rejects CRLs without a future one; Starling itself never expires a CRL.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use der::asn1::Uint;
use der::{Decode, Encode};
use ed25519_dalek::SigningKey;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::CrlNumber;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use crate::cert::AccountCert;
use crate::id::AccountId;
use crate::limits::{CRL_DER_BYTES_MAX, CRL_REVOKED_SERIALS_MAX};
use crate::x509;

/// How far ahead `nextUpdate` is written (for OpenSSL's sake; see module docs).
pub const CRL_NEXT_UPDATE: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

const PEM_LABEL: &str = "X509 CRL";

/// Why bytes are not an acceptable account CRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("CRL is {found} bytes; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("CRL lists {found} serials; the limit is {max}")]
    TooManySerials { found: usize, max: usize },
    #[error("CRL is not valid DER: {0}")]
    Malformed(String),
    #[error("CRL PEM is unreadable: {0}")]
    Pem(String),
    #[error("CRL is not ed25519-signed X.509 v2")]
    NotEd25519V2,
    #[error("CRL has no cRLNumber, or one larger than 64 bits")]
    BadNumber,
    #[error("CRL issuer is not CN=<account id>")]
    IssuerNotAnAccount,
    #[error("CRL was issued by account {found}, not {expected}")]
    WrongAccount {
        expected: AccountId,
        found: AccountId,
    },
    #[error("CRL signature does not verify with account {0}'s key")]
    BadSignature(AccountId),
    #[error("CRL number {0} is the largest possible; no newer CRL can be issued")]
    NumberExhausted(u64),
    #[error("CRL could not be encoded: {0}")]
    Encode(String),
}

fn encode_err(e: der::Error) -> CrlError {
    CrlError::Encode(e.to_string())
}

/// A parsed account CRL. Parsing checks shape; [`RevocationList::verify`] checks
/// that the account signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    der: Vec<u8>,
    issuer: AccountId,
    number: u64,
    /// Revoked serial (big-endian, no leading zeros) → when it was revoked.
    revoked: BTreeMap<Vec<u8>, SystemTime>,
}

impl RevocationList {
    /// The first CRL of an account: number 1, nothing revoked.
    pub fn first(
        account_key: &SigningKey,
        account: &AccountCert,
        now: SystemTime,
    ) -> Result<Self, CrlError> {
        Self::issue(account_key, account, 1, BTreeMap::new(), now)
    }

    /// A successor listing everything this one lists plus `serial`, numbered one higher.
    /// Revoking an already-revoked serial still issues a new number (harmless, and keeps
    /// "every call supersedes" simple for callers).
    pub fn with_revoked(
        &self,
        account_key: &SigningKey,
        account: &AccountCert,
        serial: &[u8],
        now: SystemTime,
    ) -> Result<Self, CrlError> {
        let number = self
            .number
            .checked_add(1)
            .ok_or(CrlError::NumberExhausted(self.number))?;
        let mut revoked = self.revoked.clone();
        revoked
            .entry(strip_leading_zeros(serial).to_vec())
            .or_insert(now);
        Self::issue(account_key, account, number, revoked, now)
    }

    fn issue(
        account_key: &SigningKey,
        account: &AccountCert,
        number: u64,
        revoked: BTreeMap<Vec<u8>, SystemTime>,
        now: SystemTime,
    ) -> Result<Self, CrlError> {
        if revoked.len() > CRL_REVOKED_SERIALS_MAX {
            return Err(CrlError::TooManySerials {
                found: revoked.len(),
                max: CRL_REVOKED_SERIALS_MAX,
            });
        }
        let entries = revoked
            .iter()
            .map(|(serial, at)| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::new(serial)?,
                    revocation_date: x509::x509_time(*at)?,
                    crl_entry_extensions: None,
                })
            })
            .collect::<der::Result<Vec<_>>>()
            .map_err(encode_err)?;
        let next_update = now
            .checked_add(CRL_NEXT_UPDATE)
            .ok_or_else(|| CrlError::Encode("nextUpdate overflows".into()))?;
        let extensions = vec![
            x509::extension(
                &CrlNumber(Uint::new(&number.to_be_bytes()).map_err(encode_err)?),
                false,
            ),
            x509::authority_key_id_extension(account.public_key()),
        ]
        .into_iter()
        .collect::<der::Result<Vec<_>>>()
        .map_err(encode_err)?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: x509::ed25519_algorithm(),
            issuer: account.subject().clone(),
            this_update: x509::x509_time(now).map_err(encode_err)?,
            next_update: Some(x509::x509_time(next_update).map_err(encode_err)?),
            revoked_certificates: if entries.is_empty() {
                None
            } else {
                Some(entries)
            },
            crl_extensions: Some(extensions),
        };
        let (_, signature) = x509::sign_der(account_key, &tbs).map_err(encode_err)?;
        let list = CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: x509::ed25519_algorithm(),
            signature,
        };
        let der = list.to_der().map_err(encode_err)?;
        Self::from_der(&der)
    }

    /// Parses DER and checks shape (not the signature).
    pub fn from_der(der: &[u8]) -> Result<Self, CrlError> {
        if der.len() > CRL_DER_BYTES_MAX {
            return Err(CrlError::TooLarge {
                found: der.len(),
                max: CRL_DER_BYTES_MAX,
            });
        }
        let list =
            CertificateList::from_der(der).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let tbs = &list.tbs_cert_list;
        if tbs.version != Version::V2
            || !x509::is_ed25519(&tbs.signature)
            || !x509::is_ed25519(&list.signature_algorithm)
        {
            return Err(CrlError::NotEd25519V2);
        }
        let issuer = x509::sole_common_name(&tbs.issuer)
            .and_then(|cn| cn.parse::<AccountId>().ok())
            .ok_or(CrlError::IssuerNotAnAccount)?;
        let number = tbs
            .crl_extensions
            .iter()
            .flatten()
            .find(|ext| ext.extn_id == <CrlNumber as const_oid::AssociatedOid>::OID)
            .and_then(|ext| CrlNumber::from_der(ext.extn_value.as_bytes()).ok())
            .and_then(|n| {
                let bytes = n.0.as_bytes();
                (bytes.len() <= 8)
                    .then(|| bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            })
            .ok_or(CrlError::BadNumber)?;
        let entries = tbs.revoked_certificates.as_deref().unwrap_or_default();
        if entries.len() > CRL_REVOKED_SERIALS_MAX {
            return Err(CrlError::TooManySerials {
                found: entries.len(),
                max: CRL_REVOKED_SERIALS_MAX,
            });
        }
        let revoked = entries
            .iter()
            .map(|entry| {
                (
                    strip_leading_zeros(entry.serial_number.as_bytes()).to_vec(),
                    entry.revocation_date.to_system_time(),
                )
            })
            .collect();
        Ok(Self {
            der: der.to_vec(),
            issuer,
            number,
            revoked,
        })
    }

    /// Parses an `X509 CRL` PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, CrlError> {
        Self::from_der(&x509::pem_to_der(pem, PEM_LABEL).map_err(CrlError::Pem)?)
    }

    /// Checks that `account` issued and signed this CRL.
    pub fn verify(&self, account: &AccountCert) -> Result<(), CrlError> {
        if self.issuer != account.id() {
            return Err(CrlError::WrongAccount {
                expected: account.id(),
                found: self.issuer,
            });
        }
        x509::verify_envelope(&self.der, account.public_key())
            .map_err(|_| CrlError::BadSignature(account.id()))
    }

    /// PEM encoding, as written to disk and read by OpenSSL.
    pub fn to_pem(&self) -> String {
        x509::der_to_pem(&self.der, PEM_LABEL)
    }

    /// DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The cRLNumber.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The account named as issuer (proved only by [`Self::verify`]).
    pub fn issuer(&self) -> AccountId {
        self.issuer
    }

    /// Whether the certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.contains_key(strip_leading_zeros(serial))
    }

    /// Revoked serials in ascending byte order.
    pub fn revoked_serials(&self) -> impl Iterator<Item = &[u8]> {
        self.revoked.keys().map(Vec::as_slice)
    }

    /// Whether this CRL replaces `other` (same issuer, higher number).
    pub fn supersedes(&self, other: &RevocationList) -> bool {
        self.issuer == other.issuer && self.number > other.number
    }
}

fn strip_leading_zeros(serial: &[u8]) -> &[u8] {
    let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{account, device, now};
    use proptest::prelude::*;

    #[test]
    fn revoking_raises_the_number_and_keeps_old_entries() {
        let (key, cert) = account(10);
        let (_, d1) = device(&key, &cert, 11);
        let (_, d2) = device(&key, &cert, 12);
        let first = RevocationList::first(&key, &cert, now()).unwrap();
        first.verify(&cert).unwrap();
        assert_eq!(first.number(), 1);
        assert!(!first.is_revoked(d1.serial()));
        let second = first.with_revoked(&key, &cert, d1.serial(), now()).unwrap();
        let third = second
            .with_revoked(&key, &cert, d2.serial(), now())
            .unwrap();
        third.verify(&cert).unwrap();
        assert_eq!(third.number(), 3);
        assert!(third.is_revoked(d1.serial()) && third.is_revoked(d2.serial()));
        assert!(third.supersedes(&second) && !second.supersedes(&third));
    }

    #[test]
    fn a_crl_signed_by_another_account_is_refused() {
        let (key, cert) = account(20);
        let (other_key, other_cert) = account(21);
        let crl = RevocationList::first(&other_key, &other_cert, now()).unwrap();
        assert!(matches!(
            crl.verify(&cert),
            Err(CrlError::WrongAccount { .. })
        ));
        // Same issuer name but wrong key: a forged CRL.
        let forged = RevocationList::issue(&other_key, &cert, 9, BTreeMap::new(), now()).unwrap();
        assert!(matches!(
            forged.verify(&cert),
            Err(CrlError::BadSignature(_))
        ));
        let _ = key;
    }

    proptest! {
        #[test]
        fn pem_round_trip(seed in any::<u64>(), revocations in 0usize..5) {
            let (key, cert) = account(seed);
            let mut crl = RevocationList::first(&key, &cert, now()).unwrap();
            for i in 0..revocations {
                let (_, d) = device(&key, &cert, seed ^ (i as u64 + 1));
                crl = crl.with_revoked(&key, &cert, d.serial(), now()).unwrap();
            }
            let parsed = RevocationList::from_pem(&crl.to_pem()).unwrap();
            prop_assert_eq!(&parsed, &crl);
            prop_assert!(parsed.verify(&cert).is_ok());
            prop_assert_eq!(parsed.number(), revocations as u64 + 1);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = RevocationList::from_der(&bytes);
        }
    }
}
