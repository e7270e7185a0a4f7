//! Exiting when the `--config` file changes, as upstream does, so that the DaemonSet
//! restarts kube-proxy with the new configuration instead of it running on with the old.
//!
//! The file is polled once a second and its bytes compared with those at start, rather
//! than watched with inotify:
//!
//! * A ConfigMap volume publishes an update by swapping its `..data` symlink to a new
//!   directory and deleting the old one. An inotify watch on the path follows the symlink
//!   to the old file, which is deleted, never written; catching the swap needs a watch on
//!   the directory, re-armed after every swap. Reading the path each time sees a write in
//!   place, a rename over it and a symlink swap alike.
//! * Comparing content never fires on a `touch` or an identical rewrite (a ConfigMap
//!   resynced without a change), which would restart every proxy of the cluster for
//!   nothing.
//! * A write in place truncates the file before writing it: a read in between sees an
//!   empty or partial file. A change counts once two reads in a row agree on it, so an
//!   identical rewrite never fires.
//! * A configuration file is a few kilobytes: one read a second costs nothing, and a
//!   change is noticed within two seconds, well before anyone expects the restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::sync::mpsc;

/// How often the file is read.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Upstream's error, which kube-proxy exits with.
pub const CHANGED: &str = "content of the proxy server's configuration file was updated";

/// Reads `path` now and, in the background, sends [`CHANGED`] to `fatal` once its content
/// differs from what it is now.
pub async fn spawn(path: PathBuf, fatal: mpsc::Sender<anyhow::Error>) -> Result<()> {
    let initial = tokio::fs::read(&path)
        .await
        .with_context(|| format!("reading {} to watch it", path.display()))?;
    tracing::info!(
        path = %path.display(),
        "watching the configuration file; kube-proxy exits when it changes"
    );
    tokio::spawn(async move {
        changed(&path, &initial, POLL_INTERVAL).await;
        // The receiver is gone only when the daemon is stopping anyway.
        let _ = fatal.send(anyhow!(CHANGED)).await;
    });
    Ok(())
}

/// Returns once the content of `path`, read every `interval`, differs from `initial`
/// (confirmed by the next read, see [`Readings`]).
///
/// A file that cannot be read is not a change: a restart could not read it either, and a
/// replacement that reappears with new content is caught then.
async fn changed(path: &Path, initial: &[u8], interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readings = Readings::new(initial);
    let mut unreadable = false;
    loop {
        ticker.tick().await;
        match tokio::fs::read(path).await {
            Ok(content) => {
                unreadable = false;
                if readings.changed(content) {
                    tracing::info!(path = %path.display(), "the configuration file changed");
                    return;
                }
            }
            Err(e) => {
                // Said once per outage, not once a second.
                if !std::mem::replace(&mut unreadable, true) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the configuration file");
                }
            }
        }
    }
}

/// Successive reads of the file. A content other than the initial one is a change only
/// when the next read finds the same: a read during a write in place (truncate, then
/// write) sees a file that is empty or cut short for a moment.
struct Readings<'a> {
    initial: &'a [u8],
    /// A different content seen by the last read, not yet confirmed.
    candidate: Option<Vec<u8>>,
}

impl<'a> Readings<'a> {
    fn new(initial: &'a [u8]) -> Self {
        Readings {
            initial,
            candidate: None,
        }
    }

    /// Records one read; true once a change is confirmed.
    fn changed(&mut self, content: Vec<u8>) -> bool {
        if content == self.initial {
            self.candidate = None;
            return false;
        }
        if self.candidate.as_ref() == Some(&content) {
            return true;
        }
        self.candidate = Some(content);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const TICK: Duration = Duration::from_millis(10);
    /// Many ticks: long enough for a wrong detection to show, short for a test.
    const QUIET: Duration = Duration::from_millis(300);
    /// Bound for a change to be noticed on a loaded machine.
    const NOTICE: Duration = Duration::from_secs(5);

    /// Sets up a file holding `old` with `setup` (which returns its path), runs `change`,
    /// and reports whether [`changed`] returned within `within`.
    async fn fires(
        old: &[u8],
        setup: impl FnOnce(&Path) -> PathBuf,
        change: impl FnOnce(&Path),
        within: Duration,
    ) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = setup(dir.path());
        let initial = fs::read(&path).unwrap();
        assert_eq!(initial, old);
        let watch = changed(&path, &initial, TICK);
        tokio::pin!(watch);
        // Let the watcher take a few looks at the unchanged file first.
        assert!(
            tokio::time::timeout(5 * TICK, &mut watch).await.is_err(),
            "fired before any change"
        );
        change(dir.path());
        tokio::time::timeout(within, watch).await.is_ok()
    }

