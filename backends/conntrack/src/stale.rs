//! Which conntrack entries are stale, and their deletion: upstream's `CleanStaleEntries`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kube_proxy_model::{IpFamily, Protocol, ProxyState, ServiceEntry};

use crate::{Conntrack, Error, Flow};

/// The entries among `flows` of the `protocols` (the backend's
/// [`conntrack_protocols`](kube_proxy_model::Backend::conntrack_protocols)) that send a
/// service frontend somewhere other than one of its serving endpoints, by upstream's rule:
///
/// * an entry whose original destination is a service port's ClusterIP, externalIP or
///   LoadBalancer IP and port, or whose original destination port is its NodePort (on any
///   address of the family), is stale when its DNAT target (reply source address and
///   port) is not a serving endpoint of that port;
/// * so an entry that was never DNATed (the reply comes from the frontend itself) is stale
///   too: the client's packets keep bypassing the rules until it goes;
/// * traffic policies, topology and terminating state are not taken into account (an
///   existing flow to a serving endpoint is kept, as it would be for TCP), and a service
///   port without serving endpoints loses all its entries (upstream since kubernetes#139629:
///   its reject rule never sees packets of an entry that already exists).
pub fn stale_flows(state: &ProxyState, flows: &[Flow], protocols: &[Protocol]) -> Vec<Flow> {
    let frontends = Frontends::new(state, protocols);
    flows
        .iter()
        .filter(|flow| frontends.is_stale(flow))
        .copied()
        .collect()
}

/// Dumps the `family` entries of the `protocols` in the current network namespace and
/// deletes the [stale](stale_flows) ones. Returns how many were deleted; entries that went
/// away on their own in the meantime are not counted. One family per call, as upstream's
/// per-family reconciler, whose metrics are per family.
pub fn cleanup_stale_flows(
    state: &ProxyState,
    family: IpFamily,
    protocols: &[Protocol],
) -> Result<usize, Error> {
    let mut conntrack = Conntrack::new()?;
    let mut deleted = 0;
    for &proto in protocols {
        let flows = conntrack.dump(family, proto)?;
        for flow in stale_flows(state, &flows, protocols) {
            deleted += usize::from(conntrack.delete(&flow)?);
        }
    }
    Ok(deleted)
}

/// The service frontends of a state, indexed the two ways entries are matched.
struct Frontends<'a> {
    /// (protocol, service IP and port) → its service port.
    by_address: HashMap<(Protocol, SocketAddr), &'a ServiceEntry>,
    /// (family, protocol, NodePort) → its service port.
    by_node_port: HashMap<(IpFamily, Protocol, u16), &'a ServiceEntry>,
}

impl<'a> Frontends<'a> {
    fn new(state: &'a ProxyState, protocols: &[Protocol]) -> Self {
        let mut frontends = Frontends {
            by_address: HashMap::new(),
            by_node_port: HashMap::new(),
        };
        let entries = IpFamily::ALL
            .iter()
            .flat_map(|&family| state.services(family).values());
        for entry in entries.filter(|e| protocols.contains(&e.port.name.protocol)) {
            frontends.insert(entry);
        }
        frontends
    }

    fn insert(&mut self, entry: &'a ServiceEntry) {
        let port = &entry.port;
        let proto = port.name.protocol;
        let ips = std::iter::once(&port.cluster_ip)
            .chain(&port.external_ips)
            .chain(&port.load_balancer_ips);
        for &ip in ips {
            let frontend = SocketAddr::new(ip, port.port);
            self.by_address.insert((proto, frontend), entry);
        }
        if port.node_port != 0 {
            let key = (port.family, proto, port.node_port);
            self.by_node_port.insert(key, entry);
        }
    }

    fn is_stale(&self, flow: &Flow) -> bool {
        let by_address = self.by_address.get(&(flow.proto, flow.frontend()));
        let node_port = (flow.family, flow.proto, flow.orig_dport);
        let by_node_port = self.by_node_port.get(&node_port);
        [by_address, by_node_port]
            .into_iter()
            .flatten()
            .any(|entry| !serves(entry, flow.reply_src, flow.reply_sport))
    }
}

