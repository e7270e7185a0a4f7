//! Table test of [`categorize_endpoints`], ported case by case from upstream's
//! `TestCategorizeEndpoints` (kubernetes/kubernetes `pkg/proxy/topology_test.go`), followed by
//! a few cases of our own for paths the upstream table does not reach.
//!
//! Upstream distinguishes a `nil` endpoint list ("this service never uses this kind of
//! endpoints") from an empty one ("it does, but there are none"). Our
//! [`CategorizedEndpoints`](kube_proxy_model::CategorizedEndpoints) always holds plain
//! vectors, so a `None` expectation here means: the list is empty *and* the service port says
//! it does not use that policy ([`ServicePort::uses_cluster_endpoints`] /
//! [`ServicePort::uses_local_endpoints`]).
//!
//! Feature gates: `ProxyTerminatingEndpoints` is GA (and gone) in every version we emulate, so
//! only its "enabled" cases exist here; `PreferSameTrafficDistribution` is treated as on, and
//! the one upstream case that runs with it off is ported with the gate-on result (see
//! "PreferSameNode falls back to same-zone when feature gate disabled").

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kube_proxy_model::{
    categorize_endpoints, Endpoint, IpFamily, Protocol, ServicePort, ServicePortName,
};

/// One endpoint of a case, written compactly; see [`READY`] and [`NOT_READY`] for the bases
/// that cases extend with struct-update syntax.
#[derive(Clone, Copy)]
struct Ep {
    addr: &'static str,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// A ready (and therefore serving), non-terminating, remote endpoint without hints.
const READY: Ep = Ep {
    addr: "",
    zones: &[],
    nodes: &[],
    ready: true,
    serving: true,
    terminating: false,
    local: false,
};

/// An endpoint that is neither ready, serving nor terminating.
const NOT_READY: Ep = Ep {
    ready: false,
    serving: false,
    ..READY
};

/// Serving but terminating (so not ready): the fallback set.
const TERMINATING: Ep = Ep {
    ready: false,
    serving: true,
    terminating: true,
    ..READY
};

impl Ep {
    fn build(&self) -> Endpoint {
        let addr: SocketAddr = self.addr.parse().expect("test endpoint address");
        Endpoint {
            ip: addr.ip(),
            port: addr.port(),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            is_local: self.local,
            zone_hints: self.zones.iter().map(|z| z.to_string()).collect(),
            node_hints: self.nodes.iter().map(|n| n.to_string()).collect(),
        }
    }
}

/// The traffic-relevant parts of a service port (upstream's `BaseServicePortInfo` fields the
/// table sets). Everything else is filled in by [`Svc::build`].
#[derive(Clone, Copy)]
struct Svc {
    internal_local: bool,
    external_local: bool,
    node_port: u16,
    external_ip: Option<&'static str>,
    load_balancer_ip: Option<&'static str>,
}

/// `internalTrafficPolicy: Cluster`, `externalTrafficPolicy: Cluster`, ClusterIP only.
const CLUSTER: Svc = Svc {
    internal_local: false,
    external_local: false,
    node_port: 0,
    external_ip: None,
    load_balancer_ip: None,
};

impl Svc {
    fn build(&self) -> ServicePort {
        let ips = |ip: Option<&str>| -> Vec<IpAddr> {
            ip.iter().map(|s| s.parse().expect("test IP")).collect()
        };
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "svc".into(),
                port: "p".into(),
                protocol: Protocol::Tcp,
            },
            family: IpFamily::V4,
            cluster_ip: IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1)),
            port: 80,
            node_port: self.node_port,
            external_ips: ips(self.external_ip),
            load_balancer_ips: ips(self.load_balancer_ip),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: None,
            external_policy_local: self.external_local,
            internal_policy_local: self.internal_local,
            health_check_node_port: 0,
        }
    }
}

/// One row of the table. `cluster`/`local` of `None` mean "this kind of endpoints is not
/// used"; `all` may be left `None` when only one of them is used (it then equals that one),
/// as upstream does. `only_remote` marks cases whose `has_any` is true although nothing is
/// reachable from this node.
struct Case {
    name: &'static str,
    node: &'static str,
    zone: Option<&'static str>,
    svc: Svc,
    endpoints: &'static [Ep],
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    all: Option<&'static [&'static str]>,
    only_remote: bool,
}

