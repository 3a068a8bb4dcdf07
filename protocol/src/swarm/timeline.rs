//! A page of messages as a person sees it: edits, deletions and reactions
//! folded into the messages they target.
//!
//! To the rules an edit, a deletion (an edit with empty text) and a reaction
//! are plain commits (`docs/PROTOCOL.md` §9.5); this module is the display
//! layer. It is fed commits newest first (the order of
//! [`super::order::NewestFirstWalk`]). An edit or reaction normally descends
//! from its target, so it arrives before the target does and waits in a map
//! until then. An edit applies only when its author is the target's author,
//! and the newest such edit wins; a reaction counts once per account and
//! reaction string. Edits, deletions and reactions are not themselves listed.
//!
//! A page is the `limit` newest text messages strictly older (in display
//! order) than an optional cursor. Memory is bounded by the walk
//! ([`PAGE_WALK_COMMITS_MAX`](super::limits::PAGE_WALK_COMMITS_MAX), which the
//! caller enforces) and by [`PAGE_EDIT_TEXT_BYTES_MAX`] for waiting edit texts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::body::{Body, BodyKind};
use super::ids::CommitId;
use super::limits::PAGE_EDIT_TEXT_BYTES_MAX;
use super::order::OrderKey;
use crate::id::AccountId;

/// One commit as the walk hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCommit {
    /// Its display key (the id is `key.id`).
    pub key: OrderKey,
    /// The account of the device that signed it, when known.
    pub author: Option<AccountId>,
    /// Its body.
    pub body: Body,
}

/// The accounts that reacted to a message with one reaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReactionCount {
    /// The reaction string (an emoji sequence).
    pub reaction: String,
    /// How many accounts reacted so.
    pub count: usize,
    /// Those accounts, sorted.
    pub accounts: Vec<AccountId>,
}

/// A text message as shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShownMessage {
    /// Its commit id.
    pub id: CommitId,
    /// Its author's account.
    pub author: Option<AccountId>,
    /// The text after the newest edit by its author; empty when deleted.
    pub body: String,
    /// Display time of the original message (`order::display_time_secs`),
    /// seconds since the Unix epoch.
    pub timestamp: i64,
    /// The message it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<CommitId>,
    /// Whether an edit by its author replaced the text.
    pub edited: bool,
    /// Whether its author deleted it.
    pub deleted: bool,
    /// Reactions, by reaction string.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
}

/// Builds one page from commits fed newest first.
#[derive(Debug)]
pub struct PageBuilder {
    limit: usize,
    before: Option<OrderKey>,
    /// Per target: the newest edit text of each author seen so far.
    edits: HashMap<CommitId, BTreeMap<AccountId, String>>,
    edit_bytes: usize,
    /// Per target: reaction → accounts.
    reactions: HashMap<CommitId, BTreeMap<String, BTreeSet<AccountId>>>,
    page: Vec<ShownMessage>,
}

impl PageBuilder {
    /// A page of at most `limit` messages older than `before` (all, if `None`).
    pub fn new(limit: usize, before: Option<OrderKey>) -> Self {
        Self {
            limit,
            before,
            edits: HashMap::new(),
            edit_bytes: 0,
            reactions: HashMap::new(),
            page: Vec::new(),
        }
    }

    /// Whether the page holds `limit` messages.
    pub fn is_full(&self) -> bool {
        self.page.len() >= self.limit
    }

