//! The TLS error type and the translation of rustls errors into words an operator can act on.

use std::io;

use rustls::{AlertDescription, CertificateError};

use super::session::Side;

/// Why TLS could not be set up or a TLS connection failed.
///
/// Every variant caused by a certificate says "certificate" ([`TlsError::is_certificate`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {file:?}: {source}")]
    ReadFile {
        what: &'static str,
        file: String,
        source: io::Error,
    },
    /// A PEM file was read but holds nothing usable.
    #[error("{what} {file:?}: {reason}")]
    BadFile {
        what: &'static str,
        file: String,
        reason: String,
    },
    /// The certificate chain and the private key do not make a usable pair.
    #[error(
        "certificate chain {cert:?} and private key {key:?} cannot be used together: {reason}"
    )]
    KeyPair {
        cert: String,
        key: String,
        reason: String,
    },
    /// No `ca_file` and the system's CA certificates could not be loaded.
    #[error("no ca_file is set and no system CA certificate could be loaded: {0}")]
    SystemRoots(String),
    /// `server_name` (or the host of the server address) is not usable for verification.
    #[error("{0:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
    /// Any other rustls configuration error.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The peer's first bytes are a ringtun/MOSN frame: TLS on one side only.
    #[error("peer sent plaintext (a ringtun/MOSN frame) to a TLS port; is TLS configured on both sides?")]
    Plaintext,
    /// The peer's first bytes are not a TLS record at all.
    #[error("peer sent bytes that are not TLS (first byte {0:#04x})")]
    NotTls(u8),
    /// A certificate was refused, by us or by the peer; the text says which and why.
    #[error("{0}")]
    Certificate(String),
    /// Any other failure of the TLS protocol; the text says what.
    #[error("{0}")]
    Protocol(String),
    /// The peer closed the TCP connection before the handshake finished.
    #[error(
        "peer closed the connection during the TLS handshake (is TLS configured on both sides?)"
    )]
    Closed,
    /// The peer closed the TCP connection without a TLS close_notify (possible truncation).
    #[error("peer closed the connection without a TLS close_notify")]
    Truncated,
    /// The handshake did not finish in time.
    #[error("TLS handshake not finished within {0} ms")]
    Timeout(u64),
    /// Reading or writing the socket failed.
    #[error("I/O error during TLS: {0}")]
    Io(#[from] io::Error),
}

impl TlsError {
    /// True when a certificate is the cause (refused by us or by the peer).
    pub fn is_certificate(&self) -> bool {
        matches!(self, TlsError::Certificate(_))
    }

    /// Translates a rustls error seen by `side` into an operator's words.
    pub(crate) fn from_rustls(side: Side, e: rustls::Error) -> Self {
        let peer_role = match side {
            Side::Client => "server",
            Side::Server => "agent (client)",
        };
        match e {
            rustls::Error::InvalidCertificate(c) => TlsError::Certificate(format!(
                "the {peer_role}'s certificate was refused: {}",
                certificate_reason(&c)
            )),
            rustls::Error::NoCertificatesPresented => TlsError::Certificate(match side {
                Side::Server => "the agent presented no client certificate, but this server \
                                 requires one (tls_context.ca_file is set)"
                    .into(),
                Side::Client => "the server presented no certificate".into(),
            }),
            rustls::Error::AlertReceived(alert) => alert_error(side, alert),
            rustls::Error::PeerIncompatible(p) => TlsError::Protocol(format!(
                "the {peer_role} supports no TLS version or cipher suite allowed here \
                 (tls_context.min_version?): {p:?}"
            )),
            rustls::Error::InvalidMessage(m) => TlsError::Protocol(format!(
                "the {peer_role} sent an invalid TLS message: {m:?}"
            )),
            rustls::Error::PeerMisbehaved(m) => {
                TlsError::Protocol(format!("the {peer_role} broke the TLS protocol: {m:?}"))
            }
            rustls::Error::DecryptError => {
                TlsError::Protocol(format!("a record from the {peer_role} failed to decrypt"))
            }
            other => TlsError::Protocol(format!("TLS error: {other}")),
        }
    }
}

/// Why a certificate was refused, in words.
fn certificate_reason(c: &CertificateError) -> String {
    #[allow(deprecated)]
    match c {
        CertificateError::UnknownIssuer => "it is not signed by a trusted certificate authority \
                                            (unknown issuer; check ca_file)"
            .into(),
        CertificateError::NotValidForName => {
            "it is not valid for the expected name (check server_name)".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "it is not valid for the name {:?} (it is for {}; check server_name)",
            expected.to_str(),
            if presented.is_empty() {
                "no name".to_string()
            } else {
                presented
                    .iter()
                    .map(|p| presented_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired (certificate past its not-after date; renew it, or check the clock)"
                .into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (certificate before its not-before date; check the clock)".into()
        }
        CertificateError::Revoked => "it has been revoked".into(),
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithm
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "its signature is bad or uses an unsupported algorithm".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "it is not issued for this use (extended key usage: serverAuth for servers, \
             clientAuth for agents)"
                .into()
        }
        CertificateError::BadEncoding => "it is not a well-formed X.509 certificate".into(),
        other => format!("{other}"),
    }
}

/// `DnsName("a.example")` / `IpAddress(10.0.0.1)` (rustls's rendering) → the name itself.
fn presented_name(p: &str) -> &str {
    for prefix in ["DnsName(\"", "IpAddress("] {
        if let Some(inner) = p.strip_prefix(prefix) {
            return inner.trim_end_matches(')').trim_end_matches('"');
        }
    }
    p
}

/// The peer aborted with `alert`: what that means for us.
fn alert_error(side: Side, alert: AlertDescription) -> TlsError {
    let peer = match side {
        Side::Client => "server",
        Side::Server => "agent",
    };
    let ours = |why: &str| {
        TlsError::Certificate(format!(
            "the {peer} refused our certificate: {why} (alert {alert:?})"
        ))
    };
    match alert {
        AlertDescription::UnknownCA => {
            ours("it does not trust the certificate authority that signed it")
        }
        AlertDescription::BadCertificate => {
            ours("it is not acceptable (for example, not valid for the name the peer expects)")
        }
        AlertDescription::CertificateExpired => ours("it has expired or is not valid yet"),
        AlertDescription::CertificateRevoked => ours("it has been revoked"),
        AlertDescription::UnsupportedCertificate => ours("it is not issued for this use"),
        AlertDescription::CertificateUnknown | AlertDescription::AccessDenied => {
            ours("it was not accepted")
        }
        AlertDescription::CertificateRequired => TlsError::Certificate(format!(
            "the {peer} requires a client certificate and none was sent (set \
             tls_context.cert_chain_file and private_key_file) (alert {alert:?})"
        )),
        AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
            TlsError::Protocol(format!(
                "the {peer} found no TLS version or cipher suite in common \
                 (tls_context.min_version?) (alert {alert:?})"
            ))
        }
        AlertDescription::DecodeError | AlertDescription::UnexpectedMessage => TlsError::Protocol(
            format!("the {peer} could not parse our TLS messages (alert {alert:?})"),
        ),
        other => TlsError::Protocol(format!(
            "the {peer} aborted the TLS connection (alert {other:?})"
        )),
    }
}
