//! Moving bytes through the epoll pump, beside its baseline `tokio::io::copy_bidirectional`, on
//! the same setup: a loopback TCP pair on each side, `a_peer → a ⇄ pump ⇄ b → b_peer`, one
//! current-thread runtime (as a worker runs). Each iteration writes a message into `a_peer` and
//! reads it back out of `b_peer` while the pump (or the baseline) runs in a spawned local task:
//! 64 B measures the per-message cost of one hop, 1 MiB the bulk rate.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtun::dataplane::pump::epoll::{pump, BufferPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::LocalSet;

const SIZES: [usize; 2] = [64, 1 << 20];

#[derive(Clone, Copy)]
enum Kind {
    Pump,
    CopyBidirectional,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pump => "ringtun_pump",
            Kind::CopyBidirectional => "tokio_copy_bidirectional",
        }
    }
}

/// Two connected loopback pairs: (a_peer, a) and (b, b_peer).
async fn pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local_addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let c = c.expect("connect");
        let (s, _) = s.expect("accept");
        c.set_nodelay(true).expect("nodelay");
        s.set_nodelay(true).expect("nodelay");
        (c, s)
    }
    let (a_peer, a) = pair().await;
    let (b, b_peer) = pair().await;
    (a_peer, a, b, b_peer)
}

struct Setup {
    rt: Runtime,
    local: LocalSet,
    a_peer: TcpStream,
    b_peer: TcpStream,
    msg: Vec<u8>,
    back: Vec<u8>,
}

fn setup(kind: Kind, size: usize) -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = LocalSet::new();
    let (a_peer, b_peer) = local.block_on(&rt, async move {
        let (a_peer, a, b, b_peer) = pairs().await;
        match kind {
            Kind::Pump => {
                tokio::task::spawn_local(async move {
                    let pool = BufferPool::default();
                    let _ = pump(&a, &b, &[], &[], &pool).await;
                });
            }
            Kind::CopyBidirectional => {
                tokio::task::spawn_local(async move {
                    let (mut a, mut b) = (a, b);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
            }
        }
        (a_peer, b_peer)
    });
    Setup {
        rt,
        local,
        a_peer,
        b_peer,
        msg: (0..size).map(|i| i as u8).collect(),
        back: vec![0u8; size],
    }
}

impl Setup {
    /// Writes one message into a_peer and reads it whole out of b_peer.
    fn one(&mut self) {
        let Setup {
            rt,
            local,
            a_peer,
            b_peer,
            msg,
            back,
        } = self;
        local.block_on(rt, async {
            let (w, r) = tokio::join!(a_peer.write_all(msg), b_peer.read_exact(back));
            w.expect("write");
            r.expect("read");
        });
    }
}

fn bench_pump(c: &mut Criterion) {
    let mut group = c.benchmark_group("pump_loopback");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for kind in [Kind::Pump, Kind::CopyBidirectional] {
            let mut s = setup(kind, size);
            s.one();
            assert_eq!(s.back, s.msg, "bytes through the {} differ", kind.name());
            group.bench_with_input(BenchmarkId::new(kind.name(), size), &size, |bch, _| {
                bch.iter(|| s.one())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pump);
criterion_main!(benches);
