//! Counters of the control path: handshakes by outcome, aside heartbeat closes. The control
//! thread is the only writer (relaxed atomics); the admin thread reads them.
//!
//! Labels are fixed sets (outcome names), never values a peer chooses: an agent may name any
//! cluster in its init, so handshakes are not labelled by cluster.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::Status;

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Status 1: registered.
    Success,
    /// Status 0 answered (internal failure, e.g. the cluster vanished during the handshake).
    UnknownFailure,
    /// Status 2.
    AuthFailed,
    /// Status 3.
    ValidatorNotFound,
    /// Status 4.
    ClusterNotExist,
    /// Bad frames, wrong magic/version/flag, oversized payload, bad JSON, closed early.
    ProtocolError,
    /// No init within `handshake_timeout_ms`.
    Timeout,
    /// Closed at accept: too many handshakes in progress.
    Overloaded,
    /// Answered status 0: the cluster's data connection limits are reached.
    OverLimit,
    /// The TLS handshake failed (certificate refused, plaintext to a TLS port, ...).
    TlsError,
    /// Answered status 0: the hmac replay cache is full of live credentials, so a new one
    /// cannot be remembered and is refused (`tunnel_listener.hmac_replay_cache_entries`).
    ReplayCacheFull,
    /// Silent past `handshake_timeout_ms` from a MOSN agent's address: parked as its aside.
    LegacyAside,
    /// A MOSN graceful close (by address) as the first frame, with no init.
    LegacyGracefulClose,
    /// Closed at accept: its source address had `max_handshakes_per_ip` handshakes in progress.
    OverloadedPerIp,
}

impl HandshakeOutcome {
    /// Every outcome, in exposition order.
    pub const ALL: [HandshakeOutcome; 14] = [
        HandshakeOutcome::Success,
        HandshakeOutcome::UnknownFailure,
        HandshakeOutcome::AuthFailed,
        HandshakeOutcome::ValidatorNotFound,
        HandshakeOutcome::ClusterNotExist,
        HandshakeOutcome::ProtocolError,
        HandshakeOutcome::Timeout,
        HandshakeOutcome::Overloaded,
        HandshakeOutcome::OverLimit,
        HandshakeOutcome::TlsError,
        HandshakeOutcome::ReplayCacheFull,
        HandshakeOutcome::LegacyAside,
        HandshakeOutcome::LegacyGracefulClose,
        HandshakeOutcome::OverloadedPerIp,
    ];

    /// The `status` label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Success => "success",
            HandshakeOutcome::UnknownFailure => "unknown_failure",
            HandshakeOutcome::AuthFailed => "auth_failed",
            HandshakeOutcome::ValidatorNotFound => "validator_not_found",
            HandshakeOutcome::ClusterNotExist => "cluster_not_exist",
            HandshakeOutcome::ProtocolError => "protocol_error",
            HandshakeOutcome::Timeout => "timeout",
            HandshakeOutcome::Overloaded => "overloaded",
            HandshakeOutcome::OverLimit => "over_limit",
            HandshakeOutcome::TlsError => "tls_error",
            HandshakeOutcome::ReplayCacheFull => "replay_cache_full",
            HandshakeOutcome::LegacyAside => "legacy_aside",
            HandshakeOutcome::LegacyGracefulClose => "legacy_graceful_close",
            HandshakeOutcome::OverloadedPerIp => "overloaded_per_ip",
        }
    }

    /// The outcome of answering with `status`.
    pub fn of_status(status: Status) -> Self {
        match status {
            Status::SUCCESS => HandshakeOutcome::Success,
            Status::AUTH_FAILED => HandshakeOutcome::AuthFailed,
            Status::VALIDATOR_NOT_FOUND => HandshakeOutcome::ValidatorNotFound,
            Status::CLUSTER_NOT_EXIST => HandshakeOutcome::ClusterNotExist,
            _ => HandshakeOutcome::UnknownFailure,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The control path's counters.
#[derive(Debug, Default)]
pub struct ControlStats {
    handshakes: [AtomicU64; HandshakeOutcome::ALL.len()],
    /// Aside connections closed after unanswered heartbeats.
    pub aside_heartbeat_closes_total: AtomicU64,
    /// Successful handshakes joined on the control loop without a task: plaintext ringtun data
    /// connections whose init was already waiting when they were accepted.
    pub handshakes_inline_total: AtomicU64,
}

impl ControlStats {
    /// Counts one finished handshake.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        self.handshakes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Handshakes that ended with `outcome` so far.
    pub fn handshakes(&self, outcome: HandshakeOutcome) -> u64 {
        self.handshakes[outcome.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_own_slot() {
        let s = ControlStats::default();
        for (i, o) in HandshakeOutcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            s.handshake(*o);
        }
        s.handshake(HandshakeOutcome::of_status(Status::AUTH_FAILED));
        assert_eq!(s.handshakes(HandshakeOutcome::AuthFailed), 2);
        assert_eq!(s.handshakes(HandshakeOutcome::Timeout), 1);
    }
}
