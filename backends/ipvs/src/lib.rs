//! The kernel clients of the IPVS proxy mode: IPVS itself, over generic netlink, and the
//! `kube-ipvs0` dummy link that holds the service addresses, over rtnetlink.
//!
//! IPVS only balances traffic addressed to the node itself, so upstream kube-proxy binds
//! every ClusterIP, externalIP and LoadBalancer IP to a dummy device (`kube-ipvs0`) and
//! creates one IPVS virtual service per service address and port, with the endpoints as
//! its real servers. This crate is that kernel interface and nothing more: which services
//! to program is the backend's business.
//!
//! * [`Ipvs`] talks to the kernel's `IPVS` generic netlink family, [`FakeIpvs`] keeps the
//!   same state in memory; both implement [`IpvsClient`].
//! * [`DummyLink`] manages the dummy link and its addresses, [`FakeDummyLink`] in memory;
//!   both implement [`DummyLinkClient`].
//!
//! * [`IpvsBackend`] is IPVS mode itself (`--proxy-mode ipvs`): [`plan`] turns the model
//!   into virtual servers, real servers, `kube-ipvs0` addresses and the companion nftables
//!   table `kube-proxy-ipvs` (masquerade, source ranges, reject without endpoints, drop of
//!   unserved ports), and each sync sends the kernel only the difference.
//!
//! Every socket is blocking and stays in the network namespace of the thread that opened it.

mod backend;
mod companion;
mod ipvs;
#[cfg(test)]
mod kernel_answers;
mod link;
mod netlink;
pub mod plan;
pub mod sysctl;

pub use backend::{cleanup_leftovers, render_plan, IpvsBackend};
pub use plan::{IpvsSettings, COMPANION_TABLE};

pub use ipvs::{
    Destination, FakeIpvs, FwdMethod, Ipvs, IpvsClient, RealServer, RealServerStats, Scheduler,
    ServiceFlags, ServiceKey, Timeouts, VirtualServer,
};
pub use link::{DummyLink, DummyLinkClient, FakeDummyLink, KUBE_IPVS0};

/// Why talking to IPVS or to the dummy link failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered a request with an error.
    #[error("{request} refused by the kernel: {source}")]
    Kernel {
        /// What was asked, e.g. `IPVS add service`.
        request: &'static str,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel lacks what this crate needs (IPVS, the dummy link type).
    #[error("{0}")]
    Unavailable(String),
    /// The kernel sent something that is not a well-formed message.
    #[error("malformed netlink message: {0}")]
    Malformed(String),
    /// A value the kernel cannot take, refused before anything is sent.
    #[error("invalid value: {0}")]
    Invalid(String),
}

impl Error {
    /// The kernel's errno, for [`Error::Kernel`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object to add exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object to change or delete does not exist: IPVS says `ESRCH` for a virtual
    /// service and `ENOENT` for a real server (and for an unknown scheduler).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH | libc::ENOENT))
    }

    /// A kernel error for `request` with (positive) errno `errno`.
    pub(crate) fn kernel(request: &'static str, errno: i32) -> Self {
        Error::Kernel {
            request,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}

// What goes wrong on the shared netlink socket is reported as this crate's errors.
kube_proxy_netlink::impl_client_error!(Error);
