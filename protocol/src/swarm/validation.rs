//! Validation: may this commit enter the conversation's history?
//!
//! Pure: the store hands over each candidate as values (id, armored
//! signature, signed payload, and the files its tree changes relative to its
//! first parent) plus the accepted state at its parents; the rules answer with
//! an [`Accepted`] (author, body, resulting state) or a typed [`Rejection`].
//! [`validate_batch`] runs a fetch's candidates oldest-first: a rejected
//! commit rejects its descendants on that branch and nothing else.
//!
//! Every commit changes **exactly** the files its type implies at its parent
//! state, no more and no fewer (see [`expected_changes`]); that one rule is
//! what stops a member from touching another member's files, a message
//! commit from carrying files, and a merge from adding anything of its own.
//!
//! No rule reads the validating device's clock, and none can: nothing here
//! takes the time. A verdict is a function of the commits alone, so every
//! replica holding the same commits reaches the same verdicts, whatever its
//! clock says. The one rule about time compares a commit's committer time
//! (the author's claim) with the validity windows of its signer's
//! certificates, both read from the history; an honest author dates its
//! commits inside them ([`authored_time_secs`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::body::{parse_body, Body, BodyError, BodyKind, MemberAction, Mode, VoteAction};
use super::commit::{
    parse_payload, verify_signature_with, CommitFormatError, CommitPayload, KeyCache,
};
use super::ids::CommitId;
use super::limits::{COMMIT_TIME_LEAD_SECS_MAX, FETCH_COMMITS_MAX, PARENTS_MAX};
use super::state::{
    admin_path, banned_device_path, banned_member_path, crl_path, device_path, invited_path,
    member_path, vote_path, DeviceStanding, Files, StateError, SwarmState, MODE_PATH, PROFILE_PATH,
};
use crate::cert::{AccountCert, DeviceCert};
use crate::chain::{ChainError, VerifiedDevice};
use crate::id::{AccountId, DeviceId};

/// A tree change relative to the first parent: new content, or `None` for a deletion.
pub type Changes = BTreeMap<String, Option<Vec<u8>>>;

/// A commit as the store parsed it, before judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The commit's id.
    pub id: CommitId,
    /// The armored sshsig from the `gpgsig` header, if any.
    pub signature: Option<Vec<u8>>,
    /// The commit object without its `gpgsig` header (what was signed).
    pub payload: Vec<u8>,
    /// Files whose content differs from the first parent's tree (for a root: all files).
    pub changes: Changes,
}

/// An accepted commit as later validation needs it.
#[derive(Debug, Clone)]
pub struct ParentView {
    /// Its id.
    pub id: CommitId,
    /// The state its tree describes.
    pub state: Arc<SwarmState>,
    /// Its generation.
    pub generation: u64,
}

/// Inputs that are not part of the commit.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The conversation id (its initial commit), or `None` when validating that commit.
    pub conversation: Option<CommitId>,
    /// For a commit whose parents' trees differ: the state of their merge
    /// ([`super::merge::merge_parents`]), which the commit builds on.
    pub merged: Option<&'a Arc<SwarmState>>,
}

/// A commit that passed every check.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its id.
    pub id: CommitId,
    /// Parents, in header order.
    pub parents: Vec<CommitId>,
    /// The device that signed it and the account it speaks for.
    pub author: VerifiedDevice,
    /// Its body.
    pub body: Body,
    /// Committer time, seconds since the Unix epoch.
    pub time_secs: i64,
    /// The state its tree describes.
    pub state: Arc<SwarmState>,
}

impl Accepted {
    /// What later commits need of this one.
    pub fn view(&self) -> ParentView {
        ParentView {
            id: self.id,
            state: self.state.clone(),
            generation: self.body.generation(),
        }
    }
}

/// Why a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("commit {0}: {1}")]
    Format(CommitId, CommitFormatError),
    #[error("commit {0}: {1}")]
    Body(CommitId, BodyError),
    #[error("commit {0} names parents other than those it was validated against")]
    ParentMismatch(CommitId),
    #[error("commit {commit}: parent {parent} is neither accepted nor in this fetch")]
    MissingParent { commit: CommitId, parent: CommitId },
    #[error("commit {commit} descends from rejected commit {rejected}")]
    DescendantOfRejected {
        commit: CommitId,
        rejected: CommitId,
    },
    #[error(
        "commit {0} is a second root: history was rewritten or belongs to another conversation"
    )]
    ForeignRoot(CommitId),
    #[error("commit {commit} has generation {found}; its parents imply {expected}")]
    WrongGeneration {
        commit: CommitId,
        expected: u64,
        found: u64,
    },
    #[error("commit {commit} is signed by device {device}, which is not in the conversation")]
    UnknownDevice { commit: CommitId, device: DeviceId },
    #[error("commit {commit} is signed by banned device {device}")]
    BannedDevice { commit: CommitId, device: DeviceId },
    #[error("commit {commit} is by account {account}, which is not a member")]
    NotAMember {
        commit: CommitId,
        account: AccountId,
    },
    #[error("commit {commit} is by banned account {account}")]
    BannedAuthor {
        commit: CommitId,
        account: AccountId,
    },
    #[error("commit {commit}: the signing device's chain fails: {error}")]
    Chain { commit: CommitId, error: ChainError },
    #[error("commit {commit} is dated outside the validity of device {device}'s certificate or its account's")]
    DeviceNotCurrent { commit: CommitId, device: DeviceId },
    #[error("commit {commit}: {author} may not {what}")]
    NotAllowed {
        commit: CommitId,
        author: AccountId,
        what: String,
    },
    #[error("commit {commit} changes files its type does not allow (extra: {extra:?}; missing: {missing:?})")]
    UnexpectedChanges {
        commit: CommitId,
        extra: Vec<String>,
        missing: Vec<String>,
    },
    #[error("commit {0}: resulting tree is invalid: {1}")]
    BadTree(CommitId, StateError),
    #[error("commit {0}: only the initial commit has no parents, and a merge has at least two")]
    MergeShape(CommitId),
    #[error(
        "commit {0}: parents must be distinct, in ascending id order, and at most {PARENTS_MAX}"
    )]
    ParentOrder(CommitId),
    #[error("merge {0}'s tree is not the documented merge of its parents")]
    MergeTreeMismatch(CommitId),
    #[error("commit {0}: the merged state of its parents was not supplied")]
    NoMergeBase(CommitId),
    #[error("fetch brings {found} commits; the limit is {max}")]
    TooManyCommits { found: usize, max: usize },
}

impl Rejection {
    /// The commit refused, when the rejection names one.
    pub fn commit(&self) -> Option<CommitId> {
        rejected_id(self)
    }

    /// A short stable name for metrics (`rejected_commits_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Format(..) => "format",
            Rejection::Body(..) => "body",
            Rejection::ParentMismatch(_)
            | Rejection::MissingParent { .. }
            | Rejection::ParentOrder(_) => "parents",
            Rejection::DescendantOfRejected { .. } => "descendant_of_rejected",
            Rejection::ForeignRoot(_) => "history_rewrite",
            Rejection::WrongGeneration { .. } => "generation",
            Rejection::UnknownDevice { .. } => "unknown_device",
            Rejection::BannedDevice { .. } | Rejection::BannedAuthor { .. } => "banned",
            Rejection::NotAMember { .. } => "not_a_member",
            Rejection::Chain { .. } => "chain",
            Rejection::DeviceNotCurrent { .. } => "time",
            Rejection::NotAllowed { .. } => "not_allowed",
            Rejection::UnexpectedChanges { .. } => "unexpected_changes",
            Rejection::BadTree(..) => "bad_tree",
            Rejection::MergeShape(_)
            | Rejection::MergeTreeMismatch(_)
            | Rejection::NoMergeBase(_) => "merge",
            Rejection::TooManyCommits { .. } => "too_many_commits",
        }
    }
}

