//! The replay cache of `hmac` credentials: remembers each accepted credential until its timestamp
//! is outside the accepted clock skew (after which it would be refused anyway), so the same value
//! cannot register twice. Bounded: when full, the entry closest to expiry is forgotten first.
//!
//! Owned by the control path (one thread); no clock of its own (the caller passes `now`), no I/O.

use std::collections::{BTreeSet, HashMap};

/// A remembered credential: the first 16 bytes of its MAC (128 bits: collisions are not a
/// concern, and entries stay small).
pub type ReplayKey = [u8; 16];

/// Accepted credentials not yet expired.
#[derive(Debug)]
pub struct ReplayCache {
    /// key -> the second after which it is forgotten.
    expiry_of: HashMap<ReplayKey, u64>,
    /// (expiry, key), oldest expiry first.
    by_expiry: BTreeSet<(u64, ReplayKey)>,
    capacity: usize,
    evicted: u64,
}

impl ReplayCache {
    /// Entries kept at most by default (about 16 MiB): at the full 10-minute lifetime of an
    /// entry, about 400 new hmac connections per second before the oldest are forgotten early.
    pub const DEFAULT_CAPACITY: usize = 256 * 1024;

    /// An empty cache holding at most `capacity` (at least 1) entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Records `key` until `expires_at` (unix seconds). False, and nothing changes, when `key` is
    /// already remembered and not expired at `now`: a replay.
    pub fn insert_new(&mut self, key: ReplayKey, now: u64, expires_at: u64) -> bool {
        self.forget_expired(now);
        if self.expiry_of.contains_key(&key) {
            return false;
        }
        while self.expiry_of.len() >= self.capacity {
            let Some(oldest) = self.by_expiry.pop_first() else {
                break;
            };
            self.expiry_of.remove(&oldest.1);
            self.evicted += 1;
        }
        self.expiry_of.insert(key, expires_at);
        self.by_expiry.insert((expires_at, key));
        true
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

    /// Entries forgotten before their expiry because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
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
        assert!(cache.insert_new(key(1), 100, 400));
        assert!(!cache.insert_new(key(1), 200, 500));
        assert!(!cache.insert_new(key(1), 399, 700));
        assert!(cache.insert_new(key(1), 400, 700), "expired at 400");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn full_cache_forgets_the_entry_closest_to_expiry() {
        let mut cache = ReplayCache::new(2);
        assert!(cache.insert_new(key(1), 0, 300));
        assert!(cache.insert_new(key(2), 0, 200));
        assert!(cache.insert_new(key(3), 0, 400));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evicted(), 1);
        assert!(cache.insert_new(key(2), 0, 200), "key 2 was evicted");
        assert!(!cache.insert_new(key(3), 0, 400));
    }

    #[test]
    fn expired_entries_are_dropped_as_time_passes() {
        let mut cache = ReplayCache::new(100);
        for n in 0..50 {
            assert!(cache.insert_new(key(n), 0, u64::from(n)));
        }
        assert!(cache.insert_new(key(200), 25, 1000));
        assert_eq!(cache.len(), 25, "keys 0..=25 expired");
        assert!(!cache.is_empty());
    }
}