    /// Takes the next-newest commit.
    pub fn offer(&mut self, commit: TimelineCommit) {
        if self.is_full() {
            return;
        }
        let Body::Known { kind, .. } = commit.body else {
            return;
        };
        let id = commit.key.id;
        match kind {
            BodyKind::Text {
                text,
                edit_of: Some(target),
                ..
            } => {
                let Some(author) = commit.author else {
                    return;
                };
                let per_author = self.edits.entry(target).or_default();
                // Newest first: an author's first edit seen is its newest.
                if per_author.contains_key(&author)
                    || self.edit_bytes + text.len() > PAGE_EDIT_TEXT_BYTES_MAX
                {
                    return;
                }
                self.edit_bytes += text.len();
                per_author.insert(author, text);
            }
            BodyKind::Text {
                text,
                reply_to,
                edit_of: None,
            } => {
                let edit = self.edits.remove(&id);
                let reactions = self.reactions.remove(&id);
                if self.before.is_some_and(|cursor| commit.key >= cursor) {
                    return;
                }
                let edit = edit.and_then(|mut by_author| {
                    commit.author.and_then(|author| by_author.remove(&author))
                });
                let (body, edited, deleted) = match edit {
                    Some(new_text) if new_text.is_empty() => (String::new(), true, true),
                    Some(new_text) => (new_text, true, false),
                    None => (text, false, false),
                };
                let reactions = reactions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(reaction, accounts)| ReactionCount {
                        reaction,
                        count: accounts.len(),
                        accounts: accounts.into_iter().collect(),
                    })
                    .collect();
                self.page.push(ShownMessage {
                    id,
                    author: commit.author,
                    body,
                    timestamp: commit.key.time_secs,
                    reply_to,
                    edited,
                    deleted,
                    reactions,
                });
            }
            BodyKind::Reaction { target, reaction } => {
                if let Some(author) = commit.author {
                    self.reactions
                        .entry(target)
                        .or_default()
                        .entry(reaction)
                        .or_default()
                        .insert(author);
                }
            }
            _ => {}
        }
    }

    /// The page, newest first.
    pub fn finish(self) -> Vec<ShownMessage> {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CommitId {
        CommitId::from_bytes([n; 20])
    }

    fn account(n: u8) -> AccountId {
        format!("{:02x}", n).repeat(32).parse().unwrap()
    }

    fn commit(n: u8, author: u8, kind: BodyKind) -> TimelineCommit {
        TimelineCommit {
            key: OrderKey {
                generation: n as u64,
                time_secs: 1_000 + n as i64,
                id: id(n),
            },
            author: Some(account(author)),
            body: Body::Known {
                generation: n as u64,
                kind,
            },
        }
    }

    fn text(t: &str) -> BodyKind {
        BodyKind::Text {
            text: t.into(),
            reply_to: None,
            edit_of: None,
        }
    }

    fn edit(target: u8, t: &str) -> BodyKind {
        BodyKind::Text {
            text: t.into(),
            reply_to: None,
            edit_of: Some(id(target)),
        }
    }

    /// Oldest first here; fed newest first like the walk does.
    fn page(history: Vec<TimelineCommit>, limit: usize, before: Option<u8>) -> Vec<ShownMessage> {
        let cursor = before.map(|n| history.iter().find(|c| c.key.id == id(n)).unwrap().key);
        let mut builder = PageBuilder::new(limit, cursor);
        for c in history.into_iter().rev() {
            builder.offer(c);
        }
        builder.finish()
    }

    #[test]
    fn table_of_display_rules() {
        let reply = BodyKind::Text {
            text: "re".into(),
            reply_to: Some(id(1)),
            edit_of: None,
        };
        let react = |target: u8, r: &str| BodyKind::Reaction {
            target: id(target),
            reaction: r.into(),
        };
        // (name, history oldest first, expected (id, body, edited, deleted) newest first)
        type Row = (
            &'static str,
            Vec<TimelineCommit>,
            Vec<(u8, &'static str, bool, bool)>,
        );
        let rows: Vec<Row> = vec![
            (
                "plain",
                vec![commit(1, 1, text("a")), commit(2, 2, text("b"))],
                vec![(2, "b", false, false), (1, "a", false, false)],
            ),
            (
                "own edit applies, newest wins",
                vec![
                    commit(1, 1, text("a")),
                    commit(2, 1, edit(1, "a2")),
                    commit(3, 1, edit(1, "a3")),
                ],
                vec![(1, "a3", true, false)],
            ),
            (
                "someone else's edit is ignored",
                vec![commit(1, 1, text("a")), commit(2, 2, edit(1, "hijack"))],
                vec![(1, "a", false, false)],
            ),
            (
                "empty edit deletes",
                vec![commit(1, 1, text("a")), commit(2, 1, edit(1, ""))],
                vec![(1, "", true, true)],
            ),
            (
                "reply is listed",
                vec![commit(1, 1, text("a")), commit(2, 2, reply.clone())],
                vec![(2, "re", false, false), (1, "a", false, false)],
            ),
            (
                "reactions are not listed",
                vec![commit(1, 1, text("a")), commit(2, 2, react(1, "👍"))],
                vec![(1, "a", false, false)],
            ),
        ];
        for (name, history, expected) in rows {
            let got: Vec<(u8, String, bool, bool)> = page(history, 10, None)
                .into_iter()
                .map(|m| (m.id.as_bytes()[0], m.body, m.edited, m.deleted))
                .collect();
            let expected: Vec<(u8, String, bool, bool)> = expected
                .into_iter()
                .map(|(i, b, e, d)| (i, b.to_owned(), e, d))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn reactions_count_each_account_once() {
        let react = |r: &str| BodyKind::Reaction {
            target: id(1),
            reaction: r.into(),
        };
        let shown = page(
            vec![
                commit(1, 1, text("a")),
                commit(2, 2, react("👍")),
                commit(3, 2, react("👍")),
                commit(4, 3, react("👍")),
                commit(5, 3, react("🎉")),
            ],
            10,
            None,
        );
        assert_eq!(shown.len(), 1);
        let counts: Vec<(String, usize)> = shown[0]
            .reactions
            .iter()
            .map(|r| (r.reaction.clone(), r.count))
            .collect();
        assert_eq!(counts, vec![("🎉".into(), 1), ("👍".into(), 2)]);
    }

    #[test]
    fn cursor_and_limit_page_through_history() {
        let history: Vec<TimelineCommit> = (1..=7).map(|n| commit(n, 1, text("m"))).collect();
        let first: Vec<u8> = page(history.clone(), 3, None)
            .iter()
            .map(|m| m.id.as_bytes()[0])
            .collect();
        assert_eq!(first, vec![7, 6, 5]);
        let second: Vec<u8> = page(history.clone(), 3, Some(5))
            .iter()
            .map(|m| m.id.as_bytes()[0])
            .collect();
        assert_eq!(second, vec![4, 3, 2]);
        let last: Vec<u8> = page(history, 3, Some(2))
            .iter()
            .map(|m| m.id.as_bytes()[0])
            .collect();
        assert_eq!(last, vec![1]);
    }

    #[test]
    fn an_edit_newer_than_the_cursor_applies_to_a_message_on_an_older_page() {
        let history = vec![
            commit(1, 1, text("a")),
            commit(2, 1, text("b")),
            commit(3, 1, edit(1, "a2")),
        ];
        let shown = page(history, 10, Some(2));
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].body.as_str(), shown[0].edited), ("a2", true));
    }
}