/// The defaults every case overrides parts of: node `node-1` without a zone label.
const CASE: Case = Case {
    name: "",
    node: "node-1",
    zone: None,
    svc: CLUSTER,
    endpoints: &[],
    cluster: None,
    local: None,
    all: None,
    only_remote: false,
};

/// The four endpoints of the upstream zone-hint cases: two hinted for zone-a, one each for
/// zone-b and zone-c, all ready and remote.
const FOUR_ZONED: &[Ep] = &[
    Ep {
        addr: "10.1.2.3:80",
        zones: &["zone-a"],
        ..READY
    },
    Ep {
        addr: "10.1.2.4:80",
        zones: &["zone-b"],
        ..READY
    },
    Ep {
        addr: "10.1.2.5:80",
        zones: &["zone-c"],
        ..READY
    },
    Ep {
        addr: "10.1.2.6:80",
        zones: &["zone-a"],
        ..READY
    },
];

/// [`FOUR_ZONED`] with the first two on this node.
const FOUR_ZONED_TWO_LOCAL: &[Ep] = &[
    Ep {
        addr: "10.1.2.3:80",
        zones: &["zone-a"],
        local: true,
        ..READY
    },
    Ep {
        addr: "10.1.2.4:80",
        zones: &["zone-b"],
        local: true,
        ..READY
    },
    Ep {
        addr: "10.1.2.5:80",
        zones: &["zone-c"],
        ..READY
    },
    Ep {
        addr: "10.1.2.6:80",
        zones: &["zone-a"],
        ..READY
    },
];

/// The endpoints of the upstream PreferSameNode cases: zone hints as in [`FOUR_ZONED`] (but
/// 10.1.2.5 in zone-b) and one node hint each, `node-1` hosting 10.1.2.3.
const FOUR_NODED: &[Ep] = &[
    Ep {
        addr: "10.1.2.3:80",
        zones: &["zone-a"],
        nodes: &["node-1"],
        ..READY
    },
    Ep {
        addr: "10.1.2.4:80",
        zones: &["zone-b"],
        nodes: &["node-2"],
        ..READY
    },
    Ep {
        addr: "10.1.2.5:80",
        zones: &["zone-b"],
        nodes: &["node-3"],
        ..READY
    },
    Ep {
        addr: "10.1.2.6:80",
        zones: &["zone-a"],
        nodes: &["node-4"],
        ..READY
    },
];

/// One local and one remote ready endpoint.
const ONE_LOCAL_ONE_REMOTE: &[Ep] = &[
    Ep {
        addr: "10.0.0.0:80",
        local: true,
        ..READY
    },
    Ep {
        addr: "10.0.0.1:80",
        ..READY
    },
];

/// Two ready remote endpoints.
const TWO_REMOTE: &[Ep] = &[
    Ep {
        addr: "10.0.0.0:80",
        ..READY
    },
    Ep {
        addr: "10.0.0.1:80",
        ..READY
    },
];

const ITP_LOCAL: Svc = Svc {
    internal_local: true,
    ..CLUSTER
};
const ETP_LOCAL_NODEPORT: Svc = Svc {
    external_local: true,
    node_port: 8080,
    ..CLUSTER
};
const ITP_LOCAL_NODEPORT: Svc = Svc {
    internal_local: true,
    node_port: 8080,
    ..CLUSTER
};
const BOTH_LOCAL_NODEPORT: Svc = Svc {
    internal_local: true,
    external_local: true,
    node_port: 8080,
    ..CLUSTER
};

