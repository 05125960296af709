use super::*;

#[test]
fn mosns_sample_block_converts() {
    let mosn = json!({
        "servers": [{"listeners": [{"name": "serverListener", "filter_chains": [{"filters": [
            {"type": "tcp_proxy", "config": {"cluster": "local"}}]}]}]}],
        "extends": [{"type": "tunnel_agent", "config": {
            "Enable": true, "connection_num": 2, "cluster": "clientCluster",
            "hosting_listener": "serverListener", "server_list": ["127.0.0.1:9999"],
            "reconnect_base_duration": "8s", "connect_timeout_duration": "0",
            "graceful_close_max_wait_duration": "1m",
            "tls_context": {"status": true, "ca_cert": "ca.pem", "server_name": "tunnel"}}}],
        "cluster_manager": {"clusters": [{"Name": "local", "hosts": [{"address": "127.0.0.1:8080"}]}]}
    });
    let out = convert(Path::new("mosn.json"), &mosn, None).unwrap();
    let t = &out.config["tunnels"][0];
    assert_eq!(t["reconnect_base_duration_ms"], 8_000);
    assert_eq!(t["connect_timeout_duration_ms"], 15_000);
    assert_eq!(t["graceful_close_max_wait_duration_ms"], 60_000);
    assert_eq!(t["connect_retry_times"], -1);
    assert_eq!(t["tls_context"]["min_version"], "1.2");
    assert_eq!(out.config["listeners"][0]["backend"], "127.0.0.1:8080");
}

#[test]
fn what_has_no_ringtun_equivalent_is_an_error_naming_the_field() {
    let block = |extra: Value| {
        let mut c = json!({"enable": true, "connection_num": 1, "cluster": "c",
            "hosting_listener": "l", "server_list": ["127.0.0.1:1"]});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        convert(
            Path::new("m.json"),
            &json!({"extends": [{"type": "tunnel_agent", "config": c}]}),
            Some("127.0.0.1:2"),
        )
    };
    assert!(block(json!({})).is_ok());
    for (extra, field) in [
        (
            json!({"connection_num": 0}),
            "extends[0].config.connection_num",
        ),
        (
            json!({"reconnect_base_duration": 8}),
            "extends[0].config.reconnect_base_duration",
        ),
        (
            json!({"credential_policy": "test"}),
            "extends[0].config.credential_policy",
        ),
        (
            json!({"dynamic_server_list_config": {"dynamic_server_lister": "vip"}}),
            "extends[0].config.dynamic_server_list_config.dynamic_server_lister",
        ),
        (
            json!({"tls_context": {"status": true, "insecure_skip": true}}),
            "extends[0].config.tls_context.insecure_skip",
        ),
    ] {
        assert_eq!(block(extra.clone()).unwrap_err().field, field, "{extra}");
    }
    let no_backend = convert(
        Path::new("m.json"),
        &json!({"type": "tunnel_agent", "config": {"enable": true, "connection_num": 1, "cluster": "c", "hosting_listener": "l", "server_list": ["127.0.0.1:1"]}}),
        None,
    );
    assert!(no_backend.unwrap_err().message.contains("--backend"));
}
