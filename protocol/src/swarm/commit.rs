//! Signed commit payloads and their SSH signatures.
//!
//! The *payload* is the Git commit object without its `gpgsig` header: exactly
//! the bytes Git hands to `ssh-keygen -Y sign -n git`. The rules read the
//! parents, the committer time and the body from the payload itself, so they
//! judge exactly what was signed. Our commits carry only the headers `tree`,
//! `parent`*, `author` and `committer`; any other header is refused, so no
//! signed-but-unexamined data rides along.
//!
//! The signature is Git's SSH signature format (OpenSSH `SSHSIG`): armored
//! between `-----BEGIN SSH SIGNATURE-----` lines, namespace `git`, hash
//! `sha512`, key and signature ed25519.

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use ssh_key::{HashAlg, SshSig};

use super::ids::CommitId;
use super::limits::{
    COMMIT_PAYLOAD_BYTES_MAX, KEY_CACHE_ENTRIES_MAX, PARENTS_MAX, SIGNATURE_BYTES_MAX,
};

/// The sshsig namespace Git uses for commit signatures.
pub const SSHSIG_NAMESPACE: &str = "git";

/// The parts of a signed commit payload the rules use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPayload {
    /// Parent ids in header order.
    pub parents: Vec<CommitId>,
    /// Committer time, seconds since the Unix epoch.
    pub time_secs: i64,
    /// The commit message (the JSON body).
    pub message: Vec<u8>,
}

/// Why a payload or signature is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitFormatError {
    #[error("commit payload is {found} bytes; the limit is {max}")]
    PayloadTooLarge { found: usize, max: usize },
    #[error("commit payload is malformed: {0}")]
    Malformed(&'static str),
    #[error("commit has header {0:?}, which Starling commits never carry")]
    UnexpectedHeader(String),
    #[error("commit has {0} parents; the most is {PARENTS_MAX}")]
    TooManyParents(usize),
    #[error("commit is not signed")]
    Unsigned,
    #[error("signature is {found} bytes; the limit is {max}")]
    SignatureTooLarge { found: usize, max: usize },
    #[error("signature is not an SSH signature: {0}")]
    SignatureMalformed(String),
    #[error("signature namespace is {0:?}, not \"git\"")]
    WrongNamespace(String),
    #[error("signature hash is not sha512")]
    WrongHash,
    #[error("signature key or algorithm is not ed25519")]
    NotEd25519,
    #[error("signature does not verify")]
    BadSignature,
}

fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

fn parse_hex_id(text: &[u8]) -> Result<CommitId, CommitFormatError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(CommitFormatError::Malformed(
            "object id is not 40 lowercase hex digits",
        ))
}

/// Parses `committer Name <email> 1700000000 +0000` down to its time.
fn parse_ident_time(rest: &[u8]) -> Result<i64, CommitFormatError> {
    let close = rest
        .iter()
        .rposition(|&b| b == b'>')
        .ok_or(CommitFormatError::Malformed("identity has no <email>"))?;
    let tail = std::str::from_utf8(&rest[close + 1..])
        .map_err(|_| CommitFormatError::Malformed("identity time is not UTF-8"))?;
    let mut parts = tail.split_ascii_whitespace();
    let secs = parts
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(CommitFormatError::Malformed("identity has no time"))?;
    Ok(secs)
}

