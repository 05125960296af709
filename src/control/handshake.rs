//! Reading the agent's init frame on a fresh tunnel connection, bounded in bytes and time by the
//! caller. No decisions here: see `auth` for those.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::protocol::{self, ConnectionInitInfo, DecodeError, Decoded, Frame, HEADER_LEN};

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

/// Reads frames until the init; returns it and any bytes that followed it.
pub async fn read_init(
    stream: &mut TcpStream,
    max_frame_payload_bytes: usize,
) -> Result<(ConnectionInitInfo, Vec<u8>), HandshakeError> {
    let mut buf = Vec::with_capacity(512);
    loop {
        match protocol::decode(&buf, max_frame_payload_bytes)? {
            Decoded::Frame(Frame::Init(init), used) => {
                buf.drain(..used);
                return Ok((init, buf));
            }
            Decoded::Frame(other, _) => return Err(HandshakeError::NotInit(other.flag().name())),
            Decoded::NeedMore(n) => {
                let want = n.min(HEADER_LEN + max_frame_payload_bytes);
                let start = buf.len();
                buf.resize(start + want.max(1), 0);
                let got = stream.read(&mut buf[start..]).await?;
                buf.truncate(start + got);
                if got == 0 {
                    return Err(HandshakeError::ClosedEarly);
                }
            }
        }
    }
}
