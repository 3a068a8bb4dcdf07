//! Mutual TLS 1.3 on device certificates: our identity, the revocation book,
//! the rustls verifiers and the quinn crypto configs built from them.
//!
//! Both sides present the chain `[device cert, account cert]` and sign the
//! handshake with the device key (ed25519). Both verifiers do the same two
//! things and nothing else: the chain through
//! [`starling_protocol::verify_device_of`] (with the newest CRL the
//! [`RevocationBook`] holds for the peer's account) and the TLS 1.3 handshake
//! signature through the crypto provider's algorithms. There are no trust
//! roots: a device is trusted *as a device of the account its chain proves*;
//! who may use which channel is decided above, by account and device id. The
//! dialler additionally requires the account (and device, if known) it meant
//! to reach; a mismatch fails the handshake.
//!
//! Validity windows are checked against the local clock give or take
//! [`CERT_CLOCK_SKEW_SECS_MAX`] (two days): clocks are often wrong, and a
//! node a day slow would otherwise refuse every certificate issued today.
//! Revocation (the CRL) does not depend on time and gets no such slack.
//!
//! Session resumption and 0-RTT are disabled on both sides: a resumed session
//! skips certificate verification, so a revoked device could keep resuming.
//!
//! Each rejection maps to a distinct TLS alert ([`PeerRejection::to_rustls`]),
//! so the side that is rejected learns why from the alert, and both sides can
//! count the same reason ([`handshake_failure`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use starling_protocol::limits::CERT_CLOCK_SKEW_SECS_MAX;
use starling_protocol::{
    verify_device_of, AccountCert, AccountId, ChainError, CrlError, DeviceCert, DeviceId,
    RevocationList, VerifiedAccount, VerifiedCrl, VerifiedDevice,
};

/// The one ALPN protocol a Starling endpoint speaks.
pub const ALPN: &[u8] = b"starling/1";

/// The TLS server name a dialler sends. Identities are checked on certificates,
/// not names, and a 64-hex id does not fit a DNS label, so the name is fixed.
pub const SERVER_NAME: &str = "peer.starling.invalid";

/// Why our own identity cannot be used for TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("device certificate {device} is not for this device key")]
    KeyMismatch { device: DeviceId },
    #[error("device certificate names account {claimed}, not {account}")]
    AccountMismatch {
        claimed: AccountId,
        account: AccountId,
    },
    #[error("device key could not be encoded as PKCS#8: {0}")]
    KeyEncoding(String),
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the crypto provider lacks QUIC's initial cipher suite: {0}")]
    NoInitialCipherSuite(String),
}

/// This device's identity: its key and its chain to the account.
#[derive(Clone)]
pub struct LocalIdentity {
    device_key: SigningKey,
    device_cert: DeviceCert,
    account_cert: AccountCert,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("LocalIdentity")
            .field("account", &self.account_cert.id())
            .field("device", &self.device_cert.id())
            .finish()
    }
}

impl LocalIdentity {
    /// Checks that the certificate is this key's and names this account.
    pub fn new(
        device_key: SigningKey,
        device_cert: DeviceCert,
        account_cert: AccountCert,
    ) -> Result<Self, TlsError> {
        if device_cert.public_key() != &device_key.verifying_key() {
            return Err(TlsError::KeyMismatch {
                device: device_cert.id(),
            });
        }
        if device_cert.claimed_account_id() != account_cert.id() {
            return Err(TlsError::AccountMismatch {
                claimed: device_cert.claimed_account_id(),
                account: account_cert.id(),
            });
        }
        Ok(Self {
            device_key,
            device_cert,
            account_cert,
        })
    }

    /// The (account, device) pair this identity proves.
    pub fn verified(&self) -> VerifiedDevice {
        VerifiedDevice {
            account_id: self.account_cert.id(),
            device_id: self.device_cert.id(),
        }
    }

