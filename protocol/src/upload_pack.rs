//! Git's pack protocol, upload-pack side, as a sans-I/O state machine.
//!
//! Swarm repositories travel between devices over `git/<conversation>`
//! channels. The fetching side is stock libgit2 (through git2's custom smart
//! transport); the serving side is this state machine plus a pack builder in
//! the conversation's storage. We speak the protocol-v0 subset a stateful
//! transport needs (Documentation/gitprotocol-pack.txt):
//!
//! 1. the server advertises its refs, the first line carrying capabilities
//!    (`multi_ack_detailed ofs-delta agent=…`), then a flush-pkt;
//! 2. the client sends `want <id>` lines (capabilities on the first), then a
//!    flush-pkt — or only a flush-pkt when it wants nothing, which ends the
//!    session;
//! 3. the client sends `have <id>` lines in batches closed by flush-pkts; the
//!    server answers each have it holds with `ACK <id> common` at once and
//!    each flush with `NAK`;
//! 4. the client sends `done`; the server answers `ACK <last common id>` (or
//!    `NAK` when nothing was common) and then sends the packfile raw (no
//!    side-band), built from the wants minus everything reachable from the
//!    common haves.
//!
//! A client may only want ids the server advertised. Shallow, filter and
//! side-band requests are refused (never advertised). Every line, list and
//! buffer is bounded.

use std::collections::BTreeSet;

/// Largest pkt-line, header included (Git's own limit).
pub const PKT_LINE_BYTES_MAX: usize = 65520;
/// Most refs one advertisement may carry.
pub const ADVERTISED_REFS_MAX: usize = 1024;
/// Most `want` lines in one request.
pub const WANTS_MAX: usize = ADVERTISED_REFS_MAX;
/// Most `have` lines in one session (libgit2 sends at most 256; git a few thousand).
pub const HAVES_MAX: usize = 16 * 1024;
/// Most unparsed client bytes held while waiting for a whole pkt-line.
pub const CLIENT_BUFFER_BYTES_MAX: usize = 2 * PKT_LINE_BYTES_MAX;

/// Wants and haves name commits: the swarm's commit id (a Git SHA-1) serves.
pub use crate::swarm::ids::CommitId as ObjectId;

fn parse_object_id(text: &[u8]) -> Option<ObjectId> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Why a pkt-line stream or an upload-pack request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadPackError {
    #[error("pkt-line header {0:?} is not 4 hex digits")]
    BadPktHeader([u8; 4]),
    #[error("pkt-line length {0} is reserved or out of range (4..={PKT_LINE_BYTES_MAX})")]
    BadPktLength(usize),
    #[error("client sent more than {CLIENT_BUFFER_BYTES_MAX} bytes without completing a pkt-line")]
    ClientBufferFull,
    #[error("unexpected line {0:?} in state {1}")]
    UnexpectedLine(String, &'static str),
    #[error("malformed object id in {0:?}")]
    BadObjectId(String),
    #[error("client wants {0}, which this server did not advertise")]
    NotOurRef(ObjectId),
    #[error("client asked for capability {0:?}, which this server did not advertise")]
    UnadvertisedCapability(String),
    #[error("more than {0} {1} lines")]
    TooMany(usize, &'static str),
    #[error("ref name {0:?} is not a plain refs/ name")]
    BadRefName(String),
    #[error("client spoke after negotiation ended")]
    AfterDone,
}

/// Appends `payload` as one pkt-line.
pub fn encode_pkt_line(payload: &[u8], out: &mut Vec<u8>) {
    let length = payload.len() + 4;
    assert!(length <= PKT_LINE_BYTES_MAX, "our own pkt-lines are short");
    out.extend_from_slice(format!("{length:04x}").as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a flush-pkt.
pub fn encode_flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// One decoded pkt-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// `0000`.
    Flush,
    /// A data line's payload (trailing newline kept).
    Data(&'a [u8]),
}

/// Decodes the first pkt-line of `input`: `Ok(None)` when more bytes are needed.
pub fn decode_pkt_line(input: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, UploadPackError> {
    let Some(header) = input.get(..4) else {
        return Ok(None);
    };
    let header: [u8; 4] = header.try_into().expect("four bytes");
    let text = std::str::from_utf8(&header).map_err(|_| UploadPackError::BadPktHeader(header))?;
    let length =
        usize::from_str_radix(text, 16).map_err(|_| UploadPackError::BadPktHeader(header))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UploadPackError::BadPktHeader(header));
    }
    match length {
        0 => Ok(Some((Pkt::Flush, 4))),
        1..=4 => Err(UploadPackError::BadPktLength(length)),
        _ if length > PKT_LINE_BYTES_MAX => Err(UploadPackError::BadPktLength(length)),
        _ if input.len() < length => Ok(None),
        _ => Ok(Some((Pkt::Data(&input[4..length]), length))),
    }
}

/// A ref to advertise: its name (`refs/...` or `HEAD`) and the commit it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedRef {
    pub name: String,
    pub id: ObjectId,
}

/// What the serving side must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Write a packfile of everything reachable from `wants` and not from `common`, then close.
    SendPack {
        wants: Vec<ObjectId>,
        common: Vec<ObjectId>,
    },
    /// The client wants nothing; close the session.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Wants,
    Haves,
    Done,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Wants => "wants",
            State::Haves => "haves",
            State::Done => "done",
        }
    }
}

