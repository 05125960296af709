//! Dynamic server discovery for one tunnel: the `dns` lister re-resolves `dns_name` (every
//! address is a server: a Kubernetes headless Service lists every replica), the `file` lister
//! re-reads a JSON array of `host:port` (every `refresh_interval_ms`, or as soon as the file
//! changes). New servers are dialled; servers no longer listed are closed gracefully. Peers from
//! the static `server_list` are never touched. A failed lookup keeps the current servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::peer::Peer;
use super::Shared;

/// How often the `file` lister looks at the file's modification time.
const FILE_POLL_MS: u64 = 250;

/// Why a listing could not be read; the current servers are kept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("cannot read server list file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("server list file {path} is not a JSON array of \"host:port\" strings: {reason}")]
    Parse { path: String, reason: String },
    #[error("cannot resolve {name}: {reason}")]
    Resolve { name: String, reason: String },
}

/// Parses a `file` lister's contents.
pub fn parse_list(path: &str, text: &str) -> Result<Vec<String>, ListError> {
    let entries: Vec<String> = serde_json::from_str(text).map_err(|e| ListError::Parse {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    for e in &entries {
        let valid = e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            return Err(ListError::Parse {
                path: path.to_string(),
                reason: format!("{e:?} is not host:port"),
            });
        }
    }
    Ok(entries)
}

/// Every address of `names`, each with the name it was resolved from (the first that gave it).
async fn resolve_all(names: &[String]) -> Result<BTreeMap<SocketAddr, String>, ListError> {
    let mut out = BTreeMap::new();
    for name in names {
        let addrs =
            tokio::net::lookup_host(name.as_str())
                .await
                .map_err(|e| ListError::Resolve {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
        for addr in addrs {
            out.entry(addr).or_insert_with(|| name.clone());
        }
    }
    Ok(out)
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs the lister of `tunnel` until the agent stops.
pub async fn run(shared: Arc<Shared>, tunnel: usize, mut stop: watch::Receiver<bool>) {
    let Some(t) = shared.config.tunnels.get(tunnel) else {
        return;
    };
    let Some(cfg) = t.dynamic_server_list_config.clone() else {
        return;
    };
    let interval = Duration::from_millis(cfg.refresh_interval_ms);
    let mut last_mtime = None;
    let mut next_full = crate::rt::time::Instant::now();
    loop {
        let file_changed = match (&cfg.path, cfg.dynamic_server_lister.as_str()) {
            (Some(path), "file") => {
                let m = modified(path);
                let changed = m != last_mtime;
                last_mtime = m;
                changed
            }
            _ => false,
        };
        if file_changed || crate::rt::time::Instant::now() >= next_full {
            next_full = crate::rt::time::Instant::now() + interval;
            let listed = match cfg.dynamic_server_lister.as_str() {
                "dns" => resolve_all(&[cfg.dns_name.clone().unwrap_or_default()]).await,
                "file" => {
                    let path = cfg.path.clone().unwrap_or_default();
                    match std::fs::read_to_string(&path) {
                        Ok(text) => match parse_list(&path, &text) {
                            Ok(names) => resolve_all(&names).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(ListError::Read {
                            path,
                            reason: e.to_string(),
                        }),
                    }
                }
                _ => return,
            };
            match listed {
                Ok(addrs) => reconcile(&shared, tunnel, &addrs),
                Err(e) => {
                    warn!(cluster = %t.cluster, "server discovery failed: {e}; keeping the current servers")
                }
            }
        }
        let wait = if cfg.dynamic_server_lister == "file" {
            Duration::from_millis(FILE_POLL_MS).min(interval)
        } else {
            interval
        };
        tokio::select! {
            _ = crate::rt::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Starts peers for new addresses and gracefully stops dynamic peers no longer listed.
fn reconcile(shared: &Shared, tunnel: usize, listed: &BTreeMap<SocketAddr, String>) {
    let running = shared.running_peers(tunnel);
    for (addr, name) in listed {
        if !running.iter().any(|p| p.addr == *addr) {
            shared.start_peer(Peer::new(tunnel, *addr, name.clone(), true));
        }
    }
    for peer in running
        .iter()
        .filter(|p| p.dynamic && !listed.contains_key(&p.addr))
    {
        info!(peer = %peer.addr, "server no longer listed; closing its connections gracefully");
        peer.begin_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_list_is_a_json_array_of_host_port() {
        assert_eq!(
            parse_list("s.json", r#"["127.0.0.1:7070", "srv.example:443"]"#).unwrap(),
            vec!["127.0.0.1:7070".to_string(), "srv.example:443".to_string()]
        );
        assert!(matches!(
            parse_list("s.json", "{}"),
            Err(ListError::Parse { .. })
        ));
        assert!(matches!(
            parse_list("s.json", r#"["nohost"]"#),
            Err(ListError::Parse { .. })
        ));
        assert!(matches!(
            parse_list("s.json", r#"["h:0"]"#),
            Err(ListError::Parse { .. })
        ));
    }
}