/// Every name [`Rejection::reason`] gives, for a reader that meets one in
/// a peer's report and must keep its labels to a fixed set.
pub const REJECTION_REASONS: [&str; 16] = [
    "format",
    "body",
    "parents",
    "descendant_of_rejected",
    "history_rewrite",
    "generation",
    "time",
    "unknown_device",
    "banned",
    "not_a_member",
    "chain",
    "not_allowed",
    "unexpected_changes",
    "bad_tree",
    "merge",
    "too_many_commits",
];

/// What a commit of some type must do to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The path must be deleted.
    Delete,
    /// The path must be written with exactly these bytes.
    Exact(Vec<u8>),
    /// The path must be written (content checked by building the new state).
    Any,
}

/// Parses the payload and checks the signature: cheap facts needed before the parents.
pub fn parse_candidate(candidate: &Candidate) -> Result<CommitPayload, Rejection> {
    let id = candidate.id;
    parse_payload(&candidate.payload).map_err(|e| Rejection::Format(id, e))
}

fn not_allowed(commit: CommitId, author: AccountId, what: impl Into<String>) -> Rejection {
    Rejection::NotAllowed {
        commit,
        author,
        what: what.into(),
    }
}

/// Validates one candidate against its parents (in header order).
pub fn validate_commit(
    candidate: &Candidate,
    parents: &[ParentView],
    ctx: &Context<'_>,
) -> Result<Accepted, Rejection> {
    let id = candidate.id;
    // Shape first: a malformed payload is reported as such, not as a bad signature.
    let payload = parse_candidate(candidate)?;
    let device = check_signature(candidate)
        .result
        .map_err(|e| Rejection::Format(id, e))?;
    validate_signed_by(candidate, payload, device, parents, ctx)
}

/// The outcome of checking one candidate's signature: the device whose key
/// made it, or why it is unacceptable. Only [`check_signature`] makes one,
/// and it names its commit, so a result cannot be applied to another commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    id: CommitId,
    result: Result<DeviceId, CommitFormatError>,
}

impl SignatureCheck {
    /// The commit whose signature was checked.
    pub fn commit(&self) -> CommitId {
        self.id
    }

    /// The signing device, or why the signature is unacceptable.
    pub fn result(&self) -> &Result<DeviceId, CommitFormatError> {
        &self.result
    }
}

/// Checks a candidate's signature (present, well-formed, `verify_strict`
/// over its payload: the one costly step of validation). It needs no
/// history, so a caller may check a batch's signatures in any order, or on
/// several threads, before [`validate_batch_checked`] applies the rules
/// that do.
pub fn check_signature(candidate: &Candidate) -> SignatureCheck {
    check_signature_with(candidate, &mut KeyCache::default())
}

/// [`check_signature`], decoding signers' keys through `keys` (one cache
/// per batch, or per thread checking part of one).
pub fn check_signature_with(candidate: &Candidate, keys: &mut KeyCache) -> SignatureCheck {
    let result = match candidate.signature.as_deref() {
        None => Err(CommitFormatError::Unsigned),
        Some(armored) => verify_signature_with(armored, &candidate.payload, keys)
            .map(|key| DeviceId::of_key(&key)),
    };
    SignatureCheck {
        id: candidate.id,
        result,
    }
}

/// Validates a commit this device has just signed, with every rule except
/// the signature check: `device` must be the device whose key signed it (the
/// store checks once that its key matches its certificate, and ed25519
/// signing is deterministic). Fetched commits always go through
/// [`validate_commit`].
pub fn validate_authored(
    candidate: &Candidate,
    device: DeviceId,
    parents: &[ParentView],
    ctx: &Context<'_>,
) -> Result<Accepted, Rejection> {
    if candidate.signature.is_none() {
        return Err(Rejection::Format(candidate.id, CommitFormatError::Unsigned));
    }
    let payload = parse_candidate(candidate)?;
    validate_signed_by(candidate, payload, device, parents, ctx)
}

fn validate_signed_by(
    candidate: &Candidate,
    payload: CommitPayload,
    device: DeviceId,
    parents: &[ParentView],
    ctx: &Context<'_>,
) -> Result<Accepted, Rejection> {
    let id = candidate.id;
    if payload.parents.len() != parents.len()
        || payload.parents.iter().zip(parents).any(|(a, b)| *a != b.id)
    {
        return Err(Rejection::ParentMismatch(id));
    }
    let body = parse_body(&payload.message).map_err(|e| Rejection::Body(id, e))?;
    let expected_generation = parents
        .iter()
        .map(|p| p.generation.saturating_add(1))
        .max()
        .unwrap_or(0);
    if body.generation() != expected_generation {
        return Err(Rejection::WrongGeneration {
            commit: id,
            expected: expected_generation,
            found: body.generation(),
        });
    }
    if parents.len() > PARENTS_MAX || parents.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(Rejection::ParentOrder(id));
    }
    let is_merge_type = matches!(body.kind(), Some(BodyKind::Merge));
    let (author, state) = match parents {
        [] => validate_root(candidate, &body, device, ctx)?,
        [_] if is_merge_type => return Err(Rejection::MergeShape(id)),
        [first, ..] => {
            let base = merged_parents(id, parents, ctx)?;
            if is_merge_type {
                validate_merge(candidate, device, parents, first, base)?
            } else {
                // Changes arrive relative to the first parent; the rules
                // judge them relative to the merge the commit builds on.
                let own = if Arc::ptr_eq(base, &first.state) {
                    None
                } else {
                    let actual = apply(first.state.files(), &candidate.changes);
                    Some(diff(base.files(), &actual))
                };
                let changes = own.as_ref().unwrap_or(&candidate.changes);
                validate_single(id, changes, &body, device, base)?
            }
        }
    };
    let mut states: Vec<&SwarmState> = parents.iter().map(|p| &*p.state).collect();
    states.push(&state);
    check_device_time(id, &states, device, payload.time_secs)?;
    Ok(Accepted {
        id,
        parents: payload.parents,
        author,
        body,
        time_secs: payload.time_secs,
        state,
    })
}

/// The committer time an author at `now_secs` (its clock) gives a commit
/// with parents dated `parents_secs`, signed by `device` of `account`.
///
/// - No earlier than its parents, as long as they are at most
///   [`COMMIT_TIME_LEAD_SECS_MAX`] ahead of the author's clock: along an
///   honest history committer times never decrease, so a reply is never
///   shown as older than what it answers, even when the clocks of its
///   authors disagree by up to that much. A parent dated further ahead (a
///   clock days fast, or a member dating messages years ahead) is followed
///   only that far, so nobody can drag a conversation's times further.
/// - Never before either certificate's `notBefore`: rule 9 refuses such a
///   commit, and a device whose clock runs behind the one its certificates
///   were issued with would otherwise write commits every replica refuses.
///
/// Parents are never followed past either `notAfter`; a clock itself past
/// it is kept, and the author's own validation then refuses the commit
/// ([`Rejection::DeviceNotCurrent`]): the certificate has expired by the
/// author's clock, and nothing is written that peers would refuse.
pub fn authored_time_secs(
    now_secs: i64,
    parents_secs: impl IntoIterator<Item = i64>,
    device: &DeviceCert,
    account: &AccountCert,
) -> i64 {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let not_before = secs(device.not_before()).max(secs(account.not_before()));
    let not_after = secs(device.not_after()).min(secs(account.not_after()));
    let followed = parents_secs.into_iter().max().map_or(i64::MIN, |parents| {
        parents
            .min(now_secs.saturating_add(COMMIT_TIME_LEAD_SECS_MAX))
            .min(not_after)
    });
    now_secs.max(followed).max(not_before)
}

