//! No kernel thread per slow client (issue 13): 200 sessions whose receivers stop reading, each
//! with more bulk on the way than the receiver's buffers hold, so every one ends in a stalled
//! splice. The process's thread count must stay bounded (independent of the 200), and one more
//! session on the same worker must still move 64 MiB. One test running the backends one after
//! the other, alone in its binary, so nothing else moves this process's thread count.
//!
//! The sessions run through the pump directly (`pump_conns` on one worker runtime), peers and all
//! on that worker thread, so the only threads that can appear are the kernel's (io-wq).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringtun::config::IoBackend;
use ringtun::dataplane::pump::{pump_conns, Pools};
use ringtun::rt::Conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STALLED_SESSIONS: usize = 200;
/// What each stalled session's sender writes: well over what the receiver side holds (its
/// receive buffer, the pump's send buffer, the pipe), so its splice must wait.
const STALLED_BYTES: usize = 2 << 20;
const BUFFER_BYTES: usize = 64 * 1024;
const PIPE_BYTES: usize = 256 * 1024;
/// Kept small on the receiving side so a stalled session buffers little.
const RECEIVER_BUFFER_BYTES: u32 = 128 * 1024;
/// What the measured session moves.
const PROBE_BYTES: usize = 64 << 20;
/// Threads the process may gain while the sessions stall: a small constant, not one per session.
const THREAD_SLACK: usize = 8;
/// Generous: the transfer takes well under a second here, loaded or not.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn queued(fd: i32) -> usize {
    ringtun::rt::readable_bytes(fd).unwrap_or(0)
}

