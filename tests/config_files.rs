//! The config files shipped under `config/`, the rule fixtures under `config/invalid/`, the
//! `ringtun check` command, and `docs/config.md` kept in step with the serde structs.
//!
//! Each file `config/invalid/NAME.json` breaks one validation rule; `NAME.expected` holds a
//! substring of the error it must produce (field path and message). These fixtures are the
//! one-test-per-rule suite of the config layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringtun::config::{
    load_any, AdminConfig, AgentConfig, AgentTlsConfig, AnyConfig, ClusterConfig, CredentialPolicy,
    DynamicServerListConfig, FrontendConfig, HostingListenerConfig, IoBackend, LbType,
    SendProxyProtocol, ServerConfig, ServerTlsConfig, ServerType, TlsMinVersion, TunnelConfig,
    TunnelListenerConfig,
};
use ringtun::protocol::TransportProtocol;
use ringtun::secret::Secret;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.json` files directly in `dir`, sorted.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn load_server(name: &str) -> ServerConfig {
    match load_any(&root().join("config").join(name)) {
        Ok(AnyConfig::Server(s)) => s,
        other => panic!("{name}: expected a valid server config, got {other:?}"),
    }
}

fn load_agent(name: &str) -> AgentConfig {
    match load_any(&root().join("config").join(name)) {
        Ok(AnyConfig::Agent(a)) => a,
        other => panic!("{name}: expected a valid agent config, got {other:?}"),
    }
}

#[test]
fn every_example_config_is_valid() {
    let files = json_files(&root().join("config"));
    assert!(files.len() >= 5, "examples missing: {files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match load_any(&file) {
            Ok(AnyConfig::Agent(_)) => assert!(name.contains("agent"), "{name} is an agent config"),
            Ok(AnyConfig::Server(_)) => {
                assert!(name.contains("server"), "{name} is a server config")
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn example_pair_matches() {
    let server = load_server("server.json");
    let agent = load_agent("agent.json");
    assert_eq!(server.tunnel_listener.address, "127.0.0.1:7070");
    let cluster = &server.clusters[0];
    assert_eq!(cluster.frontends[0].address, "127.0.0.1:8080");
    let tunnel = &agent.tunnels[0];
    assert_eq!(tunnel.cluster, cluster.name);
    assert_eq!(
        tunnel.server_list,
        vec![server.tunnel_listener.address.clone()]
    );
    assert_eq!(cluster.credential_policy, CredentialPolicy::Token);
    assert_eq!(tunnel.credential_policy, "token");
    let credential = tunnel.credential.as_ref().unwrap().expose();
    assert_eq!(credential, "change-me");
    assert!(cluster.credentials.iter().any(|c| c.expose() == credential));
    assert_eq!(agent.listeners[0].backend, "127.0.0.1:9000");
}

#[test]
fn demo_pair_matches() {
    let server = load_server("demo-server.json");
    let agent = load_agent("demo-agent.json");
    // Port 0 everywhere the demo binds; it puts the real tunnel address into the agent's
    // server_list at run time.
    assert!(server.tunnel_listener.address.ends_with(":0"));
    assert!(server.clusters[0].frontends[0].address.ends_with(":0"));
    let tunnel = &agent.tunnels[0];
    assert_eq!(tunnel.cluster, server.clusters[0].name);
    let credential = tunnel.credential.as_ref().unwrap().expose();
    assert!(server.clusters[0]
        .credentials
        .iter()
        .any(|c| c.expose() == credential));
}

#[test]
fn two_clusters_example_shows_both_weighted_and_plain_round_robin() {
    let server = load_server("server-two-clusters.json");
    let lb: Vec<LbType> = server.clusters.iter().map(|c| c.lb_type).collect();
    assert!(lb.contains(&LbType::RoundRobin));
    assert!(lb.contains(&LbType::WeightedRoundRobin));
}

#[test]
fn proxy_protocol_examples_accept_and_send_headers() {
    let server = load_server("server-proxy-protocol.json");
    let frontends = &server.clusters[0].frontends;
    assert!(!frontends[0].accept_proxy_protocol);
    assert!(frontends[1].accept_proxy_protocol);
    assert_eq!(frontends[1].trusted_proxies.len(), 3);
    let agent = load_agent("agent-proxy-protocol.json");
    assert_eq!(
        agent.listeners[0].send_proxy_protocol,
        SendProxyProtocol::V2
    );
    assert_eq!(
        agent.listeners[1].send_proxy_protocol,
        SendProxyProtocol::V1
    );
    assert_eq!(agent.tunnels[0].cluster, server.clusters[0].name);
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_error() {
    let dir = root().join("config").join("invalid");
    let files = json_files(&dir);
    assert!(files.len() >= 50, "fixtures missing: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let expected_file = file.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_file.display()));
        let expected = expected.trim_end_matches('\n');
        assert!(!expected.is_empty(), "{} is empty", expected_file.display());
        match load_any(file) {
            Ok(_) => failures.push(format!("{}: accepted", file.display())),
            Err(e) => {
                let text = e.to_string();
                let prefix = format!("{}: ", file.display());
                if !text.starts_with(&prefix) || !text.contains(expected) {
                    failures.push(format!("{text}\n    expected: {expected}"));
                }
                assert!(!text.contains('\n'), "one-line errors only: {text:?}");
            }
        }
    }
    // The other direction: no `.expected` without its fixture.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expected") {
            assert!(
                path.with_extension("json").exists(),
                "{} has no fixture",
                path.display()
            );
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn ringtun(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringtun"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_examples() {
    for (file, kind) in [
        ("config/server.json", "server"),
        ("config/agent.json", "agent"),
    ] {
        let out = ringtun(&["check", "--config", file]);
        assert!(out.status.success(), "{file}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{file}: valid {kind} config\n")
        );
    }
}

#[test]
fn check_rejects_an_invalid_file_with_a_one_line_reason() {
    let file = "config/invalid/agent-hosting-listener-unknown.json";
    let out = ringtun(&["check", "--config", file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("ringtun: {file}: tunnels[0].hosting_listener: \"web2\" names no listener\n")
    );
}

#[test]
fn import_mosn_converts_the_mosn_example_into_the_shipped_agent_config() {
    // config/mosn/agent_config.json is a MOSN config (a tcp_proxy hosting listener and its
    // tunnel_agent extend block); config/agent-from-mosn.json is what `import-mosn` makes of it.
    let out = ringtun(&["import-mosn", "config/mosn/agent_config.json"]);
    assert!(out.status.success(), "{out:?}");
    let converted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("config/agent-from-mosn.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(converted, shipped);
    let agent = load_agent("agent-from-mosn.json");
    let t = &agent.tunnels[0];
    assert_eq!(
        (
            t.reconnect_base_duration_ms,
            t.connect_timeout_duration_ms,
            t.connection_num
        ),
        (3_000, 15_000, 4)
    );
    assert_eq!(agent.listeners[0].backend, "127.0.0.1:9000");
    // `check` on the MOSN file says what to do with it.
    let out = ringtun(&["check", "--config", "config/mosn/agent_config.json"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ringtun import-mosn FILE"),
        "{out:?}"
    );
}

#[test]
fn check_rejects_a_missing_file() {
    let out = ringtun(&["check", "--config", "config/no-such-file.json"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ringtun: config/no-such-file.json: cannot read file"),
        "{stderr}"
    );
}

// ---- docs/config.md must list every field, its default and every enum value.

/// A server config with every optional part present, so every field name shows up when
/// serialized. A new field is a compile error here until it is added (and documented).
fn full_server() -> ServerConfig {
    ServerConfig {
        workers: 0,
        io_backend: IoBackend::Auto,
        heartbeat_interval_ms: 10_000,
        heartbeat_max_missed: 3,
        drain_timeout_ms: 15_000,
        cpu_affinity: false,
        uring_entries: 256,
        pump_buffer_bytes: 65_536,
        splice_pipe_bytes: 1_048_576,
        tunnel_listener: TunnelListenerConfig {
            address: "0.0.0.0:7070".into(),
            handshake_timeout_ms: 5_000,
            max_frame_payload_bytes: 16_384,
            max_concurrent_handshakes: 4096,
            max_handshakes_per_ip: 256,
            max_hosts_per_ip: 1024,
            max_aside_connections_per_ip: 1024,
            hmac_replay_cache_entries: 1_048_576,
            legacy_lease_delay_ms: 200,
            max_legacy_asides_per_ip: 16,
            legacy_idle_timeout_ms: 90_000,
            tls_context: Some(ServerTlsConfig {
                cert_chain_file: "server.crt".into(),
                private_key_file: "server.key".into(),
                ca_file: Some("ca.pem".into()),
                min_version: TlsMinVersion::V1_2,
            }),
        },
        admin: Some(AdminConfig {
            address: "127.0.0.1:9901".into(),
            token: Some(Secret::new("admin-token")),
            token_file: Some("admin.token".into()),
        }),
        clusters: vec![ClusterConfig {
            name: "edge-web".into(),
            lb_type: LbType::WeightedRoundRobin,
            credential_policy: CredentialPolicy::Token,
            credentials: vec![Secret::new("change-me")],
            frontends: vec![FrontendConfig {
                address: "0.0.0.0:8080".into(),
                accept_proxy_protocol: true,
                trusted_proxies: vec!["10.0.0.0/8".into()],
                proxy_protocol_timeout_ms: 5_000,
            }],
            pool_wait_ms: 2_000,
            max_data_connections_per_agent: 16_384,
            max_data_connections: 65_536,
            max_sessions: 100_000,
            session_idle_timeout_ms: 3_600_000,
            max_hosts: 10_000,
            max_aside_connections_per_agent: 4,
            protocol: TransportProtocol::Tcp,
            udp_flow_idle_timeout_ms: 60_000,
            max_udp_datagram_bytes: 65_507,
            max_udp_flows_per_client_ip: 256,
            max_udp_queued_datagrams_per_flow: 256,
        }],
    }
}

/// An agent config with every optional part present (see [`full_server`]).
fn full_agent() -> AgentConfig {
    AgentConfig {
        host_name: "edge-01".into(),
        agent_id: "edge-01-a".into(),
        weight: 10,
        workers: 1,
        io_backend: IoBackend::Auto,
        cpu_affinity: false,
        uring_entries: 256,
        pump_buffer_bytes: 65_536,
        splice_pipe_bytes: 1_048_576,
        admin: Some(AdminConfig {
            address: "127.0.0.1:9902".into(),
            token: Some(Secret::new("admin-token")),
            token_file: Some("admin.token".into()),
        }),
        listeners: vec![HostingListenerConfig {
            name: "web".into(),
            backend: "127.0.0.1:9000".into(),
            connect_timeout_ms: 5_000,
            send_proxy_protocol: SendProxyProtocol::V2,
            session_idle_timeout_ms: 3_600_000,
            protocol: TransportProtocol::Tcp,
        }],
        tunnels: vec![TunnelConfig {
            enable: true,
            connection_num: 4,
            max_connection_num: Some(16),
            extra_connection_idle_duration_ms: 10_000,
            cluster: "edge-web".into(),
            hosting_listener: "web".into(),
            server_list: vec!["127.0.0.1:7070".into()],
            dynamic_server_list_config: Some(DynamicServerListConfig {
                dynamic_server_lister: "dns".into(),
                dns_name: Some("tunnel.example.com:7070".into()),
                path: Some("servers.json".into()),
                refresh_interval_ms: 5_000,
            }),
            connect_retry_times: -1,
            reconnect_base_duration_ms: 1_000,
            reconnect_max_duration_ms: 30_000,
            connect_timeout_duration_ms: 5_000,
            credential_policy: "token".into(),
            credential: Some(Secret::new("change-me")),
            credential_file: Some("token".into()),
            credential_env: Some("RINGTUN_TOKEN".into()),
            graceful_close_max_wait_duration_ms: 15_000,
            tls_context: Some(AgentTlsConfig {
                ca_file: Some("ca.pem".into()),
                server_name: Some("tunnel.example.com".into()),
                cert_chain_file: Some("agent.crt".into()),
                private_key_file: Some("agent.key".into()),
                min_version: TlsMinVersion::V1_2,
            }),
            server_type: ServerType::Auto,
        }],
    }
}

/// Every field path in `value` (`clusters[].frontends[].address`) with its value; arrays are
/// walked through their first element.
fn field_paths<'a>(value: &'a Value, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push((path.clone(), child));
                field_paths(child, &path, out);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                field_paths(first, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The value at `path` in `value`, `[]` meaning the first array element.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| {
        let (key, arrays) = match part.find("[]") {
            Some(at) => (&part[..at], part[at..].len() / 2),
            None => (part, 0),
        };
        let mut v = v.get(key)?;
        for _ in 0..arrays {
            v = v.get(0)?;
        }
        Some(v)
    })
}

/// The field tables of one `## ` section of docs/config.md: field path -> its row's cells.
fn doc_rows(heading: &str) -> BTreeMap<String, Vec<String>> {
    let doc = std::fs::read_to_string(root().join("docs/config.md")).unwrap();
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("docs/config.md has no `## {heading}` section"));
    let section = &doc[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut rows = BTreeMap::new();
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let field = rest.split('`').next().unwrap().to_string();
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(cells.len(), 6, "docs/config.md row has not 6 cells: {line}");
        assert!(rows.insert(field.clone(), cells).is_none(), "{field} twice");
    }
    rows
}

