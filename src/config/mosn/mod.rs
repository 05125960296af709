//! `ringtun import-mosn FILE`: a MOSN config's `tunnel_agent` extend blocks (MOSN's
//! `AgentBootstrapConfig`, pkg/filter/network/tunnel/agent.go:36-64) as a ringtun agent config.
//!
//! Read as MOSN reads them: keys match case-insensitively as Go's `encoding/json` does (exact
//! first), durations are Go duration strings (`"8s"`, `"1m30s"`, `0`; a bare number other than 0
//! is an error, as in MOSN), a zero duration is MOSN's default (3 s base, 15 s connect, 15 s
//! graceful close), and `enable` false blocks are converted disabled. The hosting listener's
//! backend comes from the same file when it can (a `tcp_proxy` filter's cluster, or a `proxy`
//! filter whose router names one cluster, and that cluster's first host), else from
//! `--backend`. What has no ringtun equivalent is an error naming the field; what ringtun does
//! differently is a note. Must not: start anything, or write files (the caller prints).

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{read, AgentConfig, ConfigError};

mod duration;
pub use duration::{go_duration_ms, mosn_duration_ms};

/// MOSN's defaults for a zero duration (agent.go:181-183, 207-218), in milliseconds.
const MOSN_RECONNECT_BASE_MS: u64 = 3_000;
const MOSN_CONNECT_TIMEOUT_MS: u64 = 15_000;
const MOSN_GRACEFUL_CLOSE_MAX_WAIT_MS: u64 = 15_000;
/// MOSN doubles its retry delay without a cap; ringtun caps it at least here.
const RECONNECT_MAX_MS: u64 = 30_000;

/// The converted config and notes for the user (what differs from MOSN).
#[derive(Debug)]
pub struct Imported {
    pub config: Value,
    pub notes: Vec<String>,
}

/// Converts the MOSN config at `path`; `backend` is used for hosting listeners whose backend
/// the file does not tell.
pub fn import_mosn(path: &Path, backend: Option<&str>) -> Result<Imported, ConfigError> {
    let text = read(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| ConfigError::json(path, "", &e))?;
    convert(path, &value, backend)
}

/// Converts a parsed MOSN config (a whole file with `extends`, one extend entry, or a bare
/// `tunnel_agent` config object).
pub fn convert(path: &Path, mosn: &Value, backend: Option<&str>) -> Result<Imported, ConfigError> {
    let err = |field: String, msg: String| ConfigError::new(path, field, msg);
    let mut notes = Vec::new();
    let blocks: Vec<(String, &Map<String, Value>)> = match get(mosn, "extends") {
        Some(Value::Array(extends)) => extends
            .iter()
            .enumerate()
            .filter(|(_, e)| get(e, "type").and_then(Value::as_str) == Some("tunnel_agent"))
            .filter_map(|(i, e)| {
                Some((
                    format!("extends[{i}].config"),
                    get(e, "config")?.as_object()?,
                ))
            })
            .collect(),
        _ if get(mosn, "type").and_then(Value::as_str) == Some("tunnel_agent") => {
            get(mosn, "config")
                .and_then(Value::as_object)
                .map(|c| vec![("config".to_string(), c)])
                .unwrap_or_default()
        }
        _ => mosn
            .as_object()
            .filter(|o| {
                o.keys().any(|k| {
                    k.eq_ignore_ascii_case("server_list")
                        || k.eq_ignore_ascii_case("hosting_listener")
                })
            })
            .map(|c| vec![(String::new(), c)])
            .unwrap_or_default(),
    };
    if blocks.is_empty() {
        return Err(err(
            String::new(),
            "no MOSN `tunnel_agent` extend config found (expected `extends[]` with `\"type\": \"tunnel_agent\"`)".into(),
        ));
    }
    let mut tunnels = Vec::new();
    let mut listeners: Vec<Value> = Vec::new();
    for (at, block) in blocks {
        let block = Value::Object(block.clone());
        let field = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        let (tunnel, listener) =
            convert_block(&block, &field, mosn, backend, &mut notes).map_err(|(f, m)| err(f, m))?;
        let name = listener["name"].clone();
        if !listeners.iter().any(|l| l["name"] == name) {
            listeners.push(listener);
        }
        tunnels.push(tunnel);
    }
    let config = json!({ "listeners": listeners, "tunnels": tunnels });
    // What the agent would refuse, refused now (credentials are resolved when it starts).
    let mut parsed: AgentConfig = super::parse(path, &config.to_string())?;
    parsed.host_name = "import-check".into();
    parsed.validate(path)?;
    notes.push("weight: MOSN always announces 10, ringtun's default is 10; host_name: MOSN sends \"\", ringtun the machine's host name unless set".into());
    Ok(Imported { config, notes })
}

type FieldError = (String, String);

