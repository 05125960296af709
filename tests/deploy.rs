//! `deploy/` kept in step with the code: the Kubernetes manifests parse, the configs they embed
//! pass `ringtun check`'s validation, their ports match those configs, and the Dockerfile and
//! systemd units name the same files and ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringtun::config::{AgentConfig, ServerConfig};
use serde::Deserialize;
use serde_json::Value;

/// The variable the example agent configs read their token from.
const TOKEN_ENV: &str = "RINGTUN_TOKEN";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a multi-document YAML file, as JSON values.
fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_norway::Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for rel in [
        "deploy/kubernetes/server.yaml",
        "deploy/kubernetes/agent.yaml",
    ] {
        for doc in documents(rel) {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{rel}: a document without {field}");
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{rel}: a document without metadata.name"
            );
            out.push((rel.to_string(), doc));
        }
    }
    out
}

/// A config validated as `ringtun check` would, and the ports it listens on.
enum Checked {
    Server(ServerConfig),
    Agent(AgentConfig),
}

impl Checked {
    fn parse(name: &str, text: &str) -> Self {
        // The example agent configs take their token from the environment.
        std::env::set_var(TOKEN_ENV, "test-token");
        let path = Path::new(name);
        if name.starts_with("agent") || name.contains("/agent") {
            Checked::Agent(
                AgentConfig::from_str(path, text).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        } else {
            Checked::Server(
                ServerConfig::from_str(path, text).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        }
    }

    /// Every port the config listens on.
    fn listen_ports(&self) -> BTreeSet<u16> {
        let port = |a: &str| a.parse::<SocketAddr>().unwrap().port();
        let mut ports = BTreeSet::new();
        match self {
            Checked::Server(c) => {
                ports.insert(port(&c.tunnel_listener.address));
                for cl in &c.clusters {
                    for f in &cl.frontends {
                        ports.insert(port(&f.address));
                    }
                }
                if let Some(a) = &c.admin {
                    ports.insert(port(&a.address));
                }
            }
            Checked::Agent(c) => {
                if let Some(a) = &c.admin {
                    ports.insert(port(&a.address));
                }
            }
        }
        ports
    }

    fn admin_port(&self) -> Option<u16> {
        let admin = match self {
            Checked::Server(c) => c.admin.as_ref(),
            Checked::Agent(c) => c.admin.as_ref(),
        }?;
        Some(admin.address.parse::<SocketAddr>().unwrap().port())
    }
}

/// ConfigMap name → (key, validated config).
fn config_maps(docs: &[(String, Value)]) -> BTreeMap<String, Vec<(String, Checked)>> {
    let mut out = BTreeMap::new();
    for (rel, doc) in docs.iter().filter(|(_, d)| d["kind"] == "ConfigMap") {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let data = doc["data"].as_object().unwrap();
        let configs = data
            .iter()
            .filter(|(k, _)| k.ends_with(".json"))
            .map(|(k, v)| {
                let text = v.as_str().unwrap();
                (
                    k.clone(),
                    Checked::parse(&format!("{rel}:{name}/{k}"), text),
                )
            })
            .collect::<Vec<_>>();
        assert!(
            !configs.is_empty(),
            "{rel}: ConfigMap {name} holds no .json config"
        );
        out.insert(name, configs);
    }
    out
}

/// A workload's pod template: its labels, its named and numbered container ports, its probes and
/// the ConfigMap it mounts.
struct Pods {
    name: String,
    namespace: String,
    labels: serde_json::Map<String, Value>,
    ports: BTreeMap<String, u16>,
    probes: Vec<(String, Value)>,
    config_map: String,
}

impl Pods {
    /// Resolves a port reference (a name or a number) to a container port.
    fn resolve(&self, port: &Value) -> Option<u16> {
        match port {
            Value::String(name) => self.ports.get(name).copied(),
            Value::Number(n) => {
                let n = u16::try_from(n.as_u64()?).ok()?;
                self.ports.values().any(|p| *p == n).then_some(n)
            }
            _ => None,
        }
    }
}

fn workloads(docs: &[(String, Value)]) -> Vec<Pods> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .map(|(rel, d)| {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            let template = &d["spec"]["template"];
            let labels = template["metadata"]["labels"].as_object().unwrap().clone();
            let selector = d["spec"]["selector"]["matchLabels"].as_object().unwrap();
            for (k, v) in selector {
                assert_eq!(
                    labels.get(k),
                    Some(v),
                    "{rel}: {name}: selector {k} not on its pods"
                );
            }
            let containers = template["spec"]["containers"].as_array().unwrap();
            assert_eq!(containers.len(), 1, "{rel}: {name}: one container expected");
            let c = &containers[0];
            let mut ports = BTreeMap::new();
            for p in c["ports"].as_array().unwrap() {
                let port = u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap();
                let pname = p["name"].as_str().unwrap_or_default().to_string();
                assert!(
                    ports.insert(pname, port).is_none(),
                    "{rel}: {name}: duplicate port name"
                );
            }
            let probes = ["livenessProbe", "readinessProbe"]
                .iter()
                .map(|p| (p.to_string(), c[*p]["httpGet"].clone()))
                .collect();
            let config_map = template["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|v| v["configMap"]["name"].as_str())
                .unwrap_or_else(|| panic!("{rel}: {name} mounts no ConfigMap"))
                .to_string();
            // The container must be started on the mounted config.
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
            let config_arg = args
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| args.get(i + 1))
                .unwrap_or_else(|| panic!("{rel}: {name}: no --config argument"));
            assert!(
                config_arg.starts_with(&format!("{mount}/")),
                "{rel}: {name}: --config {config_arg} is not under the mount {mount}"
            );
            Pods {
                name,
                namespace: d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .into(),
                labels,
                ports,
                probes,
                config_map,
            }
        })
        .collect()
}

#[test]
fn manifests_parse_and_embedded_configs_are_valid() {
    let docs = manifests();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for kind in ["ConfigMap", "Deployment", "Service", "Secret", "Namespace"] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
    let maps = config_maps(&docs);
    assert!(maps
        .values()
        .flatten()
        .any(|(_, c)| matches!(c, Checked::Server(_))));
    assert!(maps
        .values()
        .flatten()
        .any(|(_, c)| matches!(c, Checked::Agent(_))));
}

#[test]
fn container_ports_and_probes_match_the_configs() {
    let docs = manifests();
    let maps = config_maps(&docs);
    let pods = workloads(&docs);
    assert_eq!(pods.len(), 2, "a server and an agent workload expected");
    for p in &pods {
        let configs = maps.get(&p.config_map).unwrap_or_else(|| {
            panic!(
                "{}: ConfigMap {} is not in the manifests",
                p.name, p.config_map
            )
        });
        let (key, config) = &configs[0];
        let want = config.listen_ports();
        let have: BTreeSet<u16> = p.ports.values().copied().collect();
        assert_eq!(
            have, want,
            "{}: containerPorts {have:?} differ from the ports {key} listens on {want:?}",
            p.name
        );
        let admin = config
            .admin_port()
            .expect("deployed configs serve the admin endpoint");
        for (probe, get) in &p.probes {
            assert_eq!(
                p.resolve(&get["port"]),
                Some(admin),
                "{}: {probe} does not target the admin port",
                p.name
            );
            let path = get["path"].as_str().unwrap();
            let expected = if probe == "livenessProbe" {
                "/healthz"
            } else {
                "/ready"
            };
            assert_eq!(path, expected, "{}: {probe}", p.name);
        }
    }
}

#[test]
fn services_target_ports_of_the_pods_they_select() {
    let docs = manifests();
    let pods = workloads(&docs);
    let mut headless = Vec::new();
    for (rel, svc) in docs.iter().filter(|(_, d)| d["kind"] == "Service") {
        let name = svc["metadata"]["name"].as_str().unwrap();
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let selector = svc["spec"]["selector"].as_object().unwrap();
        let target = pods
            .iter()
            .find(|p| p.namespace == ns && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{rel}: Service {name} selects no workload"));
        for port in svc["spec"]["ports"].as_array().unwrap() {
            let target_port = if port["targetPort"].is_null() {
                port["port"].clone()
            } else {
                port["targetPort"].clone()
            };
            assert!(
                target.resolve(&target_port).is_some(),
                "{rel}: Service {name} targets {target_port}, not a port of {}",
                target.name
            );
        }
        if svc["spec"]["clusterIP"] == "None" {
            let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
            headless.push(format!("{name}.{ns}.svc.cluster.local:{port}"));
        }
    }
    assert!(
        !headless.is_empty(),
        "no headless Service for agents to resolve"
    );
    // The example agent dials the headless Service on the tunnel port.
    let maps = config_maps(&docs);
    let agent = maps
        .values()
        .flatten()
        .find_map(|(_, c)| match c {
            Checked::Agent(a) => Some(a),
            Checked::Server(_) => None,
        })
        .unwrap();
    for server in &agent.tunnels[0].server_list {
        assert!(
            headless.contains(server),
            "agent server {server} is not a headless Service {headless:?}"
        );
    }
}

#[test]
fn host_configs_dockerfile_and_units_agree() {
    let server = Checked::parse("deploy/server.json", &read("deploy/server.json"));
    let agent = Checked::parse("deploy/agent.json", &read("deploy/agent.json"));
    let dockerfile = read("deploy/Dockerfile");
    let exposed: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let wanted: BTreeSet<u16> = server
        .listen_ports()
        .union(&agent.listen_ports())
        .copied()
        .collect();
    assert_eq!(
        exposed, wanted,
        "Dockerfile EXPOSE differs from deploy/*.json ports"
    );
    for kind in ["server", "agent"] {
        assert!(
            dockerfile.contains(&format!("COPY deploy/{kind}.json /etc/ringtun/{kind}.json")),
            "Dockerfile does not ship deploy/{kind}.json"
        );
        let unit = read(&format!("deploy/systemd/ringtun-{kind}.service"));
        assert!(
            unit.contains(&format!(
                "LoadCredential={kind}.json:/etc/ringtun/{kind}.json"
            )),
            "ringtun-{kind}.service does not load /etc/ringtun/{kind}.json"
        );
        assert!(
            unit.contains(&format!("ringtun {kind} --config %d/{kind}.json")),
            "ringtun-{kind}.service does not run `ringtun {kind}` on its config"
        );
        assert!(
            unit.contains("SystemCallErrorNumber=EPERM"),
            "ringtun-{kind}.service"
        );
    }
    let agent_unit = read("deploy/systemd/ringtun-agent.service");
    assert!(
        agent_unit.contains(TOKEN_ENV),
        "the agent unit must provide {TOKEN_ENV}"
    );
}
