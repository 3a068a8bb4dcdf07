//! The membership state a conversation tree describes.
//!
//! The tree alone says who may write. Its files (all paths relative to the
//! tree root; `<account>` and `<device>` are 64-hex ids):
//!
//! | path | content |
//! |---|---|
//! | `mode` | the mode name, e.g. `invites-only` (no newline); written once |
//! | `profile.json` | conversation profile: JSON object, optional string fields `title`, `description`, `avatar` (base64) |
//! | `admins/<account>.crt` | PEM account certificate of an admin |
//! | `members/<account>.crt` | PEM account certificate of a (non-admin) member |
//! | `invited/<account>` | empty: an invitation not yet taken up |
//! | `banned/members/<account>.crt` | PEM account certificate of a banned account (empty if it was only invited) |
//! | `banned/devices/<device>.crt` | PEM device certificate of a banned account's device |
//! | `devices/<device>.crt` | PEM device certificate of a member's device |
//! | `CRLs/<account>.crl` | PEM revocation list of a member's account |
//! | `votes/ban/<target>/<voter>` | empty: admin `<voter>` votes to ban `<target>` |
//! | `votes/unban/<target>/<voter>` | empty: admin `<voter>` votes to unban `<target>` |
//!
//! Anything else in a tree makes it invalid. Building a [`SwarmState`] parses
//! every certificate once and verifies every device chain once (signatures,
//! issuer, revocation); per-commit checks then only compare times.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::body::{Mode, VoteAction};
use super::limits::{PROFILE_BYTES_MAX, TREE_FILES_MAX, TREE_FILE_BYTES_MAX};
use crate::cert::{AccountCert, DeviceCert};
use crate::chain::{verify_device_signature, ChainError, VerifiedAccount, VerifiedCrl};
use crate::crl::RevocationList;
use crate::id::{AccountId, DeviceId};

/// A tree's files: path → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The `mode` file.
pub const MODE_PATH: &str = "mode";
/// The profile file.
pub const PROFILE_PATH: &str = "profile.json";

/// `admins/<account>.crt`.
pub fn admin_path(account: &AccountId) -> String {
    format!("admins/{account}.crt")
}
/// `members/<account>.crt`.
pub fn member_path(account: &AccountId) -> String {
    format!("members/{account}.crt")
}
/// `invited/<account>`.
pub fn invited_path(account: &AccountId) -> String {
    format!("invited/{account}")
}
/// `banned/members/<account>.crt`.
pub fn banned_member_path(account: &AccountId) -> String {
    format!("banned/members/{account}.crt")
}
/// `banned/devices/<device>.crt`.
pub fn banned_device_path(device: &DeviceId) -> String {
    format!("banned/devices/{device}.crt")
}
/// `devices/<device>.crt`.
pub fn device_path(device: &DeviceId) -> String {
    format!("devices/{device}.crt")
}
/// `CRLs/<account>.crl`.
pub fn crl_path(account: &AccountId) -> String {
    format!("CRLs/{account}.crl")
}
/// `votes/<action>/<target>/<voter>`.
pub fn vote_path(action: VoteAction, target: &AccountId, voter: &AccountId) -> String {
    format!("votes/{}/{target}/{voter}", action.as_str())
}

/// Why a tree is not a valid conversation tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("tree has {found} files; the limit is {max}")]
    TooManyFiles { found: usize, max: usize },
    #[error("file {path} is {found} bytes; the limit is {max}")]
    FileTooLarge {
        path: String,
        found: usize,
        max: usize,
    },
    #[error("tree has a file Starling does not define: {0}")]
    UnknownPath(String),
    #[error("file {path} is invalid: {reason}")]
    BadFile { path: String, reason: String },
    #[error("tree has no valid mode file")]
    NoMode,
    #[error("account {0} appears in more than one of admins/, members/, invited/, banned/")]
    AccountInTwoRoles(AccountId),
}

/// What verifying a device's chain found (time windows are checked per commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStanding {
    /// The chain holds: the device speaks for `account`.
    Valid {
        /// Its account.
        account: AccountId,
    },
    /// The chain fails (revoked, bad signature, account not a member…).
    Invalid(ChainError),
    /// The device's account is not an admin or member.
    NotAMember(AccountId),
}

