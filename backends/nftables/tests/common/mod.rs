//! Fixtures of the nftables backend tests: what only nftables mode needs (its options,
//! its own golden scenarios, a recording executor) over the builders, scenarios and
//! runners it shares with iptables mode in `kube-proxy-test-support`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::sync::{Arc, Mutex};

use kube_proxy_model::{LocalDetector, ProxyOptions, Scheduling, ServicePort};
use kube_proxy_nftables::{
    ExecError, Family, NftExecutor, StaticAddresses, TableState, Transaction,
};
pub use kube_proxy_test_support::{
    dns, dns_tcp, ep, in_netns, insert, ip, name, net, node, nodeport, port, scenario, state,
    terminating, two_endpoints, web, GoldenFiles, Scenario,
};

/// The local addresses the golden scenarios pretend the node has.
pub fn addresses() -> StaticAddresses {
    StaticAddresses(kube_proxy_test_support::local_addresses())
}

pub fn default_options() -> ProxyOptions {
    ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec![net("10.0.0.0/16")]),
        ..ProxyOptions::default()
    }
}

/// Every feature of nftables mode, one scenario each: those iptables mode shares, then
/// nftables mode's own.
pub fn scenarios() -> Vec<Scenario> {
    let d = default_options;
    let mut v = kube_proxy_test_support::shared_scenarios(d, 32000);
    // also the lowest masquerade bit
    kube_proxy_test_support::options_mut(&mut v, "detector_none").masquerade_bit = 0;
    v.extend([
        scenario(
            "no_endpoints",
            d(),
            vec![(
                ServicePort {
                    external_ips: vec![ip("203.0.113.7")],
                    ..nodeport()
                },
                vec![],
            )],
        ),
        scenario(
            "random_scheduling",
            ProxyOptions {
                scheduling: Scheduling::Random,
                ..d()
            },
            vec![(web(), two_endpoints())],
        ),
    ]);
    let mut cidrs = scenario("service_cidrs", d(), vec![(web(), two_endpoints())]);
    cidrs.state.node.service_cidrs = vec![net("172.30.0.0/16"), net("fd00:30::/112")];
    v.push(cidrs);
    v
}

/// Wraps an executor and records the scripts it applied.
pub struct Recording<E> {
    pub inner: E,
    pub scripts: Arc<Mutex<Vec<String>>>,
}

impl<E> Recording<E> {
    pub fn new(inner: E) -> (Self, Arc<Mutex<Vec<String>>>) {
        let scripts = Arc::new(Mutex::new(Vec::new()));
        (
            Recording {
                inner,
                scripts: scripts.clone(),
            },
            scripts,
        )
    }
}

impl<E: NftExecutor> NftExecutor for Recording<E> {
    fn apply(&mut self, tx: &Transaction) -> Result<(), ExecError> {
        self.inner.apply(tx)?;
        self.scripts.lock().unwrap().push(tx.render());
        Ok(())
    }

    fn read_table(&mut self, family: Family) -> Result<Option<TableState>, ExecError> {
        self.inner.read_table(family)
    }
}
