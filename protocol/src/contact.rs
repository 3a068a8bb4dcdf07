//! Contacts: the frames on `contact/<conversation>` channels, and the contact
//! book as a pure state machine (requests in and out, contacts, blocks).
//!
//! A contact request is how one account asks another to talk one to one. The
//! requester creates a swarm in `one-to-one` mode, invites the other account
//! in it (a `member invite` commit, told with the swarm's own `invite` frame)
//! and sends a `request` frame on a `contact/<conversation id>` channel to the
//! other account's devices: "the account my certificate proves asks to be your
//! contact; our conversation is `<conversation id>`". The receiver accepts by
//! joining that swarm, declines (answering with a `decline` frame, so the
//! requester stops asking), or blocks (telling nothing; its transport then
//! refuses the blocked account's connections).
//!
//! A `contact/<id>` channel carries exactly one frame from opener to acceptor,
//! in the same envelope as `swarm/<id>` frames: a 4-byte big-endian length and
//! that many bytes of JSON, an object with a `"type"`:
//!
//! - `{"type":"request","display_name":"…"}`: a contact request; the display
//!   name (at most [`DISPLAY_NAME_BYTES_MAX`] bytes) is the requester's own
//!   claim, for display only.
//! - `{"type":"decline"}`: the sender declines the request whose conversation
//!   names the channel.
//!
//! The sender's account comes from its certificate chain, never from the frame.
//! Unknown types and fields out of bounds are errors the receiver counts and
//! ignores; unknown fields are ignored (a newer sender may add some).
//!
//! [`ContactBook`] keeps what an account knows of its contacts. It is bounded
//! in every collection ([`CONTACTS_MAX`], [`CONTACT_REQUESTS_MAX`],
//! [`BLOCKED_ACCOUNTS_MAX`], [`DECLINED_REMEMBERED_MAX`]), takes time as an
//! argument and serializes to the JSON document the daemon persists
//! (`DATA_DIR/contacts.json`, `docs/PROTOCOL.md` §11).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::id::AccountId;
use crate::limits::DISPLAY_NAME_BYTES_MAX;
use crate::swarm::ids::CommitId;

/// Largest contact frame payload, in bytes (the JSON after the length prefix).
pub const CONTACT_FRAME_BYTES_MAX: usize = 2 * 1024;
/// Bytes of the length prefix.
pub const CONTACT_FRAME_LENGTH_BYTES: usize = 4;
/// Contacts plus outgoing requests one book holds.
pub const CONTACTS_MAX: usize = 4_096;
/// Incoming requests waiting for an answer; further ones are dropped.
pub const CONTACT_REQUESTS_MAX: usize = 256;
/// Accounts one book may block.
pub const BLOCKED_ACCOUNTS_MAX: usize = 4_096;
/// Declined conversations remembered, so a re-sent request stays declined;
/// the oldest is forgotten first.
pub const DECLINED_REMEMBERED_MAX: usize = 1_024;
/// Largest persisted book, in bytes (bounds what a load reads).
pub const CONTACT_BOOK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Version of the persisted book this code writes and reads.
pub const CONTACT_BOOK_VERSION: u32 = 1;

/// One frame on a `contact/<conversation>` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContactFrame {
    /// The sender's account asks to be the receiver's contact, in the
    /// one-to-one conversation that names the channel.
    Request {
        /// The sender's display name, as it claims it (display only).
        #[serde(default)]
        display_name: String,
    },
    /// The sender declines the request for the conversation naming the channel.
    Decline,
}

/// Why bytes are not a contact frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactFrameError {
    #[error("contact frame of {found} bytes exceeds the limit of {CONTACT_FRAME_BYTES_MAX}")]
    TooLarge { found: usize },
    #[error("display name of {found} bytes exceeds {DISPLAY_NAME_BYTES_MAX}")]
    NameTooLong { found: usize },
    #[error("contact frame is not valid JSON of a known type: {0}")]
    Malformed(String),
}