/// The membership state described by one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmState {
    files: Arc<Files>,
    mode: Mode,
    admins: BTreeMap<AccountId, AccountCert>,
    members: BTreeMap<AccountId, AccountCert>,
    invited: BTreeSet<AccountId>,
    banned_members: BTreeSet<AccountId>,
    devices: BTreeMap<DeviceId, (DeviceCert, DeviceStanding)>,
    banned_devices: BTreeMap<DeviceId, DeviceCert>,
    crls: BTreeMap<AccountId, RevocationList>,
    votes: BTreeMap<(VoteAction, AccountId), BTreeSet<AccountId>>,
}

fn bad(path: &str, reason: impl ToString) -> StateError {
    StateError::BadFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn pem_text<'a>(path: &str, content: &'a [u8]) -> Result<&'a str, StateError> {
    std::str::from_utf8(content).map_err(|_| bad(path, "not UTF-8"))
}

/// The one id-named component in `dir/<id><suffix>`.
fn id_in<T: std::str::FromStr>(path: &str, dir: &str, suffix: &str) -> Option<T> {
    path.strip_prefix(dir)?
        .strip_suffix(suffix)
        .filter(|name| !name.contains('/'))?
        .parse()
        .ok()
}

impl SwarmState {
    /// Parses and checks a tree's files.
    pub fn from_files(files: Files) -> Result<Self, StateError> {
        Self::from_shared(Arc::new(files))
    }

    /// Like [`SwarmState::from_files`], sharing the file map.
    pub fn from_shared(files: Arc<Files>) -> Result<Self, StateError> {
        Self::build(files, None)
    }

    /// Like [`SwarmState::from_shared`], reusing what `like` (the state of a
    /// similar tree: a parent's, say) already parsed and checked wherever
    /// the bytes are the same: a certificate whose file is unchanged is not
    /// parsed again, and a device whose certificate, account certificate and
    /// CRL are all unchanged keeps its chain verdict. Trees of one
    /// conversation differ in a few files, so this saves nearly all of the
    /// work; the result is exactly what `from_shared` gives.
    pub fn from_shared_like(files: Arc<Files>, like: &SwarmState) -> Result<Self, StateError> {
        Self::build(files, Some(like))
    }

