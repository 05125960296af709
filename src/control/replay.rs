//! The replay cache of `hmac` credentials: remembers each accepted credential until its timestamp
//! is outside the accepted clock skew (after which it would be refused anyway), so the same value
//! cannot register twice. Bounded, and fails closed: a live entry is never forgotten early, so
//! when the cache is full of unexpired entries a new credential is refused ([`Insert::Full`])
//! rather than remembered at the cost of making an accepted one replayable.
//!
//! Owned by the control path (one thread); no clock of its own (the caller passes `now`), no I/O.

use std::collections::{BTreeSet, HashMap};

/// A remembered credential: the first 16 bytes of its MAC (128 bits: collisions are not a
/// concern, and entries stay small).
pub type ReplayKey = [u8; 16];

/// What [`ReplayCache::insert_new`] did with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Not seen before: remembered until it expires.
    New,
    /// Already remembered and not expired: a replay.
    Replay,
    /// Not seen before, but the cache is full of unexpired entries: not remembered, so the
    /// credential must be refused.
    Full,
}

/// Accepted credentials not yet expired.
#[derive(Debug)]
pub struct ReplayCache {
    /// key -> the second after which it is forgotten.
    expiry_of: HashMap<ReplayKey, u64>,
    /// (expiry, key), oldest expiry first.
    by_expiry: BTreeSet<(u64, ReplayKey)>,
    capacity: usize,
    refused_full: u64,
}

impl ReplayCache {
    /// Entries kept at most by default (`tunnel_listener.hmac_replay_cache_entries`).
    pub const DEFAULT_CAPACITY: usize = crate::config::defaults::HMAC_REPLAY_CACHE_ENTRIES;

    /// An empty cache holding at most `capacity` (at least 1) entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
            refused_full: 0,
        }
    }

    /// Records `key` until `expires_at` (unix seconds) when it is new and there is room.
    /// Nothing changes for a replay (`key` remembered and not expired at `now`) or when the
    /// cache is full of unexpired entries (never forgotten early).
    pub fn insert_new(&mut self, key: ReplayKey, now: u64, expires_at: u64) -> Insert {
        self.forget_expired(now);
        if self.expiry_of.contains_key(&key) {
            return Insert::Replay;
        }
        if self.expiry_of.len() >= self.capacity {
            self.refused_full += 1;
            return Insert::Full;
        }
        self.expiry_of.insert(key, expires_at);
        self.by_expiry.insert((expires_at, key));
        Insert::New
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry > now {
                break;
            }
            self.by_expiry.pop_first();
            self.expiry_of.remove(&key);
        }
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    /// New credentials refused because the cache was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ReplayKey {
        [n; 16]
    }

    #[test]
    fn a_key_is_refused_until_it_expires() {
        let mut cache = ReplayCache::new(10);
        assert_eq!(cache.insert_new(key(1), 100, 400), Insert::New);
        assert_eq!(cache.insert_new(key(1), 200, 500), Insert::Replay);
        assert_eq!(cache.insert_new(key(1), 399, 700), Insert::Replay);
        assert_eq!(
            cache.insert_new(key(1), 400, 700),
            Insert::New,
            "expired at 400"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_refuses_new_keys_and_still_refuses_every_replay() {
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.insert_new(key(1), 0, 300), Insert::New);
        assert_eq!(cache.insert_new(key(2), 0, 200), Insert::New);
        assert_eq!(cache.insert_new(key(3), 0, 400), Insert::Full);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.refused_full(), 1);
        // Nothing accepted was forgotten: both are still replays.
        assert_eq!(cache.insert_new(key(2), 0, 200), Insert::Replay);
        assert_eq!(cache.insert_new(key(1), 199, 300), Insert::Replay);
        // Room comes back as entries expire.
        assert_eq!(cache.insert_new(key(3), 200, 400), Insert::New);
        assert_eq!(cache.insert_new(key(1), 250, 300), Insert::Replay);
    }

    #[test]
    fn expired_entries_are_dropped_as_time_passes() {
        let mut cache = ReplayCache::new(100);
        for n in 0..50 {
            assert_eq!(cache.insert_new(key(n), 0, u64::from(n)), Insert::New);
        }
        assert_eq!(cache.insert_new(key(200), 25, 1000), Insert::New);
        assert_eq!(cache.len(), 25, "keys 0..=25 expired");
        assert!(!cache.is_empty());
    }
}
