//! The session's own buffering on rustls's unbuffered API: records and handshake messages cut
//! anywhere by reads (down to one byte), TLS 1.2 with client certificates and TLS 1.3, what is
//! held between reads (one record at most, freed once whole), key updates from the peer, and
//! properties: any cut of any records decrypts to what was sent, no bytes make a session panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tests::{client, errors, pattern, pki, server, End, Pki};
use super::*;
use crate::config::TlsMinVersion;

/// The largest TLS record on the wire (header, 16 KiB of plaintext, 2 KiB of expansion).
const MAX_RECORD_BYTES: usize = 5 + 16 * 1024 + 2048;

/// Hands `bytes` to `to` in pieces of `piece` bytes, to the handshake or to decrypt as its state
/// asks (odd pieces through the copying `decrypt`, even ones in place); appends what it sends.
fn deliver(to: &mut End, bytes: &[u8], piece: usize, out: &mut Vec<u8>) {
    for chunk in bytes.chunks(piece) {
        if to.tls.is_handshaking() {
            let p = to.tls.handshake_step(chunk, out).unwrap();
            assert_eq!(p.consumed, chunk.len());
        } else {
            let outcome = if piece % 2 == 1 {
                to.tls.decrypt(chunk, &mut to.plaintext).unwrap()
            } else {
                to.tls
                    .decrypt_in_place(&mut chunk.to_vec(), &mut to.plaintext)
                    .unwrap()
            };
            assert_eq!(outcome.consumed, chunk.len());
            to.eof |= outcome.eof;
            to.tls.take_output(out);
            assert!(
                to.tls.held_capacity() <= MAX_RECORD_BYTES,
                "at most one record is held: {}",
                to.tls.held_capacity()
            );
        }
    }
}

/// Runs the handshake with every flight cut into `piece`-byte reads.
fn handshake_in_pieces(c: &mut End, s: &mut End, piece: usize) {
    let mut to_server = Vec::new();
    c.tls.handshake_step(&[], &mut to_server).unwrap();
    for _ in 0..20 {
        let mut to_client = Vec::new();
        deliver(s, &std::mem::take(&mut to_server), piece, &mut to_client);
        deliver(c, &to_client, piece, &mut to_server);
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
    }
    assert!(c.err.is_none() && s.err.is_none(), "{:?}", errors(c, s));
    assert!(!c.tls.is_handshaking() && !s.tls.is_handshaking());
}

/// Sends `len` bytes from `from` to `to`, cut into `piece`-byte reads; checks they arrived and
/// nothing is held afterwards.
fn send_in_pieces(from: &mut End, to: &mut End, len: usize, piece: usize) {
    let data = pattern(len, piece as u8);
    let mut wire = Vec::new();
    from.tls.encrypt(&data, &mut wire).unwrap();
    to.plaintext.clear();
    deliver(to, &wire, piece, &mut Vec::new());
    assert!(to.plaintext == data, "{len} bytes in {piece}-byte reads");
    assert_eq!(to.tls.held_bytes(), 0);
    assert_eq!(
        to.tls.held_capacity(),
        0,
        "a whole record frees what was held"
    );
}

/// A server whose handshake messages span many records (as a long certificate chain would).
fn fragmenting_server(pki: &Pki, mutual: bool, min_version: TlsMinVersion) -> End {
    let mut tls = pki.server_tls(mutual);
    tls.min_version = min_version;
    let mut config = (*server_config(&tls).unwrap()).clone();
    config.max_fragment_size = Some(64);
    End::new(TlsSession::server(Arc::new(config)).unwrap())
}

/// An agent that speaks only TLS 1.2, with the agent certificate.
fn tls12_mutual_client(pki: &Pki) -> End {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca.file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&pki.agent.0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.agent.1).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let name = ServerName::try_from("tunnel.test").unwrap();
    End::new(TlsSession::client(Arc::new(config), name).unwrap())
}

