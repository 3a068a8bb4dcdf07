//! The overlay's wire frames: membership (join, walks, neighbour requests,
//! shuffles) and broadcast (push, ihave, graft, prune) on one conversation's
//! links between member devices.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON (at most [`OVERLAY_FRAME_BYTES_MAX`]), an object with a `"type"`.
//! A `push` frame with `"payload":true` is followed on the same stream by
//! the payload: another 4-byte big-endian length and that many bytes (at
//! most [`PUSH_PAYLOAD_BYTES_MAX`]). `docs/PROTOCOL.md` §10.7 lists every
//! frame; peer and message ids are whatever their types serialize to (hex
//! strings for `DeviceId` and `CommitId`).
//!
//! Decoding never panics: bytes that are not a frame, or a frame whose lists
//! or walks exceed their bounds, are an [`OverlayFrameError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::swarm::limits::{
    GRAFT_BATCH_IDS_MAX, IHAVE_BATCH_IDS_MAX, OVERLAY_FRAME_BYTES_MAX, PUSH_PAYLOAD_BYTES_MAX,
    RANDOM_WALK_HOPS_MAX, SHUFFLE_PEERS_MAX,
};

/// Bytes of a length prefix (of a frame, and of a push's payload).
pub const OVERLAY_LENGTH_BYTES: usize = 4;

/// How strongly a peer asks to become a neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// The asker has no neighbour at all (or ends a join walk): the receiver
    /// accepts, dropping a random neighbour if its view is full.
    High,
    /// The asker repairs a view that is not empty: the receiver accepts only
    /// into a free slot.
    Low,
}

/// One id in an `ihave` batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement<M> {
    /// The message the announcer holds.
    pub id: M,
    /// The announcer's distance from the message's author, in hops (0: the
    /// announcer wrote it).
    pub hops: u16,
}

/// One frame on an overlay link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OverlayFrame<P, M> {
    /// The sender joins the overlay through the receiver (its contact).
    Join,
    /// A random walk introducing `joiner` to the overlay.
    ForwardJoin {
        /// The member device that joined.
        joiner: P,
        /// Hops the walk has left.
        ttl: u8,
    },
    /// The sender asks to become the receiver's neighbour.
    Neighbor {
        /// How strongly it asks.
        priority: Priority,
    },
    /// The answer to `join` or `neighbor`.
    NeighborReply {
        /// Whether the receiver is now the sender's neighbour.
        accepted: bool,
    },
    /// The sender is no longer the receiver's neighbour.
    Disconnect {
        /// The sender stays online (so the receiver keeps it as a passive
        /// peer); false when it leaves the conversation.
        alive: bool,
    },
    /// A random walk carrying a sample of `origin`'s views.
    Shuffle {
        /// The member device that started the shuffle (the answer goes to it).
        origin: P,
        /// Hops the walk has left.
        ttl: u8,
        /// The sample (origin, some active and some passive peers).
        peers: Vec<P>,
    },
    /// The answer to a shuffle: a sample of the answerer's passive view.
    ShuffleReply {
        /// The sample.
        peers: Vec<P>,
    },
    /// A message, eagerly pushed along the broadcast tree (or answering a
    /// graft).
    Push {
        /// The message.
        id: M,
        /// The receiver's distance from the author once it takes this copy,
        /// in hops (1: the sender wrote it).
        hops: u16,
        /// Whether the payload follows the frame; without it, the receiver
        /// fetches the message from the sender out of band.
        payload: bool,
    },
    /// Lazy announcements: the sender holds these messages.
    #[serde(rename = "ihave")]
    IHave {
        /// The announced ids, at most [`IHAVE_BATCH_IDS_MAX`].
        ids: Vec<Announcement<M>>,
    },
    /// The sender asks for these messages and makes the link eager again.
    Graft {
        /// The wanted ids, at most [`GRAFT_BATCH_IDS_MAX`]; empty to only
        /// make the link eager.
        ids: Vec<M>,
    },
    /// The sender received a duplicate from the receiver: the receiver
    /// pushes to it lazily from now on.
    Prune,
    /// The sender's average delivery depth: how central it sits in the
    /// broadcast tree (lower is nearer most authors).
    Depth {
        /// The average, in sixteenths of a hop.
        depth_sixteenths: u32,
    },
}

