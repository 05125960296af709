//! The splice(2) evaluation (issue 3): one stream through one pump hop, copying through a buffer
//! or splicing through a pipe, on each I/O backend, in one run.
//!
//! Topology: writer thread → `a_peer → a` ⇄ pump thread ⇄ `b → b_peer` → reader thread, all
//! loopback TCP. Each run moves `BYTES` one way; every system runs `ROUNDS` times, interleaved, and
//! the table shows the median rate and its ratio to the baseline (the epoll copy pump) measured in
//! the same run. Pumps:
//!
//! - `epoll copy`: ringtun's epoll pump with splice off (`splice_pipe_bytes: 0`) — the baseline.
//! - `epoll splice`: the same pump with its default pipe (busy directions splice).
//! - `io_uring copy`: ringtun's io_uring pump (the ring runtime, owned buffers), splice off.
//! - `io_uring splice`: the same pump with its default pipe: a busy direction splices what is
//!   queued socket → pipe with a plain call and pipe → socket with a plain non-blocking call,
//!   waiting for a full socket with a poll on a second ring.
//! - `io_uring splice, raw ring`: both halves as IORING_OP_SPLICE on a raw ring (the `io-uring`
//!   crate), one op at a time; the kernel runs each on an io-wq worker thread.
//!
//! Run: `cargo bench --bench splice` (release build; about a minute). `-- --bytes N --rounds N`
//! change the transfer size and the rounds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringtun::dataplane::pump::epoll::{pump, BufferPool};
use ringtun::dataplane::pump::{PUMP_BUFFER_BYTES, SPLICE_PIPE_BYTES};

/// What the writer writes at a time, and the reader reads at most.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum System {
    EpollCopy,
    EpollSplice,
    UringCopy,
    UringSplice,
    UringRawSplice,
}

impl System {
    const ALL: [System; 5] = [
        System::EpollCopy,
        System::EpollSplice,
        System::UringCopy,
        System::UringSplice,
        System::UringRawSplice,
    ];

    fn name(self) -> &'static str {
        match self {
            System::EpollCopy => "epoll copy (baseline)",
            System::EpollSplice => "epoll splice",
            System::UringCopy => "io_uring copy",
            System::UringSplice => "io_uring splice",
            System::UringRawSplice => "io_uring splice, raw ring",
        }
    }

    fn needs_uring(self) -> bool {
        matches!(
            self,
            System::UringCopy | System::UringSplice | System::UringRawSplice
        )
    }
}

/// A connected loopback pair (client, accepted).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

/// Moves `bytes` through one pump of `system`; returns Gbit/s. Every byte is checked.
fn run(system: System, bytes: usize) -> f64 {
    let (mut a_peer, a) = pair();
    let (b, mut b_peer) = pair();
    let pumping = std::thread::spawn(move || match system {
        System::EpollCopy | System::EpollSplice => pump_epoll(a, b, system == System::EpollSplice),
        System::UringCopy => pump_uring(a, b, false),
        System::UringSplice => pump_uring(a, b, true),
        System::UringRawSplice => pump_uring_raw_splice(a, b),
    });
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            a_peer.write_all(&chunk[..n]).expect("write");
            left -= n;
        }
        a_peer
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        a_peer
    });
    // The writer repeats one chunk; two copies of it side by side let every read be checked
    // with one comparison, whatever its offset.
    let expected: Vec<u8> = (0..2 * CHUNK_BYTES)
        .map(|i| (i % CHUNK_BYTES % 251) as u8)
        .collect();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut got = 0usize;
    loop {
        let n = b_peer.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        let at = got % CHUNK_BYTES;
        assert!(buf[..n] == expected[at..at + n], "bytes after {got} differ");
        got += n;
    }
    let elapsed = start.elapsed();
    assert_eq!(got, bytes, "{}: bytes lost", system.name());
    let a_peer = writer.join().expect("writer");
    drop(a_peer);
    drop(b_peer);
    pumping.join().expect("pump");
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

