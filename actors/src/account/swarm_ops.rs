//! Requests that change or read a swarm on a person's behalf beyond sending
//! text: edit, delete, react, ban and unban (by admin votes), update the
//! profile, page through messages, and subscribe to the event stream.
//!
//! Each change is one commit of the swarm format (`docs/PROTOCOL.md` §9.5)
//! authored through the conversation actor, so the rules that judge a
//! fetched commit also refuse a bad local one (for example a ban without
//! quorum, or a profile from a non-admin); the refusal comes back as
//! [`SwarmError::Refused`].

use actix::prelude::*;
use starling_protocol::swarm::body::{BodyKind, MemberAction, VoteAction};
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::{REACTION_BYTES_MAX, TEXT_BYTES_MAX};
use starling_protocol::swarm::timeline::ShownMessage;
use starling_protocol::AccountId;

use super::events::EventSubscription;
use super::swarms::{author_in, mailbox, swarms, SwarmError};
use super::Account;
use crate::conversation::history::{GetProfile, MessagePage, PageError};
use crate::conversation::Conversation;

fn conversation_addr(
    account: &mut Account,
    conversation: CommitId,
) -> Result<Addr<Conversation>, SwarmError> {
    swarms(account)?
        .registry_addr(&conversation)
        .ok_or(SwarmError::NotFound(conversation))
}

fn author(
    account: &mut Account,
    conversation: CommitId,
    kind: BodyKind,
) -> ResponseActFuture<Account, Result<CommitId, SwarmError>> {
    Box::pin(author_in(account, conversation, kind).map(|r, _, _| r.map(|(id, _)| id)))
}

/// Replaces the text of one of this account's messages.
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct EditMessage {
    /// The conversation.
    pub conversation: CommitId,
    /// The message edited (shown edited only if this account wrote it).
    pub target: CommitId,
    /// The new text (not empty: that is a deletion).
    pub text: String,
}

impl Handler<EditMessage> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: EditMessage, _: &mut Self::Context) -> Self::Result {
        if msg.text.len() > TEXT_BYTES_MAX {
            let found = msg.text.len();
            return Box::pin(fut::ready(Err(SwarmError::TooLarge { found })));
        }
        if msg.text.is_empty() {
            return Box::pin(fut::ready(Err(SwarmError::BadRequest(
                "an edit needs text; delete the message instead".into(),
            ))));
        }
        let kind = BodyKind::Text {
            text: msg.text,
            reply_to: None,
            edit_of: Some(msg.target),
        };
        author(self, msg.conversation, kind)
    }
}

/// Deletes one of this account's messages (an edit with empty text).
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct DeleteMessage {
    /// The conversation.
    pub conversation: CommitId,
    /// The message deleted.
    pub target: CommitId,
}

impl Handler<DeleteMessage> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: DeleteMessage, _: &mut Self::Context) -> Self::Result {
        let kind = BodyKind::Text {
            text: String::new(),
            reply_to: None,
            edit_of: Some(msg.target),
        };
        author(self, msg.conversation, kind)
    }
}

/// Reacts to a message.
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct React {
    /// The conversation.
    pub conversation: CommitId,
    /// The message reacted to.
    pub target: CommitId,
    /// The reaction (an emoji sequence, 1 to 64 bytes).
    pub reaction: String,
}

impl Handler<React> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: React, _: &mut Self::Context) -> Self::Result {
        if msg.reaction.is_empty() || msg.reaction.len() > REACTION_BYTES_MAX {
            return Box::pin(fut::ready(Err(SwarmError::BadRequest(format!(
                "a reaction is 1 to {REACTION_BYTES_MAX} bytes; this one is {}",
                msg.reaction.len()
            )))));
        }
        let kind = BodyKind::Reaction {
            target: msg.target,
            reaction: msg.reaction,
        };
        author(self, msg.conversation, kind)
    }
}

/// What a ban or unban request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VoteOutcome {
    /// This account's vote was recorded now (false if it had voted before).
    pub voted: bool,
    /// The ban or unban itself was made (quorum reached).
    pub done: bool,
}

/// Bans (or unbans) an account: this admin votes, and, when a majority of
/// the other admins have voted too (with one admin, its own vote), makes
/// the ban (or unban) commit.
#[derive(Message)]
#[rtype(result = "Result<VoteOutcome, SwarmError>")]
pub struct BanVote {
    /// The conversation.
    pub conversation: CommitId,
    /// The account banned or unbanned.
    pub account: AccountId,
    /// Ban or unban.
    pub action: VoteAction,
}

impl Handler<BanVote> for Account {
    type Result = ResponseActFuture<Self, Result<VoteOutcome, SwarmError>>;

