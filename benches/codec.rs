//! Frame encode/decode micro-benchmarks, each beside its baseline: `serde_json` alone on the same
//! payload, i.e. the cost the 8-byte header and flag dispatch add on top of JSON.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtun::protocol::{
    decode, encode, ConnectionInitInfo, Decoded, Frame, InitExtra, Ping, RingtunInit, Role,
    SessionStart, DEFAULT_MAX_FRAME_PAYLOAD_BYTES, HEADER_LEN,
};
use ringtun::secret::Secret;

fn frames() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "init",
            Frame::Init(ConnectionInitInfo {
                cluster_name: "edge-cluster-01".into(),
                weight: 10,
                host_name: "edge-host-0042".into(),
                credential_policy: "token".into(),
                credential: Secret::new("s3cr3t-token-value-0123456789"),
                extra: Some(InitExtra {
                    ringtun: Some(RingtunInit {
                        version: 1,
                        role: Role::Data,
                        agent_id: "agent-7f3c2a9e".into(),
                        max_connection_num: Some(64),
                    }),
                    other: Default::default(),
                }),
            }),
        ),
        ("ping", Frame::Ping(Ping { seq: 123_456_789 })),
        (
            "session_start",
            Frame::SessionStart(SessionStart {
                session_id: 9_876_543_210,
                client_addr: "203.0.113.17:54321".into(),
                frontend_addr: Some("198.51.100.1:443".into()),
                protocol: Default::default(),
            }),
        ),
    ]
}

/// serde_json alone on the frame's payload (the baseline).
fn json_to_writer(frame: &Frame, out: &mut Vec<u8>) {
    let r = match frame {
        Frame::Init(p) => serde_json::to_writer(out, p),
        Frame::Ping(p) => serde_json::to_writer(out, p),
        Frame::SessionStart(p) => serde_json::to_writer(out, p),
        _ => unreachable!("only the benchmarked frames"),
    };
    r.expect("serializable");
}

fn json_from_slice(frame: &Frame, payload: &[u8]) {
    match frame {
        Frame::Init(_) => {
            black_box(serde_json::from_slice::<ConnectionInitInfo>(payload).expect("valid"));
        }
        Frame::Ping(_) => {
            black_box(serde_json::from_slice::<Ping>(payload).expect("valid"));
        }
        Frame::SessionStart(_) => {
            black_box(serde_json::from_slice::<SessionStart>(payload).expect("valid"));
        }
        _ => unreachable!("only the benchmarked frames"),
    }
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (name, frame) in frames() {
        let mut out = Vec::with_capacity(512);
        encode(&frame, &mut out).expect("encodable");
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_with_input(BenchmarkId::new("ringtun", name), &frame, |b, f| {
            b.iter(|| {
                out.clear();
                encode(black_box(f), &mut out).expect("encodable");
                black_box(&out);
            })
        });
        g.bench_with_input(
            BenchmarkId::new("serde_json_baseline", name),
            &frame,
            |b, f| {
                b.iter(|| {
                    out.clear();
                    json_to_writer(black_box(f), &mut out);
                    black_box(&out);
                })
            },
        );
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, frame) in frames() {
        let mut bytes = Vec::new();
        encode(&frame, &mut bytes).expect("encodable");
        match decode(&bytes, DEFAULT_MAX_FRAME_PAYLOAD_BYTES) {
            Ok(Decoded::Frame(f, used)) => assert!(f == frame && used == bytes.len()),
            other => panic!("{name} does not round-trip: {other:?}"),
        }
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("ringtun", name), &bytes, |b, bytes| {
            b.iter(|| black_box(decode(black_box(bytes), DEFAULT_MAX_FRAME_PAYLOAD_BYTES)))
        });
        let payload = &bytes[HEADER_LEN..];
        g.bench_with_input(
            BenchmarkId::new("serde_json_baseline", name),
            payload,
            |b, payload| b.iter(|| json_from_slice(&frame, black_box(payload))),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
