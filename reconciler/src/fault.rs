//! Fault-injection hooks for the end-to-end crash tests. They read `VAKT_TEST_*` variables only
//! in builds with the `fault-injection` feature (the test suite's); a release build of `vakt`
//! has no such hooks and ignores the variables.

/// Kill point: when `VAKT_TEST_HOLD` is `<point>:<n>`, the process stops here (creating the
/// file `VAKT_TEST_HOLD_READY` names) and waits to be killed from outside (SIGKILL), with
/// everything else it has in flight (pipelined writes, audit events) left to the server.
/// Aborts after two minutes so a test that never kills it leaves no process behind.
#[cfg(feature = "fault-injection")]
pub async fn hold(point: &str, n: usize) {
    let Ok(spec) = std::env::var("VAKT_TEST_HOLD") else {
        return;
    };
    if spec != format!("{point}:{n}") {
        return;
    }
    if let Some(ready) = std::env::var_os("VAKT_TEST_HOLD_READY") {
        let _ = std::fs::write(ready, format!("{spec}\n"));
    }
    tracing::debug!(point, n, "test hook: holding until killed");
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    std::process::abort();
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn hold(_: &str, _: usize) {}

#[cfg(feature = "fault-injection")]
pub fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[cfg(feature = "fault-injection")]
pub fn env_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name).map(Into::into)
}

#[cfg(not(feature = "fault-injection"))]
pub fn env_usize(_: &str) -> Option<usize> {
    None
}

#[cfg(not(feature = "fault-injection"))]
pub fn env_path(_: &str) -> Option<std::path::PathBuf> {
    None
}
