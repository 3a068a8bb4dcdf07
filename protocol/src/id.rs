//! Account and device identifiers.
//!
//! An id is the SHA-256 digest of the raw 32-byte ed25519 public key, written
//! as 64 lowercase hex digits. The same function serves accounts and devices;
//! the two are told apart by where they appear, not by their bytes.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// Length of an id in bytes (its hex form is twice as long).
pub const ID_BYTES: usize = 32;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// Wrong number of characters.
    #[error("an id is {expected} lowercase hex digits; got {found} characters")]
    Length { expected: usize, found: usize },
    /// A character outside `0-9a-f`.
    #[error("an id is lowercase hex (0-9, a-f); got {0:?}")]
    NotLowercaseHex(String),
}

fn digest_of_key(key: &VerifyingKey) -> [u8; ID_BYTES] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_hex_id(text: &str) -> Result<[u8; ID_BYTES], IdParseError> {
    if text.len() != ID_BYTES * 2 {
        return Err(IdParseError::Length {
            expected: ID_BYTES * 2,
            found: text.chars().count(),
        });
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(IdParseError::NotLowercaseHex(text.to_owned()));
    }
    let mut bytes = [0u8; ID_BYTES];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| IdParseError::NotLowercaseHex(text.to_owned()))?;
    Ok(bytes)
}

macro_rules! key_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of ", $what, ": SHA-256 of its ed25519 public key.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; ID_BYTES]);

        impl $name {
            #[doc = concat!("The id of ", $what, " whose public key is `key`.")]
            pub fn of_key(key: &VerifyingKey) -> Self {
                Self(digest_of_key(key))
            }

            /// The raw digest.
            pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
                &self.0
            }

            /// Wraps a raw digest (as read from a trusted encoding).
            pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
                Self(bytes)
            }

            /// Lowercase hex form, as users share it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_hex_id(text).map(Self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

key_id!(AccountId, "an account");
key_id!(DeviceId, "a device");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn id_is_sha256_of_raw_public_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let expected = hex::encode(Sha256::digest(key.as_bytes()));
        assert_eq!(AccountId::of_key(&key).to_hex(), expected);
        assert_eq!(DeviceId::of_key(&key).to_hex(), expected);
    }

    #[test]
    fn parse_rejects_uppercase_and_wrong_length() {
        let upper = "A".repeat(64);
        assert!(matches!(
            upper.parse::<AccountId>(),
            Err(IdParseError::NotLowercaseHex(_))
        ));
        assert!(matches!(
            "abc".parse::<DeviceId>(),
            Err(IdParseError::Length { found: 3, .. })
        ));
    }

    proptest! {
        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            let id = DeviceId::from_bytes(bytes);
            prop_assert_eq!(id.to_hex().parse::<DeviceId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = text.parse::<AccountId>();
        }
    }
}
