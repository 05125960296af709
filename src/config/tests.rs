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
