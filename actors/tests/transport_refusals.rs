//! Every refusal the transport makes, each asserted on both sides (the typed
//! error or close the refused party sees, and the counters on both nodes),
//! and the refusing node still serving afterwards.

mod transport_support;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use starling_actors::transport::tls::{
    client_crypto, client_crypto_presenting, handshake_failure, SERVER_NAME,
};
use starling_actors::transport::*;
use starling_protocol::channel::{decode_reply, ChannelName, ChannelPattern, ReplyCode};
use starling_protocol::{AccountCert, RevocationList};
use transport_support::*;

fn failed(node: &Node, side: &str, reason: &str) -> f64 {
    metric(
        &node.registry,
        "starling_transport_handshakes_failed_total",
        &[("side", side), ("reason", reason)],
    )
}

fn refused(node: &Node, side: &str, reason: &str) -> f64 {
    metric(
        &node.registry,
        "starling_transport_channels_refused_total",
        &[("side", side), ("reason", reason)],
    )
}

fn assert_handshake_error(
    result: Result<impl std::fmt::Debug, ConnectError>,
    side: FailureSide,
    reason: &str,
) {
    match result {
        Err(ConnectError::Handshake {
            side: s, reason: r, ..
        }) => {
            assert_eq!((s, r), (side, reason), "handshake failure kind");
        }
        other => panic!("expected a {reason} handshake failure, got {other:?}"),
    }
}

/// The refusing node still completes a good handshake and channel.
async fn still_serving(node: &Node) {
    let friend = Account::new(900).device(901);
    let client = start_udp_node(&friend);
    let _seen = register_echo(node, "sync").await;
    within("good connect", connect(&client, node))
        .await
        .unwrap();
    let back = within("good echo", echo_over(&client, &node.device, "sync", b"ok")).await;
    assert_eq!(back, b"ok");
}

#[actix::test]
async fn dialling_the_wrong_account_fails_on_both_sides() {
    let bob = Account::new(2).device(21);
    let carol = Account::new(3);
    let a = start_udp_node(&Account::new(1).device(11));
    let b = start_udp_node(&bob);
    let result = within(
        "connect",
        a.addr.send(Connect {
            addr: b.socket_addr,
            peer: ExpectedPeer {
                account_id: carol.cert.id(),
                device_id: None,
            },
        }),
    )
    .await
    .unwrap();
    assert_handshake_error(result, FailureSide::Local, "wrong_peer");
    assert_eq!(failed(&a, "local", "wrong_peer"), 1.0);
    eventually("server counts", || {
        failed(&b, "remote", "wrong_peer") == 1.0
    })
    .await;
    assert!(status(&a).await.connections.is_empty());
    assert!(status(&b).await.connections.is_empty());

    // Right account, wrong device.
    let result = within(
        "connect",
        a.addr.send(Connect {
            addr: b.socket_addr,
            peer: ExpectedPeer {
                account_id: bob.account.id(),
                device_id: Some(Account::new(2).device(22).cert.id()),
            },
        }),
    )
    .await
    .unwrap();
    assert_handshake_error(result, FailureSide::Local, "wrong_peer");
    still_serving(&b).await;
}

/// Dials `server` with a raw quinn client presenting `client_auth` and ALPN
/// `alpn`; returns how the connection ended for the client.
async fn raw_dial(
    server: &Node,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> quinn::ConnectionError {
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let mut crypto = client_crypto_presenting(
        client_auth,
        &RevocationBook::new(),
        server.device.expected(),
    )
    .unwrap();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let connecting = endpoint
        .connect_with(config, server.socket_addr, SERVER_NAME)
        .unwrap();
    within("raw dial", async {
        match connecting.await {
            Err(e) => e,
            // TLS 1.3: the client finishes before the server checks its
            // certificate; the rejection arrives as a close.
            Ok(conn) => conn.closed().await,
        }
    })
    .await
}

#[actix::test]
async fn self_signed_device_certificate_is_refused() {
    let b = start_udp_node(&Account::new(2).device(21));
    // A device key with a self-signed certificate, as a generic TLS client has.
    let key = SigningKey::generate(&mut rng(77));
    let self_signed = AccountCert::issue(&key, now(), &mut rng(78)).unwrap();
    let pkcs8 = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        key.to_pkcs8_der().unwrap().as_bytes().to_vec()
    };
    let end = raw_dial(
        &b,
        Some((
            vec![CertificateDer::from(self_signed.der().to_vec())],
            PrivateKeyDer::Pkcs8(pkcs8.into()),
        )),
        ALPN,
    )
    .await;
    assert_eq!(
        handshake_failure(&end),
        (FailureSide::Remote, "untrusted_issuer")
    );
    eventually("server counts", || {
        failed(&b, "local", "untrusted_issuer") == 1.0
    })
    .await;
    still_serving(&b).await;
}

