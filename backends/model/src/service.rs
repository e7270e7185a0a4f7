//! Service ports and endpoints as a backend sees them: plain data, one IP family at a time.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An IP family. Each backend programs the two families independently, as upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a CIDR.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The lower-case name nftables, iptables and IPVS tools use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one port of one Service, as upstream's `ServicePortName`.
///
/// Ordered so that iteration over a model is deterministic (rendered rules are stable).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The Service port's `name`; empty for a single unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    /// `namespace/name`, the Service this port belongs to.
    pub fn service(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServicePortName {
    /// Upstream's spelling: `ns/name:port` (`ns/name` when the port is unnamed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// How long ClientIP session affinity keeps a client on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionAffinity {
    pub timeout_seconds: u32,
}

impl SessionAffinity {
    /// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10800;
}

/// One port of one Service in one IP family, with everything a backend needs to program it.
///
/// Only ports of Services that the proxy handles are ever built: headless, ExternalName and
/// Services owned by another proxy never reach the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub family: IpFamily,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// 0 when the Service has no NodePort.
    pub node_port: u16,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family, except those with `ipMode: Proxy`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family, normalized.
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: Option<SessionAffinity>,
    /// `externalTrafficPolicy: Local` on a port that is reachable from outside.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// 0 when the Service has none.
    pub health_check_node_port: u16,
}

impl ServicePort {
    /// A port reachable only through its ClusterIP, with Cluster traffic policies and no
    /// affinity: the common case, and the base that other shapes are built from
    /// (`ServicePort { node_port: 30080, ..ServicePort::new(..) }`).
    pub fn new(name: ServicePortName, cluster_ip: IpAddr, port: u16) -> Self {
        ServicePort {
            name,
            family: IpFamily::of(&cluster_ip),
            cluster_ip,
            port,
            node_port: 0,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: 0,
        }
    }

    /// True when the port can be reached other than through its ClusterIP (upstream's
    /// `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// True when some traffic to this port uses Cluster-policy endpoints. Even with
    /// `externalTrafficPolicy: Local`, externally reachable ports need them for the
    /// short-circuit of pod and host traffic.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// True when some traffic to this port uses Local-policy endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// One endpoint of a service port, merged from the Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint runs on this node.
    pub is_local: bool,
    /// `hints.forZones[].name`.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: BTreeSet<String>,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint without hints: the common case.
    pub fn ready(ip: IpAddr, port: u16, is_local: bool) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            is_local,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    /// `ip:port`, bracketed for IPv6, as upstream's `Endpoint.String()`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}
