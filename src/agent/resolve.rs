//! One agent worker's cache of its hosting listeners' backend addresses.
//!
//! `listeners[].backend` may be `host:port`. Looking the name up once per session would put
//! `getaddrinfo` (a hop to the blocking pool, resolver I/O) on every session's path; looking it
//! up once per process would never follow a DNS change. tokio's lookup reports no TTL, so an
//! answer is kept for a fixed [`BACKEND_CACHE_MS`] (30 s) and then looked up again on the next
//! session; a failed lookup is kept only [`FAILED_LOOKUP_CACHE_MS`] (1 s), so a backend whose
//! name comes back is reachable again within a second, while a storm of sessions to a name that
//! does not resolve costs one lookup a second, not one each. An IP literal is parsed once and
//! never looked up.
//!
//! Per worker (`Rc`, `RefCell`), so no lock is shared between workers; no borrow is held across
//! the lookup. Entries are bounded by the config's listeners. Must not: connect anything.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::rt::time::Instant;

/// How long a successful lookup of a backend name is used (tokio's resolver gives no TTL).
pub const BACKEND_CACHE_MS: u64 = 30_000;
/// How long a failed lookup is remembered (sessions in that time fail without a new lookup).
pub const FAILED_LOOKUP_CACHE_MS: u64 = 1_000;

/// A lookup's answer as kept: the addresses, or the error's text.
type Answer = Result<Rc<[SocketAddr]>, String>;

struct Entry {
    answer: Answer,
    /// None: never expires (an IP literal).
    until: Option<Instant>,
}

/// Backend names → addresses, for one worker.
#[derive(Default)]
pub struct BackendCache {
    entries: RefCell<HashMap<String, Entry>>,
}

impl BackendCache {
    /// The addresses of `backend` (`ip:port` or `host:port`), from the cache or looked up.
    pub async fn resolve(&self, backend: &str) -> io::Result<Rc<[SocketAddr]>> {
        self.resolve_with(backend, |name| async move {
            tokio::net::lookup_host(name.as_str())
                .await
                .map(Iterator::collect)
        })
        .await
    }

    /// [`BackendCache::resolve`] with the lookup given (tests count and fake lookups).
    pub async fn resolve_with<F, Fut>(
        &self,
        backend: &str,
        lookup: F,
    ) -> io::Result<Rc<[SocketAddr]>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let now = Instant::now();
        if let Some(e) = self.entries.borrow().get(backend) {
            if e.until.is_none_or(|t| now < t) {
                return e.answer.clone().map_err(io::Error::other);
            }
        }
        let (answer, until) = match backend.parse::<SocketAddr>() {
            Ok(a) => (Ok(Rc::from([a].as_slice())), None),
            Err(_) => match lookup(backend.to_owned()).await {
                Ok(addrs) if !addrs.is_empty() => (
                    Ok(Rc::from(addrs)),
                    Some(Instant::now() + Duration::from_millis(BACKEND_CACHE_MS)),
                ),
                looked => (
                    Err(match looked {
                        Err(e) => format!("cannot resolve {backend}: {e}"),
                        Ok(_) => format!("{backend} resolves to no address"),
                    }),
                    Some(Instant::now() + Duration::from_millis(FAILED_LOOKUP_CACHE_MS)),
                ),
            },
        };
        self.entries.borrow_mut().insert(
            backend.to_owned(),
            Entry {
                answer: answer.clone(),
                until,
            },
        );
        answer.map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A lookup that counts its calls and answers `answer`.
    fn counting<'a>(
        calls: &'a Cell<u32>,
        answer: io::Result<Vec<SocketAddr>>,
    ) -> impl FnOnce(String) -> std::future::Ready<io::Result<Vec<SocketAddr>>> + 'a {
        move |_| {
            calls.set(calls.get() + 1);
            std::future::ready(answer)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_looked_up_again_only_after_the_cache_time() {
        let cache = BackendCache::default();
        let calls = Cell::new(0);
        let first = vec![addr("10.0.0.1:80")];
        let got = cache
            .resolve_with("backend.local:80", counting(&calls, Ok(first.clone())))
            .await
            .unwrap();
        assert_eq!(&*got, first.as_slice());
        // Within the cache time: no lookup, the first answer.
        tokio::time::advance(Duration::from_millis(BACKEND_CACHE_MS - 1)).await;
        let got = cache
            .resolve_with(
                "backend.local:80",
                counting(&calls, Ok(vec![addr("10.0.0.2:80")])),
            )
            .await
            .unwrap();
        assert_eq!(&*got, first.as_slice());
        assert_eq!(calls.get(), 1);
        // Past it: looked up again, and the new answer is used.
        tokio::time::advance(Duration::from_millis(1)).await;
        let got = cache
            .resolve_with(
                "backend.local:80",
                counting(&calls, Ok(vec![addr("10.0.0.2:80")])),
            )
            .await
            .unwrap();
        assert_eq!(&*got, [addr("10.0.0.2:80")].as_slice());
        assert_eq!(calls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_is_kept_only_briefly() {
        let cache = BackendCache::default();
        let calls = Cell::new(0);
        let fail = || Err(io::Error::other("no such host"));
        let e = cache
            .resolve_with("gone.local:80", counting(&calls, fail()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gone.local:80"), "{e}");
        // Sessions within the second fail without another lookup.
        tokio::time::advance(Duration::from_millis(FAILED_LOOKUP_CACHE_MS - 1)).await;
        assert!(cache
            .resolve_with(
                "gone.local:80",
                counting(&calls, Ok(vec![addr("10.0.0.3:80")]))
            )
            .await
            .is_err());
        assert_eq!(calls.get(), 1);
        // Then the name is looked up again, and a name that came back works.
        tokio::time::advance(Duration::from_millis(1)).await;
        let got = cache
            .resolve_with(
                "gone.local:80",
                counting(&calls, Ok(vec![addr("10.0.0.3:80")])),
            )
            .await
            .unwrap();
        assert_eq!(&*got, [addr("10.0.0.3:80")].as_slice());
        assert_eq!(calls.get(), 2);
        // An empty answer counts as a failure.
        let empty = cache
            .resolve_with("empty.local:80", counting(&calls, Ok(Vec::new())))
            .await;
        assert!(empty.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ip_literal_is_never_looked_up() {
        let cache = BackendCache::default();
        let calls = Cell::new(0);
        for _ in 0..3 {
            let got = cache
                .resolve_with("127.0.0.1:9", counting(&calls, Ok(Vec::new())))
                .await
                .unwrap();
            assert_eq!(&*got, [addr("127.0.0.1:9")].as_slice());
            tokio::time::advance(Duration::from_secs(3600)).await;
        }
        assert_eq!(calls.get(), 0);
    }
}
