//! Discovery record formats: the mDNS TXT keys and the mainline DHT records
//! (BEP 44 mutable items), as pure encode/decode functions.
//!
//! Every record is a *hint*: it says where a device might listen. Identity is
//! decided only by the TLS handshake (`verify_device_chain`), so a lying
//! record costs one failed handshake, never trust. Decoders still bound and
//! check every length, because the bytes come from strangers.
//!
//! DHT records (`docs/PROTOCOL.md` §12):
//! - **device record**, signed by the device key, salt [`DEVICE_RECORD_SALT`]:
//!   `0x01 | account id (32) | n (1) | n × address`, where an address is
//!   `0x04 | IPv4 (4) | port (2, big-endian)` or `0x06 | IPv6 (16) | port (2)`;
//! - **account record**, signed by the account key, salt
//!   [`ACCOUNT_RECORD_SALT`]: `0x01 | n (1) | n × device public key (32)`;
//! - **rendezvous**: devices `announce_peer` their QUIC port under
//!   [`rendezvous_hash`] of their account id, so a device that knows only an
//!   account id (an invitee, say) can find candidate addresses.
//!
//! The BEP 44 sequence number is the signer's clock in seconds, so it only
//! grows across restarts; [`bep44_signable`] is the exact byte string BEP 44
//! signs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sha2::{Digest, Sha256};

use crate::id::{AccountId, DeviceId, ID_BYTES};

/// The mDNS service type Starling devices advertise and browse.
pub const MDNS_SERVICE_TYPE: &str = "_starling._udp.local.";
/// TXT key: record format version (value [`MDNS_TXT_VERSION`]).
pub const MDNS_TXT_KEY_VERSION: &str = "v";
/// TXT key: the account id (64 hex digits).
pub const MDNS_TXT_KEY_ACCOUNT: &str = "account";
/// TXT key: the device id (64 hex digits).
pub const MDNS_TXT_KEY_DEVICE: &str = "device";
/// The TXT format this version writes and reads.
pub const MDNS_TXT_VERSION: &str = "1";

/// Salt of the device record (BEP 44).
pub const DEVICE_RECORD_SALT: &[u8] = b"starling/device/1";
/// Salt of the account record (BEP 44).
pub const ACCOUNT_RECORD_SALT: &[u8] = b"starling/account/1";
/// Prefix hashed with an account id into its rendezvous info-hash.
pub const RENDEZVOUS_PREFIX: &[u8] = b"starling/rendezvous/1";
/// Record format version byte.
pub const RECORD_VERSION: u8 = 1;
/// Addresses one device record carries at most.
pub const DEVICE_RECORD_ADDRESSES_MAX: usize = 16;
/// Devices one account record lists at most (keeps the value under BEP 44's
/// 1000-byte limit: 2 + 24 × 32 = 770).
pub const ACCOUNT_RECORD_DEVICES_MAX: usize = 24;
/// BEP 44's limit on a value.
pub const BEP44_VALUE_BYTES_MAX: usize = 1000;

/// Why a record could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error("record format version {0}; this starling reads version {RECORD_VERSION}")]
    Version(u8),
    #[error("record ends early (needs {needed} bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("record lists {found} entries; the limit is {max}")]
    TooMany { found: usize, max: usize },
    #[error("unknown address family tag {0}")]
    Family(u8),
    #[error("record of {0} bytes exceeds BEP 44's {BEP44_VALUE_BYTES_MAX}")]
    TooLarge(usize),
}

/// What a device record says: the device speaks for `account` at `addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The account the device claims (checked by TLS when dialled).
    pub account: AccountId,
    /// Where it listens.
    pub addresses: Vec<SocketAddr>,
}

impl DeviceRecord {
    /// The record's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        if self.addresses.len() > DEVICE_RECORD_ADDRESSES_MAX {
            return Err(RecordError::TooMany {
                found: self.addresses.len(),
                max: DEVICE_RECORD_ADDRESSES_MAX,
            });
        }
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(self.account.as_bytes());
        out.push(self.addresses.len() as u8);
        for addr in &self.addresses {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&addr.port().to_be_bytes());
        }
        Ok(out)
    }

    /// Reads a record, checking every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut reader = Reader::new(bytes)?;
        let account = AccountId::from_bytes(reader.array::<ID_BYTES>()?);
        let count = reader.byte()? as usize;
        if count > DEVICE_RECORD_ADDRESSES_MAX {
            return Err(RecordError::TooMany {
                found: count,
                max: DEVICE_RECORD_ADDRESSES_MAX,
            });
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match reader.byte()? {
                4 => IpAddr::V4(Ipv4Addr::from(reader.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(reader.array::<16>()?)),
                other => return Err(RecordError::Family(other)),
            };
            let port = u16::from_be_bytes(reader.array::<2>()?);
            addresses.push(SocketAddr::new(ip, port));
        }
        reader.finish()?;
        Ok(Self { account, addresses })
    }
}

/// What an account record says: these are the account's device keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Raw ed25519 public keys of the account's devices.
    pub device_keys: Vec<[u8; 32]>,
}

