//! The encrypted account archive: backup, restore and (later) device linking.
//!
//! Layout (all integers big-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `STRLARCH` |
//! | 8 | 2 | format version (this code writes and reads [`ARCHIVE_VERSION`]) |
//! | 10 | 4 | argon2id memory cost, KiB |
//! | 14 | 4 | argon2id iterations |
//! | 18 | 4 | argon2id lanes |
//! | 22 | 16 | salt |
//! | 38 | 24 | XChaCha20-Poly1305 nonce |
//! | 62 | n+16 | ciphertext of the JSON payload, then the tag |
//!
//! The key is argon2id(password, salt) with the header's costs; the whole
//! 62-byte header is the AEAD's associated data, so no header byte can change
//! without the archive failing to open. A wrong password and a corrupted
//! archive are indistinguishable by design and reported as one error.
//!
//! The payload is JSON: display name, the account secret key (hex of the
//! 32-byte ed25519 seed), the account certificate, its newest CRL and every
//! device the account knows (PEM). Opening checks that it is coherent: the key
//! matches the certificate, the CRL is the account's, every device certificate
//! was issued by it.

use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::cert::{AccountCert, DeviceCert};
use crate::crl::RevocationList;
use crate::id::DeviceId;
use crate::limits::{
    ARCHIVE_BYTES_MAX, ARCHIVE_DEVICES_MAX, ARGON2_ITERATIONS_MAX, ARGON2_LANES_MAX,
    ARGON2_MEMORY_KIB_MAX, DISPLAY_NAME_BYTES_MAX,
};

/// The archive format version this code writes and the newest it reads.
pub const ARCHIVE_VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"STRLARCH";
const SALT_BYTES: usize = 16;
const NONCE_BYTES: usize = 24;
const HEADER_BYTES: usize = 8 + 2 + 4 * 3 + SALT_BYTES + NONCE_BYTES;
const TAG_BYTES: usize = 16;

/// Why an archive cannot be written or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a Starling account archive (bad magic)")]
    NotAnArchive,
    #[error(
        "archive was written by format version {found}; this starling reads up to {supported}"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("archive is truncated: {found} bytes, at least {min} needed")]
    Truncated { found: usize, min: usize },
    #[error("archive is {found} bytes; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("archive key-derivation costs are out of range: {0}")]
    KdfParamsOutOfRange(String),
    #[error("wrong password, or the archive is corrupted")]
    WrongPasswordOrCorrupted,
    #[error("archive contents are malformed: {0}")]
    MalformedPayload(String),
    #[error("archive contents are inconsistent: {0}")]
    Inconsistent(String),
    #[error("display name is {found} bytes; the limit is {max}")]
    DisplayNameTooLong { found: usize, max: usize },
}

/// argon2id costs; written into the header so old archives stay openable
/// when the defaults change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub lanes: u32,
}

impl KdfParams {
    /// What `starling account export` uses: OWASP's argon2id recommendation
    /// (19 MiB, 2 passes, 1 lane).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        lanes: 1,
    };

    fn check(&self) -> Result<argon2::Params, ArchiveError> {
        if self.memory_kib > ARGON2_MEMORY_KIB_MAX
            || self.iterations > ARGON2_ITERATIONS_MAX
            || self.lanes > ARGON2_LANES_MAX
        {
            return Err(ArchiveError::KdfParamsOutOfRange(format!(
                "{self:?}; limits are {ARGON2_MEMORY_KIB_MAX} KiB, {ARGON2_ITERATIONS_MAX} iterations, {ARGON2_LANES_MAX} lanes"
            )));
        }
        argon2::Params::new(self.memory_kib, self.iterations, self.lanes, Some(32))
            .map_err(|e| ArchiveError::KdfParamsOutOfRange(format!("{self:?}: {e}")))
    }
}

/// A device the account knows, revoked or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    /// The device certificate (its id is `cert.id()`).
    pub cert: DeviceCert,
}

impl KnownDevice {
    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.cert.id()
    }
}

/// Everything needed to restore an account on a new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountArchive {
    /// The account's display name.
    pub display_name: String,
    /// The account's secret key (zeroed on drop by ed25519-dalek).
    pub account_key: SigningKey,
    /// The account certificate.
    pub account_cert: AccountCert,
    /// The account's newest CRL.
    pub crl: RevocationList,
    /// Every device the account knows, revoked ones included.
    pub devices: Vec<KnownDevice>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    display_name: String,
    account_secret_key: Zeroizing<String>,
    account_cert: String,
    crl: String,
    devices: Vec<String>,
}

fn derive_key(
    password: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, ArchiveError> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.check()?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, salt, key.as_mut())
        .map_err(|e| ArchiveError::KdfParamsOutOfRange(e.to_string()))?;
    Ok(key)
}