impl ContactFrame {
    fn check(&self) -> Result<(), ContactFrameError> {
        match self {
            ContactFrame::Request { display_name }
                if display_name.len() > DISPLAY_NAME_BYTES_MAX =>
            {
                Err(ContactFrameError::NameTooLong {
                    found: display_name.len(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Length prefix and JSON.
    pub fn encode(&self) -> Result<Vec<u8>, ContactFrameError> {
        self.check()?;
        let json =
            serde_json::to_vec(self).map_err(|e| ContactFrameError::Malformed(e.to_string()))?;
        if json.len() > CONTACT_FRAME_BYTES_MAX {
            return Err(ContactFrameError::TooLarge { found: json.len() });
        }
        let mut out = Vec::with_capacity(CONTACT_FRAME_LENGTH_BYTES + json.len());
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// The payload length a prefix announces, refused if over the limit
    /// before a byte of the payload is read.
    pub fn payload_len(
        prefix: [u8; CONTACT_FRAME_LENGTH_BYTES],
    ) -> Result<usize, ContactFrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > CONTACT_FRAME_BYTES_MAX {
            return Err(ContactFrameError::TooLarge { found: len });
        }
        Ok(len)
    }

    /// Decodes a payload (the bytes after the prefix).
    pub fn decode_payload(payload: &[u8]) -> Result<Self, ContactFrameError> {
        if payload.len() > CONTACT_FRAME_BYTES_MAX {
            return Err(ContactFrameError::TooLarge {
                found: payload.len(),
            });
        }
        let frame: ContactFrame = serde_json::from_slice(payload)
            .map_err(|e| ContactFrameError::Malformed(e.to_string()))?;
        frame.check()?;
        Ok(frame)
    }
}

/// An established contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The one-to-one conversation with it.
    pub conversation: CommitId,
    /// Its display name, if it told us one.
    #[serde(default)]
    pub display_name: Option<String>,
    /// When it became a contact (seconds since the Unix epoch).
    pub since: i64,
}

/// Where a request we sent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingState {
    /// Sent (and re-sent whenever the account's devices connect), unanswered.
    Pending,
    /// The other side declined; no longer sent.
    Declined,
}

/// A request this account sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRequest {
    /// The one-to-one conversation it carries.
    pub conversation: CommitId,
    /// Where it stands.
    pub state: OutgoingState,
    /// When it was made (seconds since the Unix epoch).
    pub sent: i64,
}

/// A request this account received and has not answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingRequest {
    /// The one-to-one conversation it carries (we are invited there).
    pub conversation: CommitId,
    /// The requester's display name, as it claims it.
    #[serde(default)]
    pub display_name: String,
    /// When it arrived (seconds since the Unix epoch).
    pub received: i64,
}

/// What `add` should do for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddPlan {
    /// Create a one-to-one conversation, invite, and send a request.
    New,
    /// A request is already pending: send it again, create nothing.
    Resend(CommitId),
    /// They already asked us: adding them is accepting their request.
    AcceptIncoming(CommitId),
}

/// What became of a received request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Recorded (new, or replacing an older request from the same account).
    Recorded,
    /// Already recorded as it is; nothing changed.
    Known,
    /// Dropped: the sender is blocked.
    Blocked,
    /// Dropped: we declined this conversation before.
    Declined,
    /// Dropped: the sender is already a contact in this conversation.
    AlreadyContact,
    /// Dropped: [`CONTACT_REQUESTS_MAX`] requests are waiting.
    Full,
}

impl RequestOutcome {
    /// A bounded label for metrics of dropped requests.
    pub fn label(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Known => "known",
            Self::Blocked => "blocked",
            Self::Declined => "declined",
            Self::AlreadyContact => "already_contact",
            Self::Full => "full",
        }
    }
}

/// Why a contact operation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactBookError {
    #[error("an account cannot be its own contact")]
    SelfContact,
    #[error("account {0} is blocked; unblock it first")]
    Blocked(AccountId),
    #[error("account {0} is already a contact")]
    AlreadyContact(AccountId),
    #[error("no contact request from account {0}")]
    NoRequest(AccountId),
    #[error("the contact book holds its maximum of {0} entries")]
    Full(usize),
    #[error("account {0} is not blocked")]
    NotBlocked(AccountId),
}

/// Why a persisted book cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactBookFormatError {
    #[error("contact book of {found} bytes exceeds {CONTACT_BOOK_BYTES_MAX}")]
    TooLarge { found: usize },
    #[error("contact book is not valid JSON: {0}")]
    Malformed(String),
    #[error("contact book has version {found}; this starling reads up to {CONTACT_BOOK_VERSION}")]
    Version { found: u32 },
    #[error("contact book holds {found} {what}; the limit is {max}")]
    OverLimit {
        what: &'static str,
        found: usize,
        max: usize,
    },
}

