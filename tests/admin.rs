//! The admin endpoints of server and agent on loopback: metrics move by the right amounts after
//! traffic, `/clusters` lists the agent, health and readiness answer, bad requests are refused,
//! and no credential is ever rendered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-admin-token";

/// Checks the exposition rules: every sample belongs to a family with HELP and TYPE, counter
/// names end in `_total`, every name starts with `ringtun_`.
fn check_exposition(text: &str) {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(name.starts_with("ringtun_"), "{name}");
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            types.insert(name.to_string(), kind.to_string());
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no TYPE");
            assert!(help.contains(family), "{name} has no HELP");
        }
    }
    assert_eq!(help.len(), types.len());
}

fn metrics(addr: std::net::SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

fn wait_metric(addr: std::net::SocketAddr, series: &str, want: f64) {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        last = metric(&metrics(addr), series);
        last == Some(want)
    });
    assert!(ok, "{series}: wanted {want}, last saw {last:?}");
}

both_backends!(metrics_move_by_the_traffic_sent, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").token(TOKEN).admin().run();
    let admin = server.admin_addr().expect("admin configured");
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .host_name("edge-admin")
        .token(TOKEN)
        .admin()
        .run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    let mut sent = 0u64;
    for i in 0..5u8 {
        let data = pattern(1000 + usize::from(i) * 777, i);
        assert_eq!(echo_roundtrip(frontend, &data), data);
        sent += data.len() as u64;
    }
    let c = r#"{cluster="c"}"#;
    wait_metric(admin, &format!("ringtun_sessions_opened_total{c}"), 5.0);
    wait_metric(admin, &format!("ringtun_sessions_active{c}"), 0.0);
    let text = metrics(admin);
    check_exposition(&text);
    assert_eq!(
        metric(&text, &format!("ringtun_frontend_connections_total{c}")),
        Some(5.0)
    );
    assert_eq!(
        metric(&text, &format!("ringtun_sessions_failed_total{c}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, &format!("ringtun_pool_exhausted_total{c}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, &format!("ringtun_session_setup_seconds_count{c}")),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"ringtun_session_setup_seconds_bucket{cluster="c",le="+Inf"}"#
        ),
        Some(5.0)
    );
    for dir in ["to_agent", "from_agent"] {
        let series = format!(r#"ringtun_session_bytes_total{{cluster="c",direction="{dir}"}}"#);
        assert_eq!(
            metric(&text, &series),
            Some(sent as f64),
            "{series}\n{text}"
        );
    }
    assert_eq!(metric(&text, &format!("ringtun_hosts{c}")), Some(1.0));
    // 4 data + 1 aside; framed sessions (version 2) put their data connections back, so the
    // 5 sessions took no replacement handshake.
    let ok = wait_until(Duration::from_secs(10), || {
        let text = metrics(admin);
        metric(&text, r#"ringtun_handshakes_total{status="success"}"#).is_some_and(|n| n >= 5.0)
            && metric(&text, "ringtun_data_connection_reuses_total") == Some(5.0)
    });
    assert!(ok, "not 5 handshakes and 5 reuses:\n{}", metrics(admin));
    assert_eq!(
        metric(&text, r#"ringtun_handshakes_total{status="auth_failed"}"#),
        Some(0.0)
    );
    let host = r#"cluster="c",host="edge-admin",agent_id=""#;
    let idle_line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!("ringtun_data_connections{{{host}"))
                && l.contains(r#"state="idle""#)
        })
        .unwrap_or_else(|| panic!("no idle data connections line\n{text}"));
    assert!(idle_line.contains(agent.agent_id()), "{idle_line}");
    assert!(!text.contains(TOKEN), "the token leaked into /metrics");

    // The agent counted the same sessions and bytes.
    let agent_admin = agent.admin_addr().expect("agent admin configured");
    wait_metric(agent_admin, "ringtun_agent_sessions_total", 5.0);
    wait_metric(agent_admin, "ringtun_agent_aside_connections", 1.0);
    wait_metric(
        agent_admin,
        r#"ringtun_agent_session_bytes_total{direction="to_backend"}"#,
        sent as f64,
    );
    let text = metrics(agent_admin);
    check_exposition(&text);
    assert_eq!(
        metric(
            &text,
            r#"ringtun_agent_session_bytes_total{direction="from_backend"}"#
        ),
        Some(sent as f64)
    );
    assert_eq!(
        metric(&text, "ringtun_agent_backend_failures_total"),
        Some(0.0)
    );
    assert!(
        !text.contains(TOKEN),
        "the token leaked into the agent's /metrics"
    );
    agent.shutdown();
    server.shutdown();
});

