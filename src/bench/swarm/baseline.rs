//! The floor under `--one-more`'s join: the CPU this machine charges one thread for the least a
//! server can do for a lone connection (a blocking accept, one read of an init-sized message,
//! one short answer, close), measured in the same run, so the join's cost reads as a ratio to
//! what no server avoids. On a VM a thread woken from idle runs on cold caches and pays the wake
//! itself; the same four calls cost about half as much back to back. It must not touch the
//! server under test: its listener and client are its own, on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::server_cpu::clock_ns;
use super::BenchError;

/// Lone connections measured; the median is reported.
const CONNECTIONS: usize = 15;
/// Pause before each connection, so the serving thread is idle when it comes (the join is
/// measured after a second of quiet).
const GAP: Duration = Duration::from_millis(200);
/// What the client sends: about an agent init's size.
const MESSAGE_BYTES: usize = 300;
/// What the serving thread answers.
const ANSWER_BYTES: usize = 64;
/// Longest wait for one connection's answer: a stuck measurement fails, it does not hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The median CPU (µs) a thread spends serving one lone connection, over `CONNECTIONS` of them.
/// Blocking: about three seconds.
pub fn lone_connection_cpu_us() -> Result<f64, BenchError> {
    measure(CONNECTIONS, GAP)
}

fn measure(connections: usize, gap: Duration) -> Result<f64, BenchError> {
    let io = |what| move |source| BenchError::Io { what, source };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("baseline listener"))?;
    let addr = listener.local_addr().map_err(io("baseline listener"))?;
    let server = std::thread::Builder::new()
        .name("swarm-baseline".into())
        .spawn(move || serve(&listener, connections))
        .map_err(io("baseline thread"))?;
    let message = [b'i'; MESSAGE_BYTES];
    let mut answer = [0u8; ANSWER_BYTES];
    for _ in 0..connections {
        std::thread::sleep(gap);
        let mut client =
            TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT).map_err(io("baseline connect"))?;
        client
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(io("baseline connect"))?;
        client.write_all(&message).map_err(io("baseline send"))?;
        client
            .read_exact(&mut answer)
            .map_err(io("baseline answer"))?;
    }
    let mut costs = server
        .join()
        .map_err(|_| BenchError::Failed("the baseline thread panicked".into()))?
        .map_err(io("baseline serve"))?;
    costs.sort_by(f64::total_cmp);
    Ok(costs[costs.len() / 2])
}

/// Serves `connections` connections; returns each one's thread CPU (µs), from before its accept
/// (the wait itself costs no CPU) to after its close.
fn serve(listener: &TcpListener, connections: usize) -> std::io::Result<Vec<f64>> {
    let mut buf = [0u8; 4096];
    let mut costs = Vec::with_capacity(connections);
    let cpu_ns = || {
        clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).ok_or_else(|| {
            std::io::Error::other(
                "this thread's CPU clock (CLOCK_THREAD_CPUTIME_ID) cannot be read",
            )
        })
    };
    // A client that failed mid-run sends nothing more: accept (SO_RCVTIMEO bounds it on Linux)
    // and the reads (accepted sockets inherit it: no call per connection, which the floor
    // would count) give up instead of keeping this thread forever.
    let wait = Some(GAP + ANSWER_TIMEOUT);
    socket2::SockRef::from(listener).set_read_timeout(wait)?;
    for _ in 0..connections {
        let before = cpu_ns()?;
        let (mut conn, _) = listener.accept()?;
        let mut got = 0;
        while got < MESSAGE_BYTES {
            match conn.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        conn.write_all(&buf[..ANSWER_BYTES])?;
        drop(conn);
        costs.push(cpu_ns()?.saturating_sub(before) as f64 / 1e3);
    }
    Ok(costs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_positive_cost() {
        let us = super::measure(3, std::time::Duration::from_millis(1)).expect("baseline");
        assert!(us > 0.0 && us < 1_000_000.0, "{us}");
    }
}
