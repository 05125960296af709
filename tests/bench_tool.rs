//! Tests of `ringtun bench` against in-test backends on loopback (port 0; every listener is bound
//! before its address is handed to the tool). The tool runs as the real binary.

// Helpers outside #[test] fns are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringtun");

/// A thread-per-connection echo server that counts accepted connections. Flips the byte at stream
/// offset `flip_at`, if given.
fn echo_server(flip_at: Option<u64>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                sock.set_nodelay(true).unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut off = 0u64;
                loop {
                    let n = match sock.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = sock.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => n,
                    };
                    if let Some(at) = flip_at {
                        if at >= off && at < off + n as u64 {
                            buf[(at - off) as usize] ^= 0x01;
                        }
                    }
                    off += n as u64;
                    if sock.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--no-progress")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts a bench far end (`sink` or `echo`) on port 0 and reads its bound address from stdout.
fn far_end(mode: &str) -> (Kill, String) {
    let mut child = Command::new(BIN)
        .args(["bench", mode, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (Kill(child), addr)
}

/// Kills and reaps the child it holds when dropped.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn latency_json_percentiles_are_ordered_and_plausible() {
    let (addr, _) = echo_server(None);
    let plot = std::env::temp_dir().join(format!("ringtun-bench-test-{}.svg", std::process::id()));
    let out = bench(&[
        "latency",
        "--target",
        &addr.to_string(),
        "--duration-secs",
        "0.5",
        "--connections",
        "2",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["mode"], "latency");
    assert_eq!(v["ok"], true);
    let lat = &v["latency_us"];
    assert!(lat["count"].as_u64().unwrap() > 10, "{lat}");
    let ps: Vec<f64> = ["min", "p50", "p90", "p99", "p99_9", "p99_99", "max"]
        .iter()
        .map(|k| lat[k].as_f64().unwrap())
        .collect();
    assert!(ps.windows(2).all(|w| w[0] <= w[1]), "not ordered: {ps:?}");
    assert!(
        ps.iter().all(|&p| p > 0.0 && p < 1_000_000.0),
        "implausible: {ps:?}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
}

#[test]
fn open_loop_latency_reports_corrected_and_uncorrected() {
    let (addr, _) = echo_server(None);
    let out = bench(&[
        "latency",
        "--target",
        &addr.to_string(),
        "--duration-secs",
        "0.5",
        "--rate",
        "400",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["loop"], "open");
    let n = v["latency_us"]["count"].as_u64().unwrap();
    assert!(
        (100..=201).contains(&n),
        "about 200 requests expected, got {n}"
    );
    assert_eq!(v["uncorrected_us"]["count"].as_u64().unwrap(), n);
    assert!(v["latency_us"]["p50"].as_f64() >= v["uncorrected_us"]["min"].as_f64());
}

#[test]
fn throughput_echo_detects_a_corrupted_byte() {
    let (addr, _) = echo_server(Some(100_000));
    let out = bench(&[
        "throughput",
        "--target",
        &addr.to_string(),
        "--bytes",
        "1000000",
        "--json",
    ]);
    assert!(!out.status.success(), "a corrupted byte must fail the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stream 0") && stderr.contains("offset 100000"),
        "stderr must name stream and offset: {stderr}"
    );
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    assert!(v["failures"][0].as_str().unwrap().contains("offset 100000"));
}

#[test]
fn throughput_echo_verifies_every_byte_of_several_streams() {
    let (addr, _) = echo_server(None);
    let out = bench(&[
        "throughput",
        "--target",
        &addr.to_string(),
        "--bytes",
        "3000000",
        "--connections",
        "3",
        "--chunk",
        "10000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["total_verified"], 9_000_000);
    for s in v["streams"].as_array().unwrap() {
        assert_eq!(s["verified"], 3_000_000);
        assert!(s["gbit_per_sec"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn throughput_one_way_to_sink_verifies_all_bytes() {
    let (_sink, addr) = far_end("sink");
    let out = bench(&[
        "throughput",
        "--mode",
        "one-way",
        "--target",
        &addr,
        "--bytes",
        "5000000",
        "--connections",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["stream_mode"], "one-way");
    assert_eq!(v["total_sent"], 10_000_000);
    assert_eq!(v["total_verified"], 10_000_000);
}

/// A proxy in front of the sink flips one byte of the stream data (after the 16-byte header):
/// the sink finds it and the client reports it from the sink's verdict.
#[test]
fn throughput_one_way_reports_corruption_found_by_the_sink() {
    let (_sink, sink_addr) = far_end("sink");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut upstream = TcpStream::connect(&sink_addr).unwrap();
        let mut back = upstream.try_clone().unwrap();
        let mut client_w = client.try_clone().unwrap();
        thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut client_w);
            let _ = client_w.shutdown(std::net::Shutdown::Write);
        });
        let flip = 16 + 777u64;
        let mut buf = vec![0u8; 32 * 1024];
        let mut off = 0u64;
        loop {
            let n = client.read(&mut buf).unwrap();
            if n == 0 {
                upstream.shutdown(std::net::Shutdown::Write).unwrap();
                return;
            }
            if flip >= off && flip < off + n as u64 {
                buf[(flip - off) as usize] ^= 0x80;
            }
            off += n as u64;
            upstream.write_all(&buf[..n]).unwrap();
        }
    });
    let out = bench(&[
        "throughput",
        "--mode",
        "one-way",
        "--target",
        &proxy.to_string(),
        "--bytes",
        "100000",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stream 0") && stderr.contains("sink found a corrupted byte at offset 777"),
        "{stderr}"
    );
}

#[test]
fn connect_counts_match_the_servers_accepts() {
    let (addr, accepted) = echo_server(None);
    let out = bench(&[
        "connect",
        "--target",
        &addr.to_string(),
        "--duration-secs",
        "0.5",
        "--connections",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    let successes = v["successes"].as_u64().unwrap();
    assert!(successes > 0);
    assert_eq!(v["failures"], 0);
    assert_eq!(v["attempts"].as_u64().unwrap(), successes);
    assert_eq!(successes, accepted.load(Ordering::SeqCst));
    assert_eq!(v["setup_us"]["count"].as_u64().unwrap(), successes);
    assert!(v["request_us"]["p50"].as_f64().unwrap() >= v["setup_us"]["p50"].as_f64().unwrap());
}

#[test]
fn idle_sessions_stay_alive_and_memory_is_reported() {
    let (echo, addr) = far_end("echo");
    let pid = echo.0.id().to_string();
    let out = bench(&[
        "idle",
        "--target",
        &addr,
        "--connections",
        "50",
        "--duration-secs",
        "0.6",
        "--interval-ms",
        "200",
        "--pids",
        &pid,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["established"], 50);
    assert_eq!(v["alive_at_end"], 50);
    assert_eq!(v["dead"], 0);
    assert!(v["checks_ok"].as_u64().unwrap() >= 100);
    assert!(v["memory"][0]["rss_after_kib"].as_u64().unwrap() > 0);
}

#[test]
fn idle_reports_sessions_the_target_drops() {
    // Answers the first check byte, then closes the connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            thread::spawn(move || {
                let mut b = [0u8; 1];
                if sock.read_exact(&mut b).is_ok() {
                    let _ = sock.write_all(&b);
                }
            });
        }
    });
    let out = bench(&[
        "idle",
        "--target",
        &addr.to_string(),
        "--connections",
        "5",
        "--duration-secs",
        "0.5",
        "--interval-ms",
        "100",
        "--json",
    ]);
    assert!(!out.status.success());
    let v = json_of(&out);
    assert_eq!(v["dead"], 5);
}

#[test]
fn a_dead_target_ends_the_run_with_an_error() {
    // Bound but never accepted from: connects succeed (backlog), reads time out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = bench(&[
        "latency",
        "--target",
        &addr,
        "--duration-secs",
        "5",
        "--io-timeout-ms",
        "300",
    ]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 300 ms"), "{stderr}");
    drop(listener);
    // Nothing listening at all.
    let out = bench(&["connect", "--target", &addr, "--duration-secs", "0.2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection succeeded"));
}

#[test]
fn udp_request_response_against_udp_echo_reports_rate_latency_and_loss() {
    let (_echo, addr) = far_end("udp-echo");
    let out = bench(&[
        "udp",
        "--target",
        &addr,
        "--duration-secs",
        "0.5",
        "--connections",
        "2",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["mode"], "udp");
    assert_eq!(v["ok"], true);
    assert_eq!(v["flows"], 2);
    let received = v["received"].as_u64().unwrap();
    assert!(received > 10, "{v}");
    assert_eq!(
        v["sent"].as_u64().unwrap(),
        received + v["lost"].as_u64().unwrap(),
        "{v}"
    );
    assert!(
        v["flow_min_requests_per_sec"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn udp_to_a_silent_target_counts_every_request_lost() {
    // Bound and never read: nothing answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = bench(&[
        "udp",
        "--target",
        &silent.local_addr().unwrap().to_string(),
        "--duration-secs",
        "0.3",
        "--loss-timeout-ms",
        "50",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(out.status.success());
    let v = json_of(&out);
    assert_eq!(v["received"], 0, "{v}");
    assert!(v["lost"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["loss_ratio"].as_f64().unwrap(), 1.0, "{v}");
}
