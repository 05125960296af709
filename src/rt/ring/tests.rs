use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

fn ring() -> Runtime {
    Runtime::new(64).expect("io_uring is needed for the ring runtime tests")
}

#[test]
fn spawned_tasks_run_and_give_their_output() {
    let out = ring().block_on(async {
        let a = spawn_local(async { 20 });
        let b = spawn_local(async { 22 });
        a.await.unwrap() + b.await.unwrap()
    });
    assert_eq!(out, 42);
}

#[test]
fn an_aborted_task_is_dropped_and_reports_cancelled() {
    ring().block_on(async {
        let dropped = Rc::new(std::cell::Cell::new(false));
        struct Mark(Rc<std::cell::Cell<bool>>);
        impl Drop for Mark {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let mark = Mark(dropped.clone());
        let task = spawn_local(async move {
            let _mark = mark;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(dropped.get());
    });
}

#[test]
fn sleeps_wait_their_duration_and_the_nearest_bounds_the_ring() {
    ring().block_on(async {
        let start = Instant::now();
        let long = spawn_local(async {
            Sleep::until(Instant::now() + Duration::from_millis(60)).await;
            Instant::now()
        });
        Sleep::until(Instant::now() + Duration::from_millis(20)).await;
        let short_done = Instant::now();
        let long_done = long.await.unwrap();
        assert!(short_done - start >= Duration::from_millis(20));
        assert!(long_done - start >= Duration::from_millis(60));
        assert!(long_done > short_done);
    });
}

#[test]
fn a_reset_sleep_waits_for_its_new_deadline() {
    ring().block_on(async {
        let start = Instant::now();
        let mut sleep = Sleep::until(start + Duration::from_secs(60));
        sleep.reset(start + Duration::from_millis(10));
        (&mut sleep).await;
        assert!(start.elapsed() < Duration::from_secs(30));
    });
}

#[test]
fn a_wake_from_another_thread_reaches_a_parked_ring() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let sender = std::thread::spawn(move || {
        for i in 0..100 {
            std::thread::sleep(Duration::from_micros(200));
            tx.send(i).unwrap();
        }
    });
    let got = ring().block_on(async move {
        let mut sum = 0;
        while let Some(i) = rx.recv().await {
            sum += i;
        }
        sum
    });
    sender.join().unwrap();
    assert_eq!(got, (0..100).sum::<u32>());
}

#[test]
fn recv_and_send_move_bytes_on_a_socket() {
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    b.write_all(b"hello").unwrap();
    let (n, buf) = ring().block_on(async move {
        let (n, buf) = recv(fd, Vec::with_capacity(64)).await;
        let (sent, _) = send_all(fd, b" world".to_vec(), 1).await;
        sent.unwrap();
        (n.unwrap(), buf)
    });
    assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
    let mut back = [0u8; 5];
    b.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"world");
    drop(a);
}

#[test]
fn a_dropped_recv_is_cancelled_and_the_runtime_ends() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    ring().block_on(async move {
        let pending = recv(fd, Vec::with_capacity(64));
        let timed = async {
            Sleep::until(Instant::now() + Duration::from_millis(5)).await;
        };
        tokio::select! {
            _ = pending => panic!("nothing was sent"),
            () = timed => {}
        }
        // The recv's slot is freed once its cancellation completes.
        for _ in 0..100 {
            if with_driver(|d| d.in_flight()).unwrap() == 0 {
                break;
            }
            Sleep::until(Instant::now() + Duration::from_millis(1)).await;
        }
        assert_eq!(with_driver(|d| d.in_flight()).unwrap(), 0);
    });
}

#[test]
fn accept_and_poll_see_a_connection_and_its_bytes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        c
    });
    let lfd = listener.as_raw_fd();
    ring().block_on(async move {
        let (conn, peer) = accept(lfd).await.unwrap();
        assert!(peer.ip().is_loopback());
        let events = poll(conn.as_raw_fd(), libc::POLLIN).await.unwrap();
        assert!(events & libc::POLLIN as u32 != 0);
    });
    drop(client.join().unwrap());
}

