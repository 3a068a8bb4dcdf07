//! Account and device certificates.
//!
//! An **account certificate** is a self-signed X.509 v3 CA certificate for the
//! account key: basicConstraints CA:true pathLen:0 (critical), keyUsage
//! keyCertSign + cRLSign (critical), subject and issuer `CN=<account id>`.
//! A **device certificate** is issued by the account key for the device key:
//! basicConstraints CA:false (critical), keyUsage digitalSignature (critical),
//! subject `CN=<device id>`, issuer the account's subject, a random positive
//! 128-bit serial. Both carry subject and authority key identifiers so stock
//! tools build the chain. Validity periods are [`ACCOUNT_CERT_VALIDITY`] and
//! [`DEVICE_CERT_VALIDITY`], starting [`NOT_BEFORE_BACKDATE`] before issue to
//! tolerate clocks that disagree.
//!
//! Parsing (`from_der`/`from_pem`) checks the *shape* above and nothing that
//! depends on time or on another certificate; [`crate::chain`] does that.

use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::id::{AccountId, DeviceId};
use crate::limits::CERT_DER_BYTES_MAX;
use crate::x509;

/// How long an account certificate is valid.
pub const ACCOUNT_CERT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a device certificate is valid.
pub const DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far before its issue time a certificate starts being valid.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(3600);
/// Serial numbers are this many random bytes (top bit cleared: positive).
pub const SERIAL_BYTES: usize = 16;

const PEM_LABEL: &str = "CERTIFICATE";

/// Why bytes are not an acceptable Starling certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate is {found} bytes; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("certificate PEM is unreadable: {0}")]
    Pem(String),
    #[error("certificate is not X.509 v3")]
    NotVersion3,
    #[error("certificate key or signature is not ed25519")]
    NotEd25519,
    #[error("certificate subject is not CN=<{expected}> for its own key")]
    SubjectMismatch { expected: String },
    #[error("certificate issuer is not CN=<account id>")]
    IssuerNotAnAccount,
    #[error("account certificate is not self-issued (issuer differs from subject)")]
    NotSelfIssued,
    #[error("certificate basicConstraints are wrong: {0}")]
    BasicConstraints(&'static str),
    #[error("certificate keyUsage is wrong: {0}")]
    KeyUsage(&'static str),
    #[error("certificate has an unknown critical extension {0}")]
    UnknownCriticalExtension(String),
    #[error("certificate could not be encoded: {0}")]
    Encode(String),
}

fn encode_err(e: der::Error) -> CertError {
    CertError::Encode(e.to_string())
}

fn random_serial(rng: &mut impl CryptoRngCore) -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    rng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6; // never zero-led: every serial is exactly SERIAL_BYTES long
    SerialNumber::new(&bytes).map_err(encode_err)
}

fn validity(now: SystemTime, length: Duration) -> Result<Validity, CertError> {
    let start = now.checked_sub(NOT_BEFORE_BACKDATE).unwrap_or(now);
    let end = now
        .checked_add(length)
        .ok_or_else(|| CertError::Encode("validity end overflows".into()))?;
    Ok(Validity {
        not_before: x509::x509_time(start).map_err(encode_err)?,
        not_after: x509::x509_time(end).map_err(encode_err)?,
    })
}

fn sign_certificate(
    signer: &SigningKey,
    tbs: TbsCertificate,
) -> Result<(Certificate, Vec<u8>), CertError> {
    let (_, signature) = x509::sign_der(signer, &tbs).map_err(encode_err)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: x509::ed25519_algorithm(),
        signature,
    };
    let der = cert.to_der().map_err(encode_err)?;
    Ok((cert, der))
}

/// Parsed fields common to both kinds, after the checks both kinds share.
struct Parsed {
    cert: Certificate,
    key: VerifyingKey,
    basic: Option<BasicConstraints>,
    usage: Option<KeyUsage>,
}

