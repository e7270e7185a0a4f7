//! Deletes stale UDP conntrack entries after each sync, as upstream kube-proxy's
//! `CleanStaleEntries` (pkg/proxy/conntrack/cleanup.go) does, and SCTP ones for the
//! backends that ask for them (IPVS mode).
//!
//! A UDP "connection" has no end the kernel could see: as long as a client keeps sending
//! from the same socket, its conntrack entry lives on and keeps DNATing to whatever
//! endpoint the first packet picked, even after that endpoint is gone. New rules never
//! apply to it. So after every successful sync the proxy dumps the conntrack table and
//! deletes the entries that point a service frontend at something that is no longer one of
//! its serving endpoints; the client's next packet then goes through the new rules.
//!
//! The kernel is reached over ctnetlink (`NETLINK_NETFILTER`), not the `conntrack` tool:
//! [`Conntrack`] dumps and deletes entries, [`stale_flows`] decides which ones are stale,
//! and [`cleanup_stale_flows`] does both for one family of a
//! [`ProxyState`](kube_proxy_model::ProxyState).

#[cfg(test)]
mod captured;
mod flow;
mod socket;
mod stale;
mod wire;

pub use flow::Flow;
pub use socket::Conntrack;
pub use stale::{cleanup_stale_flows, stale_flows};

/// Why talking to conntrack failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be opened or used.
    #[error("conntrack netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered a request with an error.
    #[error("conntrack {request} refused by the kernel: {source}")]
    Kernel {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent something that is not a well-formed ctnetlink message.
    #[error("malformed ctnetlink message: {0}")]
    Malformed(String),
}

// What goes wrong on the shared netlink socket is reported as this crate's errors.
kube_proxy_netlink::impl_client_error!(Error);
