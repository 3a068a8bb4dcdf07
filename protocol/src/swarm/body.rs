//! Commit bodies: the JSON document that is each commit's message.
//!
//! Every body is a JSON object with at least `"type"` (a string) and
//! `"generation"` (an integer: 0 for the initial commit, otherwise one more
//! than the largest generation among the parents). The generation makes the
//! display order computable from the newest commits alone (see
//! [`super::order`]); validation checks it. Types this version does not know
//! are kept as [`BodyKind::Unsupported`]: they are accepted when they change no
//! file, and shown as unsupported, so newer peers can add types without
//! splitting the swarm. Unknown *fields* of known types are ignored for the
//! same reason.

use serde::{Deserialize, Serialize};

use super::ids::{CommitId, ConversationNonce};
use super::limits::{BODY_BYTES_MAX, FILE_NAME_BYTES_MAX, REACTION_BYTES_MAX, TEXT_BYTES_MAX};
use crate::id::AccountId;

/// Who may invite, and how many may be in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Two accounts: the creator invites exactly one other.
    OneToOne,
    /// Only admins invite.
    AdminInvitesOnly,
    /// Any member invites.
    InvitesOnly,
    /// Anyone not banned may join without an invitation.
    Public,
}

impl Mode {
    /// The name written in the tree's `mode` file and in the initial body.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::OneToOne => "one-to-one",
            Mode::AdminInvitesOnly => "admin-invites-only",
            Mode::InvitesOnly => "invites-only",
            Mode::Public => "public",
        }
    }

    /// Parses the tree's `mode` file.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Mode::OneToOne,
            Mode::AdminInvitesOnly,
            Mode::InvitesOnly,
            Mode::Public,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

/// What a member action does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberAction {
    /// Add the target to `invited/`.
    Invite,
    /// The author's own account enters `members/` (from `invited/`, or freely in public mode).
    Join,
    /// The author's own account leaves, with its devices.
    Leave,
    /// An admin removes a non-admin member (with devices) or withdraws an invitation.
    Remove,
    /// An admin bans the target, once a majority of admins voted for it.
    Ban,
    /// An admin lifts a ban, once a majority of admins voted for it.
    Unban,
}

/// Which decision an admin vote is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteAction {
    /// Vote to ban the target.
    Ban,
    /// Vote to unban the target.
    Unban,
}

impl VoteAction {
    /// The directory name under `votes/`.
    pub fn as_str(self) -> &'static str {
        match self {
            VoteAction::Ban => "ban",
            VoteAction::Unban => "unban",
        }
    }
}

/// The typed part of a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum BodyKind {
    /// The conversation's first commit.
    Initial {
        /// The conversation's mode (also in the tree's `mode` file).
        mode: Mode,
        /// Random bits that make this conversation's id unique (required).
        nonce: ConversationNonce,
    },
    /// A text message, a reply, an edit, or (empty edit) a deletion.
    Text {
        /// The text; empty only in an edit (which then deletes `edit_of`).
        text: String,
        /// The message this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<CommitId>,
        /// The author's earlier message this one replaces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edit_of: Option<CommitId>,
    },
    /// A reaction to a message.
    Reaction {
        /// The message reacted to.
        target: CommitId,
        /// The reaction (an emoji sequence).
        reaction: String,
    },
    /// A membership change.
    Member {
        /// What happens.
        action: MemberAction,
        /// To whom (the author's own account for join and leave).
        account: AccountId,
    },
    /// An admin's vote towards a ban or unban.
    Vote {
        /// Ban or unban.
        action: VoteAction,
        /// The account voted on.
        account: AccountId,
    },
    /// The conversation profile (`profile.json`) changes.
    Profile,
    /// A member adds the signing device's own certificate.
    Device,
    /// A member publishes a newer revocation list of its own account.
    Crl,
    /// A file offered for transfer; its bytes travel on `file/<transfer_id>`.
    File {
        /// File name as shown.
        name: String,
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the content, lowercase hex.
        sha256: String,
        /// Transfer id used on the `file/` channel.
        transfer_id: String,
    },
    /// A call that happened in this conversation.
    Call {
        /// Call id.
        call_id: String,
        /// How long it lasted, in milliseconds (0 for a missed call).
        duration_ms: u64,
    },
    /// A merge of two parents; it carries nothing of its own.
    Merge,
}