/// Parses a signed payload (a commit object without its `gpgsig` header).
pub fn parse_payload(payload: &[u8]) -> Result<CommitPayload, CommitFormatError> {
    if payload.len() > COMMIT_PAYLOAD_BYTES_MAX {
        return Err(CommitFormatError::PayloadTooLarge {
            found: payload.len(),
            max: COMMIT_PAYLOAD_BYTES_MAX,
        });
    }
    let mut rest = payload;
    let (line, next) = split_line(rest);
    rest = next;
    let tree = line
        .strip_prefix(b"tree ")
        .ok_or(CommitFormatError::Malformed("first header is not tree"))?;
    parse_hex_id(tree)?;
    let mut parents = Vec::new();
    let mut time_secs = None;
    let mut saw_author = false;
    loop {
        if rest.is_empty() {
            return Err(CommitFormatError::Malformed(
                "no blank line before the message",
            ));
        }
        let (line, next) = split_line(rest);
        rest = next;
        if line.is_empty() {
            break;
        }
        if let Some(id) = line.strip_prefix(b"parent ") {
            if saw_author {
                return Err(CommitFormatError::Malformed("parent after author"));
            }
            parents.push(parse_hex_id(id)?);
            if parents.len() > PARENTS_MAX {
                return Err(CommitFormatError::TooManyParents(parents.len()));
            }
        } else if let Some(ident) = line.strip_prefix(b"author ") {
            if saw_author {
                return Err(CommitFormatError::Malformed("two author headers"));
            }
            parse_ident_time(ident)?;
            saw_author = true;
        } else if let Some(ident) = line.strip_prefix(b"committer ") {
            if !saw_author || time_secs.is_some() {
                return Err(CommitFormatError::Malformed("committer out of place"));
            }
            time_secs = Some(parse_ident_time(ident)?);
        } else {
            let name = line.split(|&b| b == b' ').next().unwrap_or_default();
            return Err(CommitFormatError::UnexpectedHeader(
                String::from_utf8_lossy(name).chars().take(40).collect(),
            ));
        }
    }
    let time_secs = time_secs.ok_or(CommitFormatError::Malformed("no committer"))?;
    Ok(CommitPayload {
        parents,
        time_secs,
        message: rest.to_vec(),
    })
}

/// Decoded signing keys by their bytes: a batch's commits come from a few
/// devices, and decoding a key (point decompression) is a sizeable part of
/// a check. Decoding is a pure function of the bytes, so a cached key is the
/// key. Holds at most [`KEY_CACHE_ENTRIES_MAX`] keys.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: HashMap<[u8; 32], VerifyingKey>,
}

impl KeyCache {
    fn decode(&mut self, bytes: &[u8; 32]) -> Result<VerifyingKey, CommitFormatError> {
        if let Some(key) = self.keys.get(bytes) {
            return Ok(*key);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CommitFormatError::NotEd25519)?;
        if self.keys.len() < KEY_CACHE_ENTRIES_MAX {
            self.keys.insert(*bytes, key);
        }
        Ok(key)
    }
}

/// Verifies an armored sshsig over `payload`; returns the signing key.
pub fn verify_signature(armored: &[u8], payload: &[u8]) -> Result<VerifyingKey, CommitFormatError> {
    verify_signature_with(armored, payload, &mut KeyCache::default())
}

/// [`verify_signature`], decoding the signer's key through `keys`.
pub fn verify_signature_with(
    armored: &[u8],
    payload: &[u8],
    keys: &mut KeyCache,
) -> Result<VerifyingKey, CommitFormatError> {
    if armored.len() > SIGNATURE_BYTES_MAX {
        return Err(CommitFormatError::SignatureTooLarge {
            found: armored.len(),
            max: SIGNATURE_BYTES_MAX,
        });
    }
    let sig = SshSig::from_pem(armored)
        .map_err(|e| CommitFormatError::SignatureMalformed(e.to_string()))?;
    if sig.namespace() != SSHSIG_NAMESPACE {
        return Err(CommitFormatError::WrongNamespace(
            sig.namespace().chars().take(40).collect(),
        ));
    }
    if sig.hash_alg() != HashAlg::Sha512 {
        return Err(CommitFormatError::WrongHash);
    }
    let key_bytes = sig
        .public_key()
        .ed25519()
        .ok_or(CommitFormatError::NotEd25519)?
        .0;
    if sig.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(CommitFormatError::NotEd25519);
    }
    let key = keys.decode(&key_bytes)?;
    let signature =
        Signature::from_slice(sig.signature_bytes()).map_err(|_| CommitFormatError::NotEd25519)?;
    let signed = SshSig::signed_data(SSHSIG_NAMESPACE, HashAlg::Sha512, payload)
        .map_err(|e| CommitFormatError::SignatureMalformed(e.to_string()))?;
    key.verify_strict(&signed, &signature)
        .map_err(|_| CommitFormatError::BadSignature)?;
    Ok(key)
}

