//! A private network namespace per test, so that a test programming real rules never
//! touches the host's network namespace (nor another test's).

/// Runs `f` on a thread inside a new, private network namespace, which disappears with
/// the thread: a test never touches the host's own. Panics (failing the test) when the
/// namespace cannot be created, which needs root.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed (tests need root): {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}