/// Checks the commit's time against the validity windows of the signer's
/// certificates, found in the first of `states` (parents, then the commit's
/// own state for a root or a commit adding its own device) that holds them.
fn check_device_time(
    commit: CommitId,
    states: &[&SwarmState],
    device: DeviceId,
    time_secs: i64,
) -> Result<(), Rejection> {
    let Ok(secs) = u64::try_from(time_secs) else {
        return Err(Rejection::DeviceNotCurrent { commit, device });
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let windows = states.iter().find_map(|s| {
        let (cert, standing) = s.device(&device)?;
        let DeviceStanding::Valid { account } = standing else {
            return None;
        };
        let account = s.account_cert(account)?;
        Some([
            (cert.not_before(), cert.not_after()),
            (account.not_before(), account.not_after()),
        ])
    });
    let Some(windows) = windows else {
        return Err(Rejection::UnknownDevice { commit, device });
    };
    if windows.iter().any(|(from, to)| at < *from || at > *to) {
        return Err(Rejection::DeviceNotCurrent { commit, device });
    }
    Ok(())
}

/// `base` with `changes` applied.
pub fn apply_changes(base: &Files, changes: &Changes) -> Files {
    apply(base, changes)
}

fn apply(base: &Files, changes: &Changes) -> Files {
    let mut files = base.clone();
    for (path, change) in changes {
        match change {
            Some(content) => {
                files.insert(path.clone(), content.clone());
            }
            None => {
                files.remove(path);
            }
        }
    }
    files
}

/// The state of `files`, a commit's tree, reusing what its base state
/// `like` already checked (see [`SwarmState::from_shared_like`]).
fn build_state_like(
    id: CommitId,
    files: Files,
    like: &SwarmState,
) -> Result<Arc<SwarmState>, Rejection> {
    SwarmState::from_shared_like(Arc::new(files), like)
        .map(Arc::new)
        .map_err(|e| Rejection::BadTree(id, e))
}

fn build_state(id: CommitId, files: Files) -> Result<Arc<SwarmState>, Rejection> {
    SwarmState::from_files(files)
        .map(Arc::new)
        .map_err(|e| Rejection::BadTree(id, e))
}

fn standing_author(
    commit: CommitId,
    state: &SwarmState,
    device: DeviceId,
) -> Result<AccountId, Rejection> {
    match state.device(&device) {
        Some((_, DeviceStanding::Valid { account })) => Ok(*account),
        Some((_, DeviceStanding::Invalid(error))) => Err(Rejection::Chain {
            commit,
            error: error.clone(),
        }),
        Some((_, DeviceStanding::NotAMember(account))) if state.is_banned(account) => {
            Err(Rejection::BannedAuthor {
                commit,
                account: *account,
            })
        }
        Some((_, DeviceStanding::NotAMember(account))) => Err(Rejection::NotAMember {
            commit,
            account: *account,
        }),
        None if state.is_banned_device(&device) => Err(Rejection::BannedDevice { commit, device }),
        None => Err(Rejection::UnknownDevice { commit, device }),
    }
}

fn validate_root(
    candidate: &Candidate,
    body: &Body,
    device: DeviceId,
    ctx: &Context<'_>,
) -> Result<(VerifiedDevice, Arc<SwarmState>), Rejection> {
    let id = candidate.id;
    if ctx.conversation.is_some_and(|c| c != id) {
        return Err(Rejection::ForeignRoot(id));
    }
    let Some(BodyKind::Initial { mode, .. }) = body.kind() else {
        return Err(Rejection::MergeShape(id));
    };
    let mut files = Files::new();
    for (path, change) in &candidate.changes {
        let Some(content) = change else {
            return Err(Rejection::UnexpectedChanges {
                commit: id,
                extra: vec![path.clone()],
                missing: vec![],
            });
        };
        files.insert(path.clone(), content.clone());
    }
    let state = build_state(id, files)?;
    let account = standing_author(id, &state, device)?;
    let mut expected = BTreeMap::new();
    expected.insert(
        MODE_PATH.to_owned(),
        Expect::Exact(mode.as_str().as_bytes().to_vec()),
    );
    expected.insert(admin_path(&account), Expect::Any);
    expected.insert(device_path(&device), Expect::Any);
    compare_changes(id, &expected, &candidate.changes)?;
    Ok((
        VerifiedDevice {
            account_id: account,
            device_id: device,
        },
        state,
    ))
}

/// The state a commit with `parents` builds on: the parent's with one, and
/// with several the first's when all their trees are equal, else the merged
/// state the caller computed ([`Context::merged`]).
fn merged_parents<'a>(
    id: CommitId,
    parents: &'a [ParentView],
    ctx: &Context<'a>,
) -> Result<&'a Arc<SwarmState>, Rejection> {
    let first = &parents[0];
    let same = parents[1..]
        .iter()
        .all(|p| Arc::ptr_eq(&p.state, &first.state) || p.state.files() == first.state.files());
    if same {
        Ok(&first.state)
    } else {
        ctx.merged.ok_or(Rejection::NoMergeBase(id))
    }
}

/// The changes that turn `before` into `after`.
pub fn diff(before: &Files, after: &Files) -> Changes {
    let mut changes = Changes::new();
    for (path, content) in after {
        if before.get(path) != Some(content) {
            changes.insert(path.clone(), Some(content.clone()));
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            changes.insert(path.clone(), None);
        }
    }
    changes
}

fn validate_merge(
    candidate: &Candidate,
    device: DeviceId,
    parents: &[ParentView],
    first: &ParentView,
    merged: &Arc<SwarmState>,
) -> Result<(VerifiedDevice, Arc<SwarmState>), Rejection> {
    let id = candidate.id;
    // A merge brings no content, so the right to merge follows the right to
    // write on any of its branches.
    let mut account = Err(Rejection::UnknownDevice { commit: id, device });
    for parent in parents {
        account = standing_author(id, &parent.state, device);
        if account.is_ok() {
            break;
        }
    }
    let account = account?;
    let actual = apply(first.state.files(), &candidate.changes);
    if actual != **merged.files() {
        return Err(Rejection::MergeTreeMismatch(id));
    }
    Ok((
        VerifiedDevice {
            account_id: account,
            device_id: device,
        },
        merged.clone(),
    ))
}

fn validate_single(
    id: CommitId,
    changes: &Changes,
    body: &Body,
    device: DeviceId,
    state: &Arc<SwarmState>,
) -> Result<(VerifiedDevice, Arc<SwarmState>), Rejection> {
    // A join or device commit brings the signer's own certificate; the author
    // is resolved from the state *after* it, and checked against the rules
    // on the state before it.
    let self_adding = matches!(
        body.kind(),
        Some(
            BodyKind::Device
                | BodyKind::Member {
                    action: MemberAction::Join,
                    ..
                }
        )
    ) && state.device(&device).is_none()
        && !state.is_banned_device(&device);
    let (account, new_state) = if self_adding {
        let new_state = build_state_like(id, apply(state.files(), changes), state)?;
        let account = standing_author(id, &new_state, device)?;
        if state.is_banned(&account) {
            return Err(Rejection::BannedAuthor {
                commit: id,
                account,
            });
        }
        (account, Some(new_state))
    } else {
        (standing_author(id, state, device)?, None)
    };
    let expected = expected_changes(id, body, account, device, state)?;
    compare_changes(id, &expected, changes)?;
    let new_state = match new_state {
        Some(s) => s,
        None if changes.is_empty() => state.clone(),
        None => build_state_like(id, apply(state.files(), changes), state)?,
    };
    if let Some(BodyKind::Crl) = body.kind() {
        check_crl_update(id, account, state, &new_state)?;
    }
    Ok((
        VerifiedDevice {
            account_id: account,
            device_id: device,
        },
        new_state,
    ))
}

fn check_crl_update(
    id: CommitId,
    account: AccountId,
    old: &SwarmState,
    new: &SwarmState,
) -> Result<(), Rejection> {
    let crl = new
        .crl(&account)
        .ok_or_else(|| not_allowed(id, account, "publish a CRL that is not its own"))?;
    let cert = new
        .account_cert(&account)
        .ok_or_else(|| not_allowed(id, account, "publish a CRL without membership"))?;
    if crl.verify(cert).is_err() {
        return Err(not_allowed(
            id,
            account,
            "publish a CRL its account did not sign",
        ));
    }
    if let Some(previous) = old.crl(&account) {
        if !crl.supersedes(previous) {
            return Err(not_allowed(
                id,
                account,
                "replace its CRL with an older one",
            ));
        }
    }
    Ok(())
}

