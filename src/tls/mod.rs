//! TLS for tunnel connections: rustls driven over caller-owned buffers.
//!
//! [`TlsSession`] is a sans-I/O driver on rustls's unbuffered API (`records` runs its state
//! machine): it never touches a socket and holds no record buffer. The caller reads ciphertext
//! into its own buffer and hands the slice in (decrypted in place); the session appends what
//! must be sent (handshake records, encrypted data, alerts) and what was decrypted to `Vec`s the
//! caller owns and reuses, and keeps only a record a read cut short.
//! That is all an io_uring pump (owned buffers, no `AsyncRead`/`AsyncWrite`) and an epoll pump
//! have in common, so both backends run this same code. [`accept`] and [`connect`] are the
//! handshake over a tokio `TcpStream` for the epoll side (control path, agent dial).
//!
//! Config loading (`config`) turns `tls_context` blocks into rustls configs; its errors name the
//! file and what is wrong with it. Failures of a handshake are [`TlsError`]s whose text an operator
//! can act on ("certificate" where the cause is one).
//!
//! This module must not log (callers log with the peer's address), must not do I/O except in
//! `config` (reading PEM files) and `io` (the handshake helpers), and must not panic on anything a
//! peer sends.

mod config;
mod error;
mod io;
mod records;
mod rotate;
mod session;

pub use config::{client_config, server_config, server_name};
pub use error::TlsError;
pub use io::{accept, connect, io_error, Channel, Established};
pub use rotate::Rotating;
pub use session::{DecryptOutcome, HandshakeProgress, Side, TlsSession};

pub use rustls::pki_types::ServerName;
pub use rustls::{ClientConfig, ServerConfig};

#[cfg(test)]
mod split_tests;
#[cfg(test)]
mod tests;
