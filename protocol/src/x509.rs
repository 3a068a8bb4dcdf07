//! Small helpers shared by certificates and CRLs: the ed25519 algorithm
//! identifier, time conversion, extension encoding, and signing/verifying the
//! exact to-be-signed bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{AnyRef, BitString, BitStringRef, GeneralizedTime, OctetString, UtcTime};
use der::{Decode, Encode, Sequence};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::time::Time;

/// id-Ed25519 (RFC 8410).
pub(crate) const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// commonName (RFC 4519).
const COMMON_NAME_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// RFC 5280 requires UTCTime for dates through 2049 and GeneralizedTime after.
const UTC_TIME_END_UNIX_SECONDS: u64 = 2_524_608_000; // 2050-01-01T00:00:00Z

pub(crate) fn ed25519_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ED25519_OID,
        parameters: None,
    }
}

pub(crate) fn is_ed25519(alg: &AlgorithmIdentifierOwned) -> bool {
    alg.oid == ED25519_OID && alg.parameters.is_none()
}

/// Converts to an X.509 time, truncated to whole seconds.
pub(crate) fn x509_time(at: SystemTime) -> der::Result<Time> {
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| der::ErrorKind::DateTime)?
        .as_secs();
    let whole = Duration::from_secs(seconds);
    if seconds < UTC_TIME_END_UNIX_SECONDS {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(whole)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(
            whole,
        )?))
    }
}

pub(crate) fn common_name_only(value: &str) -> der::Result<Name> {
    use std::str::FromStr;
    Name::from_str(&format!("CN={value}"))
}

/// The commonName of a name made by [`common_name_only`], if it has exactly that shape.
pub(crate) fn sole_common_name(name: &Name) -> Option<String> {
    let [rdn] = name.0.as_slice() else {
        return None;
    };
    let [atv] = rdn.0.as_slice() else { return None };
    if atv.oid != COMMON_NAME_OID {
        return None;
    }
    let value = atv.value.decode_as::<der::asn1::Utf8StringRef<'_>>().ok()?;
    Some(value.as_str().to_owned())
}

pub(crate) fn extension<T: Encode + const_oid::AssociatedOid>(
    value: &T,
    critical: bool,
) -> der::Result<Extension> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// The non-critical authorityKeyIdentifier naming `issuer`'s key.
pub(crate) fn authority_key_id_extension(issuer: &VerifyingKey) -> der::Result<Extension> {
    let aki = x509_cert::ext::pkix::AuthorityKeyIdentifier {
        key_identifier: Some(key_identifier(issuer)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    extension(&aki, false)
}

pub(crate) fn sign_der(key: &SigningKey, tbs: &impl Encode) -> der::Result<(Vec<u8>, BitString)> {
    let tbs_der = tbs.to_der()?;
    let signature = key.sign(&tbs_der);
    Ok((tbs_der, BitString::from_bytes(&signature.to_bytes())?))
}

/// The outer shape shared by certificates and CRLs; keeps the to-be-signed
/// part as raw bytes so signatures are checked over exactly what was sent.
#[derive(Sequence)]
struct SignedEnvelope<'a> {
    to_be_signed: AnyRef<'a>,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitStringRef<'a>,
}

/// Why a signed structure's signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignatureFault {
    Malformed,
    NotEd25519,
    Invalid,
}

pub(crate) fn verify_envelope(der: &[u8], key: &VerifyingKey) -> Result<(), SignatureFault> {
    let envelope = SignedEnvelope::from_der(der).map_err(|_| SignatureFault::Malformed)?;
    if !is_ed25519(&envelope.algorithm) {
        return Err(SignatureFault::NotEd25519);
    }
    let tbs = envelope
        .to_be_signed
        .to_der()
        .map_err(|_| SignatureFault::Malformed)?;
    let bytes = envelope
        .signature
        .as_bytes()
        .ok_or(SignatureFault::Malformed)?;
    let signature = Signature::from_slice(bytes).map_err(|_| SignatureFault::Malformed)?;
    key.verify_strict(&tbs, &signature)
        .map_err(|_| SignatureFault::Invalid)
}

pub(crate) fn ed25519_key_from_spki(
    spki: &spki::SubjectPublicKeyInfoOwned,
) -> Option<VerifyingKey> {
    if !is_ed25519(&spki.algorithm) {
        return None;
    }
    let bytes: [u8; 32] = spki.subject_public_key.as_bytes()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

pub(crate) fn ed25519_spki(key: &VerifyingKey) -> der::Result<spki::SubjectPublicKeyInfoOwned> {
    Ok(spki::SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(key.as_bytes())?,
    })
}

/// Key identifier for SKI/AKI: the first 20 bytes of SHA-256 of the key
/// (RFC 7093 method 1 allows any such truncation).
pub(crate) fn key_identifier(key: &VerifyingKey) -> der::Result<OctetString> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    OctetString::new(&digest[..20])
}

/// Reads a single PEM document with the expected label, bounded in size.
pub(crate) fn pem_to_der(pem: &str, label: &'static str) -> Result<Vec<u8>, String> {
    if pem.len() > crate::limits::PEM_BYTES_MAX {
        return Err(format!(
            "PEM is {} bytes; the limit is {}",
            pem.len(),
            crate::limits::PEM_BYTES_MAX
        ));
    }
    let (found, der) =
        der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| format!("not valid PEM: {e}"))?;
    if found != label {
        return Err(format!("PEM label is {found:?}; expected {label:?}"));
    }
    Ok(der)
}

pub(crate) fn der_to_pem(der: &[u8], label: &'static str) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .expect("PEM encoding of bytes in memory cannot fail")
}
