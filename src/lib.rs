//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy.
//!
//! Sources (API server, manifests) → normalized model ([`kube_proxy_model`]) → backends.

pub mod app;
pub mod builder;
pub mod cli;
pub mod config;
pub mod config_watch;
pub mod conntrack_sysctls;
pub mod convert;
pub mod events;
pub mod health;
pub mod leftovers;
pub mod metrics;
pub mod runner;
pub mod service_health;
pub mod sources;