    /// The chain presented in the handshake: device first, then account.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.device_cert.der().to_vec()),
            CertificateDer::from(self.account_cert.der().to_vec()),
        ]
    }

    /// The device key as rustls wants it.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let der = self
            .device_key
            .to_pkcs8_der()
            .map_err(|e| TlsError::KeyEncoding(e.to_string()))?;
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            der.as_bytes().to_vec(),
        )))
    }
}

/// The newest verified CRL of each account we have heard of.
///
/// The handshake only carries certificates, so the verifier needs revocation
/// news from elsewhere: the account actor (for our own account, from account
/// sync) and conversations (for members, from swarm repositories) send it to
/// the transport as `UpdateRevocations`, which is the only writer. The
/// verifiers, which rustls calls synchronously inside the handshake, only
/// read. The lock is private to the transport; no other actor sees it.
#[derive(Clone, Debug, Default)]
pub struct RevocationBook {
    /// Only verified lists enter, so handshakes never re-verify a CRL's signature.
    lists: Arc<RwLock<HashMap<AccountId, Arc<VerifiedCrl>>>>,
}

impl RevocationBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest CRL we hold for `account`.
    pub fn get(&self, account: &AccountId) -> Option<Arc<VerifiedCrl>> {
        let lists = self
            .lists
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lists.get(account).cloned()
    }

    /// Keeps `crl` if it is `account`'s own and newer than what we hold.
    /// Returns whether it was kept.
    pub fn offer(&self, account: &AccountCert, crl: RevocationList) -> Result<bool, CrlError> {
        let crl = VerifiedCrl::verify(crl, account)?;
        let mut lists = self
            .lists
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let newer = lists
            .get(&account.id())
            .is_none_or(|held| crl.crl().supersedes(held.crl()));
        if newer {
            lists.insert(account.id(), Arc::new(crl));
        }
        Ok(newer)
    }
}

/// Whom a dialler means to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpectedPeer {
    /// The account the peer must prove.
    pub account_id: AccountId,
    /// The device, when the dialler knows which one it wants.
    pub device_id: Option<DeviceId>,
}

/// Why a peer's certificates were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejection {
    #[error("peer certificate is not a Starling device certificate: {0}")]
    Malformed(String),
    #[error("peer presented a self-signed certificate, not a device certificate")]
    SelfSigned,
    #[error("peer presented {found} certificates; a chain is [device, account]")]
    IncompleteChain { found: usize },
    #[error("peer chain does not verify: {0}")]
    Chain(ChainError),
    #[error("dialled account {expected} but the peer is a device of {found}")]
    WrongAccount {
        expected: AccountId,
        found: AccountId,
    },
    #[error("dialled device {expected} but the peer is device {found}")]
    WrongDevice { expected: DeviceId, found: DeviceId },
}

impl PeerRejection {
    /// The rustls error, chosen so each kind of rejection sends a distinct alert.
    pub fn to_rustls(&self) -> rustls::Error {
        let cert_error = match self {
            Self::Malformed(_) | Self::IncompleteChain { .. } => CertificateError::BadEncoding,
            Self::SelfSigned => CertificateError::UnknownIssuer,
            Self::Chain(chain) => match chain {
                ChainError::AccountSignature(_)
                | ChainError::DeviceSignature(_)
                | ChainError::OtherAccount { .. } => CertificateError::UnknownIssuer,
                ChainError::AccountNotCurrent(_) | ChainError::DeviceExpired(_) => {
                    CertificateError::Expired
                }
                ChainError::DeviceNotYetValid(_) => CertificateError::NotValidYet,
                ChainError::Revoked(_) => CertificateError::Revoked,
                ChainError::Crl(_) => {
                    CertificateError::Other(rustls::OtherError(Arc::new(chain.clone())))
                }
            },
            Self::WrongAccount { .. } | Self::WrongDevice { .. } => {
                CertificateError::ApplicationVerificationFailure
            }
        };
        rustls::Error::InvalidCertificate(cert_error)
    }
}

fn system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