/// A parsed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A type this version knows.
    Known {
        /// The body's generation (see the module doc).
        generation: u64,
        /// The typed content.
        kind: BodyKind,
    },
    /// A type from a newer version: kept, shown as unsupported.
    Unsupported {
        /// The body's generation.
        generation: u64,
        /// Its `type` string.
        type_name: String,
    },
}

impl Body {
    /// The body's generation.
    pub fn generation(&self) -> u64 {
        match self {
            Body::Known { generation, .. } | Body::Unsupported { generation, .. } => *generation,
        }
    }

    /// The typed content, if this version knows the type.
    pub fn kind(&self) -> Option<&BodyKind> {
        match self {
            Body::Known { kind, .. } => Some(kind),
            Body::Unsupported { .. } => None,
        }
    }
}

/// Why a commit message is not an acceptable body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is {found} bytes; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("body is not a JSON object with a string `type` and an integer `generation`: {0}")]
    Malformed(String),
    #[error("body of type {type_name:?} is malformed: {reason}")]
    BadField { type_name: String, reason: String },
    #[error("{field} is {found} bytes; the limit is {max}")]
    FieldTooLong {
        field: &'static str,
        found: usize,
        max: usize,
    },
}

const KNOWN_TYPES: &[&str] = &[
    "initial", "text", "reaction", "member", "vote", "profile", "device", "crl", "file", "call",
    "merge",
];

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    type_name: String,
    generation: u64,
}

/// Parses and bounds a commit message.
pub fn parse_body(message: &[u8]) -> Result<Body, BodyError> {
    if message.len() > BODY_BYTES_MAX {
        return Err(BodyError::TooLarge {
            found: message.len(),
            max: BODY_BYTES_MAX,
        });
    }
    let envelope: Envelope =
        serde_json::from_slice(message).map_err(|e| BodyError::Malformed(e.to_string()))?;
    if !KNOWN_TYPES.contains(&envelope.type_name.as_str()) {
        return Ok(Body::Unsupported {
            generation: envelope.generation,
            type_name: envelope.type_name,
        });
    }
    let kind: BodyKind = serde_json::from_slice(message).map_err(|e| BodyError::BadField {
        type_name: envelope.type_name.clone(),
        reason: e.to_string(),
    })?;
    check_field_bounds(&kind)?;
    Ok(Body::Known {
        generation: envelope.generation,
        kind,
    })
}

fn bounded(field: &'static str, text: &str, max: usize) -> Result<(), BodyError> {
    if text.len() > max {
        return Err(BodyError::FieldTooLong {
            field,
            found: text.len(),
            max,
        });
    }
    Ok(())
}

fn check_field_bounds(kind: &BodyKind) -> Result<(), BodyError> {
    match kind {
        BodyKind::Text { text, .. } => bounded("text", text, TEXT_BYTES_MAX),
        BodyKind::Reaction { reaction, .. } => {
            bounded("reaction", reaction, REACTION_BYTES_MAX)?;
            if reaction.is_empty() {
                return Err(BodyError::BadField {
                    type_name: "reaction".into(),
                    reason: "empty reaction".into(),
                });
            }
            Ok(())
        }
        BodyKind::File {
            name,
            sha256,
            transfer_id,
            ..
        } => {
            bounded("name", name, FILE_NAME_BYTES_MAX)?;
            bounded("transfer_id", transfer_id, FILE_NAME_BYTES_MAX)?;
            let hex_ok = sha256.len() == 64
                && sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(BodyError::BadField {
                    type_name: "file".into(),
                    reason: "sha256 must be 64 lowercase hex digits".into(),
                });
            }
            Ok(())
        }
        BodyKind::Call { call_id, .. } => bounded("call_id", call_id, FILE_NAME_BYTES_MAX),
        _ => Ok(()),
    }
}

