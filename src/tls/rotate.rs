//! A TLS config that can be replaced while it is in use (certificate rotation without a
//! restart): each new handshake takes the config current at its start; established sessions
//! keep the one they began with. A replacement is built and checked in full before it is
//! swapped in, so a bad file never replaces a working config.
//!
//! This module must not read files itself (`config` does) or log (callers say what changed).

use std::sync::{Arc, RwLock};

/// A rustls config (server or client) shared by the code that handshakes and the code that
/// rotates it.
#[derive(Debug)]
pub struct Rotating<C>(RwLock<Arc<C>>);

impl<C> Rotating<C> {
    pub fn new(config: Arc<C>) -> Self {
        Self(RwLock::new(config))
    }

    /// The config a handshake starting now uses.
    pub fn current(&self) -> Arc<C> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `config` the one new handshakes use.
    pub fn replace(&self, config: Arc<C>) {
        match self.0.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_is_seen_by_later_readers_only() {
        let r = Rotating::new(Arc::new(1));
        let before = r.current();
        r.replace(Arc::new(2));
        assert_eq!((*before, *r.current()), (1, 2));
    }
}