/// Why bytes are not an overlay frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayFrameError {
    #[error("overlay frame of {found} bytes exceeds the limit of {OVERLAY_FRAME_BYTES_MAX}")]
    TooLarge { found: usize },
    #[error("overlay `{kind}` frame lists {found} entries; the limit is {limit}")]
    TooManyEntries {
        kind: &'static str,
        found: usize,
        limit: usize,
    },
    #[error("overlay random walk of {found} hops exceeds the limit of {RANDOM_WALK_HOPS_MAX}")]
    WalkTooLong { found: u8 },
    #[error("push payload of {found} bytes exceeds the limit of {PUSH_PAYLOAD_BYTES_MAX}")]
    PayloadTooLarge { found: usize },
    #[error("overlay frame is not valid JSON of a known type: {0}")]
    Malformed(String),
}

impl<P, M> OverlayFrame<P, M> {
    /// The frame's `type`, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            OverlayFrame::Join => "join",
            OverlayFrame::ForwardJoin { .. } => "forward_join",
            OverlayFrame::Neighbor { .. } => "neighbor",
            OverlayFrame::NeighborReply { .. } => "neighbor_reply",
            OverlayFrame::Disconnect { .. } => "disconnect",
            OverlayFrame::Shuffle { .. } => "shuffle",
            OverlayFrame::ShuffleReply { .. } => "shuffle_reply",
            OverlayFrame::Push { .. } => "push",
            OverlayFrame::IHave { .. } => "ihave",
            OverlayFrame::Graft { .. } => "graft",
            OverlayFrame::Prune => "prune",
            OverlayFrame::Depth { .. } => "depth",
        }
    }

    /// Whether the frame is within every bound a receiver enforces.
    pub fn check(&self) -> Result<(), OverlayFrameError> {
        let (found, limit) = match self {
            OverlayFrame::ForwardJoin { ttl, .. } | OverlayFrame::Shuffle { ttl, .. }
                if *ttl > RANDOM_WALK_HOPS_MAX =>
            {
                return Err(OverlayFrameError::WalkTooLong { found: *ttl });
            }
            OverlayFrame::Shuffle { peers, .. } | OverlayFrame::ShuffleReply { peers } => {
                (peers.len(), SHUFFLE_PEERS_MAX)
            }
            OverlayFrame::IHave { ids } => (ids.len(), IHAVE_BATCH_IDS_MAX),
            OverlayFrame::Graft { ids } => (ids.len(), GRAFT_BATCH_IDS_MAX),
            _ => return Ok(()),
        };
        if found > limit {
            return Err(OverlayFrameError::TooManyEntries {
                kind: self.kind(),
                found,
                limit,
            });
        }
        Ok(())
    }
}

impl<P: Serialize + DeserializeOwned, M: Serialize + DeserializeOwned> OverlayFrame<P, M> {
    /// Length prefix and JSON.
    pub fn encode(&self) -> Result<Vec<u8>, OverlayFrameError> {
        self.check()?;
        let json =
            serde_json::to_vec(self).map_err(|e| OverlayFrameError::Malformed(e.to_string()))?;
        if json.len() > OVERLAY_FRAME_BYTES_MAX {
            return Err(OverlayFrameError::TooLarge { found: json.len() });
        }
        let mut out = Vec::with_capacity(OVERLAY_LENGTH_BYTES + json.len());
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// The frame length a prefix announces, refused if over the limit.
    pub fn frame_len(prefix: [u8; OVERLAY_LENGTH_BYTES]) -> Result<usize, OverlayFrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > OVERLAY_FRAME_BYTES_MAX {
            return Err(OverlayFrameError::TooLarge { found: len });
        }
        Ok(len)
    }

