//! The `admin` object of both files: where the admin endpoint listens and the bearer token it
//! may require. Validation of the token's sources and reading `token_file`; nothing is started
//! here, and the token is a [`Secret`] (never in an error message or a log).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// The admin HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to listen on, e.g. `127.0.0.1:9901` (server) / `127.0.0.1:9902` (agent); port 0
    /// picks a free port. Required when `admin` is set; no default.
    pub address: String,
    /// Bearer token every request but `/healthz` and `/ready` must send
    /// (`Authorization: Bearer <token>`). Default: none (no authentication).
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the token (path, relative to the config file; surrounding whitespace is
    /// trimmed). Default: none. At most one of `token` and `token_file`.
    #[serde(default)]
    pub token_file: Option<String>,
}

impl AdminConfig {
    /// The rules serde cannot express: at most one token source, none empty.
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(ConfigError::new(
                path,
                "admin.token",
                "set at most one of token, token_file",
            ));
        }
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(ConfigError::new(path, "admin.token", "is empty"));
        }
        if self.token_file.as_deref() == Some("") {
            return Err(ConfigError::new(path, "admin.token_file", "is empty"));
        }
        Ok(())
    }

    /// Reads `token_file` (relative to the directory of the config file at `path`) into
    /// `token`; a `token` given inline is trimmed.
    pub(super) fn resolve(&mut self, path: &Path) -> Result<(), ConfigError> {
        if let Some(token) = &self.token {
            self.token = Some(Secret::new(token.expose().trim()));
        }
        let Some(file) = &self.token_file else {
            return Ok(());
        };
        let full = path.parent().unwrap_or_else(|| Path::new("")).join(file);
        let text = std::fs::read_to_string(&full).map_err(|e| {
            ConfigError::new(
                path,
                "admin.token_file",
                format!("cannot read {file:?}: {e} (at {})", full.display()),
            )
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(ConfigError::new(
                path,
                "admin.token_file",
                format!("{file:?} holds no token (at {})", full.display()),
            ));
        }
        self.token = Some(Secret::new(value));
        Ok(())
    }
}
