//! One test per validation rule lives in `tests/config_files.rs` (fixtures under `config/`);
//! these cover the parsing edge cases.

use std::path::Path;

use super::*;

const AGENT: &str = r#"{
  "host_name": "edge-01",
  "listeners": [{"name": "web", "backend": "127.0.0.1:8080"}],
  "tunnels": [{"cluster": "edge-web", "hosting_listener": "web", "server_list": ["127.0.0.1:7070"]}]
}"#;

#[test]
fn agent_defaults_are_documented_values() {
    let a = AgentConfig::from_str(Path::new("agent.json"), AGENT).unwrap();
    assert_eq!(a.weight, 10);
    let t = &a.tunnels[0];
    assert!(t.enable);
    assert_eq!(t.connection_num, 4);
    assert_eq!(t.connect_retry_times, -1);
    assert_eq!(t.retry_limit(), None);
    assert_eq!(t.reconnect_base_duration_ms, 1000);
    assert_eq!(t.reconnect_max_duration_ms, 30000);
    assert_eq!(t.connect_timeout_duration_ms, 5000);
    assert_eq!(t.graceful_close_max_wait_duration_ms, 15000);
    assert_eq!(t.extra_connection_idle_duration_ms, 10000);
}

#[test]
fn hosting_listener_error_names_file_and_field() {
    let text = AGENT.replace(
        r#""hosting_listener": "web""#,
        r#""hosting_listener": "web2""#,
    );
    let e = AgentConfig::from_str(Path::new("agent.json"), &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"agent.json: tunnels[0].hosting_listener: "web2" names no listener"#
    );
}

#[test]
fn unknown_field_is_rejected_with_its_path() {
    let text = AGENT.replace(
        r#""cluster": "edge-web""#,
        r#""cluster": "edge-web", "colour": 1"#,
    );
    let e = AgentConfig::from_str(Path::new("agent.json"), &text).unwrap_err();
    assert_eq!(e.field, "tunnels[0].colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
}

#[test]
fn host_port_accepts_names_ipv4_and_bracketed_ipv6() {
    for ok in [
        "127.0.0.1:9000",
        "[::1]:9000",
        "[fe80::1]:1",
        "tunnel.example.com:7070",
        "edge_backend-1:65535",
    ] {
        assert_eq!(agent_rules::host_port(ok), Ok(()), "{ok}");
    }
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        ":80",
        "::1:80",
        "[::1:80",
        "[x]:80",
        "a b:80",
        "http://a:80",
    ] {
        assert!(agent_rules::host_port(bad).is_err(), "{bad}");
    }
}

#[test]
fn listen_addresses_overlap_on_same_port_and_covering_ip() {
    let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    assert!(server_rules::overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
    assert!(server_rules::overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
    assert!(server_rules::overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
    assert!(server_rules::overlaps(a("[::]:80"), a("127.0.0.1:80")));
    assert!(server_rules::overlaps(a("[::1]:80"), a("[::]:80")));
    assert!(!server_rules::overlaps(a("0.0.0.0:80"), a("[::1]:80")));
    assert!(!server_rules::overlaps(
        a("127.0.0.1:80"),
        a("127.0.0.2:80")
    ));
    assert!(!server_rules::overlaps(
        a("127.0.0.1:80"),
        a("127.0.0.1:81")
    ));
    assert!(!server_rules::overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
}

#[test]
fn credential_file_is_read_relative_to_the_config_file() {
    let dir = std::env::temp_dir().join(format!("ringtun-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.token"), "  s3cret\n").unwrap();
    let text = AGENT.replace(
        r#""server_list": ["127.0.0.1:7070"]"#,
        r#""server_list": ["127.0.0.1:7070"], "credential_policy": "token", "credential_file": "agent.token""#,
    );
    let a = AgentConfig::from_str(&dir.join("agent.json"), &text);
    std::fs::remove_dir_all(&dir).unwrap();
    let a = a.unwrap();
    assert_eq!(a.tunnels[0].credential.as_ref().unwrap().expose(), "s3cret");
}

#[test]
fn server_minimal_file_gets_documented_defaults() {
    let text =
        r#"{"tunnel_listener": {"address": "0.0.0.0:7070"}, "clusters": [{"name": "edge-web"}]}"#;
    let s = ServerConfig::from_str(Path::new("server.json"), text).unwrap();
    assert_eq!(s.workers, 0);
    assert_eq!(s.io_backend, IoBackend::Auto);
    assert_eq!(s.heartbeat_interval_ms, 10_000);
    assert_eq!(s.tunnel_listener.handshake_timeout_ms, 5_000);
    assert_eq!(s.tunnel_listener.max_frame_payload_bytes, 16_384);
    let c = &s.clusters[0];
    assert_eq!(c.lb_type, LbType::WeightedRoundRobin);
    assert_eq!(c.credential_policy, CredentialPolicy::None);
    assert_eq!(c.pool_wait_ms, 2_000);
}

#[test]
fn splice_is_on_by_default_and_zero_turns_it_off() {
    let a = AgentConfig::from_str(Path::new("agent.json"), AGENT).unwrap();
    assert_eq!(a.splice_pipe_bytes, 1024 * 1024);
    let off = AGENT.replacen('{', r#"{"splice_pipe_bytes": 0,"#, 1);
    let a = AgentConfig::from_str(Path::new("agent.json"), &off).unwrap();
    assert_eq!(a.splice_pipe_bytes, 0);
}