both_backends!(clusters_lists_the_agent_by_host_name, |backend| {
    let echo = echo_backend();
    let server = server(backend)
        .workers(2)
        .cluster("c")
        .token(TOKEN)
        .cluster("other")
        .admin()
        .run();
    let admin = server.admin_addr().unwrap();
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .host_name("edge-42")
        .weight(7)
        .token(TOKEN)
        .run();
    wait_registered(&server, "c", 1, 4);
    // The aside connection comes up on its own slot, beside the data connections.
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("c")
        .first()
        .is_some_and(|h| h.aside_connections == 1)));
    let (status, head, body) = http(admin, "GET", "/clusters");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/json"), "{head}");
    assert!(!body.contains(TOKEN), "the token leaked into /clusters");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["workers"], 2);
    let clusters = v["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c", "other"]);
    let c = &clusters[0];
    assert_eq!(c["credential_policy"], "token");
    assert_eq!(
        c["frontends"][0],
        server.frontend_addr("c").unwrap().to_string()
    );
    let host = &c["hosts"][0];
    assert_eq!(host["host_name"], "edge-42");
    assert_eq!(host["agent_id"], agent.agent_id());
    assert_eq!(host["weight"], 7);
    assert_eq!(host["legacy"], false);
    assert_eq!(host["aside_connections"], 1);
    let idle: Vec<u64> = host["idle_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(idle.len(), 2);
    assert_eq!(idle.iter().sum::<u64>(), 4);
    assert_eq!(host["active_per_worker"].as_array().unwrap().len(), 2);
    assert!(clusters[1]["hosts"].as_array().unwrap().is_empty());
    agent.shutdown();
    server.shutdown();
});

