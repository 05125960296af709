//! The server's admin endpoints: `/metrics` (Prometheus text), `/clusters` (JSON), `/healthz`,
//! `/ready`, and `POST /hosts/weight` / `POST /hosts/drain` (JSON bodies naming cluster and
//! host) to set a host's weight or stop leasing its connections.
//!
//! Cluster and host state comes from the control path over its command channel (with a timeout);
//! counters are read straight from the workers' and control path's atomics. Credentials are never
//! read here: cluster status carries the policy name only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::admin::{get_only, Handler, Request, Response};
use crate::control::api::ControlCmd;
use crate::control::registry::ClusterStatus;
use crate::control::stats::ControlStats;
use crate::metrics;
use crate::plane::counters::WorkerCounters;

/// How long the admin waits for the control path to answer.
pub const CONTROL_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server's admin handler reads.
pub struct ServerAdmin {
    pub commands: mpsc::UnboundedSender<ControlCmd>,
    pub counters: Vec<Arc<WorkerCounters>>,
    pub control: Arc<ControlStats>,
    /// True from the end of start until shutdown begins.
    pub ready: Arc<AtomicBool>,
    pub backend: &'static str,
    pub frontends: Arc<std::sync::Mutex<HashMap<String, Vec<SocketAddr>>>>,
    pub tunnel_addr: SocketAddr,
    /// Applies reloads (`POST /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// The file `POST /reload` re-reads (set by `ringtun server`).
    pub reload_path: Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
}

impl Handler for ServerAdmin {
    async fn handle(&self, req: Request) -> Response {
        if req.path == "/hosts/weight" || req.path == "/hosts/drain" {
            return self.host_action(&req).await;
        }
        if req.path == "/reload" {
            return self.reload(&req).await;
        }
        let known = ["/metrics", "/clusters", "/healthz", "/ready"];
        if !known.contains(&req.path.as_str()) {
            return Response::not_found(&req.path);
        }
        if let Some(refused) = get_only(&req) {
            return refused;
        }
        match req.path.as_str() {
            "/healthz" => Response::text(200, "ok\n"),
            "/ready" => {
                if !self.ready.load(Ordering::Acquire) {
                    return Response::text(503, "not ready: starting or shutting down\n");
                }
                match self.clusters().await {
                    Some(_) => Response::text(200, "ready\n"),
                    None => Response::text(503, "not ready: the control path does not answer\n"),
                }
            }
            "/clusters" => match self.clusters().await {
                Some(c) => Response::json(200, &self.clusters_json(&c)),
                None => Response::text(503, "the control path does not answer\n"),
            },
            _ => match self.clusters().await {
                Some(c) => {
                    let mut r = Response::text(200, self.render_metrics(&c));
                    r.content_type = metrics::CONTENT_TYPE;
                    r
                }
                None => Response::text(503, "the control path does not answer\n"),
            },
        }
    }
}

/// Body of `POST /hosts/weight` and `POST /hosts/drain`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAction {
    cluster: String,
    host_name: String,
    /// `/hosts/weight` only: the weight, or `null` to give the agent's own back.
    #[serde(default)]
    weight: Option<u32>,
}

impl ServerAdmin {
    async fn reload(&self, req: &Request) -> Response {
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        let path = self.reload_path.lock().ok().and_then(|p| p.clone());
        let Some(path) = path else {
            return Response::text(
                409,
                "no config file to reload: the server was not started from one\n",
            );
        };
        let reloader = self.reloader.clone();
        let done = tokio::task::spawn_blocking(move || reloader.reload_file(&path)).await;
        match done {
            Ok(Ok(summary)) => {
                tracing::info!(%summary, "configuration reloaded (admin)");
                Response::json(
                    200,
                    &json!({
                        "added": summary.added, "removed": summary.removed, "changed": summary.changed,
                    }),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!("configuration reload refused, keeping the running one: {e}");
                Response::text(
                    400,
                    format!("reload refused, the running configuration stays: {e}\n"),
                )
            }
            Err(_) => Response::text(500, "reload failed\n"),
        }
    }

    async fn host_action(&self, req: &Request) -> Response {
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        let action: HostAction = match serde_json::from_slice(&req.body) {
            Ok(a) => a,
            Err(e) => return Response::text(400, format!("bad JSON body: {e}\n")),
        };
        if action
            .weight
            .is_some_and(|w| i64::from(w) > crate::config::agent::MAX_WEIGHT)
        {
            return Response::text(
                400,
                format!("weight is more than {}\n", crate::config::agent::MAX_WEIGHT),
            );
        }
        let (reply, rx) = oneshot::channel();
        let cmd = if req.path == "/hosts/weight" {
            ControlCmd::SetWeight {
                cluster: action.cluster,
                host_name: action.host_name,
                weight: action.weight,
                reply,
            }
        } else {
            ControlCmd::DrainHost {
                cluster: action.cluster,
                host_name: action.host_name,
                reply,
            }
        };
        if self.commands.send(cmd).is_err() {
            return Response::text(503, "the control path does not answer\n");
        }
        match tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, rx).await {
            Ok(Ok(0)) => Response::text(404, "no such host in that cluster\n"),
            Ok(Ok(n)) => Response::json(200, &json!({ "hosts": n })),
            _ => Response::text(503, "the control path does not answer\n"),
        }
    }

    async fn clusters(&self) -> Option<Vec<ClusterStatus>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(ControlCmd::Clusters { reply }).ok()?;
        tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, rx)
            .await
            .ok()?
            .ok()
    }

    fn clusters_json(&self, clusters: &[ClusterStatus]) -> serde_json::Value {
        let clusters: Vec<serde_json::Value> = clusters
            .iter()
            .map(|c| {
                let hosts: Vec<serde_json::Value> = c
                    .hosts
                    .iter()
                    .map(|h| {
                        let active: u32 = h.active_per_worker.iter().sum();
                        json!({
                            "host_name": h.host_name,
                            "agent_id": h.agent_id,
                            "weight": h.weight,
                            "legacy": h.legacy,
                            "data_connections": h.data_connections,
                            "aside_connections": h.aside_connections,
                            "idle_connections": h.idle_connections,
                            "active_connections": active,
                            "idle_per_worker": h.idle_per_worker,
                            "active_per_worker": h.active_per_worker,
                            "sessions_per_data_connection": h.sessions_per_data_connection,
                        })
                    })
                    .collect();
                let frontends: Vec<String> = self
                    .frontends
                    .lock()
                    .ok()
                    .and_then(|f| {
                        f.get(&c.name)
                            .map(|v| v.iter().map(|a| a.to_string()).collect())
                    })
                    .unwrap_or_default();
                json!({
                    "name": c.name,
                    "lb_type": c.lb_type,
                    "credential_policy": c.credential_policy.name(),
                    "pool_wait_ms": c.pool_wait_ms,
                    "frontends": frontends,
                    "hosts": hosts,
                })
            })
            .collect();
        json!({
            "tunnel_listener": self.tunnel_addr.to_string(),
            "workers": self.counters.len(),
            "io_backend": self.backend,
            "clusters": clusters,
        })
    }
}