#[actix::test]
async fn client_without_certificate_is_refused() {
    let b = start_udp_node(&Account::new(2).device(21));
    let end = raw_dial(&b, None, ALPN).await;
    assert_eq!(
        handshake_failure(&end),
        (FailureSide::Remote, "no_certificate")
    );
    eventually("server counts", || {
        failed(&b, "local", "no_certificate") == 1.0
    })
    .await;
    still_serving(&b).await;
}

#[actix::test]
async fn wrong_alpn_is_refused() {
    let b = start_udp_node(&Account::new(2).device(21));
    let client = Account::new(1).device(11).identity();
    let end = raw_dial(
        &b,
        Some((client.chain(), client.private_key().unwrap())),
        b"h3",
    )
    .await;
    assert_eq!(handshake_failure(&end), (FailureSide::Remote, "wrong_alpn"));
    eventually("server counts", || failed(&b, "local", "wrong_alpn") == 1.0).await;
    still_serving(&b).await;
}

#[actix::test]
async fn expired_certificate_is_refused_both_ways() {
    let bob = Account::new(2);
    let eleven_years = Duration::from_secs(11 * 365 * 24 * 3600);
    let expired = bob.device_at(21, now() - eleven_years);
    let a = start_udp_node(&Account::new(1).device(11));
    let b = start_udp_node(&expired);

    // A dials the expired server: A refuses it.
    let result = within("connect", connect(&a, &b)).await;
    assert_handshake_error(result, FailureSide::Local, "expired");
    eventually("server told", || failed(&b, "remote", "expired") == 1.0).await;

    // The expired device dials A: A refuses the client; B learns why through
    // the close that replaces the connection preface.
    let result = within("connect", connect(&b, &a)).await;
    assert_handshake_error(result, FailureSide::Remote, "expired");
    // A's second local rejection (the first was of B as a server).
    eventually("server counts", || failed(&a, "local", "expired") == 2.0).await;
    assert!(status(&a).await.connections.is_empty());
}