fn pump_epoll(a: TcpStream, b: TcpStream, splice: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, async move {
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        let a = tokio::net::TcpStream::from_std(a).expect("adopt");
        let b = tokio::net::TcpStream::from_std(b).expect("adopt");
        let pool = BufferPool::new(PUMP_BUFFER_BYTES).with_splice(if splice {
            SPLICE_PIPE_BYTES
        } else {
            0
        });
        pump(&a, &b, &[], &[], &pool).await.expect("pump");
    });
}

fn pump_uring(a: TcpStream, b: TcpStream, splice: bool) {
    let rt = ringtun::rt::uring::runtime(256).expect("io_uring runtime");
    ringtun::rt::uring::block_on(rt, async move {
        let a = ringtun::rt::uring::Stream::from_std(a).expect("adopt");
        let b = ringtun::rt::uring::Stream::from_std(b).expect("adopt");
        let buffers = ringtun::dataplane::pump::uring::Buffers::new(PUMP_BUFFER_BYTES)
            .with_splice(if splice { SPLICE_PIPE_BYTES } else { 0 });
        ringtun::dataplane::pump::uring::pump(&a, &b, Vec::new(), Vec::new(), &buffers)
            .await
            .expect("pump");
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Both);
    });
}

/// a → b with IORING_OP_SPLICE through a pipe, one op at a time, until a's EOF.
fn pump_uring_raw_splice(a: TcpStream, b: TcpStream) {
    use io_uring::{opcode, types, IoUring};
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fcntl on the pipe just made; a refusal keeps the default size.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, SPLICE_PIPE_BYTES as libc::c_int) };
    let mut ring = IoUring::new(8).expect("ring");
    let mut op = |from: i32, to: i32, len: u32| -> i32 {
        let sqe = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len).build();
        // SAFETY: the SQE names only descriptors that stay open until its completion, which is
        // awaited right here.
        unsafe { ring.submission().push(&sqe).expect("sq full") };
        ring.submit_and_wait(1).expect("submit");
        let cqe = ring.completion().next().expect("cqe");
        cqe.result()
    };
    loop {
        let n = op(a.as_raw_fd(), fds[1], SPLICE_PIPE_BYTES as u32);
        assert!(
            n >= 0,
            "splice in: {}",
            std::io::Error::from_raw_os_error(-n)
        );
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = op(fds[0], b.as_raw_fd(), left as u32);
            assert!(m > 0, "splice out: {m}");
            left -= m;
        }
    }
    b.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // SAFETY: the pipe's descriptors are owned here and no op uses them any more.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

fn main() {
    let mut bytes: usize = 1 << 30;
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bytes" => bytes = args.next().and_then(|v| v.parse().ok()).expect("--bytes N"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            _ => {} // cargo bench passes `--bench`
        }
    }
    let uring = ringtun::rt::uring::probe();
    if let Err(why) = &uring {
        println!("io_uring rows skipped: {why}");
    }
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| !s.needs_uring() || uring.is_ok())
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for round in 0..rounds {
        for k in 0..systems.len() {
            // Rotate the order per round so drifts of a shared machine hit every system alike.
            let i = (k + round) % systems.len();
            rates[i].push(run(systems[i], bytes));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = rates.iter_mut().map(median).collect();
    println!(
        "\none stream through one pump hop, {} MiB per run, median of {rounds} interleaved rounds\n",
        bytes >> 20
    );
    println!("| pump | Gbit/s | × epoll copy | spread |");
    println!("|---|---|---|---|");
    for (i, s) in systems.iter().enumerate() {
        let (lo, hi) = (rates[i][0], rates[i][rates[i].len() - 1]);
        println!(
            "| {} | {:.2} | {:.2}× | {lo:.2} – {hi:.2} |",
            s.name(),
            medians[i],
            medians[i] / medians[0]
        );
    }
}