/// Whether `ip:port` is a serving endpoint of `entry`. Endpoints are sorted by address and
/// then port (see [`ServiceEntry::endpoints`]), so a binary search finds it.
fn serves(entry: &ServiceEntry, ip: IpAddr, port: u16) -> bool {
    entry
        .endpoints
        .binary_search_by(|ep| (ep.ip, ep.port).cmp(&(ip, port)))
        .is_ok_and(|i| entry.endpoints[i].serving)
}

#[cfg(test)]
mod tests {
    use kube_proxy_model::ServiceMap;
    use std::sync::Arc;

    use kube_proxy_model::{Endpoint, NodeInfo, ServicePort, ServicePortName};

    use super::*;

    /// What every backend but IPVS cleans.
    const UDP: &[Protocol] = &[Protocol::Udp];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A service port: `name`, `proto`, ClusterIP and port `frontend`, NodePort
    /// `node_port`, and one endpoint per item of `endpoints`.
    fn service(
        name: &str,
        proto: Protocol,
        frontend: &str,
        node_port: u16,
        endpoints: Vec<Endpoint>,
    ) -> ServiceEntry {
        let frontend = sock(frontend);
        let name = ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: String::new(),
            protocol: proto,
        };
        let port = ServicePort {
            node_port,
            ..ServicePort::new(name, frontend.ip(), frontend.port())
        };
        ServiceEntry::new(port, endpoints, &NodeInfo::default())
    }

    fn ready(addr: &str) -> Endpoint {
        let addr = sock(addr);
        Endpoint::ready(addr.ip(), addr.port(), false)
    }

    /// The test cluster's service ports.
    fn state() -> ProxyState {
        let not_serving = Endpoint {
            ready: false,
            serving: false,
            terminating: true,
            ..ready("10.244.3.4:5353")
        };
        let serving_terminating = Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..ready("10.244.4.5:5353")
        };
        let dns_endpoints = vec![
            ready("10.244.1.2:5353"),
            ready("10.244.2.3:5353"),
            not_serving,
            serving_terminating,
        ];
        let mut dns = service("dns", Protocol::Udp, "10.96.0.10:53", 30053, dns_endpoints);
        dns.port.external_ips = vec![ip("192.0.2.100")];
        dns.port.load_balancer_ips = vec![ip("198.51.100.7")];
        let web = service(
            "web",
            Protocol::Tcp,
            "10.96.0.20:80",
            0,
            vec![ready("10.244.1.2:8080")],
        );
        let idle = service("idle", Protocol::Udp, "10.96.0.30:53", 0, Vec::new());
        let diameter = service(
            "diameter",
            Protocol::Sctp,
            "10.96.0.40:3868",
            0,
            vec![ready("10.244.1.2:3868")],
        );
        let dns6 = service(
            "dns",
            Protocol::Udp,
            "[fd00::10]:53",
            30053,
            vec![ready("[fd00:244::2]:5353")],
        );
        let map = |entries: Vec<ServiceEntry>| {
            entries
                .into_iter()
                .map(|e| (e.port.name.clone(), Arc::new(e)))
                .collect::<ServiceMap>()
        };
        ProxyState {
            node: NodeInfo::default(),
            v4: map(vec![dns, web, idle, diameter]),
            v6: map(vec![dns6]),
        }
    }

    /// A flow from a fixed client to `dst`, DNATed to `target`.
    fn flow(proto: Protocol, dst: &str, target: &str) -> Flow {
        let (dst, target) = (sock(dst), sock(target));
        let client = if dst.is_ipv4() {
            ip("10.244.9.9")
        } else {
            ip("fd00:244::9")
        };
        Flow {
            family: IpFamily::of(&dst.ip()),
            proto,
            orig_src: client,
            orig_dst: dst.ip(),
            orig_sport: 40000,
            orig_dport: dst.port(),
            reply_src: target.ip(),
            reply_sport: target.port(),
        }
    }

    #[test]
    fn stale_entries_by_upstream_rules() {
        use Protocol::{Tcp, Udp};
        #[rustfmt::skip]
        let cases = [
            ("ClusterIP to a serving endpoint", flow(Udp, "10.96.0.10:53", "10.244.2.3:5353"), false),
            ("ClusterIP to a removed endpoint", flow(Udp, "10.96.0.10:53", "10.244.7.7:5353"), true),
            ("ClusterIP to an endpoint's IP on another port", flow(Udp, "10.96.0.10:53", "10.244.1.2:9999"), true),
            ("ClusterIP never DNATed", flow(Udp, "10.96.0.10:53", "10.96.0.10:53"), true),
            ("ClusterIP to a not serving endpoint", flow(Udp, "10.96.0.10:53", "10.244.3.4:5353"), true),
            ("ClusterIP to a serving, terminating endpoint", flow(Udp, "10.96.0.10:53", "10.244.4.5:5353"), false),
            ("ClusterIP on a port that is no service's", flow(Udp, "10.96.0.10:54", "10.244.7.7:5353"), false),
            ("externalIP to a removed endpoint", flow(Udp, "192.0.2.100:53", "10.244.7.7:5353"), true),
            ("externalIP to a serving endpoint", flow(Udp, "192.0.2.100:53", "10.244.1.2:5353"), false),
            ("LoadBalancer IP to a removed endpoint", flow(Udp, "198.51.100.7:53", "10.244.7.7:5353"), true),
            ("NodePort on any address to a removed endpoint", flow(Udp, "192.0.2.10:30053", "10.244.7.7:5353"), true),
            ("NodePort to a serving endpoint", flow(Udp, "192.0.2.10:30053", "10.244.1.2:5353"), false),
            ("service without endpoints", flow(Udp, "10.96.0.30:53", "10.244.7.7:5353"), true),
            ("TCP service to a removed endpoint", flow(Tcp, "10.96.0.20:80", "10.244.7.7:8080"), false),
            ("UDP to a TCP service's frontend", flow(Udp, "10.96.0.20:80", "10.244.7.7:8080"), false),
            ("TCP to a UDP service's frontend", flow(Tcp, "10.96.0.10:53", "10.244.7.7:5353"), false),
            ("IPv6 ClusterIP to a serving endpoint", flow(Udp, "[fd00::10]:53", "[fd00:244::2]:5353"), false),
            ("IPv6 NodePort to a removed endpoint", flow(Udp, "[fd00::1]:30053", "[fd00:244::7]:5353"), true),
            ("IPv6 NodePort to the IPv6 endpoint", flow(Udp, "[fd00::1]:30053", "[fd00:244::2]:5353"), false),
            ("no service at all", flow(Udp, "8.8.8.8:53", "8.8.8.8:53"), false),
        ];
        let state = state();
        for (what, flow, stale) in cases {
            let found = stale_flows(&state, &[flow], UDP);
            assert_eq!(found.len(), usize::from(stale), "{what}: {flow:?}");
        }
    }

    /// SCTP entries are judged only for a backend that asks (IPVS mode), by the same rule.
    #[test]
    fn sctp_entries_only_when_asked() {
        let removed = flow(Protocol::Sctp, "10.96.0.40:3868", "10.244.7.7:3868");
        let serving = flow(Protocol::Sctp, "10.96.0.40:3868", "10.244.1.2:3868");
        let udp_removed = flow(Protocol::Udp, "10.96.0.10:53", "10.244.7.7:5353");
        let flows = [removed, serving, udp_removed];
        assert_eq!(stale_flows(&state(), &flows, UDP), [udp_removed]);
        let both = [Protocol::Udp, Protocol::Sctp];
        assert_eq!(stale_flows(&state(), &flows, &both), [removed, udp_removed]);
    }

    #[test]
    fn returns_the_stale_flows_in_order() {
        let flows = [
            flow(Protocol::Udp, "10.96.0.10:53", "10.244.7.7:5353"),
            flow(Protocol::Udp, "10.96.0.10:53", "10.244.1.2:5353"),
            flow(Protocol::Udp, "192.0.2.10:30053", "10.244.8.8:5353"),
        ];
        assert_eq!(stale_flows(&state(), &flows, UDP), [flows[0], flows[2]]);
        assert_eq!(stale_flows(&ProxyState::default(), &flows, UDP), []);
    }
}