    fn plain(dir: &Path) -> PathBuf {
        let path = dir.join("config.conf");
        fs::write(&path, "mode: nftables\n").unwrap();
        path
    }

    /// A ConfigMap volume: `config.conf -> ..data/config.conf`, `..data -> ..v1`.
    fn configmap(dir: &Path) -> PathBuf {
        fs::create_dir(dir.join("..v1")).unwrap();
        fs::write(dir.join("..v1/config.conf"), "mode: nftables\n").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.conf", dir.join("config.conf")).unwrap();
        dir.join("config.conf")
    }

    /// What the kubelet does on an update: a new directory, `..data` swapped to it by a
    /// rename, the old directory deleted.
    fn swap_configmap(dir: &Path, content: &str) {
        fs::create_dir(dir.join("..v2")).unwrap();
        fs::write(dir.join("..v2/config.conf"), content).unwrap();
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        fs::remove_dir_all(dir.join("..v1")).unwrap();
    }

    #[tokio::test]
    async fn a_write_in_place_fires() {
        let write = |dir: &Path| fs::write(dir.join("config.conf"), "mode: iptables\n").unwrap();
        assert!(fires(b"mode: nftables\n", plain, write, NOTICE).await);
    }

    #[tokio::test]
    async fn a_rename_over_the_file_fires() {
        let replace = |dir: &Path| {
            fs::write(dir.join("new"), "mode: iptables\n").unwrap();
            fs::rename(dir.join("new"), dir.join("config.conf")).unwrap();
        };
        assert!(fires(b"mode: nftables\n", plain, replace, NOTICE).await);
    }

    #[tokio::test]
    async fn a_configmap_update_fires() {
        let update = |dir: &Path| swap_configmap(dir, "mode: iptables\n");
        assert!(fires(b"mode: nftables\n", configmap, update, NOTICE).await);
    }

    #[test]
    fn a_change_counts_once_two_reads_agree() {
        let mut r = Readings::new(b"mode: nftables\n");
        assert!(!r.changed(b"mode: nftables\n".to_vec()));
        // An identical rewrite in place, read while truncated and while half written.
        assert!(!r.changed(Vec::new()));
        assert!(!r.changed(b"mode: nf".to_vec()));
        assert!(!r.changed(b"mode: nftables\n".to_vec()));
        assert!(!r.changed(Vec::new()));
        assert!(!r.changed(b"mode: nftables\n".to_vec()));
        // A real change: seen twice in a row.
        assert!(!r.changed(b"mode: iptables\n".to_vec()));
        assert!(r.changed(b"mode: iptables\n".to_vec()));
    }

    #[tokio::test]
    async fn the_same_content_never_fires() {
        let rewrite = |dir: &Path| fs::write(dir.join("config.conf"), "mode: nftables\n").unwrap();
        assert!(!fires(b"mode: nftables\n", plain, rewrite, QUIET).await);
        let resync = |dir: &Path| swap_configmap(dir, "mode: nftables\n");
        assert!(!fires(b"mode: nftables\n", configmap, resync, QUIET).await);
    }

    #[tokio::test]
    async fn a_missing_file_is_not_a_change_until_it_returns_different() {
        let dir = tempfile::tempdir().unwrap();
        let path = plain(dir.path());
        let watch = changed(&path, b"mode: nftables\n", TICK);
        tokio::pin!(watch);
        fs::remove_file(&path).unwrap();
        assert!(
            tokio::time::timeout(QUIET, &mut watch).await.is_err(),
            "fired on a missing file"
        );
        fs::write(&path, "mode: iptables\n").unwrap();
        assert!(tokio::time::timeout(NOTICE, watch).await.is_ok());
    }
}