fn compare_changes(
    id: CommitId,
    expected: &BTreeMap<String, Expect>,
    changes: &Changes,
) -> Result<(), Rejection> {
    let mut extra = Vec::new();
    let mut missing = Vec::new();
    for (path, change) in changes {
        let ok = match (expected.get(path), change) {
            (Some(Expect::Delete), None) | (Some(Expect::Any), Some(_)) => true,
            (Some(Expect::Exact(bytes)), Some(content)) => bytes == content,
            _ => false,
        };
        if !ok {
            extra.push(path.clone());
        }
    }
    for path in expected.keys() {
        if !changes.contains_key(path) {
            missing.push(path.clone());
        }
    }
    if extra.is_empty() && missing.is_empty() {
        Ok(())
    } else {
        Err(Rejection::UnexpectedChanges {
            commit: id,
            extra,
            missing,
        })
    }
}

fn quorum(state: &SwarmState, action: VoteAction, target: &AccountId) -> bool {
    let electors: Vec<&AccountId> = state.admins().filter(|a| *a != target).collect();
    let votes = state.votes(action, target);
    let yes = electors.iter().filter(|a| votes.contains(a)).count();
    // Strict majority of the admins other than the target.
    !electors.is_empty() && yes * 2 > electors.len()
}

fn remove_account_files(
    state: &SwarmState,
    target: &AccountId,
    out: &mut BTreeMap<String, Expect>,
) {
    for device in state.devices_of(target) {
        out.insert(device_path(&device), Expect::Delete);
    }
    if state.crl(target).is_some() {
        out.insert(crl_path(target), Expect::Delete);
    }
}

/// The exact file changes a non-merge, non-initial commit must make at `state`,
/// or why its author may not make it.
pub fn expected_changes(
    id: CommitId,
    body: &Body,
    author: AccountId,
    device: DeviceId,
    state: &SwarmState,
) -> Result<BTreeMap<String, Expect>, Rejection> {
    let mut out = BTreeMap::new();
    let Some(kind) = body.kind() else {
        // Unsupported types from newer versions: kept when they change nothing.
        return Ok(out);
    };
    let is_admin = state.is_admin(&author);
    match kind {
        BodyKind::Initial { .. } => {
            return Err(not_allowed(id, author, "start a conversation twice"))
        }
        BodyKind::Merge => return Err(Rejection::MergeShape(id)),
        BodyKind::Text { text, edit_of, .. } => {
            if text.is_empty() && edit_of.is_none() {
                return Err(Rejection::Body(
                    id,
                    BodyError::BadField {
                        type_name: "text".into(),
                        reason: "empty text outside an edit".into(),
                    },
                ));
            }
        }
        BodyKind::Reaction { .. } | BodyKind::File { .. } | BodyKind::Call { .. } => {}
        BodyKind::Profile => {
            let allowed = if state.mode() == Mode::OneToOne {
                state.is_member(&author)
            } else {
                is_admin
            };
            if !allowed {
                return Err(not_allowed(id, author, "change the profile"));
            }
            out.insert(PROFILE_PATH.to_owned(), Expect::Any);
        }
        BodyKind::Device => {
            out.insert(device_path(&device), Expect::Any);
        }
        BodyKind::Crl => {
            out.insert(crl_path(&author), Expect::Any);
        }
        BodyKind::Vote { action, account } => {
            if !is_admin {
                return Err(not_allowed(id, author, "vote"));
            }
            let eligible = match action {
                VoteAction::Ban => {
                    *account != author && (state.is_member(account) || state.is_invited(account))
                }
                VoteAction::Unban => state.is_banned(account),
            };
            if !eligible || state.votes(*action, account).contains(&author) {
                return Err(not_allowed(
                    id,
                    author,
                    format!("vote {} {account}", action.as_str()),
                ));
            }
            out.insert(
                vote_path(*action, account, &author),
                Expect::Exact(Vec::new()),
            );
        }
        BodyKind::Member {
            action,
            account: target,
        } => member_changes(id, *action, author, *target, device, state, &mut out)?,
    }
    Ok(out)
}

fn member_changes(
    id: CommitId,
    action: MemberAction,
    author: AccountId,
    target: AccountId,
    device: DeviceId,
    state: &SwarmState,
    out: &mut BTreeMap<String, Expect>,
) -> Result<(), Rejection> {
    let is_admin = state.is_admin(&author);
    let files = state.files();
    let refuse = |what: &str| Err(not_allowed(id, author, format!("{what} {target}")));
    match action {
        MemberAction::Invite => {
            let may = match state.mode() {
                Mode::OneToOne => {
                    is_admin
                        && state.member_ids().len()
                            + usize::from(files.keys().any(|p| p.starts_with("invited/")))
                            < 2
                }
                Mode::AdminInvitesOnly => is_admin,
                Mode::InvitesOnly | Mode::Public => state.is_member(&author),
            };
            let fresh = !state.is_member(&target)
                && !state.is_invited(&target)
                && !state.is_banned(&target);
            if !may || !fresh {
                return refuse("invite");
            }
            out.insert(invited_path(&target), Expect::Exact(Vec::new()));
        }
        MemberAction::Join => {
            let may = target == author
                && !state.is_member(&target)
                && !state.is_banned(&target)
                && (state.is_invited(&target) || state.mode() == Mode::Public);
            if !may {
                return refuse("join as");
            }
            if state.is_invited(&target) {
                out.insert(invited_path(&target), Expect::Delete);
            }
            out.insert(member_path(&target), Expect::Any);
            out.insert(device_path(&device), Expect::Any);
        }
        MemberAction::Leave => {
            if target != author || !state.is_member(&target) {
                return refuse("leave on behalf of");
            }
            let role = if is_admin {
                admin_path(&target)
            } else {
                member_path(&target)
            };
            out.insert(role, Expect::Delete);
            remove_account_files(state, &target, out);
        }
        MemberAction::Remove => {
            if !is_admin || target == author {
                return refuse("remove");
            }
            if state.is_member(&target) && !state.is_admin(&target) {
                out.insert(member_path(&target), Expect::Delete);
                remove_account_files(state, &target, out);
            } else if state.is_invited(&target) {
                out.insert(invited_path(&target), Expect::Delete);
            } else {
                return refuse("remove");
            }
        }
        MemberAction::Ban => {
            let eligible = state.is_member(&target) || state.is_invited(&target);
            if !is_admin
                || target == author
                || !eligible
                || !quorum(state, VoteAction::Ban, &target)
            {
                return refuse("ban (needs admin, eligible target and a majority of admin votes)");
            }
            let role = [
                admin_path(&target),
                member_path(&target),
                invited_path(&target),
            ]
            .into_iter()
            .find(|p| files.contains_key(p));
            // The state was built from these files, so an eligible target has
            // a role file; refuse rather than trust that if it ever breaks.
            let Some(role) = role else {
                return refuse("ban (no role file)");
            };
            let cert = if role.starts_with("invited/") {
                Vec::new()
            } else {
                files.get(&role).cloned().unwrap_or_default()
            };
            out.insert(role, Expect::Delete);
            out.insert(banned_member_path(&target), Expect::Exact(cert));
            for d in state.devices_of(&target) {
                let content = files.get(&device_path(&d)).cloned().unwrap_or_default();
                out.insert(device_path(&d), Expect::Delete);
                out.insert(banned_device_path(&d), Expect::Exact(content));
            }
            if state.crl(&target).is_some() {
                out.insert(crl_path(&target), Expect::Delete);
            }
            for voter in state.votes(VoteAction::Ban, &target) {
                out.insert(vote_path(VoteAction::Ban, &target, &voter), Expect::Delete);
            }
        }
        MemberAction::Unban => {
            if !is_admin || !state.is_banned(&target) || !quorum(state, VoteAction::Unban, &target)
            {
                return refuse("unban (needs admin, banned target and a majority of admin votes)");
            }
            let cert = files
                .get(&banned_member_path(&target))
                .cloned()
                .unwrap_or_default();
            out.insert(banned_member_path(&target), Expect::Delete);
            if !cert.is_empty() {
                out.insert(member_path(&target), Expect::Exact(cert));
                for d in state.banned_devices_of(&target) {
                    let content = files
                        .get(&banned_device_path(&d))
                        .cloned()
                        .unwrap_or_default();
                    out.insert(banned_device_path(&d), Expect::Delete);
                    out.insert(device_path(&d), Expect::Exact(content));
                }
            }
            for voter in state.votes(VoteAction::Unban, &target) {
                out.insert(
                    vote_path(VoteAction::Unban, &target, &voter),
                    Expect::Delete,
                );
            }
        }
    }
    Ok(())
}