/// Serializes a body as its commit message (compact JSON, `type` first).
pub fn encode_body(generation: u64, kind: &BodyKind) -> Vec<u8> {
    let mut value = serde_json::to_value(kind).expect("body kinds always serialize");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("generation".into(), serde_json::Value::from(generation));
    }
    serde_json::to_vec(&value).expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_known_kind_round_trips() {
        let account: AccountId = "ab".repeat(32).parse().unwrap();
        let commit: CommitId = "cd".repeat(20).parse().unwrap();
        let kinds = vec![
            BodyKind::Initial {
                mode: Mode::InvitesOnly,
                nonce: ConversationNonce::from_bytes([7; 16]),
            },
            BodyKind::Text {
                text: "hi".into(),
                reply_to: Some(commit),
                edit_of: None,
            },
            BodyKind::Text {
                text: String::new(),
                reply_to: None,
                edit_of: Some(commit),
            },
            BodyKind::Reaction {
                target: commit,
                reaction: "👍".into(),
            },
            BodyKind::Member {
                action: MemberAction::Ban,
                account,
            },
            BodyKind::Vote {
                action: VoteAction::Unban,
                account,
            },
            BodyKind::Profile,
            BodyKind::Device,
            BodyKind::Crl,
            BodyKind::File {
                name: "a.txt".into(),
                size: 3,
                sha256: "0".repeat(64),
                transfer_id: "t1".into(),
            },
            BodyKind::Call {
                call_id: "c".into(),
                duration_ms: 5,
            },
            BodyKind::Merge,
        ];
        for (generation, kind) in kinds.into_iter().enumerate() {
            let bytes = encode_body(generation as u64, &kind);
            assert_eq!(
                parse_body(&bytes).unwrap(),
                Body::Known {
                    generation: generation as u64,
                    kind
                }
            );
        }
    }

    #[test]
    fn unknown_types_are_kept_and_oversize_bodies_rejected() {
        let body = br#"{"type":"poll","generation":4,"question":"?"}"#;
        assert_eq!(
            parse_body(body).unwrap(),
            Body::Unsupported {
                generation: 4,
                type_name: "poll".into()
            }
        );
        let big = format!(
            r#"{{"type":"text","generation":1,"text":"{}"}}"#,
            "a".repeat(BODY_BYTES_MAX)
        );
        assert!(matches!(
            parse_body(big.as_bytes()),
            Err(BodyError::TooLarge { .. })
        ));
        assert!(matches!(parse_body(b"[]"), Err(BodyError::Malformed(_))));
        // The nonce is required and exact: an initial body without one, or
        // with a short or upper-case one, is malformed.
        for initial in [
            r#"{"type":"initial","generation":0,"mode":"public"}"#,
            r#"{"type":"initial","generation":0,"mode":"public","nonce":"abcd"}"#,
            r#"{"type":"initial","generation":0,"mode":"public","nonce":"0123456789ABCDEF0123456789abcdef"}"#,
        ] {
            assert!(
                matches!(
                    parse_body(initial.as_bytes()),
                    Err(BodyError::BadField { .. })
                ),
                "{initial}"
            );
        }
        assert!(matches!(
            parse_body(br#"{"type":"member","generation":1,"action":"explode","account":"x"}"#),
            Err(BodyError::BadField { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_body(&bytes);
        }

        #[test]
        fn text_round_trips(text in ".{0,200}", generation in any::<u64>()) {
            let kind = BodyKind::Text { text, reply_to: None, edit_of: None };
            let bytes = encode_body(generation, &kind);
            prop_assert_eq!(parse_body(&bytes).unwrap(), Body::Known { generation, kind });
        }
    }
}