impl AccountArchive {
    /// Checks the archive's internal consistency (also done by [`Self::open`]).
    pub fn check(&self) -> Result<(), ArchiveError> {
        if self.display_name.len() > DISPLAY_NAME_BYTES_MAX {
            return Err(ArchiveError::DisplayNameTooLong {
                found: self.display_name.len(),
                max: DISPLAY_NAME_BYTES_MAX,
            });
        }
        if self.account_key.verifying_key() != *self.account_cert.public_key() {
            return Err(ArchiveError::Inconsistent(
                "the account key does not match the account certificate".into(),
            ));
        }
        self.crl
            .verify(&self.account_cert)
            .map_err(|e| ArchiveError::Inconsistent(e.to_string()))?;
        if self.devices.len() > ARCHIVE_DEVICES_MAX {
            return Err(ArchiveError::Inconsistent(format!(
                "{} devices; the limit is {ARCHIVE_DEVICES_MAX}",
                self.devices.len()
            )));
        }
        for device in &self.devices {
            // Time and revocation are deliberately not checked: an archive lists
            // revoked and expired devices too. Only authorship matters here.
            let issued_by_account = device.cert.claimed_account_id() == self.account_cert.id()
                && crate::x509::verify_envelope(device.cert.der(), self.account_cert.public_key())
                    .is_ok();
            if !issued_by_account {
                return Err(ArchiveError::Inconsistent(format!(
                    "device {} was not issued by this account",
                    device.id()
                )));
            }
        }
        Ok(())
    }

