//! Frames on `swarm/<conversation>` channels: head announcements and
//! invitations.
//!
//! A `swarm/<id>` channel carries exactly one frame from opener to acceptor,
//! then the opener finishes its stream. A frame is a 4-byte big-endian length
//! followed by that many bytes of JSON, an object with a `"type"`:
//!
//! - `{"type":"heads","heads":["<40 hex>", …]}`: the sender's tips of
//!   conversation `<id>` (at most [`ANNOUNCED_HEADS_MAX`]; a replica with
//!   more announces the ones with the greatest ids, and a fetch brings them
//!   all). Sent after every change of its tips, and on every connection up
//!   and anti-entropy tick.
//! - `{"type":"invite","title":"…"}`: the sender (a member device) tells the
//!   receiver that its account is invited to `<id>`. The receiver records it
//!   and may then clone the swarm over `git/<id>`, where the inviter lets
//!   invited accounts fetch. The title is a hint for display only; the
//!   repository is the truth.
//!
//! - `{"type":"heads_pack","heads":[…],"bases":[…],"pack_bytes":N}`
//!   followed, on the same stream after the frame, by exactly `N` bytes (at
//!   most [`INLINE_PACK_BYTES_MAX`]): a self-contained Git pack (version 2,
//!   no deltas against objects outside it) holding every object reachable
//!   from the heads and from none of `bases`, the author's tips before the
//!   batch, so a receiver that holds every base needs no fetch. The receiver
//!   validates them exactly as fetched objects; when it lacks a base (or
//!   anything fails) it falls back to fetching the announced heads over
//!   `git/<id>`.
//!
//! - `{"type":"rejected","commits":[{"id":"…","reason":"…","detail":"…"}, …]}`:
//!   the sender refused these commits, which it got from the receiver (or
//!   which the receiver signed), for these reasons (`Rejection::reason`
//!   names; `detail` is the human sentence). Nothing a member writes may fail
//!   to propagate without the member learning it. At most
//!   [`REJECTED_COMMITS_MAX`] entries, roots before their descendants; a
//!   sender tells each peer at most once per conversation and interval.
//!
//! Every frame may also carry `"sent_at_ms"`: the sender's clock when it
//! wrote the frame, milliseconds since the Unix epoch. Receivers estimate
//! how far their own clock is from their peers' with it
//! ([`crate::clock_offset`]); a frame without it is read as before.
//!
//! Unknown types decode to an error, which the receiver counts and ignores.

use serde::{Deserialize, Serialize};

use super::ids::CommitId;
use super::validation::Rejection;

/// Largest frame payload, in bytes (the JSON after the length prefix).
pub const SWARM_FRAME_BYTES_MAX: usize = 16 * 1024;
/// Most heads (tips) one announcement carries, and most bases an inline
/// pack names.
pub const ANNOUNCED_HEADS_MAX: usize = 64;
/// Longest invitation title, in bytes.
pub const INVITE_TITLE_BYTES_MAX: usize = 256;
/// Bytes of the length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Largest pack a `heads_pack` frame may carry after it, in bytes. Bigger
/// batches are announced with plain `heads` and fetched.
pub const INLINE_PACK_BYTES_MAX: usize = 64 * 1024;
/// Most refused commits one `rejected` frame names.
pub const REJECTED_COMMITS_MAX: usize = 16;
/// Longest reason name in a `rejected` frame, in bytes.
pub const REJECTION_REASON_BYTES_MAX: usize = 32;
/// Longest detail sentence in a `rejected` frame, in bytes of UTF-8.
pub const REJECTION_DETAIL_BYTES_MAX: usize = 256;

/// One refused commit, as a `rejected` frame names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCommit {
    /// The commit.
    #[serde(with = "hex_id")]
    pub id: CommitId,
    /// The stable reason name (`Rejection::reason`).
    pub reason: String,
    /// What a person reads: the rejection's sentence, cut to
    /// [`REJECTION_DETAIL_BYTES_MAX`].
    #[serde(default)]
    pub detail: String,
}

impl RejectedCommit {
    /// The entry for `rejection`, if it names a commit.
    pub fn of(rejection: &Rejection) -> Option<Self> {
        let mut detail = rejection.to_string();
        while detail.len() > REJECTION_DETAIL_BYTES_MAX {
            detail.pop();
        }
        Some(Self {
            id: rejection.commit()?,
            reason: rejection.reason().to_owned(),
            detail,
        })
    }
}

