//! Shared fixtures of the iptables backend tests: model builders, the golden scenarios and
//! a private network namespace runner.
#![allow(dead_code)] // each test binary uses a different part

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kube_proxy_iptables::{IptablesBackend, IptablesExecutor};
use kube_proxy_model::{
    Endpoint, IpFamily, LocalDetector, NodeInfo, NodePortAddress, Protocol, ProxyOptions,
    ProxyState, Scheduling, ServiceEntry, ServicePort, ServicePortName, SessionAffinity,
};
use kube_proxy_nftables::StaticAddresses;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn name(ns: &str, svc: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: ns.into(),
        name: svc.into(),
        port: port.into(),
        protocol,
    }
}

pub fn port(
    ns: &str,
    svc: &str,
    port_name: &str,
    protocol: Protocol,
    cip: &str,
    port: u16,
) -> ServicePort {
    ServicePort::new(name(ns, svc, port_name, protocol), ip(cip), port)
}

pub fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, local)
}

pub fn terminating(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..ep(addr, port, local)
    }
}

pub fn node() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        zone: None,
        ips: vec![ip("192.168.0.2"), ip("fd00:192::2")],
        pod_cidrs: vec![net("10.0.1.0/24")],
        service_cidrs: vec![],
    }
}

/// The local addresses the scenarios pretend the node has.
pub fn addresses() -> StaticAddresses {
    StaticAddresses(vec![
        ip("127.0.0.1"),
        ip("192.168.0.2"),
        ip("10.0.1.1"),
        ip("::1"),
        ip("fd00:192::2"),
    ])
}

pub fn state(ports: Vec<(ServicePort, Vec<Endpoint>)>) -> ProxyState {
    let mut st = ProxyState {
        node: node(),
        ..ProxyState::default()
    };
    for (p, eps) in ports {
        insert(&mut st, p, eps);
    }
    st
}

/// Adds or replaces one service port in `st`.
pub fn insert(st: &mut ProxyState, p: ServicePort, eps: Vec<Endpoint>) {
    let entry = Arc::new(ServiceEntry::new(p, eps, &st.node));
    let map = match entry.port.family {
        IpFamily::V4 => &mut st.v4,
        IpFamily::V6 => &mut st.v6,
    };
    map.insert(entry.port.name.clone(), entry);
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

fn scenario(
    name: &'static str,
    options: ProxyOptions,
    ports: Vec<(ServicePort, Vec<Endpoint>)>,
) -> Scenario {
    Scenario {
        name,
        options,
        localhost_node_ports: true,
        state: state(ports),
    }
}

pub fn web() -> ServicePort {
    port("ns1", "web", "http", Protocol::Tcp, "172.30.0.10", 80)
}

pub fn two_endpoints() -> Vec<Endpoint> {
    vec![ep("10.0.1.5", 8080, true), ep("10.0.2.5", 8080, false)]
}

fn etp_local() -> ServicePort {
    ServicePort {
        node_port: 30080,
        load_balancer_ips: vec![ip("198.51.100.1")],
        external_policy_local: true,
        health_check_node_port: 30500,
        ..web()
    }
}

fn three_endpoints() -> Vec<Endpoint> {
    vec![
        ep("10.0.1.5", 8080, true),
        ep("10.0.2.5", 8080, false),
        ep("10.0.3.5", 8080, false),
    ]
}

/// Every feature of iptables mode, one scenario each.
pub fn scenarios() -> Vec<Scenario> {
    let d = default_options;
    let nodeport = || ServicePort {
        node_port: 30080,
        ..web()
    };
    let mut v = vec![
        scenario("clusterip", d(), vec![(web(), two_endpoints())]),
        scenario("round_robin_three", d(), vec![(web(), three_endpoints())]),
        scenario(
            "random_scheduling",
            ProxyOptions {
                scheduling: Scheduling::Random,
                ..d()
            },
            vec![(web(), three_endpoints())],
        ),
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
            "no_endpoints",
            d(),
            vec![(
                ServicePort {
                    node_port: 30080,
                    external_ips: vec![ip("203.0.113.7")],
                    load_balancer_ips: vec![ip("198.51.100.1")],
                    ..web()
                },
                vec![],
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
            d(),
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
                (
                    port(
                        "kube-system",
                        "dns",
                        "dns",
                        Protocol::Udp,
                        "172.30.0.53",
                        53,
                    ),
                    vec![ep("10.0.1.9", 53, true)],
                ),
                (
                    port(
                        "kube-system",
                        "dns",
                        "dns-tcp",
                        Protocol::Tcp,
                        "172.30.0.53",
                        53,
                    ),
                    vec![ep("10.0.1.9", 53, true)],
                ),
            ],
        ),
        scenario(
            "masquerade_all",
            ProxyOptions {
                masquerade_all: true,
                masquerade_bit: 31,
                ..d()
            },
            vec![(web(), two_endpoints())],
        ),
        scenario(
            "detector_bridge",
            ProxyOptions {
                local_detector: LocalDetector::BridgeInterface("cbr0".into()),
                ..d()
            },
            vec![(etp_local(), two_endpoints())],
        ),
        scenario(
            "detector_interface_prefix",
            ProxyOptions {
                local_detector: LocalDetector::InterfaceNamePrefix("veth".into()),
                ..d()
            },
            vec![(etp_local(), two_endpoints())],
        ),
        scenario(
            "detector_none",
            ProxyOptions {
                local_detector: LocalDetector::None,
                ..d()
            },
            vec![(etp_local(), two_endpoints())],
        ),
    ];
    let mut no_localhost = scenario(
        "no_localhost_nodeports",
        d(),
        vec![(nodeport(), two_endpoints())],
    );
    no_localhost.localhost_node_ports = false;
    v.push(no_localhost);
    v
}

/// Runs `f` on a thread in a new, private network namespace, which disappears with it.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed (tests need root): {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}
