//! The ringtun wire protocol: MOSN's reverse-channel frames plus ringtun's extension frames.
//!
//! A frame is an 8-byte header (magic `20 88`, version `01`, flag, type, big-endian u16 payload
//! length) followed by a JSON payload. This module only turns frames into bytes and bytes into
//! frames: it does no I/O, reads no clock and keeps no state, so it can be tested on literal bytes
//! and fuzzed. "Need more bytes" is a normal answer of the decoder, not an error.
//!
//! After a SessionStart between two peers of extension version 2, session bytes travel as
//! records (`session_frame`), so one data connection carries many sessions.
//!
//! Beside the frames: the length framing of a UDP flow's datagrams (`datagram`), the PROXY
//! protocol header (`proxy`) a frontend may be sent and a backend may be written, and the CIDR
//! networks (`cidr`) that say who may send one. All as pure.

pub mod cidr;
mod codec;
pub mod datagram;
mod frame;
#[doc(hidden)]
pub mod harness;
pub mod proxy;
pub mod session_frame;

pub use codec::{decode, encode, encode_to_vec, DecodeError, Decoded, EncodeError};
pub use frame::{
    ConnectionInitInfo, ConnectionInitResponse, Drain, Flag, Frame, GracefulCloseOnewayRequest,
    InitExtra, Ping, Pong, PoolRequest, RingtunInit, Role, SessionStart, Status, TransportProtocol,
    WeightUpdate,
};

/// The two magic bytes every frame starts with.
pub const MAGIC: [u8; 2] = [0x20, 0x88];
/// The only protocol version (MOSN's).
pub const VERSION: u8 = 0x01;
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Type bytes of a request frame.
pub const TYPE_REQUEST: [u8; 2] = [0x01, 0x00];
/// Type bytes of a response frame.
pub const TYPE_RESPONSE: [u8; 2] = [0x02, 0x00];
/// The ringtun extension version this build speaks. 2: framed sessions and UDP flows.
pub const EXTENSION_VERSION: u32 = 2;
/// The first extension version with framed sessions (`session_frame`): a data connection then
/// carries many sessions, one after another.
pub const FRAMED_SESSIONS_VERSION: u32 = 2;
/// The first extension version with UDP flows (a server leases a UDP flow only to a connection
/// that announced it).
pub const UDP_FLOWS_VERSION: u32 = 2;
/// Largest payload the header can describe.
pub const MAX_WIRE_PAYLOAD_BYTES: usize = u16::MAX as usize;
/// Default limit on a received payload; peers' frames are small JSON objects.
pub const DEFAULT_MAX_FRAME_PAYLOAD_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod proptests;
