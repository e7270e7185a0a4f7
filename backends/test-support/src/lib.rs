//! Test fixtures shared by the nftables and iptables backends' tests, so that both test
//! the same model the same way: model builders, the golden scenarios both modes render,
//! a golden-file runner and a private network namespace runner.
//!
//! Only a `[dev-dependencies]` entry of those crates; it never ships. What only one
//! backend needs (its executor wrappers, its own scenarios) stays in that crate's
//! `tests/common/mod.rs`.

mod golden;
mod model;
mod netns;
mod scenarios;

pub use golden::GoldenFiles;
pub use model::{
    dns, dns_tcp, ep, etp_local, insert, ip, local_addresses, name, net, node, nodeport, port,
    state, terminating, two_endpoints, web,
};
pub use netns::in_netns;
pub use scenarios::{options_mut, scenario, shared_scenarios, Scenario};