#[rustfmt::skip]
const UPSTREAM: &[Case] = &[
    Case {
        name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
        zone: Some("zone-a"),
        endpoints: FOUR_ZONED,
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
        zone: Some("zone-a"),
        svc: ETP_LOCAL_NODEPORT,
        endpoints: FOUR_ZONED_TWO_LOCAL,
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
        all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
        zone: Some("zone-a"),
        svc: ITP_LOCAL_NODEPORT,
        endpoints: FOUR_ZONED_TWO_LOCAL,
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
        all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "empty node labels",
        zone: None,
        endpoints: &[Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..READY }],
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "empty zone label",
        zone: Some(""),
        endpoints: &[Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..READY }],
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "node in different zone, no endpoint filtering",
        zone: Some("zone-b"),
        endpoints: &[Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..READY }],
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "unready endpoint",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..READY },
            Ep { addr: "10.1.2.4:80", zones: &["zone-b"], ..READY },
            Ep { addr: "10.1.2.5:80", zones: &["zone-c"], ..READY },
            Ep { addr: "10.1.2.6:80", zones: &["zone-a"], ..NOT_READY },
        ],
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "only unready endpoints in same zone (should not filter)",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..NOT_READY },
            Ep { addr: "10.1.2.4:80", zones: &["zone-b"], ..READY },
            Ep { addr: "10.1.2.5:80", zones: &["zone-c"], ..READY },
            Ep { addr: "10.1.2.6:80", zones: &["zone-a"], ..NOT_READY },
        ],
        cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
        ..CASE
    },
    Case {
        name: "missing hints, no filtering applied",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", zones: &["zone-a"], ..READY },
            Ep { addr: "10.1.2.4:80", zones: &["zone-b"], ..READY },
            Ep { addr: "10.1.2.5:80", ..READY },
            Ep { addr: "10.1.2.6:80", zones: &["zone-a"], ..READY },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
        zone: Some("zone-c"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", zones: &["zone-a", "zone-b", "zone-c"], ..READY },
            Ep { addr: "10.1.2.4:80", zones: &["zone-b", "zone-c"], ..READY },
            Ep { addr: "10.1.2.5:80", zones: &["zone-b", "zone-d"], ..READY },
            Ep { addr: "10.1.2.6:80", zones: &["zone-c"], ..READY },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "conflicting topology and localness require merging allEndpoints",
        zone: Some("zone-a"),
        svc: ETP_LOCAL_NODEPORT,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", zones: &["zone-a"], local: true, ..READY },
            Ep { addr: "10.0.0.1:80", zones: &["zone-b"], local: true, ..READY },
            Ep { addr: "10.0.0.2:80", zones: &["zone-a"], ..READY },
            Ep { addr: "10.0.0.3:80", zones: &["zone-b"], ..READY },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
        local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
        ..CASE
    },
    // Upstream added the PreferSameNode cases below in v1.33 (the stored upstream snapshot
    // predates them; the expectations follow upstream's topologyModeFromHints). Upstream also
    // runs FOUR_NODED with PreferSameTrafficDistribution off ("PreferSameNode falls back to
    // same-zone when feature gate disabled", expecting the same-zone set {10.1.2.3,
    // 10.1.2.6}); with the gate on, as here, that case is exactly "PreferSameNode available".
    Case {
        name: "PreferSameNode available",
        zone: Some("zone-a"),
        endpoints: FOUR_NODED,
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "PreferSameNode ignored if some endpoints unhinted",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", zones: &["zone-a"], nodes: &["node-1"], ..READY },
            Ep { addr: "10.1.2.4:80", zones: &["zone-b"], nodes: &["node-2"], ..READY },
            Ep { addr: "10.1.2.5:80", zones: &["zone-a"], ..READY },
            Ep { addr: "10.1.2.6:80", zones: &["zone-a"], nodes: &["node-4"], ..READY },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.5:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "PreferSameNode falls back to PreferSameZone if no endpoint for node",
        node: "node-0",
        zone: Some("zone-a"),
        endpoints: FOUR_NODED,
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, with empty endpoints",
        svc: ITP_LOCAL,
        endpoints: &[],
        local: Some(&[]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, but all endpoints are remote",
        svc: ITP_LOCAL,
        endpoints: TWO_REMOTE,
        local: Some(&[]),
        only_remote: true,
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, all endpoints are local",
        svc: ITP_LOCAL,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", local: true, ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ..READY },
        ],
        local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, some endpoints are local",
        svc: ITP_LOCAL,
        endpoints: ONE_LOCAL_ONE_REMOTE,
        local: Some(&["10.0.0.0:80"]),
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, endpoints not Ready",
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..NOT_READY },
            Ep { addr: "10.0.0.1:80", ..NOT_READY },
        ],
        cluster: Some(&[]),
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, some endpoints are Ready",
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..NOT_READY },
            Ep { addr: "10.0.0.1:80", ..READY },
        ],
        cluster: Some(&["10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, all endpoints are terminating",
        endpoints: &[
            Ep { addr: "10.0.0.0:80", local: true, ..TERMINATING },
            Ep { addr: "10.0.0.1:80", ..TERMINATING },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Cluster, some endpoints local",
        svc: ITP_LOCAL_NODEPORT,
        endpoints: ONE_LOCAL_ONE_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Cluster, eTP: Local, some endpoints local",
        svc: ETP_LOCAL_NODEPORT,
        endpoints: ONE_LOCAL_ONE_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, some endpoints local",
        svc: BOTH_LOCAL_NODEPORT,
        endpoints: ONE_LOCAL_ONE_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, all endpoints remote",
        svc: BOTH_LOCAL_NODEPORT,
        endpoints: TWO_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
        svc: BOTH_LOCAL_NODEPORT,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..TERMINATING },
            Ep { addr: "10.0.0.1:80", ..TERMINATING },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        only_remote: true,
        ..CASE
    },
    Case {
        name: "iTP: Cluster, eTP: Local, with terminating endpoints",
        svc: ETP_LOCAL_NODEPORT,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ..NOT_READY },
            Ep { addr: "10.0.0.2:80", local: true, ..TERMINATING },
            Ep { addr: "10.0.0.3:80", ..TERMINATING },
        ],
        cluster: Some(&["10.0.0.0:80"]),
        local: Some(&["10.0.0.2:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy ignored if not externally accessible",
        svc: Svc { external_local: true, ..CLUSTER },
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ..READY },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "no cluster endpoints for iTP:Local internal-only service",
        svc: ITP_LOCAL,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ..READY },
        ],
        local: Some(&["10.0.0.1:80"]),
        all: Some(&["10.0.0.1:80"]),
        ..CASE
    },
];

