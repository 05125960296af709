//! Reading the agent's init frame on a fresh tunnel connection, bounded in bytes and time by the
//! caller. No decisions here: see `auth` for those.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::protocol::{
    self, ConnectionInitInfo, DecodeError, Decoded, Frame, GracefulCloseOnewayRequest, HEADER_LEN,
};

/// Why a tunnel connection did not produce an init.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("closed before sending its init")]
    ClosedEarly,
    #[error("no init within {0} ms")]
    Timeout(u64),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("sent a {0} frame before any ConnectionInitInfo")]
    NotInit(&'static str),
}

/// What the bytes received so far on a fresh tunnel connection amount to.
#[derive(Debug, PartialEq)]
pub enum InitProgress {
    /// The init, and how many bytes of the buffer it used (bytes after it belong to the agent).
    Init(ConnectionInitInfo, usize),
    /// A graceful close as the first frame: MOSN's aside connection sends no init, and this is
    /// the only frame it ever sends (with how many bytes it used).
    GracefulClose(GracefulCloseOnewayRequest, usize),
    /// No whole frame yet: read up to this many more bytes (at least 1).
    NeedMore(usize),
}

/// Decodes the start of `buf` as the agent's first frame, which must be its init. Pure (no I/O),
/// so the handshake's decoding can be property-tested and fuzzed on arbitrary bytes.
pub fn next_init(
    buf: &[u8],
    max_frame_payload_bytes: usize,
) -> Result<InitProgress, HandshakeError> {
    match protocol::decode(buf, max_frame_payload_bytes)? {
        Decoded::Frame(Frame::Init(init), used) => Ok(InitProgress::Init(init, used)),
        Decoded::Frame(Frame::GracefulClose(g), used) => Ok(InitProgress::GracefulClose(g, used)),
        Decoded::Frame(other, _) => Err(HandshakeError::NotInit(other.flag().name())),
        Decoded::NeedMore(n) => Ok(InitProgress::NeedMore(
            n.min(HEADER_LEN + max_frame_payload_bytes).max(1),
        )),
    }
}

/// Reads frames until the init; returns it and any bytes that followed it.
pub async fn read_init(
    stream: &mut TcpStream,
    max_frame_payload_bytes: usize,
) -> Result<(ConnectionInitInfo, Vec<u8>), HandshakeError> {
    let mut buf = Vec::with_capacity(512);
    loop {
        match next_init(&buf, max_frame_payload_bytes)? {
            InitProgress::Init(init, used) => {
                buf.drain(..used);
                return Ok((init, buf));
            }
            InitProgress::GracefulClose(..) => {
                return Err(HandshakeError::NotInit("GracefulCloseOnewayRequest"))
            }
            InitProgress::NeedMore(want) => {
                let start = buf.len();
                buf.resize(start + want, 0);
                let got = stream.read(&mut buf[start..]).await?;
                buf.truncate(start + got);
                if got == 0 {
                    return Err(HandshakeError::ClosedEarly);
                }
            }
        }
    }
}

/// The first frame of a tunnel connection.
#[derive(Debug)]
pub enum First {
    /// The init, and the bytes that followed it.
    Init(ConnectionInitInfo, Vec<u8>),
    /// MOSN's graceful close (an aside connection's only frame).
    GracefulClose(GracefulCloseOnewayRequest),
}

/// Reads through `channel` (plaintext, decrypted when TLS is on) until the first frame, an init
/// or a graceful close; `buf` holds the bytes received so far, and still holds them when this
/// fails or is cancelled (so the caller can tell a silent connection from a slow one).
pub async fn read_first_from(
    channel: &mut crate::tls::Channel,
    buf: &mut Vec<u8>,
    max_frame_payload_bytes: usize,
) -> Result<First, HandshakeError> {
    loop {
        match next_init(buf, max_frame_payload_bytes)? {
            InitProgress::Init(init, used) => {
                // Only the bytes after the init, sized to them (none allocates nothing): they
                // travel with the connection for its whole life, the read buffer does not.
                let rest = buf[used..].to_vec();
                buf.clear();
                return Ok(First::Init(init, rest));
            }
            InitProgress::GracefulClose(g, used) => {
                buf.drain(..used);
                return Ok(First::GracefulClose(g));
            }
            InitProgress::NeedMore(_) => {
                if channel.read_into(buf).await? == 0 {
                    return Err(HandshakeError::ClosedEarly);
                }
            }
        }
    }
}