/// Checks that the section documents exactly the fields of `full`, and that the default column
/// of every field left out of `minimal` shows the value serde fills in.
fn check_doc_section(heading: &str, full: &Value, minimal: &Value, parsed: &Value) {
    let rows = doc_rows(heading);
    let mut fields = Vec::new();
    field_paths(full, "", &mut fields);
    let mut problems = Vec::new();
    for (field, _) in &fields {
        if !rows.contains_key(field) {
            problems.push(format!("`{field}` is not documented"));
        }
    }
    for documented in rows.keys() {
        if !fields.iter().any(|(f, _)| f == documented) {
            problems.push(format!("`{documented}` is documented but is no field"));
        }
    }
    // Defaults: every field the minimal file leaves out, except computed ones.
    let mut defaults = Vec::new();
    field_paths(parsed, "", &mut defaults);
    for (field, value) in defaults {
        if lookup(minimal, &field).is_some() || field == "host_name" {
            continue;
        }
        let Some(row) = rows.get(&field) else {
            continue;
        };
        let shown = format!("`{value}`");
        if !row[2].contains(&shown) {
            problems.push(format!(
                "`{field}` defaults to {shown} but the doc says {:?}",
                row[2]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/config.md, {heading}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn docs_list_every_server_field_and_default() {
    let full = serde_json::to_value(full_server()).unwrap();
    // Required fields only, plus optional objects whose own defaults are to be checked.
    let minimal = json!({
        "tunnel_listener": {
            "address": "0.0.0.0:7070",
            "tls_context": { "cert_chain_file": "server.crt", "private_key_file": "server.key" }
        },
        "admin": { "address": "127.0.0.1:9901" },
        "clusters": [ { "name": "edge-web", "frontends": [ { "address": "0.0.0.0:8080" } ] } ]
    });
    // Parsed without validation: TLS is refused by validate() but its defaults are documented.
    let parsed: ServerConfig = serde_json::from_value(minimal.clone()).unwrap();
    let parsed = serde_json::to_value(parsed).unwrap();
    check_doc_section("Server file", &full, &minimal, &parsed);
    // And the defaults of the optional objects when they are absent.
    let bare = json!({ "tunnel_listener": { "address": "0.0.0.0:7070" } });
    let parsed: ServerConfig = serde_json::from_value(bare.clone()).unwrap();
    check_doc_section(
        "Server file",
        &full,
        &bare,
        &serde_json::to_value(parsed).unwrap(),
    );
}

#[test]
fn docs_list_every_agent_field_and_default() {
    let full = serde_json::to_value(full_agent()).unwrap();
    let minimal = json!({
        "host_name": "edge-01",
        "admin": { "address": "127.0.0.1:9902" },
        "listeners": [ { "name": "web", "backend": "127.0.0.1:9000" } ],
        "tunnels": [ {
            "cluster": "edge-web", "hosting_listener": "web",
            "dynamic_server_list_config": {},
            "tls_context": {}
        } ]
    });
    let parsed: AgentConfig = serde_json::from_value(minimal.clone()).unwrap();
    check_doc_section(
        "Agent file",
        &full,
        &minimal,
        &serde_json::to_value(parsed).unwrap(),
    );
    let bare = json!({ "tunnels": [ { "cluster": "edge-web", "hosting_listener": "web" } ] });
    let parsed: AgentConfig = serde_json::from_value(bare.clone()).unwrap();
    check_doc_section(
        "Agent file",
        &full,
        &bare,
        &serde_json::to_value(parsed).unwrap(),
    );
}

/// Every value of `T`'s enum, as written in config; the `match` makes a new variant a compile
/// error here.
fn lb_types() -> Vec<LbType> {
    let all = vec![
        LbType::RoundRobin,
        LbType::WeightedRoundRobin,
        LbType::LeastActive,
        LbType::Random,
        LbType::ClientIpHash,
    ];
    for v in &all {
        match v {
            LbType::RoundRobin
            | LbType::WeightedRoundRobin
            | LbType::LeastActive
            | LbType::Random
            | LbType::ClientIpHash => {}
        }
    }
    all
}

fn io_backends() -> Vec<IoBackend> {
    let all = vec![IoBackend::Auto, IoBackend::Uring, IoBackend::Epoll];
    for v in &all {
        match v {
            IoBackend::Auto | IoBackend::Uring | IoBackend::Epoll => {}
        }
    }
    all
}

fn credential_policies() -> Vec<CredentialPolicy> {
    let all = vec![
        CredentialPolicy::None,
        CredentialPolicy::Token,
        CredentialPolicy::Hmac,
    ];
    for v in &all {
        match v {
            CredentialPolicy::None | CredentialPolicy::Token | CredentialPolicy::Hmac => {}
        }
    }
    all
}

fn tls_min_versions() -> Vec<TlsMinVersion> {
    let all = vec![TlsMinVersion::V1_2, TlsMinVersion::V1_3];
    for v in &all {
        match v {
            TlsMinVersion::V1_2 | TlsMinVersion::V1_3 => {}
        }
    }
    all
}

fn send_proxy_protocols() -> Vec<SendProxyProtocol> {
    let all = vec![
        SendProxyProtocol::None,
        SendProxyProtocol::V1,
        SendProxyProtocol::V2,
    ];
    for v in &all {
        match v {
            SendProxyProtocol::None | SendProxyProtocol::V1 | SendProxyProtocol::V2 => {}
        }
    }
    all
}

#[test]
fn docs_list_every_enum_value_in_its_row() {
    let server = doc_rows("Server file");
    let agent = doc_rows("Agent file");
    let mut problems = Vec::new();
    let mut expect = |rows: &BTreeMap<String, Vec<String>>, field: &str, value: Value| {
        let shown = format!("`{value}`");
        match rows.get(field) {
            Some(row) if row[4].contains(&shown) => {}
            _ => problems.push(format!("{field}: {shown} not among the allowed values")),
        }
    };
    for v in lb_types() {
        expect(
            &server,
            "clusters[].lb_type",
            serde_json::to_value(v).unwrap(),
        );
    }
    for v in credential_policies() {
        expect(
            &server,
            "clusters[].credential_policy",
            serde_json::to_value(v).unwrap(),
        );
        expect(&agent, "tunnels[].credential_policy", json!(v.name()));
    }
    for v in io_backends() {
        expect(&server, "io_backend", serde_json::to_value(v).unwrap());
        expect(&agent, "io_backend", serde_json::to_value(v).unwrap());
    }
    for v in tls_min_versions() {
        let v = serde_json::to_value(v).unwrap();
        expect(
            &server,
            "tunnel_listener.tls_context.min_version",
            v.clone(),
        );
        expect(&agent, "tunnels[].tls_context.min_version", v);
    }
    for v in send_proxy_protocols() {
        expect(
            &agent,
            "listeners[].send_proxy_protocol",
            serde_json::to_value(v).unwrap(),
        );
    }
    for lister in ["", "dns", "file"] {
        expect(
            &agent,
            "tunnels[].dynamic_server_list_config.dynamic_server_lister",
            json!(lister),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