fn parse_common(der: &[u8]) -> Result<Parsed, CertError> {
    if der.len() > CERT_DER_BYTES_MAX {
        return Err(CertError::TooLarge {
            found: der.len(),
            max: CERT_DER_BYTES_MAX,
        });
    }
    let cert = Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    if tbs.version != Version::V3 {
        return Err(CertError::NotVersion3);
    }
    if !x509::is_ed25519(&cert.signature_algorithm) || !x509::is_ed25519(&tbs.signature) {
        return Err(CertError::NotEd25519);
    }
    let key =
        x509::ed25519_key_from_spki(&tbs.subject_public_key_info).ok_or(CertError::NotEd25519)?;
    // Account and device ids are the same function of the key, so one check
    // serves both kinds: the subject must name the certificate's own key.
    let own_id = DeviceId::of_key(&key).to_hex();
    if x509::sole_common_name(&tbs.subject).as_deref() != Some(own_id.as_str()) {
        return Err(CertError::SubjectMismatch { expected: own_id });
    }
    let mut basic = None;
    let mut usage = None;
    for ext in tbs.extensions.iter().flatten() {
        use const_oid::AssociatedOid;
        let value = ext.extn_value.as_bytes();
        let malformed =
            |e: der::Error| CertError::Malformed(format!("extension {}: {e}", ext.extn_id));
        match ext.extn_id {
            BasicConstraints::OID => {
                basic = Some(BasicConstraints::from_der(value).map_err(malformed)?)
            }
            KeyUsage::OID => usage = Some(KeyUsage::from_der(value).map_err(malformed)?),
            SubjectKeyIdentifier::OID | AuthorityKeyIdentifier::OID => {}
            other if ext.critical => {
                return Err(CertError::UnknownCriticalExtension(other.to_string()))
            }
            _ => {}
        }
    }
    Ok(Parsed {
        cert,
        key,
        basic,
        usage,
    })
}

/// A parsed account certificate (a self-signed CA for the account key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountCert {
    der: Vec<u8>,
    cert: Certificate,
    key: VerifyingKey,
    id: AccountId,
}

impl AccountCert {
    /// Issues the self-signed certificate of `account_key`, valid from `now`.
    pub fn issue(
        account_key: &SigningKey,
        now: SystemTime,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, CertError> {
        let public = account_key.verifying_key();
        let id = AccountId::of_key(&public);
        let name = x509::common_name_only(&id.to_hex()).map_err(encode_err)?;
        let key_id = x509::key_identifier(&public).map_err(encode_err)?;
        let extensions = vec![
            x509::extension(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                },
                true,
            ),
            x509::extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign), true),
            x509::extension(&SubjectKeyIdentifier(key_id), false),
            x509::authority_key_id_extension(&public),
        ]
        .into_iter()
        .collect::<der::Result<Vec<_>>>()
        .map_err(encode_err)?;
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial(rng)?,
            signature: x509::ed25519_algorithm(),
            issuer: name.clone(),
            validity: validity(now, ACCOUNT_CERT_VALIDITY)?,
            subject: name,
            subject_public_key_info: x509::ed25519_spki(&public).map_err(encode_err)?,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let (cert, der) = sign_certificate(account_key, tbs)?;
        Ok(Self {
            der,
            cert,
            key: public,
            id,
        })
    }

    /// Parses DER and checks the account-certificate shape (not the signature or time).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let Parsed {
            cert,
            key,
            basic,
            usage,
        } = parse_common(der)?;
        let id = AccountId::of_key(&key);
        let tbs = &cert.tbs_certificate;
        if tbs.issuer != tbs.subject {
            return Err(CertError::NotSelfIssued);
        }
        match basic {
            Some(BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            }) => {}
            _ => {
                return Err(CertError::BasicConstraints(
                    "an account certificate must be CA:true, pathlen:0",
                ))
            }
        }
        match usage {
            Some(u) if u.key_cert_sign() && u.crl_sign() => {}
            _ => {
                return Err(CertError::KeyUsage(
                    "an account certificate must allow keyCertSign and cRLSign",
                ))
            }
        }
        Ok(Self {
            der: der.to_vec(),
            cert,
            key,
            id,
        })
    }

    /// Parses a `CERTIFICATE` PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_der(&x509::pem_to_der(pem, PEM_LABEL).map_err(CertError::Pem)?)
    }

    /// The account this certificate belongs to.
    pub fn id(&self) -> AccountId {
        self.id
    }

    pub(crate) fn subject(&self) -> &x509_cert::name::Name {
        &self.cert.tbs_certificate.subject
    }
}

