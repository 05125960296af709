//! The PROXY protocol options of both files: what a frontend accepts
//! (`clusters[].frontends[].accept_proxy_protocol`, `trusted_proxies`,
//! `proxy_protocol_timeout_ms`) and what a hosting listener sends its backend
//! (`listeners[].send_proxy_protocol`), and their validation. It parses; it starts nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, FrontendConfig};
use crate::protocol::cidr::Cidr;
use crate::protocol::proxy::ProxyVersion;

/// The PROXY header an agent writes to its backend before a session's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendProxyProtocol {
    /// None (default).
    #[default]
    #[serde(rename = "")]
    None,
    /// The text header, `PROXY TCP4 ...\r\n`.
    #[serde(rename = "v1")]
    V1,
    /// The binary header.
    #[serde(rename = "v2")]
    V2,
}

impl SendProxyProtocol {
    /// The version to write, if any.
    pub fn version(self) -> Option<ProxyVersion> {
        match self {
            SendProxyProtocol::None => None,
            SendProxyProtocol::V1 => Some(ProxyVersion::V1),
            SendProxyProtocol::V2 => Some(ProxyVersion::V2),
        }
    }
}

/// The networks of a frontend's `trusted_proxies` (validated: entries that do not parse are
/// left out, which `validate_frontend` has already refused).
pub fn trusted_networks(frontend: &FrontendConfig) -> Vec<Cidr> {
    frontend
        .trusted_proxies
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The PROXY protocol rules of `frontends[j]`; `at` is its JSON path.
pub(super) fn validate_frontend(
    path: &Path,
    at: &str,
    f: &FrontendConfig,
) -> Result<(), ConfigError> {
    let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
    if !(100..=600_000).contains(&f.proxy_protocol_timeout_ms) {
        return err(
            format!("{at}.proxy_protocol_timeout_ms"),
            format!("{} is outside 100..=600000", f.proxy_protocol_timeout_ms),
        );
    }
    if f.accept_proxy_protocol && f.trusted_proxies.is_empty() {
        return err(
            format!("{at}.trusted_proxies"),
            "accept_proxy_protocol needs at least one trusted proxy network \
             (e.g. [\"10.0.0.0/8\"])"
                .into(),
        );
    }
    if !f.accept_proxy_protocol && !f.trusted_proxies.is_empty() {
        // Networks that are silently ignored would suggest a protection that is not there.
        return err(
            format!("{at}.trusted_proxies"),
            "trusted_proxies are set but accept_proxy_protocol is false; \
             set accept_proxy_protocol to true or remove them"
                .into(),
        );
    }
    for (k, network) in f.trusted_proxies.iter().enumerate() {
        if let Err(e) = network.parse::<Cidr>() {
            return err(format!("{at}.trusted_proxies[{k}]"), e.to_string());
        }
    }
    Ok(())
}