/// Signs `payload` as Git's SSH signature (namespace `git`, sha512), armored
/// with LF line endings, ready for the `gpgsig` header.
pub fn sign_payload(key: &ed25519_dalek::SigningKey, payload: &[u8]) -> String {
    use ed25519_dalek::Signer;
    let signed = SshSig::signed_data(SSHSIG_NAMESPACE, HashAlg::Sha512, payload)
        .expect("the namespace is not empty");
    let signature = key.sign(&signed);
    let public = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(
        key.verifying_key().to_bytes(),
    ));
    let ssh_signature =
        ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, signature.to_bytes().to_vec())
            .expect("a 64-byte ed25519 signature is well-formed");
    SshSig::new(public, SSHSIG_NAMESPACE, HashAlg::Sha512, ssh_signature)
        .expect("namespace and key are valid")
        .to_pem(ssh_key::LineEnding::LF)
        .expect("an sshsig always encodes")
}

/// The OpenSSH public-key line (`ssh-ed25519 AAAA…`) of a key, for allowed-signers files.
pub fn openssh_public_key(key: &VerifyingKey) -> String {
    ssh_key::PublicKey::from(ssh_key::public::KeyData::Ed25519(
        ssh_key::public::Ed25519PublicKey(key.to_bytes()),
    ))
    .to_openssh()
    .expect("an ed25519 key always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAYLOAD: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 1111111111111111111111111111111111111111\n\
author a <d> 1700000000 +0000\n\
committer a <d> 1700000001 +0000\n\
\n\
{\"type\":\"text\",\"generation\":1,\"text\":\"hi\"}";

    #[test]
    fn payload_parses_and_signature_round_trips() {
        let parsed = parse_payload(PAYLOAD).unwrap();
        assert_eq!(parsed.parents.len(), 1);
        assert_eq!(parsed.time_secs, 1_700_000_001);
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let armored = sign_payload(&key, PAYLOAD);
        assert!(armored.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert_eq!(
            verify_signature(armored.as_bytes(), PAYLOAD).unwrap(),
            key.verifying_key()
        );
        let mut tampered = PAYLOAD.to_vec();
        *tampered.last_mut().unwrap() = b'!';
        assert_eq!(
            verify_signature(armored.as_bytes(), &tampered),
            Err(CommitFormatError::BadSignature)
        );
    }

    #[test]
    fn a_cached_key_verifies_exactly_like_a_fresh_one() {
        let mut keys = KeyCache::default();
        let (a, b) = (
            ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        );
        let by_a = sign_payload(&a, PAYLOAD);
        let by_b = sign_payload(&b, PAYLOAD);
        let mut tampered = PAYLOAD.to_vec();
        *tampered.last_mut().unwrap() = b'!';
        for _ in 0..2 {
            for (armored, key) in [(&by_a, &a), (&by_b, &b)] {
                assert_eq!(
                    verify_signature_with(armored.as_bytes(), PAYLOAD, &mut keys),
                    Ok(key.verifying_key())
                );
                assert_eq!(
                    verify_signature_with(armored.as_bytes(), &tampered, &mut keys),
                    Err(CommitFormatError::BadSignature)
                );
            }
        }
        assert_eq!(keys.keys.len(), 2);
    }

    #[test]
    fn extra_headers_are_refused() {
        let with_encoding = String::from_utf8(PAYLOAD.to_vec())
            .unwrap()
            .replace("\n\n{", "\nencoding latin1\n\n{");
        assert_eq!(
            parse_payload(with_encoding.as_bytes()),
            Err(CommitFormatError::UnexpectedHeader("encoding".into()))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_and_signatures_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_payload(&bytes);
            let _ = verify_signature(&bytes, PAYLOAD);
        }
    }
}
