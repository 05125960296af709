//! The epoll pump on loopback pairs `a_peer ⇄ a ⇄ pump ⇄ b ⇄ b_peer`, with and without
//! splice: every byte arrives in order, half-close is carried, and directions switch between
//! copying and splicing as they turn busy and quiet.
use super::epoll::pump;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.expect("connect"), s.expect("accept").0)
}

/// Deterministic bytes that catch reordering and loss: the period (251) divides no page or
/// buffer size, so a page lost, doubled or moved shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize) % 251) as u8)
        .collect()
}

/// Sends `bytes` from `from` to `to` through the pump and checks they arrive whole.
async fn bulk(from: &mut TcpStream, to: &mut TcpStream, bytes: &[u8]) {
    let (_, got) = tokio::join!(
        async { from.write_all(bytes).await.expect("write") },
        async {
            let mut got = vec![0u8; bytes.len()];
            to.read_exact(&mut got).await.expect("read");
            got
        }
    );
    assert!(got == bytes, "{} bulk bytes differ", bytes.len());
}

/// What a test moved through the pump: (a → b, b → a) bytes.
type Expected = (u64, u64);

/// Runs `test` against a pump `a_peer ⇄ a ⇄ pump ⇄ b ⇄ b_peer`; the pump must count exactly
/// the bytes the test says it moved.
fn run(pool: BufferPool, test: impl AsyncFnOnce(TcpStream, TcpStream) -> Expected) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let (a_peer, a) = pair().await;
        let (b, b_peer) = pair().await;
        let pumping = crate::rt::spawn_local(async move { pump(&a, &b, &[], &[], &pool).await });
        let expected = test(a_peer, b_peer).await;
        let moved = pumping.await.expect("join").expect("pump");
        assert_eq!((moved.a_to_b, moved.b_to_a), expected, "bytes counted");
    });
}

/// Bulk one way, then small messages, then bulk again, both ways; then half-close.
async fn busy_quiet_busy(mut a_peer: TcpStream, mut b_peer: TcpStream) -> Expected {
    bulk(&mut a_peer, &mut b_peer, &pattern(6 << 20, 1)).await;
    for i in 0..50u8 {
        b_peer.write_all(&[i; 7]).await.expect("write");
        let mut back = [0u8; 7];
        a_peer.read_exact(&mut back).await.expect("read");
        assert_eq!(back, [i; 7]);
    }
    bulk(&mut b_peer, &mut a_peer, &pattern(3 << 20, 2)).await;
    // Half-close: a_peer's EOF reaches b_peer, which can still answer.
    a_peer.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    b_peer.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    b_peer.write_all(b"last words").await.expect("write");
    b_peer.shutdown().await.expect("shutdown");
    let mut last = Vec::new();
    a_peer.read_to_end(&mut last).await.expect("read");
    assert_eq!(last, b"last words");
    (6 << 20, 50 * 7 + (3 << 20) + 10)
}

#[test]
fn copying_delivers_every_byte_and_the_half_close() {
    run(BufferPool::new(16 * 1024), busy_quiet_busy);
}

#[test]
fn splicing_delivers_every_byte_and_the_half_close() {
    run(
        BufferPool::new(16 * 1024).with_splice(64 * 1024),
        busy_quiet_busy,
    );
}

#[test]
fn a_pipe_smaller_than_the_buffer_still_delivers_everything() {
    run(
        BufferPool::new(64 * 1024).with_splice(4096),
        busy_quiet_busy,
    );
}

/// The same traffic through the io_uring pump (the ring runtime), with splice on or off.
fn run_uring(pools: Pools, test: impl AsyncFnOnce(TcpStream, TcpStream) -> Expected) {
    if !crate::rt::uring_gate::available_for_test() {
        return;
    }
    let rt = crate::rt::uring::runtime(64).expect("io_uring runtime");
    crate::rt::uring::block_on(rt, async move {
        let (a_peer, a) = pair().await;
        let (b, b_peer) = pair().await;
        let uring = crate::rt::Backend::Uring { entries: 64 };
        let a = Conn::from_tokio(uring, a).expect("adopt");
        let b = Conn::from_tokio(uring, b).expect("adopt");
        let pumping = crate::rt::spawn_local(async move {
            pump_conns(&a, &b, Vec::new(), Vec::new(), &pools).await
        });
        let expected = test(a_peer, b_peer).await;
        let moved = pumping.await.expect("join").expect("pump");
        assert_eq!((moved.a_to_b, moved.b_to_a), expected, "bytes counted");
    });
}

#[test]
fn io_uring_copying_delivers_every_byte_and_the_half_close() {
    run_uring(Pools::new(16 * 1024, 0), busy_quiet_busy);
}

#[test]
fn io_uring_splicing_delivers_every_byte_and_the_half_close() {
    run_uring(Pools::new(16 * 1024, 64 * 1024), busy_quiet_busy);
    run_uring(Pools::new(64 * 1024, 4096), busy_quiet_busy);
}

#[test]
fn an_io_uring_direction_quiet_after_bulk_pins_no_large_buffer() {
    let pools = Pools::new(64 * 1024, 256 * 1024);
    let uring = pools.uring.clone();
    run_uring(pools, async move |mut a_peer, mut b_peer| {
        bulk(&mut a_peer, &mut b_peer, &pattern(4 << 20, 3)).await;
        // Quiet now: the direction's one large buffer goes back to the pool while it waits.
        let deadline = crate::rt::time::Instant::now() + std::time::Duration::from_secs(5);
        while uring.large_free() == 0 && crate::rt::time::Instant::now() < deadline {
            crate::rt::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(
            uring.large_free(),
            1,
            "a quiet direction still holds a large buffer"
        );
        b_peer.write_all(b"x").await.expect("write");
        let mut x = [0u8; 1];
        a_peer.read_exact(&mut x).await.expect("read");
        a_peer.shutdown().await.expect("shutdown");
        b_peer.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.expect("eof");
        a_peer.read_to_end(&mut rest).await.expect("eof");
        (4 << 20, 1)
    });
}

#[test]
fn busy_directions_return_their_pipes() {
    let pool = BufferPool::new(16 * 1024).with_splice(64 * 1024);
    let pipes = pool.pipes().cloned().expect("splice on");
    run(pool, busy_quiet_busy);
    let kept = pipes.free_count();
    assert!((1..=2).contains(&kept), "{kept} pipes in the pool");
}

/// A peer that never answers an ABORT (no END, no ABORT back) does not hold the connection
/// forever: the drain gives up after `terminal_wait` with a timeout naming why.
#[test]
fn an_abort_unanswered_ends_within_the_terminal_wait() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (link_side, mut peer) = pair().await;
        let link = DataLink::new(crate::rt::ReadyStream::Tokio(link_side), None).unwrap();
        let pools = Pools::default();
        let abort = abort_framed(
            &link,
            Vec::new(),
            crate::protocol::session_frame::AbortReason::BackendConnect,
            "backend refused",
            std::time::Duration::from_millis(200),
            &pools,
        );
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), abort)
            .await
            .expect("the abort's drain ended by itself");
        let e = ended.expect_err("no terminal came");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // The peer got the ABORT record, then the connection was shut down.
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.first(), Some(&3), "an ABORT record: {got:?}");
    });
}