/// A parsed device certificate (issued by an account key for a device key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCert {
    der: Vec<u8>,
    cert: Certificate,
    key: VerifyingKey,
    id: DeviceId,
    account_id: AccountId,
}

impl DeviceCert {
    /// Issues a certificate for `device_key`, signed by the account key.
    pub fn issue(
        account_key: &SigningKey,
        account: &AccountCert,
        device_key: &VerifyingKey,
        now: SystemTime,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, CertError> {
        let id = DeviceId::of_key(device_key);
        let extensions = vec![
            x509::extension(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            ),
            x509::extension(&KeyUsage(KeyUsages::DigitalSignature.into()), true),
            x509::extension(
                &SubjectKeyIdentifier(x509::key_identifier(device_key).map_err(encode_err)?),
                false,
            ),
            x509::authority_key_id_extension(account.public_key()),
        ]
        .into_iter()
        .collect::<der::Result<Vec<_>>>()
        .map_err(encode_err)?;
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial(rng)?,
            signature: x509::ed25519_algorithm(),
            issuer: account.subject().clone(),
            validity: validity(now, DEVICE_CERT_VALIDITY)?,
            subject: x509::common_name_only(&id.to_hex()).map_err(encode_err)?,
            subject_public_key_info: x509::ed25519_spki(device_key).map_err(encode_err)?,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let (cert, der) = sign_certificate(account_key, tbs)?;
        Ok(Self {
            der,
            cert,
            key: *device_key,
            id,
            account_id: account.id(),
        })
    }

    /// Parses DER and checks the device-certificate shape (not the signature or time).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let Parsed {
            cert,
            key,
            basic,
            usage,
        } = parse_common(der)?;
        let id = DeviceId::of_key(&key);
        let tbs = &cert.tbs_certificate;
        let account_id = x509::sole_common_name(&tbs.issuer)
            .and_then(|cn| cn.parse::<AccountId>().ok())
            .ok_or(CertError::IssuerNotAnAccount)?;
        match basic {
            Some(BasicConstraints { ca: false, .. }) => {}
            _ => {
                return Err(CertError::BasicConstraints(
                    "a device certificate must be present and CA:false",
                ))
            }
        }
        match usage {
            Some(u) if u.digital_signature() && !u.key_cert_sign() && !u.crl_sign() => {}
            _ => {
                return Err(CertError::KeyUsage(
                    "a device certificate must allow digitalSignature only",
                ))
            }
        }
        Ok(Self {
            der: der.to_vec(),
            cert,
            key,
            id,
            account_id,
        })
    }

    /// Parses a `CERTIFICATE` PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_der(&x509::pem_to_der(pem, PEM_LABEL).map_err(CertError::Pem)?)
    }

    /// The device this certificate names.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The account named as issuer (only [`crate::chain`] proves it signed).
    pub fn claimed_account_id(&self) -> AccountId {
        self.account_id
    }
}

/// Accessors both certificate kinds share.
macro_rules! certificate_accessors {
    ($kind:ty) => {
        impl $kind {
            /// PEM encoding, as written to disk and read by OpenSSL.
            pub fn to_pem(&self) -> String {
                x509::der_to_pem(&self.der, PEM_LABEL)
            }

            /// DER encoding, exactly as signed.
            pub fn der(&self) -> &[u8] {
                &self.der
            }

            /// The certified ed25519 public key.
            pub fn public_key(&self) -> &VerifyingKey {
                &self.key
            }

            /// The serial number's bytes (big-endian, no leading zeros); what a CRL lists.
            pub fn serial(&self) -> &[u8] {
                self.cert.tbs_certificate.serial_number.as_bytes()
            }

            /// Start of the validity window.
            pub fn not_before(&self) -> SystemTime {
                self.cert
                    .tbs_certificate
                    .validity
                    .not_before
                    .to_system_time()
            }

            /// End of the validity window.
            pub fn not_after(&self) -> SystemTime {
                self.cert
                    .tbs_certificate
                    .validity
                    .not_after
                    .to_system_time()
            }
        }
    };
}

