//! Frames on `swarm/<conversation>` channels: head announcements and
//! invitations.
//!
//! A `swarm/<id>` channel carries exactly one frame from opener to acceptor,
//! then the opener finishes its stream. A frame is a 4-byte big-endian length
//! followed by that many bytes of JSON, an object with a `"type"`:
//!
//! - `{"type":"heads","heads":["<40 hex>", …]}`: the sender's accepted heads
//!   of conversation `<id>` (today one head; a list so that a device may
//!   announce more than one without a format change). Sent after every new
//!   local or merged commit, and on every connection up and anti-entropy tick.
//! - `{"type":"invite","title":"…"}`: the sender (a member device) tells the
//!   receiver that its account is invited to `<id>`. The receiver records it
//!   and may then clone the swarm over `git/<id>`, where the inviter lets
//!   invited accounts fetch. The title is a hint for display only; the
//!   repository is the truth.
//!
//! - `{"type":"heads_pack","heads":[…],"base":"…","pack_bytes":N}`
//!   followed, on the same stream after the frame, by exactly `N` bytes (at
//!   most [`INLINE_PACK_BYTES_MAX`]): a self-contained Git pack (version 2,
//!   no deltas against objects outside it) holding every object reachable
//!   from the head and not from `base`, the sender's head before the batch,
//!   so a receiver that holds `base` needs no fetch. The receiver validates
//!   them exactly as fetched objects; when it does not hold `base` (or
//!   anything fails) it falls back to fetching the announced heads over
//!   `git/<id>`.
//!
//! Unknown types decode to an error, which the receiver counts and ignores.

use serde::{Deserialize, Serialize};

use super::ids::CommitId;

/// Largest frame payload, in bytes (the JSON after the length prefix).
pub const SWARM_FRAME_BYTES_MAX: usize = 16 * 1024;
/// Most heads one announcement carries.
pub const ANNOUNCED_HEADS_MAX: usize = 16;
/// Longest invitation title, in bytes.
pub const INVITE_TITLE_BYTES_MAX: usize = 256;
/// Bytes of the length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Largest pack a `heads_pack` frame may carry after it, in bytes. Bigger
/// batches are announced with plain `heads` and fetched.
pub const INLINE_PACK_BYTES_MAX: usize = 64 * 1024;

/// One frame on a `swarm/<id>` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SwarmFrame {
    /// The sender's accepted heads.
    Heads {
        /// Head commit ids.
        #[serde(with = "hex_ids")]
        heads: Vec<CommitId>,
    },
    /// The sender's accepted heads, with the pack of its newest commits
    /// following the frame on the stream.
    HeadsPack {
        /// Head commit ids.
        #[serde(with = "hex_ids")]
        heads: Vec<CommitId>,
        /// The commit the pack is relative to: it holds every object
        /// reachable from the heads and not from `base`. A receiver that
        /// does not hold `base` must not index it (it would hold commits
        /// without their history) and fetches instead.
        #[serde(with = "hex_id")]
        base: CommitId,
        /// Length of the pack that follows the frame, in bytes.
        pack_bytes: usize,
    },
    /// The receiver's account is invited.
    Invite {
        /// The conversation's title, if it has one (display only).
        #[serde(default)]
        title: String,
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
            SwarmFrame::HeadsPack { pack_bytes, .. } if *pack_bytes > INLINE_PACK_BYTES_MAX => {
                Err(FrameError::PackTooLarge { found: *pack_bytes })
            }
            SwarmFrame::Invite { title } if title.len() > INVITE_TITLE_BYTES_MAX => {
                Err(FrameError::TitleTooLong { found: title.len() })
            }
            _ => Ok(()),
        }
    }

    /// Length prefix and JSON.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.check()?;
        let json = serde_json::to_vec(self).map_err(|e| FrameError::Malformed(e.to_string()))?;
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
            base: id(2),
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
        let oversize = br#"{"type":"heads_pack","heads":[],"base":"0000000000000000000000000000000000000000","pack_bytes":65537}"#;
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