/// The `rejected` frame telling a peer about `rejections` (a verdict's, in
/// order): roots first, then descendants, at most [`REJECTED_COMMITS_MAX`];
/// `None` when none names a commit.
pub fn rejected_frame(rejections: &[Rejection]) -> Option<SwarmFrame> {
    let is_descendant = |r: &&Rejection| matches!(r, Rejection::DescendantOfRejected { .. });
    let roots = rejections.iter().filter(|r| !is_descendant(r));
    let descendants = rejections.iter().filter(is_descendant);
    let commits: Vec<RejectedCommit> = roots
        .chain(descendants)
        .filter_map(RejectedCommit::of)
        .take(REJECTED_COMMITS_MAX)
        .collect();
    (!commits.is_empty()).then_some(SwarmFrame::Rejected { commits })
}

/// One frame on a `swarm/<id>` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SwarmFrame {
    /// The sender's tips.
    Heads {
        /// Tip commit ids.
        #[serde(with = "hex_ids")]
        heads: Vec<CommitId>,
    },
    /// The sender's tips, with the pack of its newest commits following the
    /// frame on the stream.
    HeadsPack {
        /// Tip commit ids.
        #[serde(with = "hex_ids")]
        heads: Vec<CommitId>,
        /// The commits the pack is relative to: it holds every object
        /// reachable from the heads and from none of `bases`. A receiver
        /// that lacks a base must not index it (it would hold commits
        /// without their history) and fetches instead.
        #[serde(with = "hex_ids")]
        bases: Vec<CommitId>,
        /// Length of the pack that follows the frame, in bytes.
        pack_bytes: usize,
    },
    /// The receiver's account is invited.
    Invite {
        /// The conversation's title, if it has one (display only).
        #[serde(default)]
        title: String,
    },
    /// The sender refused these commits (see the module doc).
    Rejected {
        /// The refused commits, roots first.
        commits: Vec<RejectedCommit>,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {found} bytes exceeds the limit of {SWARM_FRAME_BYTES_MAX}")]
    TooLarge { found: usize },
    #[error("frame has {found} heads; the limit is {ANNOUNCED_HEADS_MAX}")]
    TooManyHeads { found: usize },
    #[error("invitation title of {found} bytes exceeds {INVITE_TITLE_BYTES_MAX}")]
    TitleTooLong { found: usize },
    #[error("inline pack of {found} bytes exceeds {INLINE_PACK_BYTES_MAX}")]
    PackTooLarge { found: usize },
    #[error("rejected frame names {found} commits; the limit is {REJECTED_COMMITS_MAX}")]
    TooManyRejected { found: usize },
    #[error("rejected frame has a reason or detail over its limit ({REJECTION_REASON_BYTES_MAX}, {REJECTION_DETAIL_BYTES_MAX} bytes)")]
    RejectionTooLong,
    #[error("frame is not valid JSON of a known type: {0}")]
    Malformed(String),
}

impl SwarmFrame {
    fn check(&self) -> Result<(), FrameError> {
        match self {
            SwarmFrame::Heads { heads } | SwarmFrame::HeadsPack { heads, .. }
                if heads.len() > ANNOUNCED_HEADS_MAX =>
            {
                Err(FrameError::TooManyHeads { found: heads.len() })
            }
            SwarmFrame::HeadsPack { bases, .. } if bases.len() > ANNOUNCED_HEADS_MAX => {
                Err(FrameError::TooManyHeads { found: bases.len() })
            }
            SwarmFrame::HeadsPack { pack_bytes, .. } if *pack_bytes > INLINE_PACK_BYTES_MAX => {
                Err(FrameError::PackTooLarge { found: *pack_bytes })
            }
            SwarmFrame::Invite { title } if title.len() > INVITE_TITLE_BYTES_MAX => {
                Err(FrameError::TitleTooLong { found: title.len() })
            }
            SwarmFrame::Rejected { commits } if commits.len() > REJECTED_COMMITS_MAX => {
                Err(FrameError::TooManyRejected {
                    found: commits.len(),
                })
            }
            SwarmFrame::Rejected { commits }
                if commits.iter().any(|c| {
                    c.reason.len() > REJECTION_REASON_BYTES_MAX
                        || c.detail.len() > REJECTION_DETAIL_BYTES_MAX
                }) =>
            {
                Err(FrameError::RejectionTooLong)
            }
            _ => Ok(()),
        }
    }

