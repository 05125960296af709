//! MOSN's aside connection on the server. A MOSN agent's aside is a TCP connection that never
//! sends an init; the only frame it ever writes is its graceful close, by address. Here:
//! - a connection silent past `handshake_timeout_ms` from an IP with a registered legacy host is
//!   parked (no handshake permit, at most `max_legacy_asides_per_ip` per source IP, logged at
//!   debug) until it closes, sends its graceful close, or idles `legacy_idle_timeout_ms`;
//! - a connection whose first bytes are not a frame (wrong magic: a hosted aside forwarding a
//!   server-speaks-first backend's banner) is held, its bytes discarded, until
//!   `handshake_timeout_ms`, then closed: MOSN re-dials at once, so closing at once is a storm;
//! - a graceful close by address is honoured when every address has the sender's IP; it names
//!   only that cluster's registered legacy data connections of those addresses.
//!
//! Must not: register, lease or write anything on these connections.

use std::collections::HashMap;
use std::net::IpAddr;

use super::*;

/// Parked (and held) connections per source IP.
pub(super) type ParkedTable = Rc<RefCell<HashMap<IpAddr, usize>>>;

/// One parked connection counted against its source IP; uncounted when dropped.
pub(super) struct ParkedSlot {
    table: ParkedTable,
    ip: IpAddr,
}

impl Drop for ParkedSlot {
    fn drop(&mut self) {
        let mut table = self.table.borrow_mut();
        if let Some(n) = table.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

impl Control {
    /// A slot for one more parked connection from `ip`: only for an IP with a registered legacy
    /// host, and while it has fewer than `max_legacy_asides_per_ip`.
    pub(super) fn park_slot(&self, ip: IpAddr) -> Option<ParkedSlot> {
        if !self.registry.borrow().legacy_source(ip) {
            return None;
        }
        let max = self.config.tunnel_listener.max_legacy_asides_per_ip;
        let mut table = self.parked.borrow_mut();
        let n = table.entry(ip).or_insert(0);
        if *n >= max {
            crate::log_limited!(warn!(%ip, max,
                "silent tunnel connection not parked: its address already holds max_legacy_asides_per_ip; closed"));
            return None;
        }
        *n += 1;
        Some(ParkedSlot {
            table: self.parked.clone(),
            ip,
        })
    }

    /// Serves a parked MOSN aside connection until it closes, fails, or sends its graceful
    /// close (honoured, then the connection is closed).
    pub(super) async fn parked(&self, mut stream: Channel, peer: SocketAddr, _slot: ParkedSlot) {
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let mut buf = Vec::new();
        let read = read_first_from(&mut stream, &mut buf, max_payload);
        let read = match self.config.tunnel_listener.legacy_idle_timeout() {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .unwrap_or(Err(HandshakeError::Timeout(limit.as_millis() as u64))),
            None => read.await,
        };
        let reason = match read {
            Ok(First::GracefulClose(g)) => {
                self.stats.handshake(HandshakeOutcome::LegacyGracefulClose);
                self.legacy_graceful_close(peer, &g);
                "graceful close received".to_string()
            }
            Ok(First::Init(..)) => "sent an init after being parked".to_string(),
            Err(e) => e.to_string(),
        };
        debug!(%peer, %reason, "parked MOSN aside connection closed");
        let _ = stream.stream.shutdown_std();
    }

    /// Reads and discards until `deadline` (or until the peer closes), then returns.
    pub(super) async fn hold(&self, stream: &mut Channel, deadline: tokio::time::Instant) {
        let mut scratch = Vec::with_capacity(4096);
        loop {
            scratch.clear();
            match tokio::time::timeout_at(deadline, stream.read_into(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// MOSN's graceful close (`{"addresses":[agent ip:port...],"cluster_name"}`), first frame of
    /// a connection with no init. Honoured only when every address has the sender's IP: then
    /// the cluster's legacy data connections registered from those addresses are never leased
    /// again (idle ones close now, leased ones after their session). Otherwise nothing changes.
    pub(super) fn legacy_graceful_close(&self, peer: SocketAddr, g: &GracefulCloseOnewayRequest) {
        let addrs: Option<Vec<SocketAddr>> = g
            .addresses
            .iter()
            .map(|a| a.parse::<SocketAddr>().ok().filter(|a| a.ip() == peer.ip()))
            .collect();
        let Some(addrs) = addrs else {
            crate::log_limited!(
                warn!(%peer, cluster = %g.cluster_name, addresses = g.addresses.len(),
                "MOSN graceful close ignored: it names an address that is not the sender's own IP")
            );
            return;
        };
        let (close, named) = self
            .registry
            .borrow_mut()
            .graceful_close_legacy(&g.cluster_name, &addrs);
        info!(%peer, cluster = %g.cluster_name, addresses = addrs.len(), named,
            closing_idle = close.len(), "MOSN graceful close: its connections are no longer leased");
        self.close_on_workers(close);
    }
}