#[test]
fn tasks_left_at_exit_are_dropped() {
    struct Count(Rc<std::cell::Cell<u32>>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let dropped = Rc::new(std::cell::Cell::new(0));
    let counter = dropped.clone();
    let live = ring().block_on(async move {
        for _ in 0..10 {
            let mark = Count(counter.clone());
            spawn_local(async move {
                let _mark = mark;
                std::future::pending::<()>().await;
            });
        }
        // Let every task start (and park) before the worker's future ends.
        Sleep::until(Instant::now() + Duration::from_millis(1)).await;
        core().map(|c| c.executor.live()).unwrap()
    });
    assert_eq!(live, 10);
    assert_eq!(
        dropped.get(),
        10,
        "tasks still alive at exit were not dropped"
    );
}

#[test]
fn a_multishot_accept_takes_many_connections_and_closes_what_it_holds_when_dropped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lfd = listener.as_raw_fd();
    let clients: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    ring().block_on(async move {
        let accepts = MultiAccept::new(lfd);
        for _ in 0..3 {
            let conn = accepts.next().await.unwrap();
            assert!(conn.as_raw_fd() >= 0);
        }
        // The fourth may already sit in the op's queue: dropping closes it.
        drop(accepts);
        for _ in 0..100 {
            if with_driver(|d| d.in_flight()).unwrap() == 0 {
                break;
            }
            Sleep::until(Instant::now() + Duration::from_millis(1)).await;
        }
        assert_eq!(with_driver(|d| d.in_flight()).unwrap(), 0);
    });
    // The fourth client sees its connection closed (EOF), or it is still in the backlog.
    let mut last = clients.into_iter().nth(3).unwrap();
    last.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    let _ = last.read(&mut byte);
}

#[test]
fn a_panicking_task_ends_alone() {
    let out = ring().block_on(async {
        let bad = spawn_local(async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("a task panics on purpose");
            }
            1
        });
        let good = spawn_local(async { 2 });
        (bad.await.unwrap_err().is_panic(), good.await.unwrap())
    });
    assert_eq!(out, (true, 2));
}

#[test]
fn a_registered_sleep_reset_earlier_fires_at_its_new_deadline() {
    ring().block_on(async {
        let start = Instant::now();
        let mut sleep = Box::pin(Sleep::until(start + Duration::from_secs(60)));
        // Registered by one poll, then reset while the task waits elsewhere.
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        sleep.as_mut().reset(start + Duration::from_millis(5));
        sleep.await;
        assert!(start.elapsed() < Duration::from_secs(30));
    });
}

fn futures_waker() -> std::task::Waker {
    struct Nop;
    impl std::task::Wake for Nop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    std::task::Waker::from(std::sync::Arc::new(Nop))
}

/// A connected pair: (ring side, the other end).
fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    (ours, other)
}

#[test]
fn provided_receives_recycle_their_buffers_past_the_rings_size() {
    let (ours, mut other) = tcp_pair();
    let fd = ours.as_raw_fd();
    ring().block_on(async move {
        assert!(
            with_driver(|d| d.provided_group()).flatten().is_some(),
            "this kernel (6.x) has buffer rings"
        );
        // More receives than the ring has buffers: each one's buffer went back.
        for i in 0..(u32::from(super::provided::PROVIDED_COUNT) * 2 + 3) {
            let msg = format!("message {i}");
            other.write_all(msg.as_bytes()).unwrap();
            let got = recv_provided(fd).await.expect("a buffer").unwrap();
            assert_eq!(got.bytes(), msg.as_bytes());
            assert!(!got.filled());
        }
        // A message longer than a buffer: the first receive fills one.
        let long = vec![7u8; super::provided::PROVIDED_BUFFER_BYTES as usize + 100];
        other.write_all(&long).unwrap();
        let first = recv_provided(fd).await.expect("a buffer").unwrap();
        assert!(first.filled());
        assert_eq!(first.bytes().len(), long.len() - 100);
        drop(first);
        let rest = recv_provided(fd).await.expect("a buffer").unwrap();
        assert_eq!(rest.bytes(), &long[..100]);
        drop(rest);
        drop(other);
        let eof = recv_provided(fd).await.expect("a buffer or none").unwrap();
        assert!(eof.bytes().is_empty());
    });
    drop(ours);
}

/// Waits (ring turns) until no operation is in flight.
async fn settle() {
    for _ in 0..1000 {
        if with_driver(|d| d.in_flight()).unwrap() == 0 {
            return;
        }
        Sleep::until(Instant::now() + Duration::from_millis(1)).await;
    }
    panic!("operations still in flight");
}

#[test]
fn a_dropped_provided_receive_gives_its_buffer_back() {
    let (ours, mut other) = tcp_pair();
    let fd = ours.as_raw_fd();
    ring().block_on(async move {
        let rounds = u32::from(super::provided::PROVIDED_COUNT) + 5;
        for _ in 0..rounds {
            // Dropped before bytes come: cancelled, no buffer taken.
            let mut waiting = Box::pin(recv_provided(fd));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            drop(waiting);
            settle().await;
        }
        for _ in 0..rounds {
            // Completed (a buffer taken) but never polled again: the buffer goes back when the
            // future is dropped (its bytes are lost with it, as with any dropped receive).
            let mut waiting = Box::pin(recv_provided(fd));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            other.write_all(b"lost").unwrap();
            settle().await;
            drop(waiting);
        }
        other.write_all(b"after").unwrap();
        let got = recv_provided(fd).await.expect("a buffer").unwrap();
        assert_eq!(got.bytes(), b"after");
    });
    drop(ours);
}