    fn build(files: Arc<Files>, like: Option<&SwarmState>) -> Result<Self, StateError> {
        let unchanged = |path: &str, content: &[u8]| -> bool {
            like.is_some_and(|l| l.files.get(path).is_some_and(|c| c.as_slice() == content))
        };
        if files.len() > TREE_FILES_MAX {
            return Err(StateError::TooManyFiles {
                found: files.len(),
                max: TREE_FILES_MAX,
            });
        }
        let mut mode = None;
        let mut admins = BTreeMap::new();
        let mut members = BTreeMap::new();
        let mut invited = BTreeSet::new();
        let mut banned_members = BTreeSet::new();
        let mut device_certs = BTreeMap::new();
        let mut banned_devices = BTreeMap::new();
        let mut crls = BTreeMap::new();
        let mut votes: BTreeMap<(VoteAction, AccountId), BTreeSet<AccountId>> = BTreeMap::new();
        for (path, content) in files.iter() {
            if content.len() > TREE_FILE_BYTES_MAX {
                return Err(StateError::FileTooLarge {
                    path: path.clone(),
                    found: content.len(),
                    max: TREE_FILE_BYTES_MAX,
                });
            }
            if path == MODE_PATH {
                mode = Some(
                    std::str::from_utf8(content)
                        .ok()
                        .and_then(Mode::parse)
                        .ok_or(StateError::NoMode)?,
                );
            } else if path == PROFILE_PATH {
                check_profile(content).map_err(|reason| bad(path, reason))?;
            } else if let Some(id) = id_in::<AccountId>(path, "admins/", ".crt") {
                let known = like
                    .filter(|_| unchanged(path, content))
                    .and_then(|l| l.admins.get(&id).cloned());
                let cert = match known {
                    Some(cert) => cert,
                    None => account_cert(path, content, id)?,
                };
                admins.insert(id, cert);
            } else if let Some(id) = id_in::<AccountId>(path, "members/", ".crt") {
                let known = like
                    .filter(|_| unchanged(path, content))
                    .and_then(|l| l.members.get(&id).cloned());
                let cert = match known {
                    Some(cert) => cert,
                    None => account_cert(path, content, id)?,
                };
                members.insert(id, cert);
            } else if let Some(id) = id_in::<AccountId>(path, "invited/", "") {
                if !content.is_empty() {
                    return Err(bad(path, "invitation files are empty"));
                }
                invited.insert(id);
            } else if let Some(id) = id_in::<AccountId>(path, "banned/members/", ".crt") {
                if !content.is_empty() {
                    account_cert(path, content, id)?;
                }
                banned_members.insert(id);
            } else if let Some(id) = id_in::<DeviceId>(path, "banned/devices/", ".crt") {
                banned_devices.insert(id, device_cert(path, content, id)?);
            } else if let Some(id) = id_in::<DeviceId>(path, "devices/", ".crt") {
                let known = like
                    .filter(|_| unchanged(path, content))
                    .and_then(|l| l.devices.get(&id).map(|(c, _)| c.clone()));
                let cert = match known {
                    Some(cert) => cert,
                    None => device_cert(path, content, id)?,
                };
                device_certs.insert(id, cert);
            } else if let Some(id) = id_in::<AccountId>(path, "CRLs/", ".crl") {
                let known = like
                    .filter(|_| unchanged(path, content))
                    .and_then(|l| l.crls.get(&id).cloned());
                let crl = match known {
                    Some(crl) => crl,
                    None => RevocationList::from_pem(pem_text(path, content)?)
                        .map_err(|e| bad(path, e))?,
                };
                if crl.issuer() != id {
                    return Err(bad(path, "CRL issuer is not the account it is filed under"));
                }
                crls.insert(id, crl);
            } else if let Some((action, target, voter)) = parse_vote_path(path) {
                if !content.is_empty() {
                    return Err(bad(path, "vote files are empty"));
                }
                votes.entry((action, target)).or_default().insert(voter);
            } else {
                return Err(StateError::UnknownPath(path.chars().take(200).collect()));
            }
        }
        let mode = mode.ok_or(StateError::NoMode)?;
        // An account holds one role at a time; two would make permissions ambiguous.
        let mut seen = BTreeSet::new();
        for id in admins
            .keys()
            .chain(members.keys())
            .chain(invited.iter())
            .chain(banned_members.iter())
        {
            if !seen.insert(*id) {
                return Err(StateError::AccountInTwoRoles(*id));
            }
        }
        let mut devices = BTreeMap::new();
        for (id, cert) in device_certs {
            let owner: AccountId = cert.claimed_account_id();
            // The verdict depends on the device certificate, the owner's
            // role file and its CRL file: all unchanged, it is the same.
            let same_inputs = |l: &SwarmState| {
                let role_file = [admin_path(&owner), member_path(&owner)];
                let device_file = device_path(&id);
                let crl_file = crl_path(&owner);
                [
                    device_file.as_str(),
                    role_file[0].as_str(),
                    role_file[1].as_str(),
                    crl_file.as_str(),
                ]
                .iter()
                .all(|p| l.files.get(*p) == files.get(*p))
            };
            let known = like
                .filter(|l| same_inputs(l))
                .and_then(|l| l.devices.get(&id).map(|(_, standing)| standing.clone()));
            let standing = match known {
                Some(standing) => standing,
                None => match admins.get(&owner).or_else(|| members.get(&owner)) {
                    None => DeviceStanding::NotAMember(owner),
                    Some(account) => match chain_ignoring_time(&cert, account, crls.get(&owner)) {
                        Ok(()) => DeviceStanding::Valid { account: owner },
                        Err(e) => DeviceStanding::Invalid(e),
                    },
                },
            };
            devices.insert(id, (cert, standing));
        }
        Ok(Self {
            files,
            mode,
            admins,
            members,
            invited,
            banned_members,
            devices,
            banned_devices,
            crls,
            votes,
        })
    }