    /// Length prefix and JSON.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let json = serde_json::to_vec(self).map_err(|e| FrameError::Malformed(e.to_string()))?;
        Self::prefixed(json)
    }

    /// Length prefix and JSON, with the sender's clock reading `sent_at_ms`
    /// (milliseconds since the Unix epoch) in the [`SENT_AT_FIELD`].
    pub fn encode_sent_at(&self, sent_at_ms: i64) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let malformed = |e: serde_json::Error| FrameError::Malformed(e.to_string());
        let mut value = serde_json::to_value(self).map_err(malformed)?;
        if let Some(fields) = value.as_object_mut() {
            fields.insert(SENT_AT_FIELD.to_owned(), sent_at_ms.into());
        }
        Self::prefixed(serde_json::to_vec(&value).map_err(malformed)?)
    }

    fn prefixed(json: Vec<u8>) -> Result<Vec<u8>, FrameError> {
        if json.len() > SWARM_FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { found: json.len() });
        }
        let mut out = Vec::with_capacity(FRAME_LENGTH_BYTES + json.len());
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// The payload length a prefix announces, refused if over the limit.
    pub fn payload_len(prefix: [u8; FRAME_LENGTH_BYTES]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > SWARM_FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { found: len });
        }
        Ok(len)
    }

    /// Decodes a payload (the bytes after the prefix).
    pub fn decode_payload(payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() > SWARM_FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge {
                found: payload.len(),
            });
        }
        let frame: SwarmFrame =
            serde_json::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
        frame.check()?;
        Ok(frame)
    }

    /// Decodes a payload and the sender's clock reading, when it has one.
    pub fn decode_payload_sent_at(payload: &[u8]) -> Result<(Self, Option<i64>), FrameError> {
        let frame = Self::decode_payload(payload)?;
        let stamp: SentAt =
            serde_json::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
        Ok((frame, stamp.sent_at_ms))
    }
}

/// The field of any frame that carries the sender's clock reading.
pub const SENT_AT_FIELD: &str = "sent_at_ms";

/// The [`SENT_AT_FIELD`] of a frame, read apart from its type.
#[derive(Deserialize)]
struct SentAt {
    #[serde(default)]
    sent_at_ms: Option<i64>,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::swarm::ids::CommitId;

