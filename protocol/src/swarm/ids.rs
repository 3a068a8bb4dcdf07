//! Commit identifiers as the swarm rules see them.
//!
//! A commit id is the Git object id (SHA-1, 20 bytes) printed as 40 lowercase
//! hex digits. The conversation id is the id of the conversation's initial
//! commit, which carries a random [`ConversationNonce`] so that no two
//! creations share an id.

use std::fmt;
use std::str::FromStr;

/// Bytes in a Git SHA-1 object id.
pub const COMMIT_ID_BYTES: usize = 20;

/// A Git commit id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId([u8; COMMIT_ID_BYTES]);

/// Why text is not a commit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a commit id is 40 lowercase hex digits; got {0:?}")]
pub struct CommitIdParseError(pub String);

impl CommitId {
    /// Wraps raw object-id bytes.
    pub fn from_bytes(bytes: [u8; COMMIT_ID_BYTES]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; COMMIT_ID_BYTES] {
        &self.0
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({})", self.to_hex())
    }
}

impl FromStr for CommitId {
    type Err = CommitIdParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ok = text.len() == COMMIT_ID_BYTES * 2
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(CommitIdParseError(text.chars().take(80).collect()));
        }
        let mut bytes = [0u8; COMMIT_ID_BYTES];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| CommitIdParseError(text.to_owned()))?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for CommitId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for CommitId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes in the initial commit's random nonce (128 bits).
pub const CONVERSATION_NONCE_BYTES: usize = 16;

/// The random value every initial commit carries: two creations by the same
/// device, with the same mode, in the same second, still get different
/// conversation ids. Written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConversationNonce([u8; CONVERSATION_NONCE_BYTES]);

/// Why text is not a conversation nonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a conversation nonce is 32 lowercase hex digits; got {0:?}")]
pub struct ConversationNonceParseError(pub String);

impl ConversationNonce {
    /// Wraps random bytes (the caller draws them: this crate has no RNG).
    pub fn from_bytes(bytes: [u8; CONVERSATION_NONCE_BYTES]) -> Self {
        Self(bytes)
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ConversationNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationNonce({})", self.to_hex())
    }
}

impl FromStr for ConversationNonce {
    type Err = ConversationNonceParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ok = text.len() == CONVERSATION_NONCE_BYTES * 2
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(ConversationNonceParseError(text.chars().take(80).collect()));
        }
        let mut bytes = [0u8; CONVERSATION_NONCE_BYTES];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| ConversationNonceParseError(text.to_owned()))?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for ConversationNonce {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ConversationNonce {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_nonce_is_exactly_32_lowercase_hex_digits() {
        assert!("0123456789abcdef0123456789abcdef"
            .parse::<ConversationNonce>()
            .is_ok());
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert!(bad.parse::<ConversationNonce>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn hex_round_trip(bytes in any::<[u8; 20]>()) {
            let id = CommitId::from_bytes(bytes);
            prop_assert_eq!(id.to_hex().parse::<CommitId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(text in ".{0,60}") {
            let _ = text.parse::<CommitId>();
            let _ = text.parse::<ConversationNonce>();
        }

        #[test]
        fn nonce_hex_round_trip(bytes in any::<[u8; 16]>()) {
            let nonce = ConversationNonce::from_bytes(bytes);
            prop_assert_eq!(nonce.to_hex().parse::<ConversationNonce>().unwrap(), nonce);
        }
    }
}