certificate_accessors!(AccountCert);
certificate_accessors!(DeviceCert);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    pub(crate) fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    pub(crate) fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    pub(crate) fn account(seed: u64) -> (SigningKey, AccountCert) {
        let mut rng = rng(seed);
        let key = SigningKey::generate(&mut rng);
        let cert = AccountCert::issue(&key, now(), &mut rng).unwrap();
        (key, cert)
    }

    pub(crate) fn device(
        account_key: &SigningKey,
        account: &AccountCert,
        seed: u64,
    ) -> (SigningKey, DeviceCert) {
        let mut rng = rng(seed);
        let key = SigningKey::generate(&mut rng);
        let cert =
            DeviceCert::issue(account_key, account, &key.verifying_key(), now(), &mut rng).unwrap();
        (key, cert)
    }

    #[test]
    fn account_cert_has_the_documented_shape() {
        let (key, cert) = account(1);
        assert_eq!(cert.id(), AccountId::of_key(&key.verifying_key()));
        assert_eq!(cert.serial().len(), SERIAL_BYTES);
        assert_eq!(
            cert.not_after().duration_since(cert.not_before()).unwrap(),
            ACCOUNT_CERT_VALIDITY + NOT_BEFORE_BACKDATE
        );
        assert_eq!(AccountCert::from_der(cert.der()).unwrap(), cert);
    }

    #[test]
    fn device_cert_is_not_an_account_cert_and_vice_versa() {
        let (key, account_cert) = account(2);
        let (_, device_cert) = device(&key, &account_cert, 3);
        assert!(matches!(
            AccountCert::from_der(device_cert.der()),
            Err(CertError::SubjectMismatch { .. }
                | CertError::NotSelfIssued
                | CertError::BasicConstraints(_))
        ));
        assert!(matches!(
            DeviceCert::from_der(account_cert.der()),
            Err(CertError::BasicConstraints(_))
        ));
        assert_eq!(device_cert.claimed_account_id(), account_cert.id());
    }

    #[test]
    fn malformed_and_oversize_input_are_typed_errors() {
        assert!(matches!(
            AccountCert::from_der(b"not der"),
            Err(CertError::Malformed(_))
        ));
        assert!(matches!(
            DeviceCert::from_der(&vec![0x30; CERT_DER_BYTES_MAX + 1]),
            Err(CertError::TooLarge { .. })
        ));
        assert!(matches!(
            AccountCert::from_pem(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----"
            ),
            Err(CertError::Pem(_))
        ));
        let (_, cert) = account(4);
        let as_crl_label = cert.to_pem().replace("CERTIFICATE", "X509 CRL");
        assert!(matches!(
            AccountCert::from_pem(&as_crl_label),
            Err(CertError::Pem(_))
        ));
    }

    proptest! {
        #[test]
        fn pem_and_der_round_trip(seed in any::<u64>()) {
            let (key, account_cert) = account(seed);
            let (_, device_cert) = device(&key, &account_cert, seed.wrapping_add(1));
            prop_assert_eq!(AccountCert::from_pem(&account_cert.to_pem()).unwrap(), account_cert.clone());
            prop_assert_eq!(DeviceCert::from_pem(&device_cert.to_pem()).unwrap(), device_cert.clone());
            prop_assert_eq!(DeviceCert::from_der(device_cert.der()).unwrap(), device_cert);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = AccountCert::from_der(&bytes);
            let _ = DeviceCert::from_der(&bytes);
        }

        #[test]
        fn flipping_a_byte_never_panics(seed in any::<u64>(), index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (key, account_cert) = account(seed);
            let (_, device_cert) = device(&key, &account_cert, seed ^ 1);
            let mut der = device_cert.der().to_vec();
            let i = index.index(der.len());
            der[i] ^= 1 << bit;
            let _ = DeviceCert::from_der(&der);
        }
    }
}
