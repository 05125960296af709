//! `ringtun` run as a child process (the binary this package builds), for what only the binary
//! wires: signals. Its log lines arrive on a channel; it is killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

pub struct Process {
    child: Child,
    lines: Receiver<String>,
}

impl Process {
    /// Starts `ringtun <role> --config <config>` with info logs.
    pub fn start(role: &str, config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringtun"))
            .args([role, "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self { child, lines }
    }

    /// Waits (up to 10 s) for a log line containing every one of `needles`.
    pub fn line_with(&self, needles: &[&str]) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no log line with {needles:?}"));
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: plain signal delivery to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key` in a log line (`tunnel_addr=127.0.0.1:4000` → `127.0.0.1:4000`).
pub fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(key)? + key.len();
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}
