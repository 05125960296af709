//! Whether a test may run its io_uring case here, said the same way by every test: where
//! io_uring cannot be used the case is skipped with one marker line on stderr (which the test
//! harness does not capture, so `.ci/run` can count the skips), unless `RINGTUN_REQUIRE_URING=1`
//! is set, when it fails instead.
//!
//! For tests only; nothing in the server or agent calls it.

use std::io::Write;

/// Starts the line printed for each skipped io_uring run; `.ci/run` counts these.
pub const SKIP_MARKER: &str = "RINGTUN-SKIP io_uring:";

/// Set to `1` to make a test fail where it would skip its io_uring run.
pub const REQUIRE_ENV: &str = "RINGTUN_REQUIRE_URING";

/// True when io_uring can be used. Otherwise prints `RINGTUN-SKIP io_uring: <test>: <reason>`
/// and returns false, or panics when [`REQUIRE_ENV`] is `1`. The test is named by its thread
/// (the harness names each test's thread after the test).
pub fn available_for_test() -> bool {
    let Err(reason) = super::uring::probe() else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("an unnamed test");
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{REQUIRE_ENV}=1 but io_uring is unavailable for {test}: {reason}"
    );
    // Straight to the stream, not through `eprintln!`: the harness captures only the macros.
    let _ = writeln!(std::io::stderr(), "{SKIP_MARKER} {test}: {reason}");
    false
}