/// Most account certificates whose self-signature a verifier remembers.
const VERIFIED_ACCOUNTS_CACHED_MAX: usize = 1024;

/// The checks both sides share: parse the chain, verify it with the book's CRL.
#[derive(Debug)]
struct ChainCheck {
    book: RevocationBook,
    algorithms: WebPkiSupportedAlgorithms,
    /// Account certificates (by their exact DER) whose self-signature already
    /// verified: peers present the same few again and again, and skipping the
    /// re-verification is a third of a handshake's chain cost. Bounded; when
    /// full it is emptied, which only costs re-verification.
    verified_accounts: Mutex<HashMap<Vec<u8>, VerifiedAccount>>,
}

impl ChainCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(VerifiedDevice, DeviceCert), PeerRejection> {
        let device = match DeviceCert::from_der(end_entity) {
            Ok(device) => device,
            // A self-signed (CA-shaped) certificate in the device slot is the
            // classic "just generate a cert" client; name it for the logs.
            Err(_) if AccountCert::from_der(end_entity).is_ok() => {
                return Err(PeerRejection::SelfSigned)
            }
            Err(e) => return Err(PeerRejection::Malformed(e.to_string())),
        };
        let [account] = intermediates else {
            return Err(PeerRejection::IncompleteChain {
                found: 1 + intermediates.len(),
            });
        };
        let account = self.verified_account(account)?;
        let crl = self.book.get(&account.cert().id());
        // Windows give or take the clock error a node is built to absorb: a
        // node a day slow must still accept a certificate issued today.
        let skew = Duration::from_secs(CERT_CLOCK_SKEW_SECS_MAX);
        let verified = verify_device_of(&device, &account, crl.as_deref(), system_time(now), skew)
            .map_err(PeerRejection::Chain)?;
        Ok((verified, device))
    }

    fn verified_account(&self, der: &[u8]) -> Result<VerifiedAccount, PeerRejection> {
        let mut cache = self
            .verified_accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = cache.get(der) {
            return Ok(known.clone());
        }
        let cert =
            AccountCert::from_der(der).map_err(|e| PeerRejection::Malformed(e.to_string()))?;
        let verified = VerifiedAccount::verify(cert).map_err(PeerRejection::Chain)?;
        if cache.len() >= VERIFIED_ACCOUNTS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(der.to_vec(), verified.clone());
        Ok(verified)
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// Verifies a client's chain (server side).
#[derive(Debug)]
struct ClientVerifier {
    check: ChainCheck,
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No roots: every account is its own CA.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check.verify(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                tracing::warn!(%rejection, "rejecting a client's certificate");
                Err(rejection.to_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies a server's chain and that it is the peer we dialled (client side).
#[derive(Debug)]
struct ServerVerifier {
    check: ChainCheck,
    expected: ExpectedPeer,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self
            .check
            .verify(end_entity, intermediates, now)
            .and_then(|(verified, _)| {
                if verified.account_id != self.expected.account_id {
                    return Err(PeerRejection::WrongAccount {
                        expected: self.expected.account_id,
                        found: verified.account_id,
                    });
                }
                match self.expected.device_id {
                    Some(device) if device != verified.device_id => {
                        Err(PeerRejection::WrongDevice {
                            expected: device,
                            found: verified.device_id,
                        })
                    }
                    _ => Ok(()),
                }
            });
        match result {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(rejection) => {
                tracing::warn!(%rejection, "rejecting a server's certificate");
                Err(rejection.to_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The crypto provider every Starling config uses (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_check(provider: &CryptoProvider, book: &RevocationBook) -> ChainCheck {
    ChainCheck {
        book: book.clone(),
        algorithms: provider.signature_verification_algorithms,
        verified_accounts: Mutex::new(HashMap::new()),
    }
}

/// The rustls server config: TLS 1.3, ALPN `starling/1`, client certificates required.
pub fn server_crypto(
    identity: &LocalIdentity,
    book: &RevocationBook,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(ClientVerifier {
        check: chain_check(&provider, book),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.private_key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// The rustls client config for dialling `expected`: TLS 1.3, ALPN
/// `starling/1`, our chain as client certificate.
pub fn client_crypto(
    identity: &LocalIdentity,
    book: &RevocationBook,
    expected: ExpectedPeer,
) -> Result<rustls::ClientConfig, TlsError> {
    client_crypto_presenting(
        Some((identity.chain(), identity.private_key()?)),
        book,
        expected,
    )
}

/// Like [`client_crypto`] but presenting any chain (or none). The transport
/// only ever presents its own identity; tools and tests use this to play a
/// misbehaving client against a real server.
pub fn client_crypto_presenting(
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    book: &RevocationBook,
    expected: ExpectedPeer,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(ServerVerifier {
        check: chain_check(&provider, book),
        expected,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// Wraps a rustls server config for quinn.
pub fn quic_server_crypto(config: rustls::ServerConfig) -> Result<QuicServerConfig, TlsError> {
    QuicServerConfig::try_from(config).map_err(|e| TlsError::NoInitialCipherSuite(e.to_string()))
}

/// Wraps a rustls client config for quinn.
pub fn quic_client_crypto(config: rustls::ClientConfig) -> Result<QuicClientConfig, TlsError> {
    QuicClientConfig::try_from(config).map_err(|e| TlsError::NoInitialCipherSuite(e.to_string()))
}

/// Who detected a failed handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureSide {
    /// We rejected the peer (or our handshake broke locally).
    Local,
    /// The peer rejected us and told us why.
    Remote,
}

impl FailureSide {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// A bounded label for a TLS alert number.
fn alert_label(alert: u8) -> &'static str {
    match alert {
        42 => "bad_certificate",
        44 => "revoked",
        45 => "expired",
        46 => "bad_crl",
        48 => "untrusted_issuer",
        49 => "wrong_peer",
        51 => "bad_signature",
        116 => "no_certificate",
        120 => "wrong_alpn",
        _ => "tls_alert",
    }
}

/// Who failed a handshake and why, as a bounded label, from quinn's error.
/// Alerts come from [`PeerRejection::to_rustls`] (and rustls itself for
/// missing certificates and ALPN), so both sides derive the same label.
pub fn handshake_failure(error: &quinn::ConnectionError) -> (FailureSide, &'static str) {
    fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
        let code = u64::from(code);
        (code & !0xff == 0x100).then_some((code & 0xff) as u8)
    }
    match error {
        quinn::ConnectionError::TransportError(e) => (
            FailureSide::Local,
            crypto_alert(e.code).map_or("transport_error", alert_label),
        ),
        quinn::ConnectionError::ConnectionClosed(close) => (
            FailureSide::Remote,
            crypto_alert(close.error_code).map_or("transport_error", alert_label),
        ),
        quinn::ConnectionError::ApplicationClosed(_) => (FailureSide::Remote, "closed"),
        quinn::ConnectionError::TimedOut => (FailureSide::Local, "timeout"),
        quinn::ConnectionError::VersionMismatch => (FailureSide::Remote, "version_mismatch"),
        quinn::ConnectionError::Reset => (FailureSide::Remote, "reset"),
        quinn::ConnectionError::LocallyClosed | quinn::ConnectionError::CidsExhausted => {
            (FailureSide::Local, "closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn account(seed: u64) -> (SigningKey, AccountCert) {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(seed));
        let cert = AccountCert::issue(&key, SystemTime::now(), &mut StdRng::seed_from_u64(seed))
            .expect("issue");
        (key, cert)
    }

    fn device(account: &(SigningKey, AccountCert), seed: u64) -> (SigningKey, DeviceCert) {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(seed));
        let cert = DeviceCert::issue(
            &account.0,
            &account.1,
            &key.verifying_key(),
            SystemTime::now(),
            &mut StdRng::seed_from_u64(seed),
        )
        .expect("issue");
        (key, cert)
    }

    /// What the peer learns from our alert, for each kind of rejection.
    fn label_seen_by_peer(rejection: &PeerRejection) -> &'static str {
        let rustls::Error::InvalidCertificate(cert_error) = rejection.to_rustls() else {
            panic!("every rejection is a certificate error");
        };
        let alert = u8::from(rustls::AlertDescription::from(cert_error));
        let close = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        let (side, label) = handshake_failure(&close);
        assert_eq!(side, FailureSide::Remote);
        label
    }

    #[test]
    fn each_rejection_reaches_the_peer_as_its_own_reason() {
        let a = account(1);
        let (_, d) = device(&a, 2);
        let (account_id, device_id) = (a.1.id(), d.id());
        // One row per rejection: what we found, the reason both sides count.
        let cases = [
            (PeerRejection::Malformed("x".into()), "bad_certificate"),
            (
                PeerRejection::IncompleteChain { found: 1 },
                "bad_certificate",
            ),
            (PeerRejection::SelfSigned, "untrusted_issuer"),
            (
                PeerRejection::Chain(ChainError::DeviceSignature(device_id)),
                "untrusted_issuer",
            ),
            (
                PeerRejection::Chain(ChainError::AccountSignature(account_id)),
                "untrusted_issuer",
            ),
            (
                PeerRejection::Chain(ChainError::DeviceExpired(device_id)),
                "expired",
            ),
            (
                PeerRejection::Chain(ChainError::DeviceNotYetValid(device_id)),
                "expired",
            ),
            (
                PeerRejection::Chain(ChainError::AccountNotCurrent(account_id)),
                "expired",
            ),
            (
                PeerRejection::Chain(ChainError::Revoked(device_id)),
                "revoked",
            ),
            (
                PeerRejection::Chain(ChainError::Crl(CrlError::Encode("x".into()))),
                "bad_crl",
            ),
            (
                PeerRejection::WrongAccount {
                    expected: account_id,
                    found: account_id,
                },
                "wrong_peer",
            ),
            (
                PeerRejection::WrongDevice {
                    expected: device_id,
                    found: device_id,
                },
                "wrong_peer",
            ),
        ];
        for (rejection, label) in cases {
            assert_eq!(label_seen_by_peer(&rejection), label, "{rejection}");
        }
    }

    #[test]
    fn identity_must_match_its_key_and_account() {
        let a = account(1);
        let (key, cert) = device(&a, 2);
        assert!(LocalIdentity::new(key.clone(), cert.clone(), a.1.clone()).is_ok());
        let (other_key, _) = device(&a, 3);
        assert!(matches!(
            LocalIdentity::new(other_key, cert.clone(), a.1.clone()),
            Err(TlsError::KeyMismatch { .. })
        ));
        let other_account = account(4);
        assert!(matches!(
            LocalIdentity::new(key, cert, other_account.1),
            Err(TlsError::AccountMismatch { .. })
        ));
    }

    #[test]
    fn the_book_keeps_only_newer_verified_lists() {
        let a = account(1);
        let (_, d) = device(&a, 2);
        let b = account(3);
        let book = RevocationBook::new();
        let first = RevocationList::first(&a.0, &a.1, SystemTime::now()).expect("crl");
        let second = first
            .with_revoked(&a.0, &a.1, d.serial(), SystemTime::now())
            .expect("crl");
        assert_eq!(book.offer(&a.1, first.clone()), Ok(true));
        assert_eq!(book.offer(&a.1, second.clone()), Ok(true));
        assert_eq!(book.offer(&a.1, first), Ok(false));
        assert_eq!(
            book.get(&a.1.id()).map(|held| held.crl().clone()),
            Some(second)
        );
        // A list offered under the wrong account is refused and not stored.
        let foreign = RevocationList::first(&b.0, &b.1, SystemTime::now()).expect("crl");
        assert!(book.offer(&a.1, foreign).is_err());
        assert!(book.get(&b.1.id()).is_none());
    }
}
