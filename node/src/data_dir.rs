//! The node's data directory: where an account's keys, certificates and CRL live.
//!
//! ```text
//! DATA_DIR/
//!   account/                    0700, created whole by one rename
//!     account.json              public facts: format, ids, display name
//!     account.key.pem           0600 PKCS#8 ed25519 account key
//!     device.key.pem            0600 PKCS#8 ed25519 key of this device
//!     account.crt.pem           account certificate
//!     device.crt.pem            this device's certificate
//!     crl.pem                   the account's newest CRL
//!     devices/<device id>.crt.pem   every device the account knows
//! ```
//!
//! Every file is written atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new version, never a torn one.
//! A new account is assembled in a temporary sibling directory and renamed into
//! place, so a failed `create` or `import` leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use starling_protocol::{
    AccountCert, AccountId, AccountIdentity, DeviceCert, DeviceId, RevocationList,
};

const ACCOUNT_DIR: &str = "account";
const STATE_FILE: &str = "account.json";
const ACCOUNT_KEY_FILE: &str = "account.key.pem";
const DEVICE_KEY_FILE: &str = "device.key.pem";
const ACCOUNT_CERT_FILE: &str = "account.crt.pem";
const DEVICE_CERT_FILE: &str = "device.crt.pem";
const CRL_FILE: &str = "crl.pem";
const DEVICES_DIR: &str = "devices";
/// Version of the layout above; bumped when it changes incompatibly.
const LAYOUT_VERSION: u32 = 1;
const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// What went wrong with the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an account already exists in {dir} (account {account}); use another --data-dir")]
    AccountExists { dir: PathBuf, account: String },
    #[error("no account in {0}; run `starling account create` or `starling account import` first")]
    NoAccount(PathBuf),
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} has layout version {found}; this starling reads up to {LAYOUT_VERSION}")]
    NewerLayout { path: PathBuf, found: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`write_atomic`]'s temporary files have in their names.
const TEMP_MARK: &str = ".tmp-";
/// What [`DataDir::create`]'s staging directories start with.
const STAGING_PREFIX: &str = ".account-new-";

/// Writes `bytes` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    // A bare file name has the empty path as parent; it means the current directory.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .expect("data files have names")
        .to_string_lossy();
    let temp = dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
    // A file by that name was left by a crashed process that had our pid
    // (in a container the daemon's pid is the same at every start): no live
    // process writes it, and `create_new` would refuse it for good.
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(io_err(&temp))?;
        file.write_all(bytes).map_err(io_err(&temp))?;
        file.sync_all().map_err(io_err(&temp))?;
        fs::rename(&temp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    layout_version: u32,
    account_id: AccountId,
    device_id: DeviceId,
    display_name: String,
}