    /// Encrypts the archive under `password`.
    pub fn seal(
        &self,
        password: &[u8],
        params: KdfParams,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ArchiveError> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
        self.check()?;
        let payload = Payload {
            display_name: self.display_name.clone(),
            account_secret_key: Zeroizing::new(hex::encode(self.account_key.to_bytes())),
            account_cert: self.account_cert.to_pem(),
            crl: self.crl.to_pem(),
            devices: self.devices.iter().map(|d| d.cert.to_pem()).collect(),
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&payload)
                .map_err(|e| ArchiveError::MalformedPayload(e.to_string()))?,
        );
        let mut salt = [0u8; SALT_BYTES];
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&ARCHIVE_VERSION.to_be_bytes());
        out.extend_from_slice(&params.memory_kib.to_be_bytes());
        out.extend_from_slice(&params.iterations.to_be_bytes());
        out.extend_from_slice(&params.lanes.to_be_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        debug_assert_eq!(out.len(), HEADER_BYTES);
        let key = derive_key(password, &salt, params)?;
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.as_ref().into());
        let ciphertext = cipher
            .encrypt(
                (&nonce).into(),
                AeadPayload {
                    msg: &plaintext,
                    aad: &out,
                },
            )
            .map_err(|_| ArchiveError::MalformedPayload("encryption failed".into()))?;
        out.extend_from_slice(&ciphertext);
        if out.len() > ARCHIVE_BYTES_MAX {
            return Err(ArchiveError::TooLarge {
                found: out.len(),
                max: ARCHIVE_BYTES_MAX,
            });
        }
        Ok(out)
    }

    /// Decrypts and checks an archive.
    pub fn open(bytes: &[u8], password: &[u8]) -> Result<Self, ArchiveError> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
        if bytes.len() > ARCHIVE_BYTES_MAX {
            return Err(ArchiveError::TooLarge {
                found: bytes.len(),
                max: ARCHIVE_BYTES_MAX,
            });
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ArchiveError::NotAnArchive);
        }
        if bytes.len() < 10 {
            return Err(ArchiveError::Truncated {
                found: bytes.len(),
                min: HEADER_BYTES + TAG_BYTES,
            });
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != ARCHIVE_VERSION {
            return Err(ArchiveError::UnsupportedVersion {
                found: version,
                supported: ARCHIVE_VERSION,
            });
        }
        if bytes.len() < HEADER_BYTES + TAG_BYTES {
            return Err(ArchiveError::Truncated {
                found: bytes.len(),
                min: HEADER_BYTES + TAG_BYTES,
            });
        }
        let word = |at: usize| {
            u32::from_be_bytes(bytes[at..at + 4].try_into().expect("slice of length 4"))
        };
        let params = KdfParams {
            memory_kib: word(10),
            iterations: word(14),
            lanes: word(18),
        };
        let (header, ciphertext) = bytes.split_at(HEADER_BYTES);
        let salt = &header[22..22 + SALT_BYTES];
        let nonce: &[u8; NONCE_BYTES] =
            header[38..].try_into().expect("header ends with the nonce");
        let key = derive_key(password, salt, params)?;
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.as_ref().into());
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    nonce.into(),
                    AeadPayload {
                        msg: ciphertext,
                        aad: header,
                    },
                )
                .map_err(|_| ArchiveError::WrongPasswordOrCorrupted)?,
        );
        let payload: Payload = serde_json::from_slice(&plaintext)
            .map_err(|e| ArchiveError::MalformedPayload(e.to_string()))?;
        let seed = Zeroizing::new(
            <[u8; 32]>::try_from(
                hex::decode(payload.account_secret_key.as_str())
                    .map_err(|e| ArchiveError::MalformedPayload(e.to_string()))?,
            )
            .map_err(|_| {
                ArchiveError::MalformedPayload("account secret key is not 32 bytes".into())
            })?,
        );
        if payload.devices.len() > ARCHIVE_DEVICES_MAX {
            return Err(ArchiveError::Inconsistent(format!(
                "{} devices; the limit is {ARCHIVE_DEVICES_MAX}",
                payload.devices.len()
            )));
        }
        let malformed =
            |what: &str, e: String| ArchiveError::MalformedPayload(format!("{what}: {e}"));
        let archive = AccountArchive {
            display_name: payload.display_name,
            account_key: SigningKey::from_bytes(&seed),
            account_cert: AccountCert::from_pem(&payload.account_cert)
                .map_err(|e| malformed("account certificate", e.to_string()))?,
            crl: RevocationList::from_pem(&payload.crl)
                .map_err(|e| malformed("CRL", e.to_string()))?,
            devices: payload
                .devices
                .iter()
                .map(|pem| DeviceCert::from_pem(pem).map(|cert| KnownDevice { cert }))
                .collect::<Result<_, _>>()
                .map_err(|e| malformed("device certificate", e.to_string()))?,
        };
        archive.check()?;
        Ok(archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{account, device, now, rng};
    use proptest::prelude::*;

    /// Small costs keep the suite fast; the format is the same at any cost.
    const TEST_KDF: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn archive(seed: u64, devices: usize) -> AccountArchive {
        let (key, cert) = account(seed);
        let mut crl = RevocationList::first(&key, &cert, now()).unwrap();
        let devices: Vec<_> = (0..devices)
            .map(|i| KnownDevice {
                cert: device(&key, &cert, seed ^ (i as u64 + 100)).1,
            })
            .collect();
        if let Some(first) = devices.first() {
            crl = crl
                .with_revoked(&key, &cert, first.cert.serial(), now())
                .unwrap();
        }
        AccountArchive {
            display_name: format!("user {seed}"),
            account_key: key,
            account_cert: cert,
            crl,
            devices,
        }
    }

    #[test]
    fn default_costs_open_too() {
        let original = archive(1, 2);
        let sealed = original
            .seal(b"correct horse", KdfParams::DEFAULT, &mut rng(2))
            .unwrap();
        assert_eq!(
            AccountArchive::open(&sealed, b"correct horse").unwrap(),
            original
        );
    }

    #[test]
    fn bad_archives_are_typed_errors() {
        let sealed = archive(3, 1).seal(b"pw", TEST_KDF, &mut rng(4)).unwrap();
        assert_eq!(
            AccountArchive::open(&sealed, b"wrong"),
            Err(ArchiveError::WrongPasswordOrCorrupted)
        );
        assert_eq!(
            AccountArchive::open(b"hello", b"pw"),
            Err(ArchiveError::NotAnArchive)
        );
        assert!(matches!(
            AccountArchive::open(&sealed[..40], b"pw"),
            Err(ArchiveError::Truncated { .. })
        ));
        assert_eq!(
            AccountArchive::open(&sealed[..sealed.len() - 1], b"pw"),
            Err(ArchiveError::WrongPasswordOrCorrupted)
        );
        let mut future = sealed.clone();
        future[9] = 9;
        assert_eq!(
            AccountArchive::open(&future, b"pw"),
            Err(ArchiveError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        );
        let mut greedy = sealed.clone();
        greedy[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            AccountArchive::open(&greedy, b"pw"),
            Err(ArchiveError::KdfParamsOutOfRange(_))
        ));
    }

    #[test]
    fn an_archive_whose_key_does_not_match_its_certificate_is_refused() {
        let mut bad = archive(5, 0);
        bad.account_key = SigningKey::from_bytes(&[9; 32]);
        assert!(matches!(
            bad.seal(b"pw", TEST_KDF, &mut rng(6)),
            Err(ArchiveError::Inconsistent(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn seal_open_round_trip(seed in any::<u64>(), devices in 0usize..4, password in proptest::collection::vec(any::<u8>(), 0..40)) {
            let original = archive(seed, devices);
            let sealed = original.seal(&password, TEST_KDF, &mut rng(seed)).unwrap();
            prop_assert_eq!(AccountArchive::open(&sealed, &password).unwrap(), original);
        }

        #[test]
        fn any_flipped_bit_is_refused(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let sealed = archive(7, 1).seal(b"pw", TEST_KDF, &mut rng(8)).unwrap();
            let mut flipped = sealed.clone();
            let i = index.index(flipped.len());
            flipped[i] ^= 1 << bit;
            prop_assert!(AccountArchive::open(&flipped, b"pw").is_err());
        }
    }
}