both_backends!(health_readiness_and_bad_requests, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").admin().run();
    let admin = server.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    assert_eq!(http(admin, "GET", "/ready").0, 200);
    let (status, head, body) = http(admin, "HEAD", "/healthz");
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
    assert_eq!(http(admin, "GET", "/nope").0, 404);
    let (status, head, _) = http(admin, "POST", "/metrics");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(http_raw(admin, "BREW /coffee\r\n\r\n").0, 400);
    assert_eq!(
        http_raw(
            admin,
            "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .0,
        400
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_eq!(http_raw(admin, &huge).0, 431);
    let many = format!("GET /metrics HTTP/1.1{}\r\n\r\n", "\r\nX: y".repeat(100));
    assert_eq!(http_raw(admin, &many).0, 431);
    // A length that overflowed an addition (and panicked the handler) is answered 413, as is
    // every length over the limit, even one too long for 64 bits.
    for length in [
        "99999999",
        "18446744073709551615",
        "18446744073709551614",
        "99999999999999999999999999",
    ] {
        let request = format!("POST /reload HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        assert_eq!(http_raw(admin, &request).0, 413, "{length}");
    }
    assert_eq!(
        http_raw(
            admin,
            "POST /reload HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        )
        .0,
        400
    );
    assert_eq!(http(admin, "GET", "/healthz").0, 200, "still serving");

    // The agent is ready once its tunnel has a data connection up.
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .admin()
        .run();
    let agent_admin = agent.admin_addr().unwrap();
    assert_eq!(http(agent_admin, "GET", "/healthz").0, 200);
    assert!(wait_until(Duration::from_secs(10), || http(
        agent_admin,
        "GET",
        "/ready"
    )
    .0 == 200));
    assert_eq!(http(agent_admin, "GET", "/clusters").0, 404);
    agent.shutdown();
    server.shutdown();
});

both_backends!(agent_not_ready_while_its_server_is_absent, |backend| {
    let echo = echo_backend();
    let agent = agent(backend, closed_port(), echo.addr).admin().run();
    let admin = agent.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    assert_eq!(http(admin, "GET", "/ready").0, 503);
    let ok = wait_until(Duration::from_secs(10), || {
        metric(&metrics(admin), "ringtun_agent_dial_failures_total").is_some_and(|n| n >= 1.0)
    });
    assert!(ok, "dial failures never counted");
    agent.shutdown();
});

both_backends!(refused_handshakes_are_counted_by_status, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").token(TOKEN).admin().run();
    let admin = server.admin_addr().unwrap();
    let wrong = agent(backend, server.tunnel_addr(), echo.addr)
        .token("wrong")
        .reconnect_ms(20, 50)
        .run();
    let unknown = agent(backend, server.tunnel_addr(), echo.addr)
        .cluster("nope")
        .token(TOKEN)
        .reconnect_ms(20, 50)
        .run();
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = metrics(admin);
        metric(&last, r#"ringtun_handshakes_total{status="auth_failed"}"#).is_some_and(|n| n >= 1.0)
            && metric(
                &last,
                r#"ringtun_handshakes_total{status="cluster_not_exist"}"#,
            )
            .is_some_and(|n| n >= 1.0)
    });
    assert!(ok, "refusals never counted:\n{last}");
    assert_eq!(
        metric(&last, r#"ringtun_handshakes_total{status="success"}"#),
        Some(0.0)
    );
    assert!(
        !last.contains("wrong"),
        "a presented credential leaked into /metrics"
    );
    wrong.shutdown();
    unknown.shutdown();
    server.shutdown();
});

#[test]
fn no_admin_unless_configured() {
    let server = server(ringtun::config::IoBackend::Epoll).cluster("c").run();
    assert_eq!(server.admin_addr(), None);
    server.shutdown();
}

/// One request with `Authorization: <auth>` (when given); returns status, head and body.
fn http_auth(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, String, String) {
    let header = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    http_raw(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{header}\r\n"),
    )
}

both_backends!(admin_token_is_required_except_on_probes, |backend| {
    const ADMIN_TOKEN: &str = "admin-t0ken-do-not-log";
    let echo = echo_backend();
    // Server: the token inline.
    let mut config = server(backend).cluster("c").admin().config();
    config.admin.as_mut().unwrap().token = Some(ringtun::secret::Secret::new(ADMIN_TOKEN));
    let server = ringtun::server::ServerHandle::start(config).unwrap();
    let admin = server.admin_addr().unwrap();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for path in ["/healthz", "/ready"] {
        assert_eq!(http_auth(admin, "GET", path, None).0, 200, "{path}");
    }
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/clusters"),
        ("HEAD", "/metrics"),
        ("POST", "/reload"),
        ("POST", "/hosts/drain"),
        ("GET", "/nope"),
    ] {
        let (status, head, body) = http_auth(admin, method, path, None);
        assert_eq!(status, 401, "{method} {path}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert!(!body.contains(ADMIN_TOKEN));
        for wrong in [
            "Bearer wrong",
            "Bearer admin-t0ken-do-not-lo",
            ADMIN_TOKEN,
            "Basic YWRtaW4=",
        ] {
            assert_eq!(
                http_auth(admin, method, path, Some(wrong)).0,
                401,
                "{method} {path} {wrong}"
            );
        }
    }
    assert_eq!(http_auth(admin, "GET", "/metrics", Some(&bearer)).0, 200);
    assert_eq!(http_auth(admin, "GET", "/clusters", Some(&bearer)).0, 200);
    assert_eq!(http_auth(admin, "GET", "/nope", Some(&bearer)).0, 404);

    // Agent: the token from a file (trimmed), relative to the config file.
    let dir = std::env::temp_dir().join(format!(
        "ringtun-admin-token-{}-{backend:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut json = agent(backend, server.tunnel_addr(), echo.addr)
        .admin()
        .json();
    json["admin"]["token_file"] = "admin.token".into();
    let config =
        ringtun::config::AgentConfig::from_str(&dir.join("agent.json"), &json.to_string()).unwrap();
    let agent = ringtun::agent::AgentHandle::start(config).unwrap();
    let agent_admin = agent.admin_addr().unwrap();
    assert_eq!(http_auth(agent_admin, "GET", "/healthz", None).0, 200);
    assert_eq!(http_auth(agent_admin, "GET", "/metrics", None).0, 401);
    assert_eq!(
        http_auth(agent_admin, "POST", "/weight", Some("Bearer nope")).0,
        401
    );
    assert_eq!(
        http_auth(agent_admin, "GET", "/metrics", Some(&bearer)).0,
        200
    );
    agent.shutdown();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
});