    /// Decodes a frame (the bytes after its prefix).
    pub fn decode(json: &[u8]) -> Result<Self, OverlayFrameError> {
        if json.len() > OVERLAY_FRAME_BYTES_MAX {
            return Err(OverlayFrameError::TooLarge { found: json.len() });
        }
        let frame: Self = serde_json::from_slice(json)
            .map_err(|e| OverlayFrameError::Malformed(e.to_string()))?;
        frame.check()?;
        Ok(frame)
    }
}

/// The prefix announcing a push payload of `len` bytes.
pub fn push_payload_prefix(len: usize) -> Result<[u8; OVERLAY_LENGTH_BYTES], OverlayFrameError> {
    if len > PUSH_PAYLOAD_BYTES_MAX {
        return Err(OverlayFrameError::PayloadTooLarge { found: len });
    }
    Ok((len as u32).to_be_bytes())
}

/// The payload length a prefix after a `push` frame announces, refused if
/// over the limit.
pub fn push_payload_len(prefix: [u8; OVERLAY_LENGTH_BYTES]) -> Result<usize, OverlayFrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > PUSH_PAYLOAD_BYTES_MAX {
        return Err(OverlayFrameError::PayloadTooLarge { found: len });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::ids::CommitId;
    use crate::DeviceId;

    type WireFrame = OverlayFrame<DeviceId, CommitId>;

    fn device(byte: u8) -> DeviceId {
        DeviceId::from_bytes([byte; 32])
    }

    fn commit(byte: u8) -> CommitId {
        CommitId::from_bytes([byte; 20])
    }

    fn roundtrip(frame: &WireFrame) -> WireFrame {
        let bytes = frame.encode().unwrap();
        let len = WireFrame::frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        WireFrame::decode(&bytes[4..]).unwrap()
    }

    fn every_kind() -> Vec<WireFrame> {
        vec![
            OverlayFrame::Join,
            OverlayFrame::ForwardJoin {
                joiner: device(1),
                ttl: RANDOM_WALK_HOPS_MAX,
            },
            OverlayFrame::Neighbor {
                priority: Priority::High,
            },
            OverlayFrame::Neighbor {
                priority: Priority::Low,
            },
            OverlayFrame::NeighborReply { accepted: true },
            OverlayFrame::Disconnect { alive: false },
            OverlayFrame::Shuffle {
                origin: device(2),
                ttl: 3,
                peers: (0..SHUFFLE_PEERS_MAX as u8).map(device).collect(),
            },
            OverlayFrame::ShuffleReply {
                peers: vec![device(3)],
            },
            OverlayFrame::Push {
                id: commit(4),
                hops: 7,
                payload: true,
            },
            OverlayFrame::IHave {
                ids: (0..IHAVE_BATCH_IDS_MAX)
                    .map(|i| Announcement {
                        id: commit(i as u8),
                        hops: u16::MAX,
                    })
                    .collect(),
            },
            OverlayFrame::Graft {
                ids: (0..GRAFT_BATCH_IDS_MAX).map(|i| commit(i as u8)).collect(),
            },
            OverlayFrame::Prune,
            OverlayFrame::Depth {
                depth_sixteenths: u32::MAX,
            },
        ]
    }

    #[test]
    fn every_frame_kind_roundtrips_at_its_bounds() {
        for frame in every_kind() {
            assert_eq!(roundtrip(&frame), frame, "{}", frame.kind());
        }
    }

    #[test]
    fn the_json_is_what_the_protocol_document_shows() {
        let push: WireFrame = OverlayFrame::Push {
            id: commit(0xab),
            hops: 2,
            payload: true,
        };
        let text = String::from_utf8(push.encode().unwrap()[4..].to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"type\":\"push\",\"id\":\"{}\",\"hops\":2,\"payload\":true}}",
                commit(0xab)
            )
        );
        let ihave: WireFrame = OverlayFrame::IHave {
            ids: vec![Announcement {
                id: commit(1),
                hops: 0,
            }],
        };
        let text = String::from_utf8(ihave.encode().unwrap()[4..].to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"type\":\"ihave\",\"ids\":[{{\"id\":\"{}\",\"hops\":0}}]}}",
                commit(1)
            )
        );
        let neighbor: WireFrame = OverlayFrame::Neighbor {
            priority: Priority::High,
        };
        assert_eq!(
            &neighbor.encode().unwrap()[4..],
            br#"{"type":"neighbor","priority":"high"}"#
        );
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let malformed: [&[u8]; 9] = [
            b"",
            b"{}",
            b"\xff\xfe",
            br#"{"type":"nuke"}"#,
            br#"{"type":"push","id":"zz","hops":1,"payload":false}"#,
            br#"{"type":"push","id":"0000000000000000000000000000000000000000","hops":70000,"payload":false}"#,
            br#"{"type":"forward_join","joiner":"ab","ttl":2}"#,
            br#"{"type":"neighbor","priority":"urgent"}"#,
            br#"{"type":"ihave","ids":7}"#,
        ];
        for bytes in malformed {
            assert!(
                matches!(
                    WireFrame::decode(bytes),
                    Err(OverlayFrameError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long_walk = format!(
            r#"{{"type":"forward_join","joiner":"{}","ttl":{}}}"#,
            device(1),
            RANDOM_WALK_HOPS_MAX + 1
        );
        assert_eq!(
            WireFrame::decode(long_walk.as_bytes()),
            Err(OverlayFrameError::WalkTooLong {
                found: RANDOM_WALK_HOPS_MAX + 1
            })
        );
        let too_many_ids: WireFrame = OverlayFrame::Graft {
            ids: vec![commit(1); GRAFT_BATCH_IDS_MAX + 1],
        };
        let json = serde_json::to_vec(&too_many_ids).unwrap();
        assert!(matches!(
            WireFrame::decode(&json),
            Err(OverlayFrameError::TooManyEntries { kind: "graft", .. })
        ));
        assert!(too_many_ids.encode().is_err(), "nor is it ever sent");
        let too_many_peers: WireFrame = OverlayFrame::ShuffleReply {
            peers: vec![device(1); SHUFFLE_PEERS_MAX + 1],
        };
        let json = serde_json::to_vec(&too_many_peers).unwrap();
        assert!(matches!(
            WireFrame::decode(&json),
            Err(OverlayFrameError::TooManyEntries {
                kind: "shuffle_reply",
                ..
            })
        ));
        assert!(matches!(
            WireFrame::frame_len(((OVERLAY_FRAME_BYTES_MAX + 1) as u32).to_be_bytes()),
            Err(OverlayFrameError::TooLarge { .. })
        ));
        assert!(matches!(
            WireFrame::decode(&vec![b' '; OVERLAY_FRAME_BYTES_MAX + 1]),
            Err(OverlayFrameError::TooLarge { .. })
        ));
        assert!(matches!(
            push_payload_len(((PUSH_PAYLOAD_BYTES_MAX + 1) as u32).to_be_bytes()),
            Err(OverlayFrameError::PayloadTooLarge { .. })
        ));
        assert!(push_payload_prefix(PUSH_PAYLOAD_BYTES_MAX + 1).is_err());
        let prefix = push_payload_prefix(PUSH_PAYLOAD_BYTES_MAX).unwrap();
        assert_eq!(push_payload_len(prefix), Ok(PUSH_PAYLOAD_BYTES_MAX));
    }

    #[test]
    fn truncated_frames_never_panic() {
        for frame in every_kind() {
            let bytes = frame.encode().unwrap();
            // Every cut of a small frame; a stride through the big ones.
            let stride = (bytes.len() / 256).max(1);
            for end in (4..bytes.len()).step_by(stride) {
                assert!(WireFrame::decode(&bytes[4..end]).is_err());
            }
        }
    }
}
