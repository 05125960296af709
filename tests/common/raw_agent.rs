//! A scripted tunnel agent speaking the wire protocol by hand (blocking, one data connection):
//! for tests that need an agent to send what a real one would not (hostile records, a chosen
//! ABORT) or to act as an older or MOSN agent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringtun::protocol::{
    self, ConnectionInitInfo, Decoded, Frame, InitExtra, Pong, RingtunInit, Role, SessionStart,
};
use ringtun::secret::Secret;

/// A data connection speaking the wire protocol by hand, announcing `version` (None: MOSN).
pub struct RawAgent {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl RawAgent {
    pub fn connect(tunnel: SocketAddr, cluster: &str, host: &str, version: Option<u32>) -> Self {
        let mut s = TcpStream::connect(tunnel).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let init = protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
            cluster_name: cluster.into(),
            weight: 10,
            host_name: host.into(),
            credential_policy: String::new(),
            credential: Secret::new(""),
            extra: version.map(|version| InitExtra {
                ringtun: Some(RingtunInit {
                    version,
                    role: Role::Data,
                    agent_id: format!("{host}-id"),
                    max_connection_num: None,
                }),
                other: Default::default(),
            }),
        }))
        .unwrap();
        s.write_all(&init).unwrap();
        let mut agent = Self { s, buf: Vec::new() };
        let Frame::InitResponse(r) = agent.frame() else {
            panic!("no init response");
        };
        assert_eq!(r.status.0, 1);
        let expected = version.map(|v| v.min(protocol::EXTENSION_VERSION));
        assert_eq!(r.extension_version, expected);
        agent
    }

    pub fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    pub fn frame(&mut self) -> Frame {
        loop {
            if let Decoded::Frame(f, used) = protocol::decode(&self.buf, 65535).unwrap() {
                self.buf.drain(..used);
                return f;
            }
            assert!(self.fill() > 0, "closed before a frame");
        }
    }

    /// Answers pings until a session starts.
    pub fn session(&mut self) -> SessionStart {
        loop {
            match self.frame() {
                Frame::Ping(p) => {
                    let pong = protocol::encode_to_vec(&Frame::Pong(Pong { seq: p.seq })).unwrap();
                    self.s.write_all(&pong).unwrap();
                }
                Frame::SessionStart(s) => return s,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Reads until `n` session bytes (raw or records) are in the buffer.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill() > 0, "closed early");
        }
        self.buf.drain(..n).collect()
    }

    /// True once the server closed this connection (EOF or reset).
    pub fn closed_by_server(&mut self) -> bool {
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