/// The data directory.
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A handle on `root`; nothing is touched until a method is called.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the account lives.
    pub fn account_dir(&self) -> PathBuf {
        self.root.join(ACCOUNT_DIR)
    }

    /// Creates the data directory (0700) if it does not exist.
    pub fn ensure_root(&self) -> Result<(), DataDirError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.root)
            .map_err(io_err(&self.root))
    }

    /// Fails with [`DataDirError::AccountExists`] if an account is already here.
    pub fn ensure_no_account(&self) -> Result<(), DataDirError> {
        let dir = self.account_dir();
        if dir.exists() {
            let account = fs::read_to_string(dir.join(STATE_FILE))
                .ok()
                .and_then(|s| serde_json::from_str::<State>(&s).ok())
                .map(|s| s.account_id.to_hex())
                .unwrap_or_else(|| "unreadable".into());
            return Err(DataDirError::AccountExists {
                dir: self.root.clone(),
                account,
            });
        }
        Ok(())
    }

    /// Writes a new account; fails if one exists. All or nothing.
    pub fn create(&self, account: &AccountIdentity) -> Result<(), DataDirError> {
        self.ensure_no_account()?;
        self.ensure_root()?;
        let staging = self
            .root
            .join(format!("{STAGING_PREFIX}{}", std::process::id()));
        let result = write_account_files(&staging, account).and_then(|()| {
            // rename(2) refuses to replace a non-empty directory, so a racing
            // `create` cannot clobber an account written in the meantime.
            fs::rename(&staging, self.account_dir()).map_err(|e| {
                match self.ensure_no_account() {
                    Err(exists) => exists,
                    Ok(()) => DataDirError::Io {
                        path: self.account_dir(),
                        source: e,
                    },
                }
            })?;
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.root))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Removes what a crash of an earlier process left: temporary files of
    /// [`write_atomic`] and half-written account directories. Call only
    /// while holding the daemon's lock. Returns what it removed.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, DataDirError> {
        let mut removed = Vec::new();
        for dir in [
            self.root.clone(),
            self.account_dir(),
            self.account_dir().join(DEVICES_DIR),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with('.') && name.contains(TEMP_MARK) && path.is_file() {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    removed.push(path);
                } else if dir == self.root && name.starts_with(STAGING_PREFIX) && path.is_dir() {
                    fs::remove_dir_all(&path).map_err(io_err(&path))?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// Loads and verifies the account.
    pub fn load(&self) -> Result<AccountIdentity, DataDirError> {
        let dir = self.account_dir();
        if !dir.join(STATE_FILE).exists() {
            return Err(DataDirError::NoAccount(self.root.clone()));
        }
        let read = |name: &str| fs::read_to_string(dir.join(name)).map_err(io_err(&dir.join(name)));
        let corrupt = |name: &str, reason: String| DataDirError::Corrupt {
            path: dir.join(name),
            reason,
        };
        let state: State = serde_json::from_str(&read(STATE_FILE)?)
            .map_err(|e| corrupt(STATE_FILE, e.to_string()))?;
        if state.layout_version > LAYOUT_VERSION {
            return Err(DataDirError::NewerLayout {
                path: dir.join(STATE_FILE),
                found: state.layout_version,
            });
        }
        let account_key = SigningKey::from_pkcs8_pem(&read(ACCOUNT_KEY_FILE)?)
            .map_err(|e| corrupt(ACCOUNT_KEY_FILE, e.to_string()))?;
        let device_key = SigningKey::from_pkcs8_pem(&read(DEVICE_KEY_FILE)?)
            .map_err(|e| corrupt(DEVICE_KEY_FILE, e.to_string()))?;
        let account_cert = AccountCert::from_pem(&read(ACCOUNT_CERT_FILE)?)
            .map_err(|e| corrupt(ACCOUNT_CERT_FILE, e.to_string()))?;
        let device_cert = DeviceCert::from_pem(&read(DEVICE_CERT_FILE)?)
            .map_err(|e| corrupt(DEVICE_CERT_FILE, e.to_string()))?;
        let crl = RevocationList::from_pem(&read(CRL_FILE)?)
            .map_err(|e| corrupt(CRL_FILE, e.to_string()))?;
        if account_cert.id() != state.account_id
            || account_key.verifying_key() != *account_cert.public_key()
        {
            return Err(corrupt(
                ACCOUNT_KEY_FILE,
                "account key, certificate and account.json disagree".into(),
            ));
        }
        if device_cert.id() != state.device_id
            || device_key.verifying_key() != *device_cert.public_key()
        {
            return Err(corrupt(
                DEVICE_KEY_FILE,
                "device key, certificate and account.json disagree".into(),
            ));
        }
        crl.verify(&account_cert)
            .map_err(|e| corrupt(CRL_FILE, e.to_string()))?;
        // Signatures and issuer must hold. Time is not checked: a clock that
        // is wrong (or a certificate that expired) must not make the account
        // unreadable, and revocation is reported, not refused, so a revoked
        // device can still show its state.
        starling_protocol::VerifiedAccount::verify(account_cert.clone())
            .and_then(|account| {
                starling_protocol::verify_device_signature(&device_cert, &account, None)
            })
            .map_err(|e| corrupt(DEVICE_CERT_FILE, e.to_string()))?;
        let devices_dir = dir.join(DEVICES_DIR);
        let mut known_devices = Vec::new();
        for entry in fs::read_dir(&devices_dir).map_err(io_err(&devices_dir))? {
            let path = entry.map_err(io_err(&devices_dir))?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                let cert = DeviceCert::from_pem(&text).map_err(|e| DataDirError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                known_devices.push(cert);
            }
        }
        known_devices.sort_by_key(|c| c.id());
        Ok(AccountIdentity {
            display_name: state.display_name,
            account_key,
            account_cert,
            device_key,
            device_cert,
            crl,
            known_devices,
        })
    }

    /// Replaces the account's CRL on disk.
    pub fn store_crl(&self, crl: &RevocationList) -> Result<(), DataDirError> {
        write_atomic(
            &self.account_dir().join(CRL_FILE),
            crl.to_pem().as_bytes(),
            PUBLIC_MODE,
        )
    }
}

fn write_account_files(dir: &Path, account: &AccountIdentity) -> Result<(), DataDirError> {
    let devices = dir.join(DEVICES_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&devices)
        .map_err(io_err(&devices))?;
    let state = State {
        layout_version: LAYOUT_VERSION,
        account_id: account.account_cert.id(),
        device_id: account.device_cert.id(),
        display_name: account.display_name.clone(),
    };
    let pkcs8 = |key: &SigningKey| {
        key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("PKCS#8 encoding of an in-memory key cannot fail")
    };
    let state_json = serde_json::to_vec_pretty(&state).expect("state serialises");
    write_atomic(
        &dir.join(ACCOUNT_KEY_FILE),
        pkcs8(&account.account_key).as_bytes(),
        SECRET_MODE,
    )?;
    write_atomic(
        &dir.join(DEVICE_KEY_FILE),
        pkcs8(&account.device_key).as_bytes(),
        SECRET_MODE,
    )?;
    write_atomic(
        &dir.join(ACCOUNT_CERT_FILE),
        account.account_cert.to_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    write_atomic(
        &dir.join(DEVICE_CERT_FILE),
        account.device_cert.to_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    write_atomic(
        &dir.join(CRL_FILE),
        account.crl.to_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    for cert in &account.known_devices {
        write_atomic(
            &devices.join(format!("{}.crt.pem", cert.id())),
            cert.to_pem().as_bytes(),
            PUBLIC_MODE,
        )?;
    }
    // Written last: its presence is what makes the directory an account.
    write_atomic(&dir.join(STATE_FILE), &state_json, PUBLIC_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_file_left_by_a_crash_does_not_block_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        // What a crash of a process with our pid leaves behind.
        let stale = dir
            .path()
            .join(format!(".run.json{TEMP_MARK}{}", std::process::id()));
        fs::write(&stale, b"half").unwrap();
        write_atomic(&path, b"{}", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert!(!stale.exists());
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().to_owned());
        fs::create_dir_all(data.account_dir().join(DEVICES_DIR)).unwrap();
        let kept = [
            dir.path().join("run.json"),
            data.account_dir().join(STATE_FILE),
        ];
        for file in &kept {
            fs::write(file, b"{}").unwrap();
        }
        let left = [
            dir.path().join(".run.json.tmp-4242"),
            data.account_dir().join(".device.key.pem.tmp-7"),
            data.account_dir()
                .join(DEVICES_DIR)
                .join(".x.crt.pem.tmp-1"),
        ];
        for file in &left {
            fs::write(file, b"half").unwrap();
        }
        let staging = dir.path().join(format!("{STAGING_PREFIX}99"));
        fs::create_dir_all(&staging).unwrap();
        let mut removed = data.remove_leftovers().unwrap();
        removed.sort();
        let mut expected: Vec<PathBuf> = left.to_vec();
        expected.push(staging);
        expected.sort();
        assert_eq!(removed, expected);
        assert!(kept.iter().all(|f| f.exists()));
    }
}