/// Where the batch validator finds accepted history (implemented by the store).
pub trait History {
    /// An accepted commit's view, if it is in accepted history.
    fn view(&mut self, id: &CommitId) -> Option<ParentView>;
    /// The state of the merge of `parents` (accepted, or accepted earlier in
    /// this batch; see [`super::merge::merge_parents`]), if it can be built.
    fn merged_state(&mut self, parents: &[CommitId]) -> Option<Arc<SwarmState>>;
}

/// The outcome of validating one fetch.
#[derive(Debug, Clone, Default)]
pub struct BatchVerdict {
    /// Accepted commits, oldest first.
    pub accepted: Vec<Accepted>,
    /// Rejected commits with their reasons.
    pub rejected: Vec<Rejection>,
}

impl BatchVerdict {
    /// Ids of rejected commits.
    pub fn rejected_ids(&self) -> impl Iterator<Item = CommitId> + '_ {
        self.rejected.iter().filter_map(rejected_id)
    }
}

fn rejected_id(r: &Rejection) -> Option<CommitId> {
    Some(match r {
        Rejection::Format(c, _)
        | Rejection::Body(c, _)
        | Rejection::ParentMismatch(c)
        | Rejection::ParentOrder(c)
        | Rejection::ForeignRoot(c)
        | Rejection::BadTree(c, _)
        | Rejection::MergeShape(c)
        | Rejection::MergeTreeMismatch(c)
        | Rejection::NoMergeBase(c) => *c,
        Rejection::MissingParent { commit, .. }
        | Rejection::DescendantOfRejected { commit, .. }
        | Rejection::WrongGeneration { commit, .. }
        | Rejection::UnknownDevice { commit, .. }
        | Rejection::BannedDevice { commit, .. }
        | Rejection::NotAMember { commit, .. }
        | Rejection::BannedAuthor { commit, .. }
        | Rejection::Chain { commit, .. }
        | Rejection::DeviceNotCurrent { commit, .. }
        | Rejection::NotAllowed { commit, .. }
        | Rejection::UnexpectedChanges { commit, .. } => *commit,
        Rejection::TooManyCommits { .. } => return None,
    })
}

/// Validates a fetch's candidates, given oldest-first (every parent before its
/// children). Each is judged against the state at its parents; a rejected
/// commit rejects its descendants, never the valid history beside them.
pub fn validate_batch(
    candidates: &[Candidate],
    history: &mut impl History,
    conversation: Option<CommitId>,
) -> BatchVerdict {
    validate_batch_checked(candidates, &[], history, conversation)
}