/// Capabilities this server advertises (besides `agent=`).
const CAPABILITIES: [&str; 2] = ["multi_ack_detailed", "ofs-delta"];

/// One upload-pack session.
#[derive(Debug)]
pub struct UploadPackServer {
    advertised: BTreeSet<ObjectId>,
    state: State,
    wants: Vec<ObjectId>,
    common: Vec<ObjectId>,
    haves_seen: usize,
    pending: Vec<u8>,
}

fn valid_ref_name(name: &str) -> bool {
    (name == "HEAD" || name.starts_with("refs/"))
        && !name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'^')
        && !name.contains("..")
        && name.len() < 1024
}

impl UploadPackServer {
    /// Starts a session over `refs`; returns it and the advertisement to send.
    pub fn new(refs: &[AdvertisedRef], agent: &str) -> Result<(Self, Vec<u8>), UploadPackError> {
        if refs.len() > ADVERTISED_REFS_MAX {
            return Err(UploadPackError::TooMany(ADVERTISED_REFS_MAX, "ref"));
        }
        let caps = format!(
            "{} agent={}",
            CAPABILITIES.join(" "),
            agent.replace(|c: char| c.is_ascii_whitespace(), "_")
        );
        let mut out = Vec::new();
        match refs.split_first() {
            None => encode_pkt_line(
                format!("{} capabilities^{{}}\0{caps}\n", "0".repeat(40)).as_bytes(),
                &mut out,
            ),
            Some((first, rest)) => {
                for r in refs {
                    if !valid_ref_name(&r.name) {
                        return Err(UploadPackError::BadRefName(r.name.clone()));
                    }
                }
                encode_pkt_line(
                    format!("{} {}\0{caps}\n", first.id, first.name).as_bytes(),
                    &mut out,
                );
                for r in rest {
                    encode_pkt_line(format!("{} {}\n", r.id, r.name).as_bytes(), &mut out);
                }
            }
        }
        encode_flush(&mut out);
        let server = Self {
            advertised: refs.iter().map(|r| r.id).collect(),
            state: State::Wants,
            wants: Vec::new(),
            common: Vec::new(),
            haves_seen: 0,
            pending: Vec::new(),
        };
        Ok((server, out))
    }

    /// Whether the session is over (pack requested or client wanted nothing).
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds bytes from the client. `has_object` says whether this repository
    /// holds a commit (it decides which haves are common).
    pub fn receive(
        &mut self,
        bytes: &[u8],
        has_object: &mut dyn FnMut(&ObjectId) -> bool,
    ) -> Result<Vec<ServerStep>, UploadPackError> {
        // Taken out so the loop can borrow lines from it while mutating `self`.
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(bytes);
        let mut steps = Vec::new();
        let mut reply = Vec::new();
        let mut consumed = 0;
        while let Some((pkt, used)) = decode_pkt_line(&pending[consumed..])? {
            consumed += used;
            match self.state {
                State::Done => return Err(UploadPackError::AfterDone),
                State::Wants => match pkt {
                    Pkt::Flush if self.wants.is_empty() => {
                        self.state = State::Done;
                        steps.push(ServerStep::Close);
                    }
                    Pkt::Flush => self.state = State::Haves,
                    Pkt::Data(line) => self.want(line)?,
                },
                State::Haves => match pkt {
                    Pkt::Flush => encode_pkt_line(b"NAK\n", &mut reply),
                    Pkt::Data(line) if trim_newline(line) == b"done" => {
                        match self.common.last() {
                            Some(last) => {
                                encode_pkt_line(format!("ACK {last}\n").as_bytes(), &mut reply)
                            }
                            None => encode_pkt_line(b"NAK\n", &mut reply),
                        }
                        self.state = State::Done;
                        steps.push(ServerStep::Send(std::mem::take(&mut reply)));
                        steps.push(ServerStep::SendPack {
                            wants: self.wants.clone(),
                            common: self.common.clone(),
                        });
                    }
                    Pkt::Data(line) => {
                        let id = self.have(line)?;
                        if has_object(&id) {
                            self.common.push(id);
                            encode_pkt_line(format!("ACK {id} common\n").as_bytes(), &mut reply);
                        }
                    }
                },
            }
            if self.state == State::Done {
                break;
            }
        }
        pending.drain(..consumed);
        self.pending = pending;
        if self.state == State::Done && !self.pending.is_empty() {
            return Err(UploadPackError::AfterDone);
        }
        if self.pending.len() > CLIENT_BUFFER_BYTES_MAX {
            return Err(UploadPackError::ClientBufferFull);
        }
        if !reply.is_empty() {
            steps.insert(0, ServerStep::Send(reply));
        }
        Ok(steps)
    }