/// `(a_peer, a)`: a plain loopback pair.
async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// `(b, b_peer)`: the pump's side `b` with a small send buffer, the receiver `b_peer` with a
/// small receive buffer (set before the handshake, so the window is small from the start).
async fn receiver_pair() -> (TcpStream, TcpStream) {
    let listener = TcpSocket::new_v4().unwrap();
    listener
        .set_recv_buffer_size(RECEIVER_BUFFER_BYTES)
        .unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = listener.listen(16).unwrap();
    let addr = l.local_addr().unwrap();
    let b = TcpSocket::new_v4().unwrap();
    b.set_send_buffer_size(RECEIVER_BUFFER_BYTES).unwrap();
    let (c, s) = tokio::join!(b.connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// `a_peer ⇄ a ⇄ pump ⇄ b ⇄ b_peer`, the pump spawned on this worker.
async fn session(
    backend: ringtun::rt::Backend,
    pools: &Rc<Pools>,
) -> (TcpStream, TcpStream, ringtun::rt::JoinHandle<bool>) {
    let (a_peer, a) = pair().await;
    let (b, b_peer) = receiver_pair().await;
    let a = Conn::from_tokio(backend, a).unwrap();
    let b = Conn::from_tokio(backend, b).unwrap();
    let pools = pools.clone();
    let pumping = ringtun::rt::spawn_local(async move {
        pump_conns(&a, &b, Vec::new(), Vec::new(), &pools)
            .await
            .is_ok()
    });
    (a_peer, b_peer, pumping)
}

/// Moves `PROBE_BYTES` through a fresh session and half-closes it; returns how long it took.
async fn probe(backend: ringtun::rt::Backend, pools: &Rc<Pools>) -> Result<Duration, String> {
    let (mut a_peer, mut b_peer, pumping) = session(backend, pools).await;
    let started = Instant::now();
    let transfer = async {
        let data = vec![7u8; 1 << 20];
        let write = async {
            for _ in 0..PROBE_BYTES / data.len() {
                a_peer.write_all(&data).await?;
            }
            a_peer.shutdown().await
        };
        let read = async {
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0usize;
            loop {
                match b_peer.read(&mut buf).await? {
                    0 => return Ok::<usize, std::io::Error>(got),
                    n => got += n,
                }
            }
        };
        let (w, r) = tokio::join!(write, read);
        w?;
        r
    };
    let got = ringtun::rt::time::timeout(PROBE_LIMIT, transfer)
        .await
        .map_err(|_| format!("64 MiB did not pass within {PROBE_LIMIT:?}"))?
        .map_err(|e| format!("probe transfer failed: {e}"))?;
    let took = started.elapsed();
    if got != PROBE_BYTES {
        return Err(format!("probe received {got} of {PROBE_BYTES} bytes"));
    }
    b_peer.shutdown().await.map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = a_peer.read_to_end(&mut rest).await;
    if !pumping.await.unwrap_or(false) {
        return Err("the probe's pump failed".into());
    }
    Ok(took)
}

struct Report {
    base_threads: usize,
    stalled_threads: usize,
    after_probe_threads: usize,
}

fn run(backend_name: IoBackend) -> Report {
    let backend = ringtun::rt::resolve(backend_name).expect("backend");
    let (tx, rx) = mpsc::channel::<Result<Report, String>>();
    let worker = ringtun::rt::spawn_worker("slow-receivers".into(), backend, None, move || {
        async move {
            let result = async {
                let pools = Rc::new(Pools::new(BUFFER_BYTES, PIPE_BYTES));
                // Warm up: the worker's splice machinery exists before the baseline is taken.
                let unloaded = probe(backend, &pools).await?;
                let base_threads = threads();
                let data: Rc<[u8]> = vec![1u8; STALLED_BYTES].into();
                let mut stalled = Vec::new();
                for _ in 0..STALLED_SESSIONS {
                    let (mut a_peer, b_peer, pumping) = session(backend, &pools).await;
                    let data = data.clone();
                    // Never finishes: the receiver does not read. Ends with an error when the
                    // session is torn down.
                    let writer = ringtun::rt::spawn_local(async move {
                        let _ = a_peer.write_all(&data).await;
                        a_peer
                    });
                    stalled.push((b_peer, pumping, writer));
                }
                // Every receiver holds more than the pump copies before it turns to splice
                // (a small read, then one large one): each direction has spliced and is stuck.
                let copied_first = BUFFER_BYTES + 512;
                let deadline = Instant::now() + Duration::from_secs(60);
                while stalled
                    .iter()
                    .any(|(b_peer, ..)| queued(b_peer.as_raw_fd()) <= copied_first)
                {
                    if Instant::now() > deadline {
                        return Err("the stalled sessions never reached splice".to_string());
                    }
                    ringtun::rt::time::sleep(Duration::from_millis(10)).await;
                }
                let stalled_threads = threads();
                let loaded = probe(backend, &pools).await?;
                let after_probe_threads = threads();
                let rate = |d: Duration| PROBE_BYTES as f64 / d.as_secs_f64() / (1 << 20) as f64;
                // Printed before the teardown, so a failing teardown still shows them.
                eprintln!(
                    "{}: threads {base_threads} before, {stalled_threads} with {STALLED_SESSIONS} \
                     stalled sessions, {after_probe_threads} after the probe; 64 MiB unloaded {:.0} MiB/s, \
                     beside the stalled sessions {:.0} MiB/s",
                    backend.name(),
                    rate(unloaded),
                    rate(loaded),
                );
                // Tear down: the receivers go away, so every stalled direction fails and its pump
                // ends.
                let mut ends = Vec::new();
                for (b_peer, pumping, writer) in stalled {
                    drop(b_peer);
                    ends.push((pumping, writer));
                }
                for (pumping, writer) in ends {
                    let _ = ringtun::rt::time::timeout(Duration::from_secs(30), pumping)
                        .await
                        .map_err(|_| "a stalled pump did not end after its receiver left")?;
                    let _ = writer.await;
                }
                Ok(Report {
                    base_threads,
                    stalled_threads,
                    after_probe_threads,
                })
            }
            .await;
            let _ = tx.send(result);
        }
    })
    .expect("worker");
    let report = rx.recv().expect("worker reported").unwrap_or_else(|e| {
        panic!("{backend_name:?}: {e}");
    });
    worker.join().expect("worker thread");
    report
}

#[test]
fn stalled_receivers_pin_no_thread_each_and_others_keep_moving() {
    for backend in [IoBackend::Epoll, IoBackend::Uring] {
        if backend == IoBackend::Uring && !ringtun::rt::uring_gate::available_for_test() {
            continue;
        }
        let r = run(backend);
        let most = r.stalled_threads.max(r.after_probe_threads);
        assert!(
            most <= r.base_threads + THREAD_SLACK,
            "{backend:?}: {most} threads with {STALLED_SESSIONS} stalled sessions, {} before",
            r.base_threads
        );
    }
}
