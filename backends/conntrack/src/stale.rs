//! Which conntrack entries are stale, and their deletion: upstream's `CleanStaleEntries`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kube_proxy_model::{IpFamily, Protocol, ProxyState, ServiceEntry};

use crate::{Conntrack, Error, Flow};

/// The protocols whose entries are cleaned: UDP only, as upstream. A TCP or SCTP client
/// whose endpoint went away gets a reset or an abort and opens a new connection through
/// the new rules; a UDP client just keeps sending into the old entry.
pub const CLEANED_PROTOCOLS: [Protocol; 1] = [Protocol::Udp];

/// The entries among `flows` that send a service frontend somewhere other than one of its
/// serving endpoints, by upstream's rule:
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
pub fn stale_flows(state: &ProxyState, flows: &[Flow]) -> Vec<Flow> {
    let frontends = Frontends::new(state);
    flows
        .iter()
        .filter(|flow| frontends.is_stale(flow))
        .copied()
        .collect()
}

/// Dumps the entries of the [cleaned protocols](CLEANED_PROTOCOLS) of both families in the
/// current network namespace and deletes the [stale](stale_flows) ones. Returns how many
/// were deleted; entries that went away on their own in the meantime are not counted.
pub fn cleanup_stale_flows(state: &ProxyState) -> Result<usize, Error> {
    let mut conntrack = Conntrack::new()?;
    let mut deleted = 0;
    for family in IpFamily::ALL {
        for proto in CLEANED_PROTOCOLS {
            let flows = conntrack.dump(family, proto)?;
            for flow in stale_flows(state, &flows) {
                deleted += usize::from(conntrack.delete(&flow)?);
            }
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
    fn new(state: &'a ProxyState) -> Self {
        let mut frontends = Frontends {
            by_address: HashMap::new(),
            by_node_port: HashMap::new(),
        };
        let entries = IpFamily::ALL
            .iter()
            .flat_map(|&family| state.services(family).values());
        for entry in entries.filter(|e| CLEANED_PROTOCOLS.contains(&e.port.name.protocol)) {
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