fn convert_block(
    block: &Value,
    field: &dyn Fn(&str) -> String,
    mosn: &Value,
    backend: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<(Value, Value), FieldError> {
    let known = [
        "enable",
        "connection_num",
        "cluster",
        "hosting_listener",
        "server_list",
        "dynamic_server_list_config",
        "connect_retry_times",
        "reconnect_base_duration",
        "connect_timeout_duration",
        "credential_policy",
        "graceful_close_max_wait_duration",
        "tls_context",
    ];
    if let Some(o) = block.as_object() {
        for k in o
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
        {
            notes.push(format!(
                "{}: not a MOSN tunnel_agent key (MOSN ignores it); dropped",
                field(k)
            ));
        }
    }
    let string = |k: &str| -> Result<String, FieldError> {
        match get(block, k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err((field(k), "expected a string".into())),
        }
    };
    let int = |k: &str| -> Result<i64, FieldError> {
        match get(block, k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| (field(k), "expected an integer".into())),
        }
    };
    let duration = |k: &str, default_ms: u64| -> Result<u64, FieldError> {
        let ms = match get(block, k) {
            None => 0,
            Some(v) => mosn_duration_ms(v).map_err(|m| (field(k), m))?,
        };
        Ok(if ms == 0 { default_ms } else { ms })
    };
    let enable = match get(block, "enable") {
        None | Some(Value::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| (field("enable"), "expected true or false".into()))?,
    };
    if !enable {
        notes.push(format!(
            "{}: false, so MOSN would not start this agent; converted with `enable: false`",
            field("enable")
        ));
    }
    let connection_num = int("connection_num")?;
    if connection_num <= 0 {
        return Err((field("connection_num"), format!("{connection_num}: MOSN opens no data connection then (it has no default); ringtun needs 1 to 1024")));
    }
    let hosting = string("hosting_listener")?;
    if hosting.is_empty() {
        return Err((
            field("hosting_listener"),
            "missing: the MOSN listener that hosts the tunnel's connections".into(),
        ));
    }
    let server_list = match get(block, "server_list") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| (field("server_list"), "expected strings".into()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err((
                field("server_list"),
                "expected an array of `host:port`".into(),
            ))
        }
    };
    let lister = get(block, "dynamic_server_list_config")
        .and_then(|d| get(d, "dynamic_server_lister"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !lister.is_empty() {
        return Err((field("dynamic_server_list_config.dynamic_server_lister"), format!("{lister:?} is a lister registered in MOSN's Go code; ringtun has `dns` and `file` listers (set one in the converted file)")));
    }
    let retry = match int("connect_retry_times")? {
        0 => -1,
        n if n < -1 => {
            return Err((
                field("connect_retry_times"),
                format!("{n}: MOSN makes no attempt at all then; use -1 (forever) or a count"),
            ))
        }
        n => n,
    };
    let base_ms = duration("reconnect_base_duration", MOSN_RECONNECT_BASE_MS)?;
    let policy = string("credential_policy")?;
    let mut tunnel = json!({
        "enable": enable,
        "connection_num": connection_num,
        "cluster": string("cluster")?,
        "hosting_listener": hosting,
        "server_list": server_list,
        "connect_retry_times": retry,
        "reconnect_base_duration_ms": base_ms,
        "reconnect_max_duration_ms": base_ms.max(RECONNECT_MAX_MS),
        "connect_timeout_duration_ms": duration("connect_timeout_duration", MOSN_CONNECT_TIMEOUT_MS)?,
        "credential_policy": policy,
        "graceful_close_max_wait_duration_ms": duration("graceful_close_max_wait_duration", MOSN_GRACEFUL_CLOSE_MAX_WAIT_MS)?,
    });
    notes.push(format!("{}: MOSN doubles the retry delay without a cap; ringtun caps it at reconnect_max_duration_ms {} and adds jitter", field("reconnect_base_duration"), base_ms.max(RECONNECT_MAX_MS)));
    match policy.as_str() {
        "" => {}
        "token" => {
            tunnel["credential_env"] = json!("RINGTUN_CREDENTIAL");
            notes.push(format!("{}: MOSN's credential comes from a getter registered in Go code, never from the file; the converted tunnel reads it from the environment variable RINGTUN_CREDENTIAL (or set `credential`/`credential_file`)", field("credential_policy")));
        }
        other => return Err((field("credential_policy"), format!("{other:?}: ringtun agents offer `token` (and `hmac`, which MOSN servers do not validate); a MOSN validator by that name has no ringtun equivalent"))),
    }
    if let Some(tls) = get(block, "tls_context").filter(|t| !t.is_null()) {
        if let Some(t) = convert_tls(tls, &|k| field(&format!("tls_context.{k}")), notes)? {
            tunnel["tls_context"] = t;
        }
    }
    let backend = match hosting_backend(mosn, &hosting, notes) {
        Some(b) => b,
        None => backend.map(str::to_string).ok_or_else(|| {
            (field("hosting_listener"), format!("{hosting:?}: the file does not say where this MOSN listener forwards to (no tcp_proxy or single-cluster proxy with a host); pass --backend HOST:PORT"))
        })?,
    };
    Ok((tunnel, json!({ "name": hosting, "backend": backend })))
}

/// MOSN's `v2.TLSConfig` as ringtun's agent `tls_context`; `None` when `status` is false
/// (MOSN then dials in plaintext, whatever else is set).
fn convert_tls(
    tls: &Value,
    field: &dyn Fn(&str) -> String,
    notes: &mut Vec<String>,
) -> Result<Option<Value>, FieldError> {
    if get(tls, "status").and_then(Value::as_bool) != Some(true) {
        notes.push(format!(
            "{}: status is not true, so MOSN dials in plaintext; converted without TLS",
            field("status")
        ));
        return Ok(None);
    }
    if get(tls, "insecure_skip").and_then(Value::as_bool) == Some(true) {
        return Err((
            field("insecure_skip"),
            "true: ringtun always verifies the server certificate (give it the CA in ca_cert)"
                .into(),
        ));
    }
    let path = |k: &str| -> Result<Option<String>, FieldError> {
        match get(tls, k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(s) if s.contains("-----BEGIN") => Err((
                field(k),
                "inline PEM: write it to a file and name the file".into(),
            )),
            Some(s) => Ok(Some(s.to_string())),
            None => Ok(None),
        }
    };
    let mut out = Map::new();
    for (mosn_key, key) in [
        ("ca_cert", "ca_file"),
        ("cert_chain", "cert_chain_file"),
        ("private_key", "private_key_file"),
    ] {
        if let Some(p) = path(mosn_key)? {
            out.insert(key.into(), json!(p));
        }
    }
    if let Some(name) = get(tls, "server_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        out.insert("server_name".into(), json!(name));
    }
    let min = get(tls, "min_version")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    // A default MOSN build speaks TLS <= 1.2: keep 1.2 allowed unless the file asks for 1.3.
    out.insert(
        "min_version".into(),
        json!(if min == "tlsv1_3" { "1.3" } else { "1.2" }),
    );
    for k in [
        "cipher_suites",
        "ecdh_curves",
        "max_version",
        "alpn",
        "ticket",
        "verify_client",
        "require_client_cert",
        "fall_back",
        "extend_verify",
        "callbacks",
        "sds_source",
        "type",
    ] {
        if get(tls, k).is_some() {
            notes.push(format!(
                "{}: no ringtun equivalent (rustls defaults apply); dropped",
                field(k)
            ));
        }
    }
    Ok(Some(Value::Object(out)))
}

/// Where MOSN's listener `name` forwards to, if the file tells: a `tcp_proxy` filter's cluster
/// (or its one route cluster), or a `proxy` filter whose router names exactly one cluster; then
/// that cluster's first host.
fn hosting_backend(mosn: &Value, name: &str, notes: &mut Vec<String>) -> Option<String> {
    let servers = get(mosn, "servers")?.as_array()?;
    let listener = servers
        .iter()
        .filter_map(|s| get(s, "listeners")?.as_array())
        .flatten()
        .find(|l| get(l, "name").and_then(Value::as_str) == Some(name))?;
    let filters = get(listener, "filter_chains")?
        .as_array()?
        .iter()
        .filter_map(|c| get(c, "filters")?.as_array())
        .flatten();
    let mut clusters: Vec<String> = Vec::new();
    for f in filters {
        let config = get(f, "config");
        match get(f, "type").and_then(Value::as_str) {
            Some("tcp_proxy") => {
                let c = config?;
                clusters.extend(
                    get(c, "cluster")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                );
                for r in get(c, "routes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    clusters.extend(
                        get(r, "cluster")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    );
                }
            }
            Some("proxy") => {
                let router = get(config?, "router_config_name")?.as_str()?;
                let routers = servers
                    .iter()
                    .filter_map(|s| get(s, "routers")?.as_array())
                    .flatten();
                for r in routers.filter(|r| {
                    get(r, "router_config_name").and_then(Value::as_str) == Some(router)
                }) {
                    for vh in get(r, "virtual_hosts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for route in get(vh, "routers")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            clusters.extend(
                                get(route, "route")
                                    .and_then(|r| get(r, "cluster_name"))
                                    .and_then(Value::as_str)
                                    .map(str::to_string),
                            );
                        }
                    }
                }
                notes.push(format!("listener {name:?}: MOSN proxies a protocol there (type proxy); ringtun forwards raw TCP to the upstream cluster's host"));
            }
            _ => {}
        }
    }
    clusters.sort();
    clusters.dedup();
    let [cluster] = clusters.as_slice() else {
        return None;
    };
    let hosts = get(mosn, "cluster_manager")
        .and_then(|m| get(m, "clusters"))?
        .as_array()?
        .iter()
        .find(|c| get(c, "name").and_then(Value::as_str) == Some(cluster.as_str()))
        .and_then(|c| get(c, "hosts"))?
        .as_array()?;
    if hosts.len() > 1 {
        notes.push(format!(
            "cluster {cluster:?}: {} hosts; ringtun's hosting listener has one backend, the first",
            hosts.len()
        ));
    }
    Some(get(hosts.first()?, "address")?.as_str()?.to_string())
}

/// A key of a JSON object as Go's `encoding/json` finds it: exact, else case-insensitive.
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests;
