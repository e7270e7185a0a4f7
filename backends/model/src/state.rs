//! The whole node-local model: every service port of both families and this node's facts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::categorize::{categorize_endpoints, CategorizedEndpoints};
use crate::service::{Endpoint, IpFamily, ServicePort, ServicePortName};

/// A service port together with its endpoints, already categorized for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub port: ServicePort,
    /// Every endpoint of the port in this family, sorted by address (conntrack clean-up and
    /// health checks look at all of them, not only the usable ones).
    pub endpoints: Vec<Endpoint>,
    pub categorized: CategorizedEndpoints,
}

impl ServiceEntry {
    /// Builds an entry, categorizing `endpoints` for the node `node_name` in `zone`.
    pub fn new(port: ServicePort, mut endpoints: Vec<Endpoint>, node: &NodeInfo) -> Self {
        endpoints.sort();
        endpoints.dedup_by_key(|ep| ep.addr());
        let categorized = categorize_endpoints(&endpoints, &port, &node.name, node.zone.as_deref());
        ServiceEntry {
            port,
            endpoints,
            categorized,
        }
    }

    /// Number of endpoints on this node that are ready (what health-check node ports report).
    pub fn local_ready_endpoints(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|ep| ep.is_local && ep.ready)
            .count()
    }
}

/// Service ports of one family, ordered by name so that rendering is deterministic.
///
/// Reads go through `Deref` to the `BTreeMap`. Cloning is O(1): clones share the map, and a
/// write copies it only while another clone is still alive. So the snapshot handed to every
/// sync costs nothing however large the cluster, as long as the sync lets go of it before
/// the next change arrives (the daemon's does).
#[derive(Debug, Clone, Default)]
pub struct ServiceMap(Arc<BTreeMap<ServicePortName, Arc<ServiceEntry>>>);

impl ServiceMap {
    /// Inserts or replaces the entry of `name`, returning the old one.
    pub fn insert(
        &mut self,
        name: ServicePortName,
        entry: Arc<ServiceEntry>,
    ) -> Option<Arc<ServiceEntry>> {
        Arc::make_mut(&mut self.0).insert(name, entry)
    }

    /// Removes the entry of `name`, returning it.
    pub fn remove(&mut self, name: &ServicePortName) -> Option<Arc<ServiceEntry>> {
        // Only a real removal may pay for un-sharing the map.
        if !self.0.contains_key(name) {
            return None;
        }
        Arc::make_mut(&mut self.0).remove(name)
    }
}

impl std::ops::Deref for ServiceMap {
    type Target = BTreeMap<ServicePortName, Arc<ServiceEntry>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl PartialEq for ServiceMap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ServiceMap {}

impl From<BTreeMap<ServicePortName, Arc<ServiceEntry>>> for ServiceMap {
    fn from(map: BTreeMap<ServicePortName, Arc<ServiceEntry>>) -> Self {
        ServiceMap(Arc::new(map))
    }
}

impl FromIterator<(ServicePortName, Arc<ServiceEntry>)> for ServiceMap {
    fn from_iter<I: IntoIterator<Item = (ServicePortName, Arc<ServiceEntry>)>>(iter: I) -> Self {
        ServiceMap(Arc::new(iter.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a ServiceMap {
    type Item = (&'a ServicePortName, &'a Arc<ServiceEntry>);
    type IntoIter = std::collections::btree_map::Iter<'a, ServicePortName, Arc<ServiceEntry>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// What the proxy knows about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node name (`--hostname-override`, else the host name), lower-cased.
    pub name: String,
    /// The `topology.kubernetes.io/zone` label, when the Node carries one.
    pub zone: Option<String>,
    /// The node's primary IPs, at most one per family (the Node's first InternalIP, else
    /// ExternalIP, of each family; else `--bind-address`; else the host's own address).
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs` of the Node.
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's service ranges (ServiceCIDR objects), used to reject traffic to
    /// ClusterIPs that are not allocated. Empty when unknown.
    pub service_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    /// The primary node IP of `family`, if known.
    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }
}

/// A consistent snapshot of everything a backend programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyState {
    pub node: NodeInfo,
    pub v4: ServiceMap,
    pub v6: ServiceMap,
}

impl ProxyState {
    /// The service ports of one family.
    pub fn services(&self, family: IpFamily) -> &ServiceMap {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    pub(crate) fn services_mut(&mut self, family: IpFamily) -> &mut ServiceMap {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Protocol;

    fn entry(name: &str) -> (ServicePortName, Arc<ServiceEntry>) {
        let name = ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        let port = ServicePort::new(name.clone(), "10.96.0.1".parse().unwrap(), 80);
        let entry = ServiceEntry::new(port, Vec::new(), &NodeInfo::default());
        (name, Arc::new(entry))
    }

    #[test]
    fn snapshots_share_until_written_and_never_see_later_writes() {
        let (a, ea) = entry("a");
        let (b, eb) = entry("b");
        let mut live: ServiceMap = [(a.clone(), ea)].into_iter().collect();
        let snapshot = live.clone();
        assert!(Arc::ptr_eq(&live.0, &snapshot.0), "a clone shares the map");

        assert_eq!(live.remove(&b), None);
        assert!(
            Arc::ptr_eq(&live.0, &snapshot.0),
            "removing nothing does not copy"
        );

        live.insert(b.clone(), eb);
        assert!(
            !Arc::ptr_eq(&live.0, &snapshot.0),
            "a write while shared copies"
        );
        assert_eq!(snapshot.keys().collect::<Vec<_>>(), [&a]);
        assert_eq!(live.keys().collect::<Vec<_>>(), [&a, &b]);

        drop(snapshot);
        let before = Arc::as_ptr(&live.0);
        live.remove(&a);
        assert_eq!(
            Arc::as_ptr(&live.0),
            before,
            "an unshared map is written in place"
        );
        assert_eq!(live.keys().collect::<Vec<_>>(), [&b]);
    }
}