    pub fn serialize<S: Serializer>(id: &CommitId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CommitId, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod hex_ids {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::swarm::ids::CommitId;

    pub fn serialize<S: Serializer>(ids: &[CommitId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|id| id.to_hex()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CommitId>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> CommitId {
        CommitId::from_bytes([byte; 20])
    }

    fn roundtrip(frame: &SwarmFrame) -> SwarmFrame {
        let bytes = frame.encode().unwrap();
        let len = SwarmFrame::payload_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        SwarmFrame::decode_payload(&bytes[4..]).unwrap()
    }

    #[test]
    fn frames_roundtrip() {
        let heads = SwarmFrame::Heads {
            heads: vec![id(1), id(0xab)],
        };
        assert_eq!(roundtrip(&heads), heads);
        let invite = SwarmFrame::Invite {
            title: "team".into(),
        };
        assert_eq!(roundtrip(&invite), invite);
        let with_pack = SwarmFrame::HeadsPack {
            heads: vec![id(3)],
            bases: vec![id(2), id(4)],
            pack_bytes: INLINE_PACK_BYTES_MAX,
        };
        assert_eq!(roundtrip(&with_pack), with_pack);
        let text = String::from_utf8(heads.encode().unwrap()[4..].to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"type\":\"heads\",\"heads\":[\"{}\",\"{}\"]}}",
                id(1),
                id(0xab)
            )
        );
    }

    #[test]
    fn frames_carry_the_senders_clock_and_frames_without_it_still_decode() {
        let heads = SwarmFrame::Heads { heads: vec![id(1)] };
        let bytes = heads.encode_sent_at(1_790_000_000_123).unwrap();
        let len = SwarmFrame::payload_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(
            SwarmFrame::decode_payload_sent_at(&bytes[4..]).unwrap(),
            (heads.clone(), Some(1_790_000_000_123))
        );
        // A reader that knows nothing of the field reads the frame as before.
        assert_eq!(SwarmFrame::decode_payload(&bytes[4..]).unwrap(), heads);
        // A sender that writes none: no clock reading.
        let plain = heads.encode().unwrap();
        assert_eq!(
            SwarmFrame::decode_payload_sent_at(&plain[4..]).unwrap(),
            (heads, None)
        );
        let bad = br#"{"type":"heads","heads":[],"sent_at_ms":"noon"}"#;
        assert!(matches!(
            SwarmFrame::decode_payload_sent_at(bad),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_rejected_frame_names_roots_first_within_its_bounds() {
        let device: crate::id::DeviceId = "ab".repeat(32).parse().unwrap();
        let mut rejections = vec![Rejection::DeviceNotCurrent {
            commit: id(1),
            device,
        }];
        for n in 2..40 {
            rejections.push(Rejection::DescendantOfRejected {
                commit: id(n),
                rejected: id(1),
            });
        }
        // A root listed after descendants still comes first.
        rejections.push(Rejection::MergeShape(id(50)));
        rejections.push(Rejection::TooManyCommits { found: 2, max: 1 });
        let frame = rejected_frame(&rejections).unwrap();
        let SwarmFrame::Rejected { commits } = &frame else {
            panic!("{frame:?}");
        };
        assert_eq!(commits.len(), REJECTED_COMMITS_MAX);
        assert_eq!((commits[0].id, commits[0].reason.as_str()), (id(1), "time"));
        assert_eq!(
            (commits[1].id, commits[1].reason.as_str()),
            (id(50), "merge")
        );
        assert_eq!(commits[2].reason, "descendant_of_rejected");
        assert!(commits[0].detail.contains(&id(1).to_hex()));
        assert!(commits
            .iter()
            .all(|c| c.detail.len() <= REJECTION_DETAIL_BYTES_MAX));
        assert_eq!(roundtrip(&frame), frame);
        let bytes = frame.encode_sent_at(1).unwrap();
        assert!(bytes.len() <= FRAME_LENGTH_BYTES + SWARM_FRAME_BYTES_MAX);
        assert_eq!(rejected_frame(&[]), None);
        assert_eq!(
            rejected_frame(&[Rejection::TooManyCommits { found: 2, max: 1 }]),
            None
        );
        // Over-long details (a multi-byte character at the cut) are cut on a
        // character boundary.
        let long = Rejection::NotAllowed {
            commit: id(3),
            author: "cd".repeat(32).parse().unwrap(),
            what: "é".repeat(300),
        };
        let entry = RejectedCommit::of(&long).unwrap();
        assert!(entry.detail.len() <= REJECTION_DETAIL_BYTES_MAX);
        // Hostile frames: too many entries, an over-long reason.
        let too_many = SwarmFrame::Rejected {
            commits: vec![commits[0].clone(); REJECTED_COMMITS_MAX + 1],
        };
        let json = serde_json::to_vec(&too_many).unwrap();
        assert!(matches!(
            SwarmFrame::decode_payload(&json),
            Err(FrameError::TooManyRejected { .. })
        ));
        let mut long_reason = commits[0].clone();
        long_reason.reason = "x".repeat(REJECTION_REASON_BYTES_MAX + 1);
        let json = serde_json::to_vec(&SwarmFrame::Rejected {
            commits: vec![long_reason],
        })
        .unwrap();
        assert!(matches!(
            SwarmFrame::decode_payload(&json),
            Err(FrameError::RejectionTooLong)
        ));
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        // Table: payload, expected error kind.
        let cases: [(&[u8], &str); 6] = [
            (b"", "malformed"),
            (b"{}", "malformed"),
            (b"{\"type\":\"nuke\"}", "malformed"),
            (b"{\"type\":\"heads\",\"heads\":[\"zz\"]}", "malformed"),
            (b"{\"type\":\"heads\",\"heads\":7}", "malformed"),
            (b"\xff\xfe", "malformed"),
        ];
        for (payload, _) in cases {
            assert!(matches!(
                SwarmFrame::decode_payload(payload),
                Err(FrameError::Malformed(_))
            ));
        }
        let many = SwarmFrame::Heads {
            heads: vec![id(2); ANNOUNCED_HEADS_MAX + 1],
        };
        assert!(matches!(
            many.encode(),
            Err(FrameError::TooManyHeads { .. })
        ));
        let json = serde_json::to_vec(&many).unwrap();
        assert!(matches!(
            SwarmFrame::decode_payload(&json),
            Err(FrameError::TooManyHeads { .. })
        ));
        assert!(matches!(
            SwarmFrame::payload_len(((SWARM_FRAME_BYTES_MAX + 1) as u32).to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        let oversize = br#"{"type":"heads_pack","heads":[],"bases":["0000000000000000000000000000000000000000"],"pack_bytes":65537}"#;
        assert!(matches!(
            SwarmFrame::decode_payload(oversize),
            Err(FrameError::PackTooLarge { found: 65537 })
        ));
        let long = SwarmFrame::Invite {
            title: "x".repeat(INVITE_TITLE_BYTES_MAX + 1),
        };
        assert!(matches!(
            long.encode(),
            Err(FrameError::TitleTooLong { .. })
        ));
    }
}
