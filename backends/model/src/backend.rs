//! The interface every dataplane backend implements.

use crate::changes::Changes;
use crate::service::Protocol;
use crate::state::ProxyState;

/// A backend failed to program the kernel. The kernel keeps its last good state and the
/// caller retries with a full sync.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel or a tool refused the change.
    #[error("{mode}: applying rules failed: {message}")]
    Apply { mode: &'static str, message: String },
    /// The backend cannot run here at all (missing kernel feature or tool).
    #[error("{mode}: unavailable: {message}")]
    Unavailable { mode: &'static str, message: String },
    #[error("{mode}: {source}")]
    Io {
        mode: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What one sync did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// The whole state was rebuilt rather than only the changed services.
    pub full: bool,
    /// Something was sent to the kernel.
    pub applied: bool,
}

/// Turns the model into kernel state. Implementations know nothing of Kubernetes objects.
pub trait Backend: Send {
    /// The `--proxy-mode` name of this backend (`nftables`, `ipvs`, `iptables`).
    fn mode(&self) -> &'static str;

    /// Brings the kernel in line with `state`. With `changes.full == false` only the
    /// service ports in `changes.services` may differ from the previous successful sync;
    /// after an error the caller passes a full change set next time.
    fn sync(&mut self, state: &ProxyState, changes: &Changes) -> Result<SyncReport, BackendError>;

    /// What a full sync of `state` would program, in the backend's own tool's input
    /// format (for nftables, an `nft -f` script), without touching the kernel.
    fn render(&self, state: &ProxyState) -> Result<String, BackendError>;

    /// Removes everything this backend ever programmed.
    fn cleanup(&mut self) -> Result<(), BackendError>;

    /// The protocols whose stale conntrack entries the caller deletes after each sync:
    /// UDP, as upstream, because a UDP client never learns that its endpoint is gone and
    /// keeps sending into the old entry; TCP and SCTP clients get a reset or an abort.
    fn conntrack_protocols(&self) -> &'static [Protocol] {
        &[Protocol::Udp]
    }
}
