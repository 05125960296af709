//! io_uring made unavailable to the process (a seccomp filter answering EPERM to io_uring_setup,
//! as Docker's default profile does): `auto` serves on epoll, `uring` refuses to start, and a
//! test's io_uring run skips with its marker line, or fails under `RINGTUN_REQUIRE_URING=1`.
//! Where io_uring can be used, `auto` runs it (the backend measured faster).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// `ringtun server` with io_uring_setup forbidden.
fn server_without_io_uring(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtun"));
    cmd.args(["server", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    forbid_io_uring(&mut cmd);
    cmd
}

/// Makes io_uring_setup fail with EPERM in the child `cmd` starts.
fn forbid_io_uring(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls (prctl).
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // Load the syscall number (offset 0 of seccomp_data).
                libc::sock_filter {
                    code: BPF_LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: BPF_JMP_JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_io_uring_setup as u32,
                },
                libc::sock_filter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ALLOW,
                },
            ];
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn write_config(dir: &std::path::Path, backend: &str) -> std::path::PathBuf {
    let path = dir.join(format!("server-{backend}.json"));
    let json = serde_json::json!({
        "workers": 2,
        "io_backend": backend,
        "tunnel_listener": {"address": "127.0.0.1:0"},
        "clusters": [{"name": "c", "frontends": [{"address": "127.0.0.1:0"}]}],
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let at = line.find(key)? + key.len();
    line[at..]
        .split_whitespace()
        .next()?
        .trim_matches('"')
        .parse()
        .ok()
}

#[test]
fn auto_falls_back_to_epoll_and_uring_refuses_without_io_uring() {
    let dir = std::env::temp_dir().join(format!("ringtun-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // `uring` must refuse to start, with a reason.
    let out = server_without_io_uring(&write_config(&dir, "uring"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uring started without io_uring: {stderr}"
    );
    assert!(
        stderr.contains("io_backend \"uring\" was requested but io_uring_setup is not permitted"),
        "{stderr}"
    );

    // `auto` must fall back to epoll (which needs no io_uring), say so once with the reason,
    // and carry traffic.
    let mut child = server_without_io_uring(&write_config(&dir, "auto"))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut tunnel, mut frontend, mut fallback_lines, mut backend_name) =
        (None, None, 0, String::new());
    while tunnel.is_none() || frontend.is_none() {
        let line = lines.next().expect("server exited early").unwrap();
        if line.contains("io_backend auto: epoll (io_uring cannot be used here: ") {
            fallback_lines += 1;
        }
        if line.contains("server started") {
            tunnel = field(&line, "tunnel_addr=");
            backend_name = line.clone();
        }
        if line.contains("frontend listening") {
            frontend = field(&line, "frontend=");
        }
    }
    let drain = std::thread::spawn(move || lines.count());
    assert_eq!(fallback_lines, 1);
    assert!(backend_name.contains("backend=\"epoll\""), "{backend_name}");
    let echo = echo_backend();
    let agent = agent(
        ringtun::config::IoBackend::Epoll,
        tunnel.unwrap(),
        echo.addr,
    )
    .run();
    let frontend = frontend.unwrap();
    let ok = wait_until(Duration::from_secs(10), || {
        agent.status().idle_data_connections == 4
    });
    assert!(ok, "agent never registered with the fallback server");
    let data = pattern(256 * 1024, 9);
    assert!(echo_roundtrip(frontend, &data) == data);
    child.kill().unwrap();
    let _ = child.wait();
    let _ = drain.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_runs_io_uring_where_it_can() {
    if !ringtun::rt::uring_gate::available_for_test() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ringtun-auto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringtun"))
        .args(["server", "--config"])
        .arg(write_config(&dir, "auto"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut said, mut started) = (0, String::new());
    while started.is_empty() {
        let line = lines.next().expect("server exited early").unwrap();
        if line.contains("io_backend auto: io_uring") {
            said += 1;
        }
        if line.contains("server started") {
            started = line;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(said, 1);
    assert!(started.contains("backend=\"io_uring\""), "{started}");
}

// Does nothing: the io_uring run the next test starts without io_uring.
both_backends!(skip_target, |_backend| {});

#[test]
fn an_io_uring_run_without_io_uring_skips_with_its_marker_or_fails_when_required() {
    let run = |require: bool| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["skip_target::uring", "--exact"])
            .env_remove("RINGTUN_REQUIRE_URING")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if require {
            cmd.env("RINGTUN_REQUIRE_URING", "1");
        }
        forbid_io_uring(&mut cmd);
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (passed, text) = run(false);
    assert!(passed, "{text}");
    let markers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("RINGTUN-SKIP io_uring:"))
        .collect();
    assert_eq!(markers.len(), 1, "one marker line, uncaptured:\n{text}");
    assert!(
        markers[0].contains("skip_target::uring: io_uring_setup is not permitted"),
        "{text}"
    );
    let (passed, text) = run(true);
    assert!(
        !passed,
        "RINGTUN_REQUIRE_URING=1 and still skipped:\n{text}"
    );
    assert!(
        text.contains("RINGTUN_REQUIRE_URING=1 but io_uring is unavailable"),
        "{text}"
    );
    assert!(!text.contains("RINGTUN-SKIP io_uring:"), "{text}");
}
