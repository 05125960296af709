//! The `hmac` credential: its wire format and its MAC, shared by the agent (which makes one per
//! connection) and the server (which checks it).
//!
//! Format: `v1:<unix_seconds>:<nonce_hex>:<mac_hex>`, where the MAC is HMAC-SHA256 keyed by the
//! cluster's shared secret over
//! `ringtun-hmac-v1 \n cluster \n host_name \n agent_id \n unix_seconds \n nonce_hex`. The nonce
//! (16 random bytes) makes two connections in the same second differ, so the server can refuse
//! a replayed value without refusing a legitimate one.
//!
//! Pure: no clock, no randomness, no I/O here (callers pass both in), and the secret is only read
//! to key the MAC, never copied into anything that is printed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of the MAC.
pub const MAC_LEN: usize = 32;

/// Who the credential is for; every field is covered by the MAC.
#[derive(Clone, Copy, Debug)]
pub struct HmacSubject<'a> {
    pub cluster: &'a str,
    pub host_name: &'a str,
    pub agent_id: &'a str,
}

/// A parsed `v1:` credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HmacCredential {
    pub timestamp: u64,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; MAC_LEN],
}

/// Why a credential string is not a `v1:` hmac credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HmacFormatError {
    #[error("not of the form v1:<unix_seconds>:<nonce_hex>:<mac_hex>")]
    Shape,
    #[error("timestamp is not a number of seconds")]
    Timestamp,
    #[error("nonce is not {} hex digits", NONCE_LEN * 2)]
    Nonce,
    #[error("mac is not {} hex digits", MAC_LEN * 2)]
    Mac,
    #[error("cluster, host_name or agent id contains a newline")]
    Newline,
    #[error("the secret cannot key an HMAC")]
    Key,
}

/// The MAC keyed by `secret` (HMAC takes keys of any length, so this is always `Some`).
fn keyed(secret: &Secret) -> Option<HmacSha256> {
    HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()
}

fn message(
    mac: &mut HmacSha256,
    subject: &HmacSubject<'_>,
    timestamp: u64,
    nonce: &[u8; NONCE_LEN],
) -> Result<(), HmacFormatError> {
    if [subject.cluster, subject.host_name, subject.agent_id]
        .iter()
        .any(|f| f.contains('\n'))
    {
        return Err(HmacFormatError::Newline);
    }
    let text = format!(
        "ringtun-hmac-v1\n{}\n{}\n{}\n{}\n{}",
        subject.cluster,
        subject.host_name,
        subject.agent_id,
        timestamp,
        hex(nonce)
    );
    mac.update(text.as_bytes());
    Ok(())
}

/// The credential string an agent sends (`v1:...`).
pub fn make(
    secret: &Secret,
    subject: &HmacSubject<'_>,
    timestamp: u64,
    nonce: [u8; NONCE_LEN],
) -> Result<Secret, HmacFormatError> {
    let mut mac = keyed(secret).ok_or(HmacFormatError::Key)?;
    message(&mut mac, subject, timestamp, &nonce)?;
    let tag = mac.finalize().into_bytes();
    Ok(Secret::new(format!(
        "v1:{timestamp}:{}:{}",
        hex(&nonce),
        hex(&tag)
    )))
}

/// Parses a credential string; says nothing about whether it is valid.
pub fn parse(value: &str) -> Result<HmacCredential, HmacFormatError> {
    let mut parts = value.split(':');
    let (Some("v1"), Some(ts), Some(nonce), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(HmacFormatError::Shape);
    };
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HmacFormatError::Timestamp);
    }
    let timestamp = ts.parse().map_err(|_| HmacFormatError::Timestamp)?;
    Ok(HmacCredential {
        timestamp,
        nonce: unhex(nonce).ok_or(HmacFormatError::Nonce)?,
        mac: unhex(mac).ok_or(HmacFormatError::Mac)?,
    })
}

/// True when `credential`'s MAC is right for `secret` and `subject` (constant time).
pub fn verify(secret: &Secret, subject: &HmacSubject<'_>, credential: &HmacCredential) -> bool {
    let Some(mut mac) = keyed(secret) else {
        return false;
    };
    if message(&mut mac, subject, credential.timestamp, &credential.nonce).is_err() {
        return false;
    }
    mac.verify_slice(&credential.mac).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before it). The one clock
/// read of credentials: callers pass its value into `make` and `verify`-side checks, which stay pure.
pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: HmacSubject<'static> = HmacSubject {
        cluster: "edge-web",
        host_name: "edge-01",
        agent_id: "a1",
    };

    #[test]
    fn made_credential_parses_and_verifies() {
        let secret = Secret::new("s3cret");
        let cred = make(&secret, &SUBJECT, 1_700_000_000, [7; NONCE_LEN]).unwrap();
        assert!(cred.expose().starts_with("v1:1700000000:0707"));
        let parsed = parse(cred.expose()).unwrap();
        assert_eq!(parsed.timestamp, 1_700_000_000);
        assert!(verify(&secret, &SUBJECT, &parsed));
        assert!(!verify(&Secret::new("other"), &SUBJECT, &parsed));
        let moved = HmacSubject {
            host_name: "edge-02",
            ..SUBJECT
        };
        assert!(!verify(&secret, &moved, &parsed));
        let mut later = parsed;
        later.timestamp += 1;
        assert!(!verify(&secret, &SUBJECT, &later));
        let mut other_nonce = parsed;
        other_nonce.nonce[0] ^= 1;
        assert!(!verify(&secret, &SUBJECT, &other_nonce));
    }

    #[test]
    fn malformed_credentials_are_named() {
        assert_eq!(parse(""), Err(HmacFormatError::Shape));
        assert_eq!(parse("token"), Err(HmacFormatError::Shape));
        assert_eq!(parse("v2:1:00:00"), Err(HmacFormatError::Shape));
        assert_eq!(parse("v1:1:2:3:4"), Err(HmacFormatError::Shape));
        assert_eq!(parse("v1:-1:00:00"), Err(HmacFormatError::Timestamp));
        assert_eq!(
            parse("v1:99999999999999999999:00:00"),
            Err(HmacFormatError::Timestamp)
        );
        assert_eq!(parse("v1:1:zz:00"), Err(HmacFormatError::Nonce));
        let nonce = "0".repeat(32);
        assert_eq!(
            parse(&format!("v1:1:{nonce}:00")),
            Err(HmacFormatError::Mac)
        );
        assert!(parse(&format!("v1:1:{nonce}:{}", "A".repeat(64))).is_ok());
    }

    #[test]
    fn newlines_in_the_subject_are_refused() {
        let secret = Secret::new("s");
        let subject = HmacSubject {
            host_name: "a\nb",
            ..SUBJECT
        };
        assert_eq!(
            make(&secret, &subject, 1, [0; NONCE_LEN]).err(),
            Some(HmacFormatError::Newline)
        );
    }

    #[test]
    fn debug_of_made_credential_is_redacted() {
        let cred = make(&Secret::new("s"), &SUBJECT, 1, [0; NONCE_LEN]).unwrap();
        assert_eq!(format!("{cred:?}"), "<redacted>");
    }
}