    fn want(&mut self, line: &[u8]) -> Result<(), UploadPackError> {
        let line = trim_newline(line);
        let rest = line.strip_prefix(b"want ").ok_or_else(|| {
            UploadPackError::UnexpectedLine(String::from_utf8_lossy(line).into_owned(), "wants")
        })?;
        let (id, caps) = match rest.iter().position(|b| *b == b' ') {
            Some(space) => (&rest[..space], &rest[space + 1..]),
            None => (rest, &b""[..]),
        };
        let id = parse_object_id(id).ok_or_else(|| {
            UploadPackError::BadObjectId(String::from_utf8_lossy(line).into_owned())
        })?;
        if !self.wants.is_empty() && !caps.is_empty() {
            return Err(UploadPackError::UnexpectedLine(
                String::from_utf8_lossy(line).into_owned(),
                "wants",
            ));
        }
        for cap in caps.split(|b| *b == b' ').filter(|c| !c.is_empty()) {
            let cap = String::from_utf8_lossy(cap);
            if !cap.starts_with("agent=") && !CAPABILITIES.contains(&cap.as_ref()) {
                return Err(UploadPackError::UnadvertisedCapability(cap.into_owned()));
            }
        }
        if !self.advertised.contains(&id) {
            return Err(UploadPackError::NotOurRef(id));
        }
        if self.wants.len() == WANTS_MAX {
            return Err(UploadPackError::TooMany(WANTS_MAX, "want"));
        }
        if !self.wants.contains(&id) {
            self.wants.push(id);
        }
        Ok(())
    }

    fn have(&mut self, line: &[u8]) -> Result<ObjectId, UploadPackError> {
        let line = trim_newline(line);
        let id = line.strip_prefix(b"have ").ok_or_else(|| {
            UploadPackError::UnexpectedLine(
                String::from_utf8_lossy(line).into_owned(),
                State::Haves.name(),
            )
        })?;
        self.haves_seen += 1;
        if self.haves_seen > HAVES_MAX {
            return Err(UploadPackError::TooMany(HAVES_MAX, "have"));
        }
        parse_object_id(id)
            .ok_or_else(|| UploadPackError::BadObjectId(String::from_utf8_lossy(line).into_owned()))
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    fn lines(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            if part.is_empty() {
                encode_flush(&mut out);
            } else {
                encode_pkt_line(part.as_bytes(), &mut out);
            }
        }
        out
    }

    fn server() -> UploadPackServer {
        let refs = [
            AdvertisedRef {
                name: "refs/heads/main".into(),
                id: id(1),
            },
            AdvertisedRef {
                name: "refs/heads/other".into(),
                id: id(2),
            },
        ];
        UploadPackServer::new(&refs, "starling/test").unwrap().0
    }

    #[test]
    fn advertisement_carries_capabilities_on_the_first_ref_only() {
        let refs = [
            AdvertisedRef {
                name: "refs/heads/main".into(),
                id: id(1),
            },
            AdvertisedRef {
                name: "refs/heads/b".into(),
                id: id(2),
            },
        ];
        let (_, ad) = UploadPackServer::new(&refs, "starling/0.1").unwrap();
        let first = format!(
            "{} refs/heads/main\0multi_ack_detailed ofs-delta agent=starling/0.1\n",
            id(1)
        );
        let second = format!("{} refs/heads/b\n", id(2));
        assert_eq!(ad, lines(&[&first, &second, ""]));
        let (_, empty) = UploadPackServer::new(&[], "a").unwrap();
        assert!(String::from_utf8_lossy(&empty).contains("capabilities^{}"));
    }

