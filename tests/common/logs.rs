//! What every thread of a test process logs, captured for "logged with its reason" checks.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn buffer() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        buffer().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every line logged at `level` or above from now on (the first call's level holds for
/// the whole test process).
pub fn capture_logs(level: tracing::Level) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(level)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// Everything captured so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&buffer().lock().unwrap()).to_string()
}

/// Whether a logged line contains every one of `parts` (within 10 s).
pub fn logged(parts: &[&str]) -> bool {
    super::wait_until(Duration::from_secs(10), || {
        captured_logs()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    })
}