    fn handle(&mut self, msg: BanVote, _: &mut Self::Context) -> Self::Result {
        let BanVote {
            conversation,
            account,
            action,
        } = msg;
        let vote = BodyKind::Vote { action, account };
        let decision = BodyKind::Member {
            action: match action {
                VoteAction::Ban => MemberAction::Ban,
                VoteAction::Unban => MemberAction::Unban,
            },
            account,
        };
        Box::pin(
            author_in(self, conversation, vote).then(move |voted, act, _| {
                // A refused vote may only mean this admin voted before; the
                // decision commit below says whether the request is possible.
                let voted = match voted {
                    Ok(_) => Ok(true),
                    Err(SwarmError::Refused(_)) => Ok(false),
                    Err(other) => Err(other),
                };
                let decided: ResponseActFuture<Account, _> = match voted {
                    Err(e) => Box::pin(fut::ready(Err(e))),
                    Ok(voted) => Box::pin(author_in(act, conversation, decision).map(
                        move |decided, _, _| match decided {
                            Ok(_) => Ok(VoteOutcome { voted, done: true }),
                            // Our vote counts, the quorum is not there yet.
                            Err(SwarmError::Refused(_)) if voted => {
                                Ok(VoteOutcome { voted, done: false })
                            }
                            Err(e) => Err(e),
                        },
                    )),
                };
                decided
            }),
        )
    }
}

/// Changes the conversation profile's title and/or description (other
/// fields are kept).
#[derive(Message)]
#[rtype(result = "Result<CommitId, SwarmError>")]
pub struct UpdateProfile {
    /// The conversation.
    pub conversation: CommitId,
    /// The new title.
    pub title: Option<String>,
    /// The new description.
    pub description: Option<String>,
}

impl Handler<UpdateProfile> for Account {
    type Result = ResponseActFuture<Self, Result<CommitId, SwarmError>>;

    fn handle(&mut self, msg: UpdateProfile, _: &mut Self::Context) -> Self::Result {
        if msg.title.is_none() && msg.description.is_none() {
            return Box::pin(fut::ready(Err(SwarmError::BadRequest(
                "give a title, a description, or both".into(),
            ))));
        }
        let conversation = msg.conversation;
        let addr = conversation_addr(self, conversation);
        let current = async move {
            addr?
                .send(GetProfile)
                .await
                .map_err(mailbox)?
                .map_err(SwarmError::from)
        };
        Box::pin(current.into_actor(self).then(move |profile, act, _| {
            let authored: ResponseActFuture<Account, Result<CommitId, SwarmError>> = match profile {
                Err(e) => Box::pin(fut::ready(Err(e))),
                Ok(mut profile) => {
                    if let Some(title) = msg.title {
                        profile.insert("title".into(), title.into());
                    }
                    if let Some(description) = msg.description {
                        profile.insert("description".into(), description.into());
                    }
                    let content = serde_json::Value::Object(profile).to_string().into_bytes();
                    Box::pin(
                        super::swarms::author_with_content(
                            act,
                            conversation,
                            BodyKind::Profile,
                            content,
                        )
                        .map(|r, _, _| r.map(|(id, _)| id)),
                    )
                }
            };
            authored
        }))
    }
}

/// The conversation profile (`profile.json`).
#[derive(Message)]
#[rtype(result = "Result<serde_json::Map<String, serde_json::Value>, SwarmError>")]
pub struct SwarmProfile {
    /// The conversation.
    pub conversation: CommitId,
}

impl Handler<SwarmProfile> for Account {
    type Result = ResponseFuture<Result<serde_json::Map<String, serde_json::Value>, SwarmError>>;

    fn handle(&mut self, msg: SwarmProfile, _: &mut Self::Context) -> Self::Result {
        let addr = conversation_addr(self, msg.conversation);
        Box::pin(async move {
            addr?
                .send(GetProfile)
                .await
                .map_err(mailbox)?
                .map_err(SwarmError::from)
        })
    }
}

/// A page of messages as shown (edits, deletions, reactions applied),
/// newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<ShownMessage>, SwarmError>")]
pub struct MessagesPage {
    /// The conversation.
    pub conversation: CommitId,
    /// How many at most.
    pub limit: usize,
    /// Only messages older than this one.
    pub before: Option<CommitId>,
}

impl Handler<MessagesPage> for Account {
    type Result = ResponseFuture<Result<Vec<ShownMessage>, SwarmError>>;

    fn handle(&mut self, msg: MessagesPage, _: &mut Self::Context) -> Self::Result {
        let addr = conversation_addr(self, msg.conversation);
        Box::pin(async move {
            let page = addr?
                .send(MessagePage {
                    limit: msg.limit,
                    before: msg.before,
                })
                .await
                .map_err(mailbox)?;
            page.map_err(|e| match e {
                PageError::Conversation(e) => SwarmError::from(e),
                cursor => SwarmError::BadRequest(cursor.to_string()),
            })
        })
    }
}

/// Subscribes to the account's event stream.
#[derive(Message)]
#[rtype(result = "Result<EventSubscription, SwarmError>")]
pub struct SubscribeAccountEvents;

impl Handler<SubscribeAccountEvents> for Account {
    type Result = Result<EventSubscription, SwarmError>;

    fn handle(&mut self, _: SubscribeAccountEvents, _: &mut Self::Context) -> Self::Result {
        swarms(self)?
            .events
            .subscribe()
            .map_err(|e| SwarmError::Busy(e.to_string()))
    }
}