/// [`validate_batch`] with the signatures already checked: `signatures[i]`
/// is [`check_signature`]`(&candidates[i])`, computed by the caller (the
/// store checks a fetch's signatures on all cores). A candidate without a
/// matching entry (a shorter slice, or an entry naming another commit) is
/// checked here, so nothing goes unchecked.
/// Verdicts and their reasons are the same as [`validate_batch`]'s: a
/// signature's result is used exactly where that function would check it.
pub fn validate_batch_checked(
    candidates: &[Candidate],
    signatures: &[SignatureCheck],
    history: &mut impl History,
    conversation: Option<CommitId>,
) -> BatchVerdict {
    let mut verdict = BatchVerdict::default();
    if candidates.len() > FETCH_COMMITS_MAX {
        verdict.rejected.push(Rejection::TooManyCommits {
            found: candidates.len(),
            max: FETCH_COMMITS_MAX,
        });
        return verdict;
    }
    let mut accepted: HashMap<CommitId, ParentView> = HashMap::new();
    let mut rejected: HashMap<CommitId, CommitId> = HashMap::new();
    let mut keys = KeyCache::default();
    for (index, candidate) in candidates.iter().enumerate() {
        let id = candidate.id;
        let payload = match parse_candidate(candidate) {
            Ok(p) => p,
            Err(e) => {
                rejected.insert(id, id);
                verdict.rejected.push(e);
                continue;
            }
        };
        let mut views = Vec::with_capacity(payload.parents.len());
        let mut failure = None;
        for parent in &payload.parents {
            if let Some(root) = rejected.get(parent) {
                failure = Some(Rejection::DescendantOfRejected {
                    commit: id,
                    rejected: *root,
                });
                break;
            }
            match accepted
                .get(parent)
                .cloned()
                .or_else(|| history.view(parent))
            {
                Some(view) => views.push(view),
                None => {
                    failure = Some(Rejection::MissingParent {
                        commit: id,
                        parent: *parent,
                    });
                    break;
                }
            }
        }
        let merged = match (&failure, views.split_first()) {
            (None, Some((first, rest)))
                if rest.iter().any(|p| {
                    !Arc::ptr_eq(&p.state, &first.state) && p.state.files() != first.state.files()
                }) =>
            {
                history.merged_state(&payload.parents)
            }
            _ => None,
        };
        let result = match failure {
            Some(f) => Err(f),
            None => {
                let signer = match signatures.get(index) {
                    Some(checked) if checked.id == id => checked.result.clone(),
                    _ => check_signature_with(candidate, &mut keys).result,
                };
                match signer {
                    Ok(device) => validate_signed_by(
                        candidate,
                        payload,
                        device,
                        &views,
                        &Context {
                            conversation,
                            merged: merged.as_ref(),
                        },
                    ),
                    Err(e) => Err(Rejection::Format(id, e)),
                }
            }
        };
        match result {
            Ok(ok) => {
                accepted.insert(id, ok.view());
                verdict.accepted.push(ok);
            }
            Err(e) => {
                let root = match &e {
                    Rejection::DescendantOfRejected { rejected, .. } => *rejected,
                    _ => id,
                };
                rejected.insert(id, root);
                verdict.rejected.push(e);
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{account, device};
    use crate::cert::{AccountCert, DeviceCert};
    use ed25519_dalek::SigningKey;

    struct Who {
        key: SigningKey,
        cert: AccountCert,
        device: DeviceCert,
    }

    fn who(seed: u64) -> Who {
        let (key, cert) = account(seed);
        let (_, device) = device(&key, &cert, seed + 1000);
        Who { key, cert, device }
    }

    /// A tree with `admins` as admins and `members` as members, each with one device.
    fn tree(
        mode: Mode,
        admins: &[&Who],
        members: &[&Who],
        votes: &[(VoteAction, &Who, &Who)],
    ) -> SwarmState {
        let mut files = Files::new();
        files.insert(MODE_PATH.into(), mode.as_str().as_bytes().to_vec());
        for w in admins {
            files.insert(admin_path(&w.cert.id()), w.cert.to_pem().into_bytes());
        }
        for w in members {
            files.insert(member_path(&w.cert.id()), w.cert.to_pem().into_bytes());
        }
        for w in admins.iter().chain(members) {
            files.insert(device_path(&w.device.id()), w.device.to_pem().into_bytes());
        }
        for (action, target, voter) in votes {
            files.insert(
                vote_path(*action, &target.cert.id(), &voter.cert.id()),
                Vec::new(),
            );
        }
        SwarmState::from_files(files).unwrap()
    }

    fn member(action: MemberAction, target: &Who) -> Body {
        Body::Known {
            generation: 1,
            kind: BodyKind::Member {
                action,
                account: target.cert.id(),
            },
        }
    }

    fn id() -> CommitId {
        CommitId::from_bytes([7; 20])
    }

    fn check(
        body: &Body,
        author: &Who,
        state: &SwarmState,
    ) -> Result<BTreeMap<String, Expect>, Rejection> {
        expected_changes(id(), body, author.cert.id(), author.device.id(), state)
    }

    #[test]
    fn ban_needs_a_majority_of_the_other_admins() {
        let (a, b, c, d) = (who(1), who(2), who(3), who(4));
        let one_vote = tree(
            Mode::InvitesOnly,
            &[&a, &b, &c],
            &[&d],
            &[(VoteAction::Ban, &d, &a)],
        );
        assert!(matches!(
            check(&member(MemberAction::Ban, &d), &a, &one_vote),
            Err(Rejection::NotAllowed { .. })
        ));
        // Votes of non-admins do not count.
        let member_vote = tree(
            Mode::InvitesOnly,
            &[&a, &b, &c],
            &[&d],
            &[(VoteAction::Ban, &d, &a), (VoteAction::Ban, &d, &d)],
        );
        assert!(check(&member(MemberAction::Ban, &d), &a, &member_vote).is_err());
        let two_votes = tree(
            Mode::InvitesOnly,
            &[&a, &b, &c],
            &[&d],
            &[(VoteAction::Ban, &d, &a), (VoteAction::Ban, &d, &b)],
        );
        let changes = check(&member(MemberAction::Ban, &d), &a, &two_votes).unwrap();
        assert_eq!(changes[&member_path(&d.cert.id())], Expect::Delete);
        assert_eq!(
            changes[&banned_member_path(&d.cert.id())],
            Expect::Exact(d.cert.to_pem().into_bytes())
        );
        assert_eq!(
            changes[&banned_device_path(&d.device.id())],
            Expect::Exact(d.device.to_pem().into_bytes())
        );
        assert_eq!(
            changes[&vote_path(VoteAction::Ban, &d.cert.id(), &b.cert.id())],
            Expect::Delete
        );
        // A member, however many votes, may not ban.
        assert!(check(&member(MemberAction::Ban, &a), &d, &two_votes).is_err());
    }

    #[test]
    fn every_reason_is_listed_once() {
        let c = CommitId::from_bytes([7; 20]);
        let (a, d) = (who(1).cert.id(), who(1).device.id());
        let all = [
            Rejection::Format(c, CommitFormatError::Unsigned),
            Rejection::Body(c, BodyError::Malformed("x".into())),
            Rejection::ParentMismatch(c),
            Rejection::MissingParent {
                commit: c,
                parent: c,
            },
            Rejection::DescendantOfRejected {
                commit: c,
                rejected: c,
            },
            Rejection::ForeignRoot(c),
            Rejection::WrongGeneration {
                commit: c,
                expected: 1,
                found: 2,
            },
            Rejection::UnknownDevice {
                commit: c,
                device: d,
            },
            Rejection::BannedDevice {
                commit: c,
                device: d,
            },
            Rejection::NotAMember {
                commit: c,
                account: a,
            },
            Rejection::BannedAuthor {
                commit: c,
                account: a,
            },
            Rejection::Chain {
                commit: c,
                error: ChainError::Revoked(d),
            },
            Rejection::DeviceNotCurrent {
                commit: c,
                device: d,
            },
            Rejection::NotAllowed {
                commit: c,
                author: a,
                what: "x".into(),
            },
            Rejection::UnexpectedChanges {
                commit: c,
                extra: vec![],
                missing: vec![],
            },
            Rejection::BadTree(c, StateError::UnknownPath("x".into())),
            Rejection::MergeShape(c),
            Rejection::MergeTreeMismatch(c),
            Rejection::NoMergeBase(c),
            Rejection::TooManyCommits { found: 2, max: 1 },
        ];
        let named: std::collections::BTreeSet<&str> = all.iter().map(Rejection::reason).collect();
        let listed: std::collections::BTreeSet<&str> = REJECTION_REASONS.iter().copied().collect();
        assert_eq!(listed.len(), REJECTION_REASONS.len(), "no name twice");
        assert_eq!(named, listed);
    }

    #[test]
    fn permission_table() {
        let (a, m, x) = (who(1), who(2), who(3));
        let text = Body::Known {
            generation: 1,
            kind: BodyKind::Text {
                text: "hi".into(),
                reply_to: None,
                edit_of: None,
            },
        };
        let profile = Body::Known {
            generation: 1,
            kind: BodyKind::Profile,
        };
        let vote = |action| Body::Known {
            generation: 1,
            kind: BodyKind::Vote {
                action,
                account: m.cert.id(),
            },
        };
        // One row per rule: mode, author, body, allowed?
        let rows: Vec<(&str, Mode, &Who, Body, bool)> = vec![
            (
                "member invites, invites-only",
                Mode::InvitesOnly,
                &m,
                member(MemberAction::Invite, &x),
                true,
            ),
            (
                "member invites, admin-invites-only",
                Mode::AdminInvitesOnly,
                &m,
                member(MemberAction::Invite, &x),
                false,
            ),
            (
                "admin invites, admin-invites-only",
                Mode::AdminInvitesOnly,
                &a,
                member(MemberAction::Invite, &x),
                true,
            ),
            (
                "third party in one-to-one",
                Mode::OneToOne,
                &a,
                member(MemberAction::Invite, &x),
                false,
            ),
            (
                "invite a member again",
                Mode::InvitesOnly,
                &a,
                member(MemberAction::Invite, &m),
                false,
            ),
            (
                "uninvited join, invites-only",
                Mode::InvitesOnly,
                &x,
                member(MemberAction::Join, &x),
                false,
            ),
            (
                "uninvited join, public",
                Mode::Public,
                &x,
                member(MemberAction::Join, &x),
                true,
            ),
            (
                "join as someone else",
                Mode::Public,
                &x,
                member(MemberAction::Join, &m),
                false,
            ),
            (
                "leave on behalf of another",
                Mode::InvitesOnly,
                &a,
                member(MemberAction::Leave, &m),
                false,
            ),
            (
                "member leaves",
                Mode::InvitesOnly,
                &m,
                member(MemberAction::Leave, &m),
                true,
            ),
            (
                "admin removes member",
                Mode::InvitesOnly,
                &a,
                member(MemberAction::Remove, &m),
                true,
            ),
            (
                "member removes admin",
                Mode::InvitesOnly,
                &m,
                member(MemberAction::Remove, &a),
                false,
            ),
            (
                "member changes profile",
                Mode::InvitesOnly,
                &m,
                profile.clone(),
                false,
            ),
            (
                "admin changes profile",
                Mode::InvitesOnly,
                &a,
                profile.clone(),
                true,
            ),
            (
                "member changes profile, one-to-one",
                Mode::OneToOne,
                &m,
                profile,
                true,
            ),
            (
                "member votes",
                Mode::InvitesOnly,
                &m,
                vote(VoteAction::Ban),
                false,
            ),
            (
                "admin votes ban",
                Mode::InvitesOnly,
                &a,
                vote(VoteAction::Ban),
                true,
            ),
            (
                "admin votes unban of non-banned",
                Mode::InvitesOnly,
                &a,
                vote(VoteAction::Unban),
                false,
            ),
            ("member writes text", Mode::InvitesOnly, &m, text, true),
        ];
        for (name, mode, author, body, allowed) in rows {
            let state = tree(mode, &[&a], &[&m], &[]);
            let got = check(&body, author, &state);
            assert_eq!(got.is_ok(), allowed, "row {name:?}: {got:?}");
        }
    }

    #[test]
    fn leave_takes_devices_and_crl_along() {
        let (a, m) = (who(1), who(2));
        let mut files = tree(Mode::InvitesOnly, &[&a], &[&m], &[])
            .files()
            .as_ref()
            .clone();
        let crl =
            crate::crl::RevocationList::first(&m.key, &m.cert, crate::cert::tests::now()).unwrap();
        files.insert(crl_path(&m.cert.id()), crl.to_pem().into_bytes());
        let state = SwarmState::from_files(files).unwrap();
        let changes = check(&member(MemberAction::Leave, &m), &m, &state).unwrap();
        let paths: Vec<&String> = changes.keys().collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert!(changes.values().all(|e| *e == Expect::Delete));
    }

    /// A state built like another gives exactly the state built afresh,
    /// whatever changed between the two trees: roles, devices, a CRL that
    /// revokes a device whose certificate did not change.
    #[test]
    fn a_state_built_like_another_is_the_state_built_afresh() {
        let (a, m, n) = (who(1), who(2), who(3));
        let base = tree(Mode::InvitesOnly, &[&a], &[&m], &[]);
        let now = crate::cert::tests::now();
        let first = crate::crl::RevocationList::first(&m.key, &m.cert, now).unwrap();
        let revoking = first
            .with_revoked(&m.key, &m.cert, m.device.serial(), now)
            .unwrap();
        let mut variants: Vec<Files> = Vec::new();
        let mut f = base.files().as_ref().clone();
        f.insert(crl_path(&m.cert.id()), first.to_pem().into_bytes());
        variants.push(f.clone());
        f.insert(crl_path(&m.cert.id()), revoking.to_pem().into_bytes());
        variants.push(f.clone());
        let mut g = tree(Mode::InvitesOnly, &[&a], &[&m, &n], &[])
            .files()
            .as_ref()
            .clone();
        variants.push(g.clone());
        g.remove(&member_path(&m.cert.id()));
        variants.push(g.clone());
        let mut h = base.files().as_ref().clone();
        h.remove(&member_path(&m.cert.id()));
        h.insert(admin_path(&m.cert.id()), m.cert.to_pem().into_bytes());
        variants.push(h);
        for like in std::iter::once(base.clone()).chain(
            variants
                .iter()
                .map(|v| SwarmState::from_files(v.clone()).unwrap()),
        ) {
            for v in &variants {
                let fresh = SwarmState::from_files(v.clone()).unwrap();
                let derived = SwarmState::from_shared_like(Arc::new(v.clone()), &like).unwrap();
                assert_eq!(derived, fresh);
            }
        }
        let revoked = SwarmState::from_files(variants[1].clone()).unwrap();
        assert!(matches!(
            revoked.device(&m.device.id()),
            Some((_, DeviceStanding::Invalid(_)))
        ));
    }

    #[test]
    fn ban_beats_join_in_a_merge() {
        let (a, c) = (who(1), who(3));
        let base = {
            let mut f = tree(Mode::InvitesOnly, &[&a], &[], &[])
                .files()
                .as_ref()
                .clone();
            f.insert(invited_path(&c.cert.id()), Vec::new());
            f
        };
        let mut banned = base.clone();
        banned.remove(&invited_path(&c.cert.id()));
        banned.insert(banned_member_path(&c.cert.id()), Vec::new());
        let mut joined = base.clone();
        joined.remove(&invited_path(&c.cert.id()));
        joined.insert(member_path(&c.cert.id()), c.cert.to_pem().into_bytes());
        joined.insert(device_path(&c.device.id()), c.device.to_pem().into_bytes());
        let merged = crate::swarm::merge::merge_files(&base, &banned, &joined);
        assert_eq!(
            merged,
            crate::swarm::merge::merge_files(&base, &joined, &banned),
            "symmetric"
        );
        let state = SwarmState::from_files(merged).unwrap();
        assert!(state.is_banned(&c.cert.id()) && !state.is_member(&c.cert.id()));
        assert!(state.is_banned_device(&c.device.id()));
    }
}

#[cfg(test)]
mod signed_tests {
    //! Whole candidates, signed for real, judged on values alone.

    use super::*;
    use crate::cert::tests::{account, device};
    use crate::swarm::body::encode_body;
    use crate::swarm::commit::sign_payload;
    use proptest::prelude::*;

    const NOW: i64 = 1_790_000_000;

    /// A signed initial commit and its id (the id is arbitrary here: the store
    /// computes it from the object; the rules only compare it).
    fn initial() -> Candidate {
        let (key, cert) = account(1);
        let (dkey, dcert) = device(&key, &cert, 2);
        let body = encode_body(
            0,
            &BodyKind::Initial {
                mode: Mode::InvitesOnly,
                nonce: crate::swarm::ids::ConversationNonce::from_bytes([9; 16]),
            },
        );
        let mut payload = format!(
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <d> {NOW} +0000\ncommitter a <d> {NOW} +0000\n\n"
        )
        .into_bytes();
        payload.extend_from_slice(&body);
        let mut changes = Changes::new();
        changes.insert(MODE_PATH.into(), Some(b"invites-only".to_vec()));
        changes.insert(admin_path(&cert.id()), Some(cert.to_pem().into_bytes()));
        changes.insert(device_path(&dcert.id()), Some(dcert.to_pem().into_bytes()));
        Candidate {
            id: CommitId::from_bytes([1; 20]),
            signature: Some(sign_payload(&dkey, &payload).into_bytes()),
            payload,
            changes,
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            conversation: Some(CommitId::from_bytes([1; 20])),
            merged: None,
        }
    }

    #[test]
    fn a_signed_initial_commit_is_accepted_and_a_copy_elsewhere_is_a_foreign_root() {
        let c = initial();
        let accepted = validate_commit(&c, &[], &ctx()).unwrap();
        assert!(accepted.state.is_admin(&accepted.author.account_id));
        let mut elsewhere = c.clone();
        elsewhere.id = CommitId::from_bytes([2; 20]);
        assert_eq!(
            validate_commit(&elsewhere, &[], &ctx()).unwrap_err(),
            Rejection::ForeignRoot(elsewhere.id)
        );
        let mut unsigned = c;
        unsigned.signature = None;
        assert!(matches!(
            validate_commit(&unsigned, &[], &ctx()),
            Err(Rejection::Format(_, CommitFormatError::Unsigned))
        ));
    }

    /// No accepted history beyond the batch itself.
    struct NoHistory;

    impl History for NoHistory {
        fn view(&mut self, _: &CommitId) -> Option<ParentView> {
            None
        }
        fn merged_state(&mut self, _: &[CommitId]) -> Option<Arc<SwarmState>> {
            None
        }
    }

    /// The initial commit and `n` signed text messages on it, oldest first.
    fn chain(n: u8) -> Vec<Candidate> {
        chain_dated(&vec![NOW; usize::from(n)])
    }

    /// The initial commit and one signed text message per entry of
    /// `times_secs` (its committer time), each on the one before, oldest first.
    fn chain_dated(times_secs: &[i64]) -> Vec<Candidate> {
        let (key, cert) = account(1);
        let (dkey, _) = device(&key, &cert, 2);
        let mut commits = vec![initial()];
        for (i, time) in times_secs.iter().enumerate() {
            let i = u8::try_from(i).expect("at most 255 messages");
            let parent = commits.last().map(|c| c.id).unwrap();
            let body = encode_body(
                u64::from(i) + 1,
                &BodyKind::Text {
                    text: format!("message {i}"),
                    reply_to: None,
                    edit_of: None,
                },
            );
            let mut payload = format!(
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nparent {parent}\nauthor a <d> {time} +0000\ncommitter a <d> {time} +0000\n\n"
            )
            .into_bytes();
            payload.extend_from_slice(&body);
            commits.push(Candidate {
                id: CommitId::from_bytes([i.wrapping_add(2); 20]),
                signature: Some(sign_payload(&dkey, &payload).into_bytes()),
                payload,
                changes: Changes::new(),
            });
        }
        commits
    }

    fn ids(verdict: &BatchVerdict) -> Vec<CommitId> {
        verdict.accepted.iter().map(|a| a.id).collect()
    }

    #[test]
    fn one_bad_signature_among_many_is_named_and_rejects_only_its_descendants() {
        let mut commits = chain(60);
        // A real signature by the right device, over another commit's payload.
        let bad = 31;
        commits[bad].signature = commits[bad - 1].signature.clone();
        let bad_id = commits[bad].id;
        let checks: Vec<SignatureCheck> = commits.iter().map(check_signature).collect();
        let verdicts = [
            validate_batch(&commits, &mut NoHistory, Some(commits[0].id)),
            validate_batch_checked(&commits, &checks, &mut NoHistory, Some(commits[0].id)),
        ];
        for verdict in &verdicts {
            assert_eq!(
                ids(verdict),
                commits[..bad].iter().map(|c| c.id).collect::<Vec<_>>()
            );
            assert_eq!(
                verdict.rejected[0],
                Rejection::Format(bad_id, CommitFormatError::BadSignature)
            );
            assert_eq!(verdict.rejected.len(), commits.len() - bad);
            for (rejection, child) in verdict.rejected[1..].iter().zip(&commits[bad + 1..]) {
                assert_eq!(
                    *rejection,
                    Rejection::DescendantOfRejected {
                        commit: child.id,
                        rejected: bad_id,
                    }
                );
            }
        }
    }

    #[test]
    fn a_signature_check_of_another_commit_is_not_trusted() {
        let mut commits = chain(8);
        let forged = 5;
        commits[forged].signature = commits[forged - 1].signature.clone();
        // Checks shifted by one: each names a different commit than its slot.
        let shifted: Vec<SignatureCheck> = commits[1..].iter().map(check_signature).collect();
        let verdict =
            validate_batch_checked(&commits, &shifted, &mut NoHistory, Some(commits[0].id));
        assert_eq!(ids(&verdict).len(), forged);
        assert_eq!(
            verdict.rejected[0],
            Rejection::Format(commits[forged].id, CommitFormatError::BadSignature)
        );
        // Fewer checks than candidates: the rest are checked in the batch.
        let verdict =
            validate_batch_checked(&commits, &shifted[..0], &mut NoHistory, Some(commits[0].id));
        assert_eq!(ids(&verdict).len(), forged);
    }

    /// Accepted history that grows as batches are accepted: a replica that
    /// receives a history in several fetches.
    #[derive(Default)]
    struct GrowingHistory(HashMap<CommitId, ParentView>);

    impl History for GrowingHistory {
        fn view(&mut self, id: &CommitId) -> Option<ParentView> {
            self.0.get(id).cloned()
        }
        fn merged_state(&mut self, _: &[CommitId]) -> Option<Arc<SwarmState>> {
            None
        }
    }

    /// Seconds in a (365-day) year.
    const YEAR_SECS: i64 = 365 * 24 * 3600;

    /// Validates `commits` as a replica that receives them in fetches ending
    /// at each of `cuts` (then the rest): the ids it accepts, and the first
    /// rejection.
    fn validate_in_fetches(
        commits: &[Candidate],
        cuts: &[usize],
    ) -> (Vec<CommitId>, Option<Rejection>) {
        let mut history = GrowingHistory::default();
        let (mut accepted, mut first_rejection) = (Vec::new(), None);
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (commits.len() + 1)).collect();
        ends.push(commits.len());
        ends.sort_unstable();
        let mut start = 0;
        for end in ends {
            let verdict = validate_batch(&commits[start..end], &mut history, Some(commits[0].id));
            for a in verdict.accepted {
                accepted.push(a.id);
                history.0.insert(a.id, a.view());
            }
            if first_rejection.is_none() {
                first_rejection = verdict.rejected.into_iter().next();
            }
            start = end;
        }
        (accepted, first_rejection)
    }

    #[test]
    fn an_author_dates_its_commits_inside_its_certificates_and_after_its_parents() {
        let (key, cert) = account(1);
        let (_, dcert) = device(&key, &cert, 2);
        let at =
            |now, parents: &[i64]| authored_time_secs(now, parents.iter().copied(), &dcert, &cert);
        let (not_before, day, lead) = (NOW - 3_600, 86_400, COMMIT_TIME_LEAD_SECS_MAX);
        let not_after = NOW + 10 * YEAR_SECS;
        // One row per case: the author's clock, its parents' times, the time it writes.
        let rows: [(&str, i64, &[i64], i64); 9] = [
            ("a correct clock is kept", NOW, &[NOW - 60], NOW),
            (
                "a root has no parent to follow",
                NOW + 1_200,
                &[],
                NOW + 1_200,
            ),
            ("a fast clock is kept", NOW + 1_200, &[NOW], NOW + 1_200),
            (
                "a clock a day behind its certificates",
                NOW - day,
                &[],
                not_before,
            ),
            ("just before notBefore", not_before - 1, &[], not_before),
            (
                "a parent 20 min ahead is followed",
                NOW,
                &[NOW + 1_200, NOW],
                NOW + 1_200,
            ),
            (
                "a clock a day slow follows its parent",
                NOW - day,
                &[NOW],
                NOW,
            ),
            (
                "a parent years ahead, only so far",
                NOW,
                &[NOW + 5 * YEAR_SECS],
                NOW + lead,
            ),
            (
                "never past notAfter",
                not_after - 10,
                &[not_after + day],
                not_after,
            ),
        ];
        for (name, now, parents, expected) in rows {
            assert_eq!(at(now, parents), expected, "{name}");
        }
        // The clamped time passes rule 9; the raw one would not.
        let verdict = |c: &[Candidate]| validate_batch(c, &mut NoHistory, Some(c[0].id));
        let slow = chain_dated(&[NOW - day]);
        assert!(matches!(
            verdict(&slow).rejected.as_slice(),
            [Rejection::DeviceNotCurrent { .. }]
        ));
        let clamped = chain_dated(&[at(NOW - day, &[NOW])]);
        assert_eq!(ids(&verdict(&clamped)).len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Validation takes no clock, so its verdicts are the history's own:
        /// commits dated anywhere inside their signer's certificates (years
        /// ahead of any clock, or before their parents) are accepted; a
        /// commit dated outside them is refused with its descendants; and a
        /// replica that gets the history in any number of fetches, at any
        /// moment, reaches exactly those verdicts.
        #[test]
        fn verdicts_depend_on_the_history_alone(
            offsets in prop::collection::vec(
                prop_oneof![
                    8 => -3_600i64..10 * YEAR_SECS,
                    1 => -YEAR_SECS..-3_600i64,
                    1 => 10 * YEAR_SECS + 1..11 * YEAR_SECS,
                ],
                1..10,
            ),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let times: Vec<i64> = offsets.iter().map(|o| NOW + o).collect();
            let commits = chain_dated(&times);
            // The certificates of `initial`'s signer: notBefore NOW - 1 h,
            // the device's notAfter NOW + 10 years (the account's is later).
            let inside = |t: i64| (NOW - 3_600..=NOW + 10 * YEAR_SECS).contains(&t);
            let valid_prefix = times.iter().take_while(|t| inside(**t)).count();
            let expected: Vec<CommitId> = commits[..=valid_prefix].iter().map(|c| c.id).collect();
            let whole = validate_batch(&commits, &mut NoHistory, Some(commits[0].id));
            prop_assert_eq!(ids(&whole), expected.clone());
            let first_refused = commits.get(valid_prefix + 1).map(|c| c.id);
            let expected_rejection = first_refused
                .map(|commit| Rejection::DeviceNotCurrent { commit, device: whole.accepted[0].author.device_id });
            prop_assert_eq!(whole.rejected.first().cloned(), expected_rejection.clone());
            prop_assert_eq!(whole.rejected.len(), commits.len() - expected.len());
            let (accepted, first) = validate_in_fetches(&commits, &cuts);
            prop_assert_eq!(accepted, expected);
            prop_assert_eq!(first, expected_rejection);
        }

        /// Any change to a signed payload is refused, never panics.
        #[test]
        fn any_payload_mutation_is_rejected(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut c = initial();
            let i = index.index(c.payload.len());
            c.payload[i] ^= 1 << bit;
            prop_assert!(validate_commit(&c, &[], &ctx()).is_err());
        }

        /// Any change to the signature is refused, never panics.
        #[test]
        fn any_signature_mutation_is_rejected(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut c = initial();
            let sig = c.signature.as_mut().unwrap();
            let i = index.index(sig.len());
            sig[i] ^= 1 << bit;
            let result = validate_commit(&c, &[], &ctx());
            // Flipping bits in base64 padding or line breaks can leave the decoded
            // signature intact; then the commit is rightly still valid.
            if let Ok(accepted) = result {
                prop_assert_eq!(accepted.id, c.id);
                let original = initial();
                let decoded = |s: &[u8]| ssh_key::SshSig::from_pem(s).map(|x| x.signature_bytes().to_vec()).ok();
                prop_assert_eq!(decoded(&c.signature.clone().unwrap()), decoded(original.signature.as_ref().unwrap()));
            }
        }
    }
}