/// Cases of our own, for paths upstream's table leaves out.
#[rustfmt::skip]
const EXTRA: &[Case] = &[
    Case {
        name: "eTP: Local counts when reachable through an external IP only",
        svc: Svc { external_local: true, external_ip: Some("192.0.2.10"), ..CLUSTER },
        endpoints: ONE_LOCAL_ONE_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "eTP: Local counts when reachable through a load-balancer IP only",
        svc: Svc { external_local: true, load_balancer_ip: Some("198.51.100.7"), ..CLUSTER },
        endpoints: TWO_REMOTE,
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "PreferSameNode needs no zone label",
        zone: None,
        endpoints: FOUR_NODED,
        cluster: Some(&["10.1.2.3:80"]),
        ..CASE
    },
    Case {
        name: "node hints for other nodes and no zone hints: no filtering",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.1.2.3:80", nodes: &["node-2"], ..READY },
            Ep { addr: "10.1.2.4:80", nodes: &["node-3"], ..READY },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
        ..CASE
    },
    Case {
        name: "PreferSameNode with eTP: Local merges unhinted local endpoints into all",
        zone: Some("zone-a"),
        svc: ETP_LOCAL_NODEPORT,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", zones: &["zone-a"], nodes: &["node-1"], ..READY },
            Ep { addr: "10.0.0.1:80", zones: &["zone-a"], nodes: &["node-2"], local: true, ..READY },
            Ep { addr: "10.0.0.2:80", zones: &["zone-b"], nodes: &["node-3"], ..READY },
        ],
        cluster: Some(&["10.0.0.0:80"]),
        local: Some(&["10.0.0.1:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "hints of terminating endpoints are ignored when nothing is ready",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "10.0.0.0:80", zones: &["zone-a"], ..TERMINATING },
            Ep { addr: "10.0.0.1:80", zones: &["zone-b"], ..TERMINATING },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "terminating endpoints are not used while any endpoint is ready",
        endpoints: &[
            Ep { addr: "10.0.0.0:80", ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ..TERMINATING },
        ],
        cluster: Some(&["10.0.0.0:80"]),
        ..CASE
    },
    Case {
        name: "endpoints neither ready nor serving-and-terminating are never used",
        svc: BOTH_LOCAL_NODEPORT,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", local: true, ready: false, serving: true, terminating: false, ..READY },
            Ep { addr: "10.0.0.1:80", local: true, ready: false, serving: false, terminating: true, ..READY },
        ],
        cluster: Some(&[]),
        local: Some(&[]),
        all: Some(&[]),
        ..CASE
    },
    Case {
        name: "iTP: Local falls back to local terminating endpoints only",
        svc: ITP_LOCAL,
        endpoints: &[
            Ep { addr: "10.0.0.0:80", local: true, ..TERMINATING },
            Ep { addr: "10.0.0.1:80", ..TERMINATING },
            Ep { addr: "10.0.0.2:80", local: true, ..NOT_READY },
        ],
        local: Some(&["10.0.0.0:80"]),
        ..CASE
    },
    Case {
        name: "IPv6 endpoints with zone hints",
        zone: Some("zone-a"),
        endpoints: &[
            Ep { addr: "[fd00::1]:8080", zones: &["zone-a"], ..READY },
            Ep { addr: "[fd00::2]:8080", zones: &["zone-b"], ..READY },
        ],
        cluster: Some(&["[fd00::1]:8080"]),
        ..CASE
    },
];

