//! Short builders of the model (addresses, service ports, endpoints, a node), so that a
//! test states only what it is about.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kube_proxy_model::{
    Endpoint, IpFamily, NodeInfo, Protocol, ProxyState, ServiceEntry, ServicePort, ServicePortName,
};

/// Parses an address; a test's literal is always valid.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Parses a CIDR; a test's literal is always valid.
pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The name of a service port.
pub fn name(ns: &str, svc: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: ns.into(),
        name: svc.into(),
        port: port.into(),
        protocol,
    }
}

/// A ClusterIP service port with nothing else set.
pub fn port(
    ns: &str,
    svc: &str,
    port_name: &str,
    protocol: Protocol,
    cluster_ip: &str,
    port: u16,
) -> ServicePort {
    ServicePort::new(name(ns, svc, port_name, protocol), ip(cluster_ip), port)
}

/// A ready endpoint, on this node when `local`.
pub fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, local)
}

/// A terminating endpoint that still serves: what the terminating fallback uses.
pub fn terminating(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..ep(addr, port, local)
    }
}

/// The node the scenarios run on: dual-stack, with the pod CIDR `10.0.1.0/24`.
pub fn node() -> NodeInfo {
    NodeInfo {
        name: "node1".into(),
        zone: None,
        ips: vec![ip("192.168.0.2"), ip("fd00:192::2")],
        pod_cidrs: vec![net("10.0.1.0/24")],
        service_cidrs: vec![],
    }
}

/// The local addresses the scenarios pretend the node has, so that a rendering never
/// depends on the machine running the test (each backend wraps them in its address
/// source).
pub fn local_addresses() -> Vec<IpAddr> {
    vec![
        ip("127.0.0.1"),
        ip("192.168.0.2"),
        ip("10.0.1.1"),
        ip("::1"),
        ip("fd00:192::2"),
    ]
}

/// A model on `node` holding `ports` with their endpoints.
pub fn state(node: NodeInfo, ports: Vec<(ServicePort, Vec<Endpoint>)>) -> ProxyState {
    let mut st = ProxyState {
        node,
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

/// The plain TCP service port most scenarios start from.
pub fn web() -> ServicePort {
    port("ns1", "web", "http", Protocol::Tcp, "172.30.0.10", 80)
}

/// [`web`] with node port 30080.
pub fn nodeport() -> ServicePort {
    ServicePort {
        node_port: 30080,
        ..web()
    }
}

/// [`nodeport`] with a load balancer IP and `externalTrafficPolicy: Local`, answering
/// health checks on `health_check_node_port`.
pub fn etp_local(health_check_node_port: u16) -> ServicePort {
    ServicePort {
        load_balancer_ips: vec![ip("198.51.100.1")],
        external_policy_local: true,
        health_check_node_port,
        ..nodeport()
    }
}

/// One endpoint on this node and one elsewhere.
pub fn two_endpoints() -> Vec<Endpoint> {
    vec![ep("10.0.1.5", 8080, true), ep("10.0.2.5", 8080, false)]
}

/// `kube-system/dns`, UDP port 53 on `172.30.0.53`: with [`dns_tcp`], two ports of one
/// service sharing a cluster IP.
pub fn dns() -> ServicePort {
    port(
        "kube-system",
        "dns",
        "dns",
        Protocol::Udp,
        "172.30.0.53",
        53,
    )
}

/// `kube-system/dns-tcp`, TCP port 53 on the cluster IP of [`dns`].
pub fn dns_tcp() -> ServicePort {
    port(
        "kube-system",
        "dns",
        "dns-tcp",
        Protocol::Tcp,
        "172.30.0.53",
        53,
    )
}