    #[test]
    fn a_full_negotiation() {
        let mut s = server();
        let want = format!(
            "want {} multi_ack_detailed ofs-delta agent=libgit2\n",
            id(1)
        );
        let request = lines(&[
            &want,
            "",
            &format!("have {}\n", id(7)),
            &format!("have {}\n", id(8)),
            "",
            "done\n",
        ]);
        // Feed one byte at a time: framing must not depend on read boundaries.
        let mut steps = Vec::new();
        for byte in &request {
            steps.extend(
                s.receive(std::slice::from_ref(byte), &mut |o| *o == id(8))
                    .unwrap(),
            );
        }
        let sent: Vec<u8> = steps
            .iter()
            .filter_map(|s| {
                if let ServerStep::Send(b) = s {
                    Some(b.clone())
                } else {
                    None
                }
            })
            .flatten()
            .collect();
        assert_eq!(
            sent,
            lines(&[
                &format!("ACK {} common\n", id(8)),
                "NAK\n",
                &format!("ACK {}\n", id(8))
            ])
        );
        assert_eq!(
            steps.last(),
            Some(&ServerStep::SendPack {
                wants: vec![id(1)],
                common: vec![id(8)]
            })
        );
        assert!(s.is_finished());
    }

    #[test]
    fn nothing_common_is_nak_then_pack() {
        let mut s = server();
        let steps = s
            .receive(
                &lines(&[&format!("want {}\n", id(2)), "", "done\n"]),
                &mut |_| false,
            )
            .unwrap();
        assert_eq!(
            steps,
            vec![
                ServerStep::Send(lines(&["NAK\n"])),
                ServerStep::SendPack {
                    wants: vec![id(2)],
                    common: vec![]
                }
            ]
        );
    }

    #[test]
    fn a_flush_instead_of_wants_closes() {
        let mut s = server();
        assert_eq!(
            s.receive(b"0000", &mut |_| false).unwrap(),
            vec![ServerStep::Close]
        );
        assert!(s.is_finished());
    }

    #[test]
    fn refusals() {
        let cases: Vec<(Vec<u8>, UploadPackError)> = vec![
            (
                lines(&[&format!("want {}\n", id(9))]),
                UploadPackError::NotOurRef(id(9)),
            ),
            (
                lines(&[&format!("want {} side-band-64k\n", id(1))]),
                UploadPackError::UnadvertisedCapability("side-band-64k".into()),
            ),
            (
                lines(&["deepen 1\n"]),
                UploadPackError::UnexpectedLine("deepen 1".into(), "wants"),
            ),
            (
                lines(&["want nothex\n"]),
                UploadPackError::BadObjectId("want nothex".into()),
            ),
            (b"zzzz".to_vec(), UploadPackError::BadPktHeader(*b"zzzz")),
            (b"0002".to_vec(), UploadPackError::BadPktLength(2)),
            (b"fff1".to_vec(), UploadPackError::BadPktLength(0xfff1)),
        ];
        for (input, expected) in cases {
            assert_eq!(server().receive(&input, &mut |_| false), Err(expected));
        }
        let mut done = server();
        let mut input = lines(&[&format!("want {}\n", id(1)), "", "done\n"]);
        input.extend(lines(&["more\n"]));
        assert_eq!(
            done.receive(&input, &mut |_| false),
            Err(UploadPackError::AfterDone)
        );
    }

    #[test]
    fn haves_are_bounded() {
        let mut s = server();
        s.receive(&lines(&[&format!("want {}\n", id(1)), ""]), &mut |_| false)
            .unwrap();
        let batch = lines(
            &vec![format!("have {}\n", id(5)); 1024]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let mut outcome = Ok(Vec::new());
        for _ in 0..=HAVES_MAX / 1024 {
            outcome = s.receive(&batch, &mut |_| false);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(UploadPackError::TooMany(HAVES_MAX, "have")));
    }

    proptest! {
        #[test]
        fn pkt_lines_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20)) {
            let mut encoded = Vec::new();
            for p in &payloads {
                encode_pkt_line(p, &mut encoded);
            }
            encode_flush(&mut encoded);
            let mut at = 0;
            let mut decoded = Vec::new();
            while let Some((pkt, used)) = decode_pkt_line(&encoded[at..]).unwrap() {
                at += used;
                match pkt {
                    Pkt::Data(d) => decoded.push(d.to_vec()),
                    Pkt::Flush => break,
                }
            }
            prop_assert_eq!(decoded, payloads);
            prop_assert_eq!(at, encoded.len());
        }

        #[test]
        fn arbitrary_client_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10)) {
            let mut s = server();
            for chunk in chunks {
                if s.receive(&chunk, &mut |_| true).is_err() {
                    break;
                }
            }
        }
    }
}