#[test]
fn records_cut_anywhere_arrive_whole_on_tls_1_3() {
    let pki = pki();
    for piece in [1, 2, 5, 6, 97, 300, 1000, 16_389, 70_000] {
        let mut c = client(&pki.agent_tls(true), "tunnel.test:7070");
        let mut s = fragmenting_server(&pki, true, TlsMinVersion::V1_3);
        handshake_in_pieces(&mut c, &mut s, piece);
        assert_eq!(
            s.tls.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let len = if piece < 5 { 40_000 } else { 70_000 };
        send_in_pieces(&mut c, &mut s, len, piece);
        send_in_pieces(&mut s, &mut c, len, piece);
    }
}

#[test]
fn records_cut_anywhere_arrive_whole_on_tls_1_2_with_client_certificates() {
    let pki = pki();
    for piece in [1, 4, 5, 97, 300, 16_389, 70_000] {
        let mut c = tls12_mutual_client(&pki);
        let mut s = fragmenting_server(&pki, true, TlsMinVersion::V1_2);
        handshake_in_pieces(&mut c, &mut s, piece);
        assert_eq!(
            s.tls.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let len = if piece < 5 { 40_000 } else { 70_000 };
        send_in_pieces(&mut c, &mut s, len, piece);
        send_in_pieces(&mut s, &mut c, len, piece);
    }
}

#[test]
fn a_cut_record_is_held_in_a_buffer_its_size_and_freed_when_whole() {
    let pki = pki();
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut s = server(&pki.server_tls(false));
    handshake_in_pieces(&mut c, &mut s, 4096);
    let mut wire = Vec::new();
    c.tls.encrypt(&pattern(10_000, 9), &mut wire).unwrap();
    assert_eq!(s.tls.held_capacity(), 0);
    s.tls.decrypt(&wire[..3], &mut s.plaintext).unwrap();
    assert_eq!(s.tls.held_bytes(), 3);
    s.tls.decrypt(&wire[3..4000], &mut s.plaintext).unwrap();
    assert_eq!(s.tls.held_bytes(), 4000);
    assert_eq!(s.tls.held_capacity(), wire.len(), "exactly the record");
    assert!(s.plaintext.is_empty());
    s.tls.decrypt(&wire[4000..], &mut s.plaintext).unwrap();
    assert_eq!(s.plaintext, pattern(10_000, 9));
    assert_eq!(s.tls.held_capacity(), 0);
}

#[test]
fn close_notify_both_ways_then_nothing_more_is_sent() {
    let pki = pki();
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut s = server(&pki.server_tls(false));
    handshake_in_pieces(&mut c, &mut s, 4096);
    let mut wire = Vec::new();
    c.tls.encrypt(b"last words", &mut wire).unwrap();
    c.tls.close_notify(&mut wire);
    wire.extend_from_slice(b"ignored after close_notify");
    deliver(&mut s, &wire, 3, &mut Vec::new());
    assert_eq!(s.plaintext, b"last words");
    assert!(s.eof && s.tls.peer_closed().is_ok());
    let mut back = Vec::new();
    s.tls.encrypt(b"still open this way", &mut back).unwrap();
    s.tls.close_notify(&mut back);
    deliver(&mut c, &back, 4096, &mut Vec::new());
    assert_eq!(c.plaintext, b"still open this way");
    assert!(c.eof);
    assert!(c.tls.encrypt(b"x", &mut Vec::new()).is_err());
}

#[test]
fn key_updates_from_a_buffered_rustls_peer_are_followed_both_ways() {
    let pki = pki();
    let config = client_config(&pki.agent_tls(false)).unwrap();
    let name = ServerName::try_from("tunnel.test").unwrap();
    let mut peer = rustls::ClientConnection::new(config, name).unwrap();
    let mut s = server(&pki.server_tls(false));
    let take = |peer: &mut rustls::ClientConnection| {
        let mut wire = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut wire).unwrap();
        }
        wire
    };
    let give = |peer: &mut rustls::ClientConnection, mut wire: &[u8]| {
        while !wire.is_empty() {
            peer.read_tls(&mut wire).unwrap();
            peer.process_new_packets().unwrap();
        }
    };
    for _ in 0..10 {
        let wire = take(&mut peer);
        let mut back = Vec::new();
        deliver(&mut s, &wire, 4096, &mut back);
        give(&mut peer, &back);
        if wire.is_empty() && back.is_empty() {
            break;
        }
    }
    assert!(!peer.is_handshaking() && !s.tls.is_handshaking());
    for round in 0..3u8 {
        peer.refresh_traffic_keys().unwrap();
        peer.writer().write_all(&[round; 100]).unwrap();
        s.plaintext.clear();
        deliver(&mut s, &take(&mut peer), 7, &mut Vec::new());
        assert_eq!(s.plaintext, [round; 100]);
        let mut reply = Vec::new();
        s.tls.encrypt(&[round + 10; 50], &mut reply).unwrap();
        give(&mut peer, &reply);
        let mut got = [0u8; 50];
        peer.reader().read_exact(&mut got).unwrap();
        assert_eq!(got, [round + 10; 50]);
    }
}

