//! Accounts whose devices this transport refuses: no connection from them
//! gets past the handshake, none is dialled, and none of their channels is
//! routed.
//!
//! Like the [`RevocationBook`](super::RevocationBook), the list is written
//! only by the transport actor (on [`SetBlockedAccounts`](super::SetBlockedAccounts),
//! which the account actor sends from its contact book) and read by the
//! accepting handshake tasks, which refuse a blocked peer before sending the
//! connection preface. The lock is private to the transport.
//!
//! A refused peer is not told why: its connection is closed with the generic
//! `disconnected` code, so blocking reveals nothing beyond "refused".

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use starling_protocol::contact::BLOCKED_ACCOUNTS_MAX;
use starling_protocol::AccountId;

/// The metric and log reason for everything refused because of a block.
pub const BLOCKED_REASON: &str = "blocked";

/// Why a block list was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockListError {
    #[error("{found} blocked accounts exceed the limit of {BLOCKED_ACCOUNTS_MAX}")]
    TooMany { found: usize },
}

/// The set of blocked accounts, shared between the actor and its handshake tasks.
#[derive(Clone, Debug, Default)]
pub struct BlockList {
    accounts: Arc<RwLock<BTreeSet<AccountId>>>,
}

impl BlockList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `account` is blocked.
    pub fn contains(&self, account: &AccountId) -> bool {
        self.accounts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(account)
    }

    /// Replaces the whole list; returns the accounts newly blocked.
    pub fn replace(
        &self,
        accounts: BTreeSet<AccountId>,
    ) -> Result<BTreeSet<AccountId>, BlockListError> {
        if accounts.len() > BLOCKED_ACCOUNTS_MAX {
            return Err(BlockListError::TooMany {
                found: accounts.len(),
            });
        }
        let mut held = self
            .accounts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let added = accounts.difference(&held).copied().collect();
        *held = accounts;
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_reports_new_blocks_and_refuses_oversize_lists() {
        let (a, b) = (
            AccountId::from_bytes([1; 32]),
            AccountId::from_bytes([2; 32]),
        );
        let list = BlockList::new();
        assert_eq!(list.replace([a].into()), Ok([a].into()));
        assert_eq!(list.replace([a, b].into()), Ok([b].into()));
        assert!(list.contains(&a) && list.contains(&b));
        assert_eq!(list.replace([b].into()), Ok(BTreeSet::new()));
        assert!(!list.contains(&a));
        let many: BTreeSet<AccountId> = (0..=BLOCKED_ACCOUNTS_MAX as u32)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&i.to_be_bytes());
                AccountId::from_bytes(bytes)
            })
            .collect();
        assert!(list.replace(many).is_err());
        assert!(list.contains(&b), "a refused list changes nothing");
    }
}