    /// The files this state was built from.
    pub fn files(&self) -> &Arc<Files> {
        &self.files
    }
    /// The conversation mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Admin accounts.
    pub fn admins(&self) -> impl Iterator<Item = &AccountId> {
        self.admins.keys()
    }
    /// Is `account` an admin?
    pub fn is_admin(&self, account: &AccountId) -> bool {
        self.admins.contains_key(account)
    }
    /// Is `account` an admin or a member?
    pub fn is_member(&self, account: &AccountId) -> bool {
        self.admins.contains_key(account) || self.members.contains_key(account)
    }
    /// Admins and members, in id order.
    pub fn member_ids(&self) -> BTreeSet<AccountId> {
        self.admins
            .keys()
            .chain(self.members.keys())
            .copied()
            .collect()
    }
    /// The account certificate of an admin or member.
    pub fn account_cert(&self, account: &AccountId) -> Option<&AccountCert> {
        self.admins
            .get(account)
            .or_else(|| self.members.get(account))
    }
    /// Is `account` invited?
    pub fn is_invited(&self, account: &AccountId) -> bool {
        self.invited.contains(account)
    }
    /// Is `account` banned?
    pub fn is_banned(&self, account: &AccountId) -> bool {
        self.banned_members.contains(account)
    }
    /// A device in `devices/`, with what its chain check found.
    pub fn device(&self, device: &DeviceId) -> Option<&(DeviceCert, DeviceStanding)> {
        self.devices.get(device)
    }
    /// Devices in `devices/`.
    pub fn device_ids(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices.keys()
    }
    /// Is `device` in `banned/devices/`?
    pub fn is_banned_device(&self, device: &DeviceId) -> bool {
        self.banned_devices.contains_key(device)
    }
    /// Device ids (active and banned) whose certificate names `account`.
    pub fn devices_of(&self, account: &AccountId) -> Vec<DeviceId> {
        self.devices
            .iter()
            .filter(|(_, (cert, _))| cert.claimed_account_id() == *account)
            .map(|(id, _)| *id)
            .collect()
    }
    /// Banned device ids whose certificate names `account`.
    pub fn banned_devices_of(&self, account: &AccountId) -> Vec<DeviceId> {
        self.banned_devices
            .iter()
            .filter(|(_, cert)| cert.claimed_account_id() == *account)
            .map(|(id, _)| *id)
            .collect()
    }
    /// The account's revocation list in the tree.
    pub fn crl(&self, account: &AccountId) -> Option<&RevocationList> {
        self.crls.get(account)
    }
    /// Accounts that voted for `action` on `target`.
    pub fn votes(&self, action: VoteAction, target: &AccountId) -> BTreeSet<AccountId> {
        self.votes
            .get(&(action, *target))
            .cloned()
            .unwrap_or_default()
    }
    /// All (action, target) pairs with votes.
    pub fn vote_targets(&self) -> impl Iterator<Item = &(VoteAction, AccountId)> {
        self.votes.keys()
    }
}

fn parse_vote_path(path: &str) -> Option<(VoteAction, AccountId, AccountId)> {
    let mut parts = path.split('/');
    if parts.next()? != "votes" {
        return None;
    }
    let action = match parts.next()? {
        "ban" => VoteAction::Ban,
        "unban" => VoteAction::Unban,
        _ => return None,
    };
    let target = parts.next()?.parse().ok()?;
    let voter = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((action, target, voter))
}

fn account_cert(path: &str, content: &[u8], id: AccountId) -> Result<AccountCert, StateError> {
    let cert = AccountCert::from_pem(pem_text(path, content)?).map_err(|e| bad(path, e))?;
    if cert.id() != id {
        return Err(bad(
            path,
            "certificate is not for the account it is filed under",
        ));
    }
    Ok(cert)
}

fn device_cert(path: &str, content: &[u8], id: DeviceId) -> Result<DeviceCert, StateError> {
    let cert = DeviceCert::from_pem(pem_text(path, content)?).map_err(|e| bad(path, e))?;
    if cert.id() != id {
        return Err(bad(
            path,
            "certificate is not for the device it is filed under",
        ));
    }
    Ok(cert)
}

/// Checks the profile document's shape and size.
pub fn check_profile(content: &[u8]) -> Result<(), String> {
    if content.len() > PROFILE_BYTES_MAX {
        return Err(format!(
            "profile is {} bytes; the limit is {PROFILE_BYTES_MAX}",
            content.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(content).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("profile is not a JSON object")?;
    for key in ["title", "description", "avatar"] {
        if let Some(v) = object.get(key) {
            if !v.is_string() {
                return Err(format!("profile field {key} is not a string"));
            }
        }
    }
    Ok(())
}

/// Verifies signatures, issuer and revocation of a chain, but not the time:
/// times are checked per commit against the commit's own time, so that every
/// replica reaches the same verdict whenever it validates.
pub fn chain_ignoring_time(
    device: &DeviceCert,
    account: &AccountCert,
    crl: Option<&RevocationList>,
) -> Result<(), ChainError> {
    let account = VerifiedAccount::verify(account.clone())?;
    let crl = crl
        .map(|crl| VerifiedCrl::verify(crl.clone(), account.cert()))
        .transpose()
        .map_err(ChainError::Crl)?;
    verify_device_signature(device, &account, crl.as_ref()).map(|_| ())
}