#[actix::test]
async fn revoked_device_is_refused_and_cut_off() {
    let bob = Account::new(2);
    let (db, db2) = (bob.device(21), bob.device(22));
    let crl = bob
        .first_crl()
        .with_revoked(&bob.key, &bob.cert, db.cert.serial(), now())
        .unwrap();
    let da = Account::new(1).device(11);
    let a = start_node(
        &da,
        udp_socket(loopback()).unwrap(),
        TransportLimits::default(),
        vec![(bob.cert.clone(), crl.clone())],
    );
    let b = start_udp_node(&db);
    let result = within("a dials revoked b", connect(&a, &b)).await;
    assert_handshake_error(result, FailureSide::Local, "revoked");
    eventually("b told", || failed(&b, "remote", "revoked") == 1.0).await;
    let result = within("revoked b dials a", connect(&b, &a)).await;
    assert_handshake_error(result, FailureSide::Remote, "revoked");
    eventually("a counts", || failed(&a, "local", "revoked") == 2.0).await;

    // A live connection is cut when revocation news arrives later.
    let b2 = start_udp_node(&db2);
    let mut events = subscribe_events(&a).await;
    within("connect", connect(&a, &b2)).await.unwrap();
    let up = within("up", events.recv()).await.unwrap();
    assert!(matches!(up.state, PeerState::Up { .. }));
    let newer = crl
        .with_revoked(&bob.key, &bob.cert, db2.cert.serial(), now())
        .unwrap();
    let kept = a
        .addr
        .send(UpdateRevocations {
            account: bob.cert.clone(),
            crl: newer,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(kept);
    let down = within("down", events.recv()).await.unwrap();
    assert_eq!(down.state, PeerState::Down { reason: "revoked" });
    // An older CRL is not taken back.
    let stale: RevocationList = crl;
    let kept = a
        .addr
        .send(UpdateRevocations {
            account: bob.cert.clone(),
            crl: stale,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!kept);
    still_serving(&a).await;
}

#[actix::test]
async fn refused_and_unknown_channel_names() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let a = start_udp_node(&da);
    let b = start_udp_node(&db);
    let refuser = Refuser("not a member of this conversation").start();
    b.addr
        .send(RegisterChannel {
            pattern: ChannelPattern::new("git/*").unwrap(),
            handler: refuser.recipient(),
        })
        .await
        .unwrap()
        .unwrap();
    within("connect", connect(&a, &b)).await.unwrap();
    let open = |name: &str| {
        a.addr.send(OpenChannel {
            peer: db.cert.id(),
            name: ChannelName::new(name).unwrap(),
        })
    };
    match within("open git", open("git/abc")).await.unwrap() {
        Err(ChannelError::Refused { code, reason, .. }) => {
            assert_eq!(code, ReplyCode::RefusedByHandler);
            assert_eq!(reason, "not a member of this conversation");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match within("open file", open("file/xyz")).await.unwrap() {
        Err(ChannelError::Refused { code, .. }) => assert_eq!(code, ReplyCode::UnknownName),
        other => panic!("expected unknown name, got {other:?}"),
    }
    assert_eq!(refused(&a, "remote", "refused_by_handler"), 1.0);
    assert_eq!(refused(&a, "remote", "unknown_name"), 1.0);
    assert_eq!(refused(&b, "local", "refused_by_handler"), 1.0);
    assert_eq!(refused(&b, "local", "unknown_name"), 1.0);
    still_serving(&b).await;
}

#[actix::test]
async fn oversize_header_is_refused() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let b = start_udp_node(&db);
    // A raw but properly authenticated client, to write bytes the transport never would.
    let identity = da.identity();
    let crypto = client_crypto(&identity, &RevocationBook::new(), db.expected()).unwrap();
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let conn = within(
        "raw connect",
        endpoint
            .connect_with(config, b.socket_addr, SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Version 1, name length 65535: over the limit before a name byte is read.
    send.write_all(&[1, 0xff, 0xff, b'x', b'x']).await.unwrap();
    let reply = within("reply", recv.read_to_end(1024)).await.unwrap();
    let (reply, _) = decode_reply(&reply).unwrap().unwrap();
    assert_eq!(reply.code, ReplyCode::HeaderTooLarge);
    assert!(reply.reason.contains("limit"), "{}", reply.reason);
    eventually("b counts", || {
        refused(&b, "local", "header_too_large") == 1.0
    })
    .await;
    // The connection itself survives a bad channel.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[9, 0, 1, b'x']).await.unwrap();
    let reply = within("reply", recv.read_to_end(1024)).await.unwrap();
    assert_eq!(
        decode_reply(&reply).unwrap().unwrap().0.code,
        ReplyCode::UnsupportedVersion
    );
    still_serving(&b).await;
}

#[actix::test]
async fn too_many_channels_are_refused() {
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let a = start_udp_node(&da);
    let limits = TransportLimits {
        channels_per_connection: 2,
        ..TransportLimits::default()
    };
    let b = start_node(&db, udp_socket(loopback()).unwrap(), limits, vec![]);
    let _seen = register_echo(&b, "call/*").await;
    within("connect", connect(&a, &b)).await.unwrap();
    let open = || {
        a.addr.send(OpenChannel {
            peer: db.cert.id(),
            name: ChannelName::new("call/1").unwrap(),
        })
    };
    let first = within("first", open()).await.unwrap().unwrap();
    let _second = within("second", open()).await.unwrap().unwrap();
    match within("third", open()).await.unwrap() {
        Err(ChannelError::Refused { code, .. }) => assert_eq!(code, ReplyCode::TooManyChannels),
        other => panic!("expected too many channels, got {other:?}"),
    }
    assert_eq!(refused(&a, "remote", "too_many_channels"), 1.0);
    eventually("b counts", || {
        refused(&b, "local", "too_many_channels") == 1.0
    })
    .await;
    // Closing one frees its slot.
    let (mut send, mut recv) = first.split();
    send.finish().unwrap();
    within("drain", recv.read_to_end(1024)).await.unwrap();
    drop((send, recv));
    eventually("slot freed", || {
        metric(
            &b.registry,
            "starling_transport_channels_open",
            &[("kind", "call")],
        ) == 1.0
    })
    .await;
    within("fourth", open()).await.unwrap().unwrap();
}

#[actix::test]
async fn garbage_headers_never_hurt_the_node() {
    use rand::{Rng, RngCore};
    let (da, db) = (Account::new(1).device(11), Account::new(2).device(21));
    let b = start_udp_node(&db);
    let crypto = client_crypto(&da.identity(), &RevocationBook::new(), db.expected()).unwrap();
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let conn = within(
        "raw connect",
        endpoint
            .connect_with(config, b.socket_addr, SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    let seed = 4242;
    println!("garbage seed {seed}");
    let mut rng = rng(seed);
    for case in 0..64 {
        let mut bytes = vec![0u8; rng.gen_range(0..300)];
        rng.fill_bytes(&mut bytes);
        if case % 2 == 0 && !bytes.is_empty() {
            bytes[0] = 1; // a valid version, so the length and name get parsed
        }
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        // Whatever came back must be a well-formed reply (or nothing, if the
        // stream ended before a whole header).
        let reply = within("reply", recv.read_to_end(64 * 1024)).await;
        if let Ok(reply) = reply {
            if !reply.is_empty() {
                let (reply, _) = decode_reply(&reply)
                    .unwrap_or_else(|e| panic!("case {case}: bad reply {e}"))
                    .unwrap_or_else(|| panic!("case {case}: short reply"));
                // No service is registered, so nothing is ever accepted.
                assert_ne!(reply.code, ReplyCode::Accepted, "case {case}");
            }
        }
    }
    assert!(
        conn.close_reason().is_none(),
        "a bad channel must not cost the connection"
    );
    still_serving(&b).await;
}

/// Presents a fixed certificate chain but signs with whatever key it was given.
#[derive(Debug)]
struct MismatchedKey(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for MismatchedKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[actix::test]
async fn a_valid_chain_with_a_forged_handshake_signature_is_refused() {
    let b = start_udp_node(&Account::new(2).device(21));
    // A genuine, current device chain — but the handshake is signed by a key
    // that is not the device's: only the signature check can catch this.
    let victim = Account::new(1).device(11).identity();
    let impostor_key = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = SigningKey::generate(&mut rng(99));
        PrivateKeyDer::Pkcs8(key.to_pkcs8_der().unwrap().as_bytes().to_vec().into())
    };
    let provider = starling_actors::transport::tls::crypto_provider();
    let signer = provider
        .key_provider
        .load_private_key(impostor_key)
        .unwrap();
    let resolver = Arc::new(MismatchedKey(Arc::new(rustls::sign::CertifiedKey::new(
        victim.chain(),
        signer,
    ))));
    // Reuse the real client config for everything but the client certificate.
    let mut crypto =
        client_crypto_presenting(None, &RevocationBook::new(), b.device.expected()).unwrap();
    crypto.client_auth_cert_resolver = resolver;
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let connecting = endpoint
        .connect_with(config, b.socket_addr, SERVER_NAME)
        .unwrap();
    let end = within("forged dial", async {
        match connecting.await {
            Err(e) => e,
            Ok(conn) => conn.closed().await,
        }
    })
    .await;
    assert_eq!(
        handshake_failure(&end),
        (FailureSide::Remote, "bad_signature")
    );
    eventually("server counts", || {
        failed(&b, "local", "bad_signature") == 1.0
    })
    .await;
    still_serving(&b).await;
}