/// One account's contacts, requests and blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactBook {
    #[serde(default)]
    contacts: BTreeMap<AccountId, Contact>,
    #[serde(default)]
    outgoing: BTreeMap<AccountId, OutgoingRequest>,
    #[serde(default)]
    incoming: BTreeMap<AccountId, IncomingRequest>,
    #[serde(default)]
    blocked: BTreeSet<AccountId>,
    /// Oldest first.
    #[serde(default)]
    declined: VecDeque<CommitId>,
}

/// The persisted document: a version around the book.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    #[serde(flatten)]
    book: ContactBook,
}

/// How an account appears in [`ContactBook::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// An established contact.
    Contact,
    /// We asked; no answer yet.
    Requested,
    /// We asked; they declined.
    Declined,
    /// Blocked by us.
    Blocked,
}

/// One row of [`ContactBook::entries`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactEntry {
    /// The account.
    pub account_id: AccountId,
    /// Where it stands.
    pub state: EntryState,
    /// The one-to-one conversation, if there is one.
    pub conversation: Option<CommitId>,
    /// Its display name, if known.
    pub display_name: Option<String>,
}

impl ContactBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    fn remember_declined(&mut self, conversation: CommitId) {
        if self.declined.contains(&conversation) {
            return;
        }
        if self.declined.len() >= DECLINED_REMEMBERED_MAX {
            self.declined.pop_front();
        }
        self.declined.push_back(conversation);
    }

    /// Whether `account` is blocked.
    pub fn is_blocked(&self, account: &AccountId) -> bool {
        self.blocked.contains(account)
    }

    /// Every blocked account.
    pub fn blocked(&self) -> &BTreeSet<AccountId> {
        &self.blocked
    }

    /// The established contact `account`, if it is one.
    pub fn contact(&self, account: &AccountId) -> Option<&Contact> {
        self.contacts.get(account)
    }

    /// The request we sent to `account`, if any.
    pub fn outgoing(&self, account: &AccountId) -> Option<&OutgoingRequest> {
        self.outgoing.get(account)
    }

    /// Accounts with a request from us still pending (to be re-sent).
    pub fn pending_outgoing(&self) -> impl Iterator<Item = (&AccountId, &OutgoingRequest)> {
        self.outgoing
            .iter()
            .filter(|(_, r)| r.state == OutgoingState::Pending)
    }

    /// The unanswered request from `account`, if any.
    pub fn incoming(&self, account: &AccountId) -> Option<&IncomingRequest> {
        self.incoming.get(account)
    }

    /// Every unanswered request, by requester.
    pub fn requests(&self) -> &BTreeMap<AccountId, IncomingRequest> {
        &self.incoming
    }

    /// What adding `account` (as `me`) should do, or why it may not.
    pub fn plan_add(
        &self,
        me: &AccountId,
        account: &AccountId,
    ) -> Result<AddPlan, ContactBookError> {
        if me == account {
            return Err(ContactBookError::SelfContact);
        }
        if self.is_blocked(account) {
            return Err(ContactBookError::Blocked(*account));
        }
        if self.contacts.contains_key(account) {
            return Err(ContactBookError::AlreadyContact(*account));
        }
        if let Some(request) = self.incoming.get(account) {
            return Ok(AddPlan::AcceptIncoming(request.conversation));
        }
        match self.outgoing.get(account) {
            Some(request) if request.state == OutgoingState::Pending => {
                Ok(AddPlan::Resend(request.conversation))
            }
            Some(_) => Ok(AddPlan::New),
            None if self.contacts.len() + self.outgoing.len() >= CONTACTS_MAX => {
                Err(ContactBookError::Full(CONTACTS_MAX))
            }
            None => Ok(AddPlan::New),
        }
    }

    /// Records a request we sent to `account` in `conversation` (after
    /// [`Self::plan_add`] said [`AddPlan::New`] and the conversation exists).
    pub fn record_outgoing(
        &mut self,
        account: AccountId,
        conversation: CommitId,
        now_secs: i64,
    ) -> Result<(), ContactBookError> {
        if !self.outgoing.contains_key(&account)
            && self.contacts.len() + self.outgoing.len() >= CONTACTS_MAX
        {
            return Err(ContactBookError::Full(CONTACTS_MAX));
        }
        self.outgoing.insert(
            account,
            OutgoingRequest {
                conversation,
                state: OutgoingState::Pending,
                sent: now_secs,
            },
        );
        Ok(())
    }

    /// A request arrived from `from` (as its certificate proves) for
    /// `conversation`.
    pub fn receive_request(
        &mut self,
        from: AccountId,
        conversation: CommitId,
        display_name: String,
        now_secs: i64,
    ) -> RequestOutcome {
        if self.is_blocked(&from) {
            return RequestOutcome::Blocked;
        }
        if self.declined.contains(&conversation) {
            return RequestOutcome::Declined;
        }
        if self
            .contacts
            .get(&from)
            .is_some_and(|c| c.conversation == conversation)
        {
            return RequestOutcome::AlreadyContact;
        }
        match self.incoming.get(&from) {
            Some(held) if held.conversation == conversation => RequestOutcome::Known,
            Some(_) => {
                // The requester started over (say, it lost its data): the
                // newest conversation is the one that can still be joined.
                self.incoming.insert(
                    from,
                    IncomingRequest {
                        conversation,
                        display_name,
                        received: now_secs,
                    },
                );
                RequestOutcome::Recorded
            }
            None if self.incoming.len() >= CONTACT_REQUESTS_MAX => RequestOutcome::Full,
            None => {
                self.incoming.insert(
                    from,
                    IncomingRequest {
                        conversation,
                        display_name,
                        received: now_secs,
                    },
                );
                RequestOutcome::Recorded
            }
        }
    }

    /// Makes the requester `account` a contact, once we joined its conversation.
    pub fn accept(
        &mut self,
        account: &AccountId,
        now_secs: i64,
    ) -> Result<Contact, ContactBookError> {
        let request = self
            .incoming
            .remove(account)
            .ok_or(ContactBookError::NoRequest(*account))?;
        // Our own request to them, if we had one, is answered by this.
        self.outgoing.remove(account);
        let contact = Contact {
            conversation: request.conversation,
            display_name: Some(request.display_name).filter(|n| !n.is_empty()),
            since: now_secs,
        };
        self.contacts.insert(*account, contact.clone());
        Ok(contact)
    }

    /// Drops the request from `account`; its conversation is remembered as
    /// declined. Returns that conversation.
    pub fn decline(&mut self, account: &AccountId) -> Result<CommitId, ContactBookError> {
        let request = self
            .incoming
            .remove(account)
            .ok_or(ContactBookError::NoRequest(*account))?;
        self.remember_declined(request.conversation);
        Ok(request.conversation)
    }

    /// `from` declined our request in `conversation`. Returns whether that
    /// changed anything (a decline for another conversation is stale).
    pub fn receive_decline(&mut self, from: &AccountId, conversation: &CommitId) -> bool {
        match self.outgoing.get_mut(from) {
            Some(request)
                if request.conversation == *conversation
                    && request.state == OutgoingState::Pending =>
            {
                request.state = OutgoingState::Declined;
                true
            }
            _ => false,
        }
    }

    /// `account` joined the conversation of our request: it is a contact now.
    /// Returns whether that changed anything.
    pub fn peer_joined(
        &mut self,
        account: &AccountId,
        conversation: &CommitId,
        now_secs: i64,
    ) -> bool {
        let matches = self
            .outgoing
            .get(account)
            .is_some_and(|r| r.conversation == *conversation);
        if !matches || self.contacts.contains_key(account) {
            return false;
        }
        self.outgoing.remove(account);
        self.contacts.insert(
            *account,
            Contact {
                conversation: *conversation,
                display_name: None,
                since: now_secs,
            },
        );
        true
    }

    /// Blocks `account`: its pending request is dropped (and its conversation
    /// remembered as declined), ours to it withdrawn. A contact stays in the
    /// book, shown as blocked, and comes back on unblock. Returns the
    /// conversation of a dropped incoming request, if any.
    pub fn block(&mut self, account: AccountId) -> Result<Option<CommitId>, ContactBookError> {
        if !self.blocked.contains(&account) && self.blocked.len() >= BLOCKED_ACCOUNTS_MAX {
            return Err(ContactBookError::Full(BLOCKED_ACCOUNTS_MAX));
        }
        self.blocked.insert(account);
        self.outgoing.remove(&account);
        let dropped = self.incoming.remove(&account).map(|r| r.conversation);
        if let Some(conversation) = dropped {
            self.remember_declined(conversation);
        }
        Ok(dropped)
    }

    /// Unblocks `account`.
    pub fn unblock(&mut self, account: &AccountId) -> Result<(), ContactBookError> {
        if self.blocked.remove(account) {
            Ok(())
        } else {
            Err(ContactBookError::NotBlocked(*account))
        }
    }

    /// Every account the book knows, with where it stands (blocked first
    /// wins over contact), ordered by account id.
    pub fn entries(&self) -> Vec<ContactEntry> {
        let mut rows: BTreeMap<AccountId, ContactEntry> = BTreeMap::new();
        for (account, request) in &self.outgoing {
            rows.insert(
                *account,
                ContactEntry {
                    account_id: *account,
                    state: match request.state {
                        OutgoingState::Pending => EntryState::Requested,
                        OutgoingState::Declined => EntryState::Declined,
                    },
                    conversation: Some(request.conversation),
                    display_name: None,
                },
            );
        }
        for (account, contact) in &self.contacts {
            rows.insert(
                *account,
                ContactEntry {
                    account_id: *account,
                    state: EntryState::Contact,
                    conversation: Some(contact.conversation),
                    display_name: contact.display_name.clone(),
                },
            );
        }
        for account in &self.blocked {
            let row = rows.entry(*account).or_insert(ContactEntry {
                account_id: *account,
                state: EntryState::Blocked,
                conversation: None,
                display_name: None,
            });
            row.state = EntryState::Blocked;
        }
        rows.into_values().collect()
    }

    /// The persisted JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let persisted = Persisted {
            version: CONTACT_BOOK_VERSION,
            book: self.clone(),
        };
        serde_json::to_vec_pretty(&persisted).expect("a contact book always serializes")
    }

    /// Reads a persisted document, checking its version and every bound.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContactBookFormatError> {
        if bytes.len() > CONTACT_BOOK_BYTES_MAX {
            return Err(ContactBookFormatError::TooLarge { found: bytes.len() });
        }
        let persisted: Persisted = serde_json::from_slice(bytes)
            .map_err(|e| ContactBookFormatError::Malformed(e.to_string()))?;
        if persisted.version != CONTACT_BOOK_VERSION {
            return Err(ContactBookFormatError::Version {
                found: persisted.version,
            });
        }
        let book = persisted.book;
        let over = |what, found, max| {
            (found > max).then_some(ContactBookFormatError::OverLimit { what, found, max })
        };
        let checks = [
            over(
                "contacts and outgoing requests",
                book.contacts.len() + book.outgoing.len(),
                CONTACTS_MAX,
            ),
            over(
                "incoming requests",
                book.incoming.len(),
                CONTACT_REQUESTS_MAX,
            ),
            over("blocked accounts", book.blocked.len(), BLOCKED_ACCOUNTS_MAX),
            over(
                "declined conversations",
                book.declined.len(),
                DECLINED_REMEMBERED_MAX,
            ),
        ];
        if let Some(error) = checks.into_iter().flatten().next() {
            return Err(error);
        }
        let long_name = book
            .incoming
            .values()
            .map(|r| r.display_name.len())
            .chain(
                book.contacts
                    .values()
                    .filter_map(|c| c.display_name.as_ref().map(String::len)),
            )
            .find(|len| *len > DISPLAY_NAME_BYTES_MAX);
        if let Some(found) = long_name {
            return Err(ContactBookFormatError::OverLimit {
                what: "bytes in a display name",
                found,
                max: DISPLAY_NAME_BYTES_MAX,
            });
        }
        Ok(book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn account(byte: u8) -> AccountId {
        AccountId::from_bytes([byte; 32])
    }

    fn conversation(byte: u8) -> CommitId {
        CommitId::from_bytes([byte; 20])
    }

    fn roundtrip(frame: &ContactFrame) -> ContactFrame {
        let bytes = frame.encode().unwrap();
        let len = ContactFrame::payload_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        ContactFrame::decode_payload(&bytes[4..]).unwrap()
    }

    #[test]
    fn frames_roundtrip_in_their_documented_form() {
        let request = ContactFrame::Request {
            display_name: "Alice".into(),
        };
        assert_eq!(roundtrip(&request), request);
        assert_eq!(roundtrip(&ContactFrame::Decline), ContactFrame::Decline);
        assert_eq!(
            &request.encode().unwrap()[4..],
            br#"{"type":"request","display_name":"Alice"}"#
        );
        assert_eq!(
            &ContactFrame::Decline.encode().unwrap()[4..],
            br#"{"type":"decline"}"#
        );
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        // Table: payload, whether it is malformed (false: it decodes).
        let cases: [(&[u8], bool); 8] = [
            (b"", true),
            (b"{}", true),
            (b"{\"type\":\"befriend\"}", true),
            (b"{\"type\":\"request\",\"display_name\":7}", true),
            // Unknown fields are ignored: a newer sender may add some.
            (b"{\"type\":\"decline\",\"extra\":1}", false),
            (b"\xff\xfe", true),
            (b"[]", true),
            (
                b"{\"type\":\"request\",\"display_name\":\"x\"} trailing",
                true,
            ),
        ];
        for (payload, malformed) in cases {
            let result = ContactFrame::decode_payload(payload);
            assert_eq!(
                matches!(result, Err(ContactFrameError::Malformed(_))),
                malformed,
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        let long = ContactFrame::Request {
            display_name: "x".repeat(DISPLAY_NAME_BYTES_MAX + 1),
        };
        assert!(matches!(
            long.encode(),
            Err(ContactFrameError::NameTooLong { .. })
        ));
        let json = serde_json::to_vec(&long).unwrap();
        assert!(matches!(
            ContactFrame::decode_payload(&json),
            Err(ContactFrameError::NameTooLong { .. })
        ));
        assert!(matches!(
            ContactFrame::payload_len(((CONTACT_FRAME_BYTES_MAX + 1) as u32).to_be_bytes()),
            Err(ContactFrameError::TooLarge { .. })
        ));
        assert!(matches!(
            ContactFrame::decode_payload(&vec![b' '; CONTACT_FRAME_BYTES_MAX + 1]),
            Err(ContactFrameError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(payload in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(frame) = ContactFrame::decode_payload(&payload) {
                // Whatever decodes re-encodes within the bounds.
                let bytes = frame.encode().unwrap();
                prop_assert!(bytes.len() <= CONTACT_FRAME_LENGTH_BYTES + CONTACT_FRAME_BYTES_MAX);
            }
        }

        #[test]
        fn requests_roundtrip(name in "\\PC{0,64}") {
            prop_assume!(name.len() <= DISPLAY_NAME_BYTES_MAX);
            let frame = ContactFrame::Request { display_name: name };
            prop_assert_eq!(roundtrip(&frame), frame);
        }
    }

    #[test]
    fn a_request_accepted_makes_a_contact_on_both_books() {
        let (alice, bob) = (account(1), account(2));
        let x = conversation(9);
        let mut alices = ContactBook::new();
        let mut bobs = ContactBook::new();
        assert_eq!(alices.plan_add(&alice, &bob), Ok(AddPlan::New));
        alices.record_outgoing(bob, x, 10).unwrap();
        assert_eq!(alices.plan_add(&alice, &bob), Ok(AddPlan::Resend(x)));
        assert_eq!(
            bobs.receive_request(alice, x, "Alice".into(), 11),
            RequestOutcome::Recorded
        );
        assert_eq!(
            bobs.receive_request(alice, x, "Alice".into(), 12),
            RequestOutcome::Known
        );
        let contact = bobs.accept(&alice, 13).unwrap();
        assert_eq!(contact.conversation, x);
        assert_eq!(contact.display_name.as_deref(), Some("Alice"));
        assert!(alices.peer_joined(&bob, &x, 14));
        assert!(!alices.peer_joined(&bob, &x, 15));
        assert_eq!(alices.entries()[0].state, EntryState::Contact);
        assert_eq!(bobs.entries()[0].state, EntryState::Contact);
        // A re-sent request for the same conversation changes nothing.
        assert_eq!(
            bobs.receive_request(alice, x, "Alice".into(), 16),
            RequestOutcome::AlreadyContact
        );
        assert_eq!(
            alices.plan_add(&alice, &bob),
            Err(ContactBookError::AlreadyContact(bob))
        );
    }

    #[test]
    fn decline_and_block_rules() {
        let (me, alice, carol) = (account(1), account(2), account(3));
        let (x, y) = (conversation(1), conversation(2));
        let mut book = ContactBook::new();
        assert_eq!(book.plan_add(&me, &me), Err(ContactBookError::SelfContact));
        book.receive_request(alice, x, "Alice".into(), 1);
        assert_eq!(book.plan_add(&me, &alice), Ok(AddPlan::AcceptIncoming(x)));
        assert_eq!(book.decline(&alice), Ok(x));
        assert_eq!(
            book.decline(&alice),
            Err(ContactBookError::NoRequest(alice))
        );
        // The declined conversation stays declined; a new one is a new request.
        assert_eq!(
            book.receive_request(alice, x, String::new(), 2),
            RequestOutcome::Declined
        );
        assert_eq!(
            book.receive_request(alice, y, String::new(), 3),
            RequestOutcome::Recorded
        );
        assert_eq!(book.block(alice), Ok(Some(y)));
        assert!(book.is_blocked(&alice));
        assert!(book.requests().is_empty());
        assert_eq!(
            book.receive_request(alice, conversation(3), String::new(), 4),
            RequestOutcome::Blocked
        );
        assert_eq!(
            book.plan_add(&me, &alice),
            Err(ContactBookError::Blocked(alice))
        );
        assert_eq!(book.entries()[0].state, EntryState::Blocked);
        book.unblock(&alice).unwrap();
        assert_eq!(
            book.unblock(&alice),
            Err(ContactBookError::NotBlocked(alice))
        );
        // Our own request, declined by the other side.
        book.record_outgoing(carol, x, 5).unwrap();
        assert!(!book.receive_decline(&carol, &y), "stale decline");
        assert!(book.receive_decline(&carol, &x));
        assert_eq!(book.pending_outgoing().count(), 0);
        assert_eq!(book.plan_add(&me, &carol), Ok(AddPlan::New));
    }

    #[test]
    fn every_collection_is_bounded() {
        let me = account(0);
        let mut book = ContactBook::new();
        for i in 0..CONTACT_REQUESTS_MAX {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let outcome = book.receive_request(
                AccountId::from_bytes(bytes),
                conversation(1),
                String::new(),
                0,
            );
            assert_eq!(outcome, RequestOutcome::Recorded);
        }
        assert_eq!(
            book.receive_request(account(0xff), conversation(1), String::new(), 0),
            RequestOutcome::Full
        );
        for i in 0..CONTACTS_MAX {
            let mut bytes = [0xeeu8; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
            book.record_outgoing(AccountId::from_bytes(bytes), conversation(2), 0)
                .unwrap();
        }
        assert_eq!(
            book.plan_add(&me, &account(0xfe)),
            Err(ContactBookError::Full(CONTACTS_MAX))
        );
        for i in 0..DECLINED_REMEMBERED_MAX + 10 {
            let mut bytes = [0u8; 20];
            bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
            book.remember_declined(CommitId::from_bytes(bytes));
        }
        assert_eq!(book.declined.len(), DECLINED_REMEMBERED_MAX);
    }

    #[test]
    fn the_persisted_book_roundtrips_and_refuses_bad_documents() {
        let mut book = ContactBook::new();
        book.record_outgoing(account(2), conversation(1), 5)
            .unwrap();
        book.receive_request(account(3), conversation(2), "Carol".into(), 6);
        book.block(account(4)).unwrap();
        let bytes = book.to_json();
        assert_eq!(ContactBook::from_json(&bytes), Ok(book));
        let cases: [(&[u8], &str); 4] = [
            (b"not json", "malformed"),
            (br#"{"version":2}"#, "version"),
            (br#"{"version":1,"surprise":true}"#, "malformed"),
            (br#"{"version":1,"blocked":["zz"]}"#, "malformed"),
        ];
        for (bytes, kind) in cases {
            let error = ContactBook::from_json(bytes).unwrap_err();
            let found = match error {
                ContactBookFormatError::Malformed(_) => "malformed",
                ContactBookFormatError::Version { .. } => "version",
                _ => "other",
            };
            assert_eq!(found, kind, "{}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            ContactBook::from_json(br#"{"version":1}"#),
            Ok(ContactBook::new())
        );
    }
}
