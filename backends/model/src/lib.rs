//! The normalized, node-local model of kube-proxy-rs and the [`Backend`] trait.
//!
//! Sources (the API server, manifests) reduce Kubernetes objects to this model; backends
//! (nftables, IPVS, iptables) turn it into kernel state. This crate depends on neither.

pub mod backend;
pub mod categorize;
pub mod changes;
pub mod options;
pub mod service;
pub mod state;

pub use backend::{Backend, BackendError, SyncReport};
pub use categorize::{categorize_endpoints, CategorizedEndpoints, LABEL_TOPOLOGY_ZONE};
pub use changes::{ChangeTracker, Changes};
pub use options::{LocalDetector, NodePortAddress, ProxyOptions, Scheduling};
pub use service::{Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, SessionAffinity};
pub use state::{NodeInfo, ProxyState, ServiceEntry, ServiceMap};
