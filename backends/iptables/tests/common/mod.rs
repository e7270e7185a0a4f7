//! Fixtures of the iptables backend tests: what only iptables mode needs (its options,
//! backend and own golden scenarios) over the builders, scenarios and runners it shares
//! with nftables mode in `kube-proxy-test-support`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use kube_proxy_iptables::{IptablesBackend, IptablesExecutor};
use kube_proxy_model::{
    Endpoint, LocalDetector, ProxyOptions, ProxyState, Scheduling, ServicePort,
};
use kube_proxy_nftables::StaticAddresses;
use kube_proxy_test_support as support;
pub use kube_proxy_test_support::{
    ep, in_netns, insert, ip, name, net, node, nodeport, port, terminating, two_endpoints, web,
    GoldenFiles,
};

/// The local addresses the scenarios pretend the node has.
pub fn addresses() -> StaticAddresses {
    StaticAddresses(support::local_addresses())
}

/// A model on [`node`] holding `ports` with their endpoints.
pub fn state(ports: Vec<(ServicePort, Vec<Endpoint>)>) -> ProxyState {
    support::state(node(), ports)
}

pub fn default_options() -> ProxyOptions {
    ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec![net("10.0.0.0/16"), net("fd00:10::/64")]),
        ..ProxyOptions::default()
    }
}

/// A backend over `exec` with the scenarios' addresses.
pub fn backend(options: ProxyOptions, exec: impl IptablesExecutor + 'static) -> IptablesBackend {
    IptablesBackend::with_executor(options, exec).with_address_source(addresses())
}

/// One golden scenario: a name (the file under `tests/golden/`), options and a model.
pub struct Scenario {
    pub name: &'static str,
    pub options: ProxyOptions,
    pub localhost_node_ports: bool,
    pub state: ProxyState,
}

/// A shared scenario, with node ports on localhost as upstream's default.
impl From<support::Scenario> for Scenario {
    fn from(s: support::Scenario) -> Self {
        Scenario {
            name: s.name,
            options: s.options,
            localhost_node_ports: true,
            state: s.state,
        }
    }
}

fn scenario(
    name: &'static str,
    options: ProxyOptions,
    ports: Vec<(ServicePort, Vec<Endpoint>)>,
) -> Scenario {
    support::scenario(name, options, ports).into()
}

fn three_endpoints() -> Vec<Endpoint> {
    vec![
        ep("10.0.1.5", 8080, true),
        ep("10.0.2.5", 8080, false),
        ep("10.0.3.5", 8080, false),
    ]
}

/// Every feature of iptables mode, one scenario each: those nftables mode shares, then
/// iptables mode's own.
pub fn scenarios() -> Vec<Scenario> {
    let d = default_options;
    let mut shared = support::shared_scenarios(d, 30500);
    // also the highest masquerade bit
    support::options_mut(&mut shared, "masquerade_all").masquerade_bit = 31;
    let mut v: Vec<Scenario> = shared.into_iter().map(Scenario::from).collect();
    v.extend([
        scenario("round_robin_three", d(), vec![(web(), three_endpoints())]),
        scenario(
            "random_scheduling",
            ProxyOptions {
                scheduling: Scheduling::Random,
                ..d()
            },
            vec![(web(), three_endpoints())],
        ),
        scenario(
            "no_endpoints",
            d(),
            vec![(
                ServicePort {
                    external_ips: vec![ip("203.0.113.7")],
                    load_balancer_ips: vec![ip("198.51.100.1")],
                    ..nodeport()
                },
                vec![],
            )],
        ),
    ]);
    let mut no_localhost = scenario(
        "no_localhost_nodeports",
        d(),
        vec![(nodeport(), two_endpoints())],
    );
    no_localhost.localhost_node_ports = false;
    v.push(no_localhost);
    v
}
