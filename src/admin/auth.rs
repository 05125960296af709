//! The admin token check: which requests need `Authorization: Bearer <token>` and whether one
//! carries it. Pure; the token and the header are [`Secret`]s and are never logged here.

use super::Request;
use crate::secret::Secret;

/// Paths served without the admin token (probes of orchestrators, which carry none).
pub const UNAUTHENTICATED_PATHS: [&str; 2] = ["/healthz", "/ready"];

/// Whether `req` may be served: always without a token, else only for
/// [`UNAUTHENTICATED_PATHS`] or with `Authorization: Bearer <token>` (constant-time compare).
pub fn authorized(token: Option<&Secret>, req: &Request) -> bool {
    let Some(token) = token else { return true };
    if UNAUTHENTICATED_PATHS.contains(&req.path.as_str()) {
        return true;
    }
    let Some(value) = req.authorization.as_ref().map(Secret::expose) else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && token.constant_time_eq(given.trim())
}