fn parse_set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
    addrs
        .iter()
        .map(|a| a.parse().expect("expected address"))
        .collect()
}

/// Compares one output list with its expectation, by address, and checks the documented
/// ordering (sorted by address, no duplicates). Returns a description of each mismatch.
fn check_list(what: &str, got: &[Endpoint], want: &BTreeSet<SocketAddr>) -> Vec<String> {
    let mut errors = Vec::new();
    let addrs: Vec<SocketAddr> = got.iter().map(Endpoint::addr).collect();
    if !addrs.windows(2).all(|w| w[0] < w[1]) {
        errors.push(format!("{what}: not strictly sorted by address: {addrs:?}"));
    }
    let got_set: BTreeSet<SocketAddr> = addrs.into_iter().collect();
    let unexpected: Vec<_> = got_set.difference(want).collect();
    let missing: Vec<_> = want.difference(&got_set).collect();
    if !unexpected.is_empty() || !missing.is_empty() {
        errors.push(format!(
            "{what}: unexpected {unexpected:?}, missing {missing:?}"
        ));
    }
    errors
}

/// Runs one case and returns every mismatch (empty when the case passes).
fn run(case: &Case) -> Vec<String> {
    let svc = case.svc.build();
    let endpoints: Vec<Endpoint> = case.endpoints.iter().map(Ep::build).collect();
    let got = categorize_endpoints(&endpoints, &svc, case.node, case.zone);
    let mut errors = Vec::new();

    for (what, uses, got_list, want) in [
        (
            "cluster",
            svc.uses_cluster_endpoints(),
            &got.cluster,
            case.cluster,
        ),
        ("local", svc.uses_local_endpoints(), &got.local, case.local),
    ] {
        if uses != want.is_some() {
            errors.push(format!(
                "{what}: port uses these endpoints = {uses}, expected {}",
                want.is_some()
            ));
        }
        errors.extend(check_list(what, got_list, &parse_set(want.unwrap_or(&[]))));
    }

    let want_all = match (case.cluster, case.local) {
        (Some(only), None) | (None, Some(only)) => case.all.unwrap_or(only),
        _ => case.all.unwrap_or(&[]),
    };
    let want_all = parse_set(want_all);
    errors.extend(check_list("all_reachable", &got.all_reachable, &want_all));

    let want_any = !want_all.is_empty() || case.only_remote;
    if got.has_any != want_any {
        errors.push(format!("has_any = {}, expected {want_any}", got.has_any));
    }
    errors
}

/// Runs a table, reporting every failing case rather than stopping at the first.
fn run_table(table: &[Case]) {
    let failures: Vec<String> = table
        .iter()
        .flat_map(|case| {
            run(case)
                .into_iter()
                .map(move |e| format!("{}: {e}", case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn upstream_categorize_endpoints_table() {
    run_table(UPSTREAM);
}

#[test]
fn additional_categorize_endpoints_cases() {
    run_table(EXTRA);
}

/// Case names must be unique so that a failure points at exactly one row.
#[test]
fn case_names_are_unique() {
    let mut seen = BTreeSet::new();
    for case in UPSTREAM.iter().chain(EXTRA) {
        assert!(
            seen.insert(case.name),
            "duplicate case name {:?}",
            case.name
        );
    }
}
