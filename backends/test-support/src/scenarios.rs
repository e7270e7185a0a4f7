//! The golden scenarios both backends render alike: one feature each, on the same node
//! and service ports, so that the two modes' golden files can be read side by side.

use kube_proxy_model::{
    Endpoint, LocalDetector, NodePortAddress, Protocol, ProxyOptions, ProxyState, ServicePort,
    SessionAffinity,
};

use crate::model::{
    dns, dns_tcp, ep, etp_local, ip, net, node, nodeport, port, state, terminating, two_endpoints,
    web,
};

/// One golden scenario: a name (its file under `tests/golden/`), options and a model.
pub struct Scenario {
    pub name: &'static str,
    pub options: ProxyOptions,
    pub state: ProxyState,
}

/// A scenario on [`node`] holding `ports` with their endpoints.
pub fn scenario(
    name: &'static str,
    options: ProxyOptions,
    ports: Vec<(ServicePort, Vec<Endpoint>)>,
) -> Scenario {
    Scenario {
        name,
        options,
        state: state(node(), ports),
    }
}

/// The scenarios common to both modes, given the backend's default options and the health
/// check node port of its `externalTrafficPolicy: Local` service (the modes' golden files
/// differ there). Each backend adds its own scenarios to these.
pub fn shared_scenarios(
    defaults: impl Fn() -> ProxyOptions,
    health_check_node_port: u16,
) -> Vec<Scenario> {
    let d = defaults;
    let etp_local = || etp_local(health_check_node_port);
    let mut v = vec![
        scenario("clusterip", d(), vec![(web(), two_endpoints())]),
        scenario("nodeport", d(), vec![(nodeport(), two_endpoints())]),
        scenario(
            "nodeport_addresses",
            ProxyOptions {
                node_port_addresses: vec![
                    NodePortAddress::Cidr(net("10.0.0.0/8")),
                    NodePortAddress::Primary,
                ],
                ..d()
            },
            vec![(nodeport(), two_endpoints())],
        ),
        scenario(
            "external_ip",
            d(),
            vec![(
                ServicePort {
                    external_ips: vec![ip("203.0.113.7")],
                    ..web()
                },
                two_endpoints(),
            )],
        ),
        scenario(
            "loadbalancer_source_ranges",
            d(),
            vec![(
                ServicePort {
                    node_port: 30080,
                    load_balancer_ips: vec![ip("198.51.100.1")],
                    load_balancer_source_ranges: vec![net("192.168.0.0/24"), net("203.0.113.0/24")],
                    ..web()
                },
                two_endpoints(),
            )],
        ),
        scenario("etp_local", d(), vec![(etp_local(), two_endpoints())]),
        scenario(
            "etp_local_no_local_endpoints",
            d(),
            vec![(etp_local(), vec![ep("10.0.2.5", 8080, false)])],
        ),
        scenario(
            "itp_local",
            d(),
            vec![(
                ServicePort {
                    internal_policy_local: true,
                    ..web()
                },
                two_endpoints(),
            )],
        ),
        scenario(
            "itp_local_no_local_endpoints",
            d(),
            vec![(
                ServicePort {
                    internal_policy_local: true,
                    ..web()
                },
                vec![ep("10.0.2.5", 8080, false)],
            )],
        ),
        scenario(
            "terminating_fallback",
            d(),
            vec![(
                etp_local(),
                vec![
                    terminating("10.0.1.5", 8080, true),
                    ep("10.0.2.5", 8080, false),
                ],
            )],
        ),
        scenario(
            "affinity",
            d(),
            vec![(
                ServicePort {
                    session_affinity: Some(SessionAffinity {
                        timeout_seconds: 10800,
                    }),
                    ..web()
                },
                two_endpoints(),
            )],
        ),
        scenario(
            "ipv6",
            ProxyOptions {
                local_detector: LocalDetector::Cidrs(vec![net("10.0.0.0/16"), net("fd00:10::/64")]),
                ..d()
            },
            vec![
                (web(), two_endpoints()),
                (
                    ServicePort {
                        node_port: 30081,
                        ..port("ns1", "web6", "http", Protocol::Tcp, "fd00:30::10", 80)
                    },
                    vec![ep("fd00:10::5", 8080, true), ep("fd00:10::6", 8080, false)],
                ),
            ],
        ),
        scenario(
            "sctp",
            d(),
            vec![(
                ServicePort {
                    node_port: 30132,
                    ..port("ns1", "sig", "", Protocol::Sctp, "172.30.0.20", 132)
                },
                two_endpoints(),
            )],
        ),
        scenario(
            "udp_multiport",
            d(),
            vec![
                (dns(), vec![ep("10.0.1.9", 53, true)]),
                (dns_tcp(), vec![ep("10.0.1.9", 53, true)]),
            ],
        ),
        scenario(
            "masquerade_all",
            ProxyOptions {
                masquerade_all: true,
                ..d()
            },
            vec![(web(), two_endpoints())],
        ),
    ];
    let detectors = [
        (
            "detector_bridge",
            LocalDetector::BridgeInterface("cbr0".into()),
        ),
        (
            "detector_interface_prefix",
            LocalDetector::InterfaceNamePrefix("veth".into()),
        ),
        ("detector_none", LocalDetector::None),
    ];
    v.extend(detectors.into_iter().map(|(name, local_detector)| {
        scenario(
            name,
            ProxyOptions {
                local_detector,
                ..d()
            },
            vec![(etp_local(), two_endpoints())],
        )
    }));
    v
}

/// The options of the scenario `name` in `scenarios`, for a backend that renders a shared
/// scenario with options of its own. Panics when there is no such scenario.
pub fn options_mut<'a>(scenarios: &'a mut [Scenario], name: &str) -> &'a mut ProxyOptions {
    &mut scenarios
        .iter_mut()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
        .options
}
