//! A session's idle timeout, on either backend: a session whose two sockets carry no data either
//! way for the timeout is ended by shutting both sockets down.
//!
//! One timer per session, not per read: the kernel keeps each socket's last data time
//! (`rt::data_idle_ms`), so the pumps count nothing and the timer sleeps until the earliest
//! moment the session could have been idle that long. Shutting down (never dropping the pump)
//! completes every io_uring read in flight; the pump then ends as on a peer's close. It must not
//! know what the sockets are (frontend, backend or data connection).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::os::fd::AsRawFd;

use crate::rt::{data_idle_ms, shutdown_both};

/// Shortest re-check, so clock rounding never spins the timer.
const MIN_CHECK_MS: u64 = 5;

/// Runs `pump` (moving bytes between `a` and `b`) to its end; when `timeout` is set and neither
/// socket carried data for that long, shuts both down first. Returns the pump's output and
/// whether the timeout ended it. The pump is pinned by the caller, so a session's future holds
/// it once.
pub async fn with_idle_timeout<F: Future + ?Sized>(
    a: &impl AsRawFd,
    b: &impl AsRawFd,
    timeout: Option<Duration>,
    mut pump: Pin<&mut F>,
) -> (F::Output, bool) {
    let Some(timeout) = timeout else {
        return (pump.await, false);
    };
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    // Boxed (one allocation per session, its timer reset in place): a timer is large, and
    // every session's future would carry it.
    let mut watch = Box::pin(async move {
        // A session that just started has been idle no time: the first look at the sockets
        // is one timeout from now, so a short session costs no system call here.
        let mut timer = std::pin::pin!(crate::rt::time::sleep(timeout));
        timer.as_mut().await;
        loop {
            // A socket whose state cannot be read counts as active: the pump sees its error.
            let idle = match (data_idle_ms(a), data_idle_ms(b)) {
                (Ok(x), Ok(y)) => x.min(y),
                _ => 0,
            };
            if idle >= timeout_ms {
                shutdown_both(a);
                shutdown_both(b);
                return;
            }
            let wait = (timeout_ms - idle).max(MIN_CHECK_MS);
            timer
                .as_mut()
                .reset(crate::rt::time::Instant::now() + Duration::from_millis(wait));
            timer.as_mut().await;
        }
    });
    let mut fired = false;
    loop {
        tokio::select! {
            out = pump.as_mut() => return (out, fired),
            () = watch.as_mut(), if !fired => fired = true,
        }
    }
}