/// A fresh handshaken pair on `configs`.
fn pair(configs: &(Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>)) -> (End, End) {
    let name = ServerName::try_from("tunnel.test").unwrap();
    let mut c = End::new(TlsSession::client(configs.0.clone(), name).unwrap());
    let mut s = End::new(TlsSession::server(configs.1.clone()).unwrap());
    handshake_in_pieces(&mut c, &mut s, 4096);
    (c, s)
}

/// Cuts `wire` into pieces of the sizes in `cuts` (round and round) and feeds them to `to`,
/// in place or through the copying `decrypt`; stops at the first error.
fn feed_cut(to: &mut End, wire: &[u8], cuts: &[usize], in_place: bool) -> Result<(), TlsError> {
    let (mut at, mut k) = (0, 0);
    while at < wire.len() {
        let n = cuts[k % cuts.len()].min(wire.len() - at);
        let piece = &wire[at..at + n];
        if to.tls.is_handshaking() {
            to.tls.handshake_step(piece, &mut Vec::new())?;
        } else if in_place {
            to.tls
                .decrypt_in_place(&mut piece.to_vec(), &mut to.plaintext)?;
        } else {
            to.tls.decrypt(piece, &mut to.plaintext)?;
        }
        at += n;
        k += 1;
    }
    Ok(())
}

#[test]
fn any_cut_of_any_records_decrypts_to_what_was_sent() {
    use proptest::prelude::*;
    let pki = pki();
    let configs = (
        client_config(&pki.agent_tls(false)).unwrap(),
        server_config(&pki.server_tls(false)).unwrap(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 40,
        ..Default::default()
    });
    let cases = (
        proptest::collection::vec(1usize..20_000, 1..6),
        proptest::collection::vec(1usize..40_000, 1..30),
        any::<bool>(),
    );
    runner
        .run(&cases, |(writes, cuts, in_place)| {
            let (mut c, mut s) = pair(&configs);
            let (mut wire, mut sent) = (Vec::new(), Vec::new());
            for (i, len) in writes.iter().enumerate() {
                let data = pattern(*len, i as u8);
                c.tls.encrypt(&data, &mut wire).unwrap();
                sent.extend_from_slice(&data);
            }
            feed_cut(&mut s, &wire, &cuts, in_place).unwrap();
            prop_assert!(s.plaintext == sent);
            prop_assert_eq!(s.tls.held_capacity(), 0);
            Ok(())
        })
        .unwrap();
}

#[test]
fn no_bytes_cut_anyhow_make_a_session_panic() {
    use proptest::prelude::*;
    let pki = pki();
    let configs = (
        client_config(&pki.agent_tls(false)).unwrap(),
        server_config(&pki.server_tls(false)).unwrap(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 64,
        ..Default::default()
    });
    // Garbage, or garbage behind a plausible record header, to a new server and to both ends of
    // a handshaken pair.
    let cases = (
        proptest::collection::vec(any::<u8>(), 0..3000),
        proptest::option::of((20u8..25, 0u16..20_000)),
        proptest::collection::vec(1usize..500, 1..10),
        any::<bool>(),
    );
    runner
        .run(&cases, |(garbage, header, cuts, in_place)| {
            let mut wire = Vec::new();
            if let Some((typ, len)) = header {
                wire.extend_from_slice(&[typ, 3, 3]);
                wire.extend_from_slice(&len.to_be_bytes());
            }
            wire.extend_from_slice(&garbage);
            let mut fresh = End::new(TlsSession::server(configs.1.clone()).unwrap());
            let _ = feed_cut(&mut fresh, &wire, &cuts, in_place);
            let (mut c, mut s) = pair(&configs);
            let _ = feed_cut(&mut s, &wire, &cuts, in_place);
            let _ = feed_cut(&mut c, &wire, &cuts, in_place);
            // A failed session refuses more input and still answers every call.
            let _ = s.tls.encrypt(b"x", &mut Vec::new());
            let _ = s.tls.take_output(&mut Vec::new());
            let _ = s.tls.peer_closed();
            prop_assert!(s.tls.held_capacity() <= MAX_RECORD_BYTES + 5);
            Ok(())
        })
        .unwrap();
}