impl AccountRecord {
    /// The record's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        if self.device_keys.len() > ACCOUNT_RECORD_DEVICES_MAX {
            return Err(RecordError::TooMany {
                found: self.device_keys.len(),
                max: ACCOUNT_RECORD_DEVICES_MAX,
            });
        }
        let mut out = vec![RECORD_VERSION, self.device_keys.len() as u8];
        for key in &self.device_keys {
            out.extend_from_slice(key);
        }
        Ok(out)
    }

    /// Reads a record, checking every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut reader = Reader::new(bytes)?;
        let count = reader.byte()? as usize;
        if count > ACCOUNT_RECORD_DEVICES_MAX {
            return Err(RecordError::TooMany {
                found: count,
                max: ACCOUNT_RECORD_DEVICES_MAX,
            });
        }
        let mut device_keys = Vec::with_capacity(count);
        for _ in 0..count {
            device_keys.push(reader.array::<32>()?);
        }
        reader.finish()?;
        Ok(Self { device_keys })
    }

    /// The device ids the listed keys stand for.
    pub fn device_ids(&self) -> Vec<DeviceId> {
        self.device_keys
            .iter()
            .map(|key| DeviceId::from_bytes(Sha256::digest(key).into()))
            .collect()
    }
}

/// The 20-byte info-hash under which an account's devices announce themselves.
pub fn rendezvous_hash(account: &AccountId) -> [u8; 20] {
    let mut hasher = Sha256::new();
    hasher.update(RENDEZVOUS_PREFIX);
    hasher.update(account.as_bytes());
    let digest = hasher.finalize();
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest[..20]);
    out
}

/// The exact bytes BEP 44 signs for a mutable item:
/// `4:salt<len>:<salt>3:seqi<seq>e1:v<len>:<value>` (the salt part only if
/// there is a salt).
pub fn bep44_signable(seq: i64, value: &[u8], salt: Option<&[u8]>) -> Result<Vec<u8>, RecordError> {
    if value.len() > BEP44_VALUE_BYTES_MAX {
        return Err(RecordError::TooLarge(value.len()));
    }
    let mut out = Vec::with_capacity(value.len() + 64);
    if let Some(salt) = salt {
        out.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
        out.extend_from_slice(salt);
    }
    out.extend_from_slice(format!("3:seqi{seq}e1:v{}:", value.len()).as_bytes());
    out.extend_from_slice(value);
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, RecordError> {
        match bytes.first() {
            None => Err(RecordError::Empty),
            Some(&RECORD_VERSION) => Ok(Self { bytes, offset: 1 }),
            Some(&other) => Err(RecordError::Version(other)),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let end = self.offset + N;
        let slice = self
            .bytes
            .get(self.offset..end)
            .ok_or(RecordError::Truncated {
                offset: self.offset,
                needed: N,
            })?;
        self.offset = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn finish(self) -> Result<(), RecordError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            extra => Err(RecordError::Trailing(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::from_bytes([7; 32])
    }

    #[test]
    fn device_record_round_trips() {
        let record = DeviceRecord {
            account: account(),
            addresses: vec![
                "10.1.2.3:7420".parse().unwrap(),
                "[fe80::1]:9".parse().unwrap(),
            ],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(bytes.len(), 1 + 32 + 1 + 7 + 19);
        assert_eq!(DeviceRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn account_record_round_trips_and_names_devices() {
        let record = AccountRecord {
            device_keys: vec![[1; 32], [2; 32]],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(AccountRecord::decode(&bytes).unwrap(), record);
        let ids = record.device_ids();
        assert_eq!(
            ids[0],
            DeviceId::from_bytes(Sha256::digest([1u8; 32]).into())
        );
        let full = AccountRecord {
            device_keys: vec![[0; 32]; ACCOUNT_RECORD_DEVICES_MAX],
        };
        assert!(full.encode().unwrap().len() <= BEP44_VALUE_BYTES_MAX);
    }

    /// One row per way a stranger's bytes can be wrong.
    #[test]
    fn bad_records_are_typed_errors() {
        let good = DeviceRecord {
            account: account(),
            addresses: vec!["10.0.0.1:1".parse().unwrap()],
        }
        .encode()
        .unwrap();
        let mut wrong_family = good.clone();
        wrong_family[34] = 5;
        let mut too_many = good[..34].to_vec();
        too_many[33] = (DEVICE_RECORD_ADDRESSES_MAX + 1) as u8;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>, RecordError)> = vec![
            ("empty", vec![], RecordError::Empty),
            ("version", vec![2], RecordError::Version(2)),
            (
                "truncated",
                good[..good.len() - 1].to_vec(),
                RecordError::Truncated {
                    offset: 39,
                    needed: 2,
                },
            ),
            ("family", wrong_family, RecordError::Family(5)),
            (
                "too many",
                too_many,
                RecordError::TooMany {
                    found: DEVICE_RECORD_ADDRESSES_MAX + 1,
                    max: DEVICE_RECORD_ADDRESSES_MAX,
                },
            ),
            ("trailing", trailing, RecordError::Trailing(1)),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(DeviceRecord::decode(&bytes), Err(expected), "{name}");
        }
        assert_eq!(
            AccountRecord::decode(&[1, 1, 0]),
            Err(RecordError::Truncated {
                offset: 2,
                needed: 32
            })
        );
    }

    #[test]
    fn signable_is_bep44s_byte_string() {
        assert_eq!(
            bep44_signable(4, b"Hello world!", Some(b"foobar")).unwrap(),
            b"4:salt6:foobar3:seqi4e1:v12:Hello world!".to_vec()
        );
        assert_eq!(
            bep44_signable(1, b"x", None).unwrap(),
            b"3:seqi1e1:v1:x".to_vec()
        );
        assert!(bep44_signable(1, &[0; BEP44_VALUE_BYTES_MAX + 1], None).is_err());
    }

    #[test]
    fn rendezvous_differs_per_account() {
        assert_ne!(
            rendezvous_hash(&account()),
            rendezvous_hash(&AccountId::from_bytes([8; 32]))
        );
    }
}
