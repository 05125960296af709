//! The registry's data connections from the workers' side: leased, returned, closed, and closed
//! gracefully (by their host's aside, or for a legacy MOSN source), keeping each host's idle
//! counts per worker. It must not publish: callers do, after a change.

use std::net::SocketAddr;

use super::Registry;
use crate::plane::snapshot::{ConnId, HostId};
use crate::protocol::Role;

impl Registry {
    /// Graceful close asked by `host_id`'s own aside connection: of `ids`, those that are this
    /// host's data connections are never leased again. Returns them with the worker holding
    /// each: idle ones close now, leased ones when their session ends. Ids of other hosts are
    /// ignored (a host may only close its own connections).
    pub fn graceful_close(&mut self, host_id: HostId, ids: &[ConnId]) -> Vec<(usize, ConnId)> {
        let mut close = Vec::new();
        for id in ids {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.host != host_id || c.role != Role::Data {
                continue;
            }
            c.closing = true;
            // A leased one too: its worker closes it when its session ends instead of pooling
            // it again (the return the worker reports may still be in its batch).
            if let Some(w) = c.idle_on.or(c.active_on) {
                close.push((w, *id));
            }
        }
        close
    }

    /// MOSN's graceful close, by address: of `cluster`'s legacy data connections, those whose
    /// agent address is in `addrs` are never leased again. Returns the idle ones to close now,
    /// with the worker holding each, and how many were named. The caller checks that every
    /// address is the sender's own IP; ringtun agents' connections are never named this way.
    pub fn graceful_close_legacy(
        &mut self,
        cluster: &str,
        addrs: &[SocketAddr],
    ) -> (Vec<(usize, ConnId)>, usize) {
        let Some(state) = self.clusters.get(cluster) else {
            return (Vec::new(), 0);
        };
        let mut close = Vec::new();
        let mut named = 0;
        for (id, c) in &mut self.conns {
            let legacy = state.hosts.get(&c.host).is_some_and(|h| h.identity.legacy);
            if !legacy || c.role != Role::Data || *c.cluster != *cluster || !addrs.contains(&c.peer)
            {
                continue;
            }
            named += 1;
            c.closing = true;
            if let Some(w) = c.idle_on {
                close.push((w, *id));
            }
        }
        (close, named)
    }

    /// Whether a legacy (MOSN) host registered from `ip` exists in some cluster: a silent
    /// connection from there is that agent's aside connection.
    pub fn legacy_source(&self, ip: std::net::IpAddr) -> bool {
        self.conns.values().any(|c| {
            c.peer.ip() == ip
                && self
                    .clusters
                    .get(&c.cluster)
                    .and_then(|s| s.hosts.get(&c.host))
                    .is_some_and(|h| h.identity.legacy)
        })
    }

    /// Whether a graceful close named this connection (it must not be leased).
    pub fn is_closing(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| c.closing)
    }

    /// Registered and not named for closing: a connection a worker may still be given.
    pub fn is_live(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| !c.closing)
    }

    /// An idle data connection was taken by a session.
    pub fn conn_leased(&mut self, conn_id: ConnId) {
        let worker = self.conns.get(&conn_id).and_then(|c| c.idle_on);
        self.leave_idle(conn_id);
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.active_on = worker;
            conn.sessions += 1;
        }
    }

    /// A data connection's framed session ended cleanly: it is idle again on `worker`. False
    /// when it must not be leased again (named by a graceful close or a drain, or unknown): the
    /// caller has the worker close it.
    pub fn conn_returned(&mut self, conn_id: ConnId, worker: usize) -> bool {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return false;
        };
        conn.active_on = None;
        if conn.closing {
            return false;
        }
        let Some(host) = self
            .clusters
            .get_mut(&conn.cluster)
            .and_then(|c| c.hosts.get_mut(&conn.host))
        else {
            return false;
        };
        let Some(n) = host.idle_per_worker.get_mut(worker) else {
            return false;
        };
        *n += 1;
        conn.idle_on = Some(worker);
        true
    }

    pub(super) fn leave_idle(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(worker) = conn.idle_on.take() else {
            return;
        };
        if let Some(host) = self
            .clusters
            .get_mut(&conn.cluster)
            .and_then(|c| c.hosts.get_mut(&conn.host))
        {
            if let Some(n) = host.idle_per_worker.get_mut(worker) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A connection closed. Returns true when its host had no connection left and was removed
    /// (the snapshot must be republished).
    pub fn conn_closed(&mut self, conn_id: ConnId) -> bool {
        self.leave_idle(conn_id);
        let Some(conn) = self.conns.remove(&conn_id) else {
            return false;
        };
        let Some(cluster) = self.clusters.get_mut(&conn.cluster) else {
            return false;
        };
        if conn.role == Role::Data {
            cluster.data_conns = cluster.data_conns.saturating_sub(1);
        }
        let Some(host) = cluster.hosts.get_mut(&conn.host) else {
            return false;
        };
        host.conns.remove(&conn_id);
        if conn.role == Role::Data {
            host.data_conns = host.data_conns.saturating_sub(1);
        }
        if host.conns.is_empty() {
            cluster.remove_host(conn.host);
            self.host_cluster.remove(&conn.host);
            return true;
        }
        false
    }
}
