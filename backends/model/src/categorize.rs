//! Which endpoints each kind of traffic may use: upstream's `CategorizeEndpoints`.

use std::collections::BTreeMap;

use crate::service::{Endpoint, ServicePort};

/// The well-known node label that names the node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// The endpoints of one service port, sorted by what may use them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CategorizedEndpoints {
    /// Usable by Cluster-policy traffic, after topology; empty when the port never uses
    /// Cluster policy.
    pub cluster: Vec<Endpoint>,
    /// Usable by Local-policy traffic; empty when the port never uses Local policy.
    pub local: Vec<Endpoint>,
    /// The union of the two: every endpoint this node may send traffic to, and so every
    /// endpoint a backend must program.
    pub all_reachable: Vec<Endpoint>,
    /// Whether the service has usable endpoints anywhere in the cluster (possibly none on
    /// this node). Tells "no endpoints: reject" from "no local endpoints: drop".
    pub has_any: bool,
}

/// Which topology a port's cluster endpoints are narrowed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    PreferSameNode,
    PreferSameZone,
}

/// Sorts `endpoints` into cluster, local and reachable sets with upstream's rules:
///
/// * Ready endpoints are used; when a set would be empty it falls back to endpoints that are
///   serving and terminating (independently for Cluster and Local).
/// * Cluster endpoints honour topology hints: same node when every ready endpoint has node
///   hints and one names this node, else same zone when every ready endpoint has zone hints
///   and one names this node's zone; otherwise all of them.
/// * Local endpoints are those on this node.
///
/// `zone` is the node's `topology.kubernetes.io/zone` label, if any. The result is sorted
/// (by address, then port) so that rendering is deterministic.
pub fn categorize_endpoints(
    endpoints: &[Endpoint],
    svc: &ServicePort,
    node_name: &str,
    zone: Option<&str>,
) -> CategorizedEndpoints {
    let mut out = CategorizedEndpoints::default();
    if endpoints.is_empty() {
        return out;
    }
    let zone = zone.unwrap_or("");
    let mut topology = TopologyMode::None;

    if svc.uses_cluster_endpoints() {
        topology = topology_mode_from_hints(endpoints, node_name, zone);
        out.cluster = filter(endpoints, |ep| {
            ep.ready && available_for_topology(ep, topology, node_name, zone)
        });
        if out.cluster.is_empty() {
            // Topology is only chosen when it leaves a ready endpoint, so an empty set here
            // means nothing is ready anywhere: fall back to terminating-but-serving ones.
            out.cluster = filter(endpoints, |ep| ep.serving && ep.terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }

    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }

    let (mut local_ready, mut local_terminating) = (false, false);
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            local_terminating |= ep.is_local;
        }
    }
    let uses_terminating = !local_ready && local_terminating;
    if local_ready {
        out.local = filter(endpoints, |ep| ep.is_local && ep.ready);
    } else if local_terminating {
        out.local = filter(endpoints, |ep| ep.is_local && ep.serving && ep.terminating);
    }

    if !svc.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
    } else if topology == TopologyMode::None && !uses_terminating {
        // Cluster holds every ready endpoint and local only ready ones: a superset.
        out.all_reachable = out.cluster.clone();
    } else {
        out.all_reachable = merge(&out.cluster, &out.local);
    }
    out
}

fn topology_mode_from_hints(endpoints: &[Endpoint], node_name: &str, zone: &str) -> TopologyMode {
    let mut any_ready = false;
    let (mut all_node_hints, mut hint_for_node) = (true, false);
    let (mut all_zone_hints, mut hint_for_zone) = (true, false);
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        any_ready = true;
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            hint_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ep.zone_hints.contains(zone) {
            hint_for_zone = true;
        }
    }
    if !any_ready {
        TopologyMode::None
    } else if all_node_hints && hint_for_node {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && hint_for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

fn filter(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> = endpoints.iter().filter(|ep| keep(ep)).cloned().collect();
    v.sort_by_key(Endpoint::addr);
    v
}

/// The union of two endpoint lists, keyed by `ip:port` (a local entry wins, as upstream).
fn merge(cluster: &[Endpoint], local: &[Endpoint]) -> Vec<Endpoint> {
    let mut by_addr = BTreeMap::new();
    for ep in cluster.iter().chain(local) {
        by_addr.insert(ep.addr(), ep.clone());
    }
    by_addr.into_values().collect()
}
