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
pub type ServiceMap = BTreeMap<ServicePortName, Arc<ServiceEntry>>;

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
