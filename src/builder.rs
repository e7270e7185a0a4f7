//! Turns the stream of [`SourceEvent`]s into the node-local model.
//!
//! The builder keeps every object it needs in converted form (Service ports, slice
//! endpoints, node facts), indexed by the Service it belongs to, so that an event costs
//! time proportional to the one Service it touches, never to the cluster. The model itself
//! lives in a [`ChangeTracker`], which remembers what changed since the last sync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use kube_proxy_model::{
    ChangeTracker, Changes, Endpoint, IpFamily, NodeInfo, ProxyState, ServiceEntry, ServicePort,
};

use crate::convert::{self, NodeFacts, ObjectKey, SliceEndpoints};
use crate::sources::{Kind, Object, SourceEvent};

/// The current objects and the model built from them.
#[derive(Debug)]
pub struct ModelBuilder {
    node_name: String,
    fallback_node_ips: Vec<IpAddr>,
    /// Node IPs that win over the Node object's (see [`Self::override_node_ips`]).
    override_node_ips: Vec<IpAddr>,
    /// Our own Node object, once seen.
    node: Option<NodeFacts>,
    /// Our Node was deleted (and has not come back): see [`Self::node_eligible`].
    node_deleted: bool,
    /// ServiceCIDR objects by name.
    service_cidrs: BTreeMap<String, Vec<ipnet::IpNet>>,
    /// The ports (both families) of every Service the proxy handles.
    services: HashMap<ObjectKey, Vec<ServicePort>>,
    /// EndpointSlices by Service, then by slice name (sorted, so that merging duplicate
    /// endpoints across slices is deterministic).
    slices: HashMap<ObjectKey, BTreeMap<String, SliceEndpoints>>,
    /// The Service each held slice belongs to, by slice key: a slice may be relabelled.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    tracker: ChangeTracker,
    /// Services whose entries must be rebuilt before the current event is done. Deferring
    /// the rebuild makes a list of a Service's many slices cost one rebuild, not one each.
    dirty: HashSet<ObjectKey>,
    listed: HashSet<Kind>,
    /// Trigger times older than the builder are from before this proxy ran: counting them
    /// would report the cluster's age as programming latency.
    started: SystemTime,
    taken_once: bool,
}

impl ModelBuilder {
    /// A builder for node `node_name`. `fallback_node_ips` stand in for the node IPs of any
    /// family the Node object does not provide (or while there is no Node object).
    pub fn new(node_name: String, fallback_node_ips: Vec<IpAddr>) -> Self {
        let mut builder = ModelBuilder {
            node_name: node_name.trim().to_lowercase(),
            fallback_node_ips,
            override_node_ips: Vec::new(),
            node: None,
            node_deleted: false,
            service_cidrs: BTreeMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            tracker: ChangeTracker::default(),
            dirty: HashSet::new(),
            listed: HashSet::new(),
            started: SystemTime::now(),
            taken_once: false,
        };
        builder.update_node();
        builder
    }

    /// Makes `ips` win over the Node object's addresses of their family, as upstream's
    /// `detectNodeIPs` does with a specific `--bind-address`; the first one's family becomes
    /// the primary one.
    pub fn override_node_ips(&mut self, ips: Vec<IpAddr>) {
        self.override_node_ips = ips;
        self.update_node();
        self.rebuild_dirty();
    }

    /// Folds one event into the model.
    pub fn handle(&mut self, ev: SourceEvent) {
        self.handle_all([ev]);
    }

    /// Folds a batch of events into the model. Each Service they touch is rebuilt once,
    /// however many of its EndpointSlices changed in the batch (as upstream merges once per
    /// sync), which matters for a big Service whose slices churn.
    pub fn handle_all(&mut self, events: impl IntoIterator<Item = SourceEvent>) {
        for ev in events {
            match ev {
                SourceEvent::Applied(obj) => self.apply(&obj),
                SourceEvent::Deleted(obj) => self.delete(&obj),
                SourceEvent::Listed(kind, objects) => {
                    self.relist(kind, &objects);
                    self.listed.insert(kind);
                }
            }
        }
        self.rebuild_dirty();
    }

    /// True once our Node, Services and EndpointSlices have each been listed completely:
    /// syncing earlier would program a partial model and cut traffic to everything not yet
    /// seen, or accept NodePorts on addresses the Node's IPs would exclude (upstream, too,
    /// looks the Node up before its first sync). An empty Node list counts: the fallback
    /// node IPs apply then.
    pub fn is_synced(&self) -> bool {
        [Kind::Node, Kind::Service, Kind::EndpointSlice]
            .iter()
            .all(|kind| self.listed.contains(kind))
    }

    /// Whether load balancers may send traffic to this node (upstream's `NodeEligible`):
    /// true unless our Node is being deleted or is gone. Before any Node object was seen,
    /// as while upstream starts up, the node counts as eligible; once our Node has been
    /// deleted it does not (upstream v1.33 keeps judging the deleted object, whose
    /// autoscaler taint stays; later releases exit, or find no Node and answer false), so
    /// that load balancers do not return to a node the cluster autoscaler removed.
    pub fn node_eligible(&self) -> bool {
        !self.node_deleted && !self.node.as_ref().is_some_and(|n| n.to_be_deleted)
    }

    /// The current model.
    pub fn state(&self) -> &ProxyState {
        self.tracker.state()
    }

    /// The change tracker, e.g. to ask whether anything is pending.
    pub fn tracker(&self) -> &ChangeTracker {
        &self.tracker
    }

    /// A snapshot of the model and what changed since the previous call. The first call
    /// asks for a full sync.
    pub fn take_changes(&mut self) -> (ProxyState, Changes) {
        let (state, mut changes) = self.tracker.take();
        changes.full |= !std::mem::replace(&mut self.taken_once, true);
        (state, changes)
    }

    fn apply(&mut self, obj: &Object) {
        match obj {
            Object::Service(svc) => {
                if let Some(key) = logged_key("Service", &svc.metadata) {
                    self.set_service(key, convert::service_ports(svc).log());
                }
            }
            Object::EndpointSlice(slice) => {
                if let Some(key) = logged_key("EndpointSlice", &slice.metadata) {
                    let converted = convert::endpoint_slice(slice, &self.node_name).log();
                    self.set_slice(key, converted, convert::trigger_time(slice));
                }
            }
            Object::Node(node) => {
                if self.is_our_node(node) {
                    self.node = Some(convert::node_facts(node).log());
                    self.node_deleted = false;
                    self.update_node();
                }
            }
            Object::ServiceCidr(sc) => {
                if let Some(key) = logged_key("ServiceCIDR", &sc.metadata) {
                    self.service_cidrs
                        .insert(key.name, convert::service_cidrs(sc).log());
                    self.update_node();
                }
            }
        }
    }

    fn delete(&mut self, obj: &Object) {
        match obj {
            Object::Service(svc) => {
                if let Some(key) = logged_key("Service", &svc.metadata) {
                    self.set_service(key, Vec::new());
                }
            }
            Object::EndpointSlice(slice) => {
                if let Some(key) = logged_key("EndpointSlice", &slice.metadata) {
                    self.set_slice(key, None, None);
                }
            }
            Object::Node(node) => {
                if self.is_our_node(node) {
                    self.node = None;
                    self.node_deleted = true;
                    self.update_node();
                }
            }
            Object::ServiceCidr(sc) => {
                if let Some(key) = logged_key("ServiceCIDR", &sc.metadata) {
                    self.service_cidrs.remove(&key.name);
                    self.update_node();
                }
            }
        }
    }

    /// Makes `objects` the complete set of `kind`: deletes whatever is held but was not
    /// listed (it went away while the watch was down), then applies each. Node facts are
    /// replaced in one step, so that a relist that changes nothing does not force a full
    /// sync.
    fn relist(&mut self, kind: Kind, objects: &[Object]) {
        let objects: Vec<&Object> = objects.iter().filter(|o| o.kind() == kind).collect();
        match kind {
            Kind::Service => {
                let listed = listed_keys(&objects);
                let gone: Vec<ObjectKey> = self
                    .services
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_service(key, Vec::new());
                }
            }
            Kind::EndpointSlice => {
                let listed = listed_keys(&objects);
                let gone: Vec<ObjectKey> = self
                    .slice_owner
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_slice(key, None, None);
                }
            }
            Kind::Node => {
                let ours = objects.iter().find_map(|o| match o {
                    Object::Node(n) if self.is_our_node(n) => Some(convert::node_facts(n).log()),
                    _ => None,
                });
                // Held before, not listed now: deleted while the watch was down.
                self.node_deleted = ours.is_none() && (self.node_deleted || self.node.is_some());
                self.node = ours;
                self.update_node();
                return;
            }
            Kind::ServiceCidr => {
                self.service_cidrs = objects
                    .iter()
                    .filter_map(|o| match o {
                        Object::ServiceCidr(sc) => {
                            let key = logged_key("ServiceCIDR", &sc.metadata)?;
                            Some((key.name, convert::service_cidrs(sc).log()))
                        }
                        _ => None,
                    })
                    .collect();
                self.update_node();
                return;
            }
        }
        for obj in objects {
            self.apply(obj);
        }
    }

    fn is_our_node(&self, node: &Node) -> bool {
        node.metadata.name.as_deref() == Some(self.node_name.as_str())
    }

    /// Records the converted ports of a Service (empty: the Service is gone or ignored).
    fn set_service(&mut self, key: ObjectKey, ports: Vec<ServicePort>) {
        let changed = if ports.is_empty() {
            self.services.remove(&key).is_some()
        } else if self.services.get(&key) == Some(&ports) {
            false
        } else {
            self.services.insert(key.clone(), ports);
            true
        };
        if changed {
            self.dirty.insert(key);
        }
    }

    /// Records the converted endpoints of slice `key` (`None`: the slice is gone or unused).
    fn set_slice(
        &mut self,
        key: ObjectKey,
        slice: Option<SliceEndpoints>,
        trigger: Option<SystemTime>,
    ) {
        let old_owner = self.slice_owner.get(&key).cloned();
        let unchanged = match (&old_owner, &slice) {
            (Some(owner), Some(new)) => {
                self.slices.get(owner).and_then(|s| s.get(&key.name)) == Some(new)
            }
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        if let Some(owner) = old_owner {
            self.slice_owner.remove(&key);
            if let Some(by_name) = self.slices.get_mut(&owner) {
                by_name.remove(&key.name);
                if by_name.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            self.dirty.insert(owner);
        }
        if let Some(slice) = slice {
            let owner = slice.service.clone();
            self.slice_owner.insert(key.clone(), owner.clone());
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(key.name, slice);
            self.dirty.insert(owner);
        }
        if let Some(t) = trigger.filter(|t| *t > self.started) {
            self.tracker.add_trigger_time(t);
        }
    }

    /// Recomputes the node facts; when the zone changed, every entry's categorization may
    /// have changed with it. (IPs and pod CIDRs are not part of any entry: the tracker turns
    /// their change into a full sync.)
    fn update_node(&mut self) {
        let info = self.node_info();
        let zone_changed = info.zone != self.tracker.state().node.zone;
        if self.tracker.set_node(info) && zone_changed {
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    fn node_info(&self) -> NodeInfo {
        let facts = self.node.clone().unwrap_or_default();
        let ips = convert::first_per_family(
            self.override_node_ips
                .iter()
                .chain(&facts.ips)
                .chain(&self.fallback_node_ips)
                .copied(),
        );
        let mut service_cidrs: Vec<ipnet::IpNet> =
            self.service_cidrs.values().flatten().copied().collect();
        service_cidrs.sort();
        service_cidrs.dedup();
        NodeInfo {
            name: self.node_name.clone(),
            zone: facts.zone,
            ips,
            pod_cidrs: facts.pod_cidrs,
            service_cidrs,
        }
    }

    fn rebuild_dirty(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            self.rebuild_service(&key);
        }
    }

    /// Recomputes the entries of one Service in both families and hands them to the
    /// tracker. Costs O(ports × endpoints of this Service) plus a log-time lookup.
    fn rebuild_service(&mut self, key: &ObjectKey) {
        for (family, entries) in IpFamily::ALL.into_iter().zip(self.entries(key)) {
            self.tracker
                .replace_service(family, &key.namespace, &key.name, entries);
        }
    }

    /// The entries of Service `key` from the objects held, IPv4 first.
    fn entries(&self, key: &ObjectKey) -> [Vec<ServiceEntry>; 2] {
        let node = &self.tracker.state().node;
        let slices = self.slices.get(key);
        let mut out: [Vec<ServiceEntry>; 2] = Default::default();
        for port in self.services.get(key).into_iter().flatten() {
            let endpoints = slices.map(|s| merge_endpoints(s, port)).unwrap_or_default();
            out[family_index(port.family)].push(ServiceEntry::new(port.clone(), endpoints, node));
        }
        out
    }
}

fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// The endpoints of `port` across a Service's slices, one per `ip:port`. The same address
/// shows up twice while an endpoint moves between slices, or when the pod network reuses
/// the IP of a terminating pod: as upstream, a non-terminating copy wins over a terminating
/// one; otherwise the first slice by name wins (upstream leaves that to map order).
fn merge_endpoints(slices: &BTreeMap<String, SliceEndpoints>, port: &ServicePort) -> Vec<Endpoint> {
    let mut merged: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in slices.values().filter(|s| s.family == port.family) {
        let matching = slice
            .ports
            .iter()
            .filter(|p| p.name == port.name.port && p.protocol == port.name.protocol);
        for slice_port in matching {
            for ep in &slice.endpoints {
                let key = (ep.ip, slice_port.port);
                let replaces = merged
                    .get(&key)
                    .is_none_or(|have| have.terminating && !ep.terminating);
                if replaces {
                    let ep = Endpoint {
                        port: slice_port.port,
                        ..ep.clone()
                    };
                    merged.insert(key, ep);
                }
            }
        }
    }
    merged.into_values().collect()
}

/// The keys of listed objects that have one.
fn listed_keys(objects: &[&Object]) -> HashSet<ObjectKey> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => convert::object_key("Service", &s.metadata).ok(),
            Object::EndpointSlice(s) => convert::object_key("EndpointSlice", &s.metadata).ok(),
            Object::Node(n) => convert::object_key("Node", &n.metadata).ok(),
            Object::ServiceCidr(s) => convert::object_key("ServiceCIDR", &s.metadata).ok(),
        })
        .collect()
}

fn logged_key(
    kind: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectKey> {
    convert::object_key(kind, meta)
        .inspect_err(|e| tracing::warn!("{e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::manifest::listed_events;
    use kube_proxy_model::{Protocol, ServicePortName};
    use serde_json::{json, Value};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> Box<T> {
        Box::new(serde_json::from_value(v).expect("test object deserializes"))
    }

    /// A Service `ns/name` with `cluster_ips` and ports `(name, port, protocol)`.
    fn service(
        name: &str,
        cluster_ips: &[&str],
        ports: &[(&str, u16, &str)],
        extra: Value,
    ) -> Object {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
            .collect();
        let mut spec =
            json!({"clusterIP": cluster_ips[0], "clusterIPs": cluster_ips, "ports": ports});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        Object::Service(from(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        })))
    }

    /// An endpoint: address, node, ready, zone hint.
    type Ep<'a> = (&'a str, Option<&'a str>, bool, Option<&'a str>);

    fn slice(
        name: &str,
        svc: &str,
        family: &str,
        ports: &[(&str, u16, &str)],
        eps: &[Ep],
    ) -> Object {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
            .collect();
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, node, ready, zone)| {
                let mut ep =
                    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready}});
                if let Some(node) = node {
                    ep["nodeName"] = json!(node);
                }
                if let Some(zone) = zone {
                    ep["hints"] = json!({"forZones": [{"name": zone}]});
                }
                ep
            })
            .collect();
        Object::EndpointSlice(from(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "ns", "labels": {convert::LABEL_SERVICE_NAME: svc}},
            "addressType": family, "ports": ports, "endpoints": eps,
        })))
    }

    fn node(name: &str, zone: Option<&str>, ips: &[&str]) -> Object {
        let labels = zone.map(|z| json!({kube_proxy_model::LABEL_TOPOLOGY_ZONE: z}));
        let addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        Object::Node(from(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addresses},
        })))
    }

    fn service_cidr(name: &str, cidrs: &[&str]) -> Object {
        Object::ServiceCidr(from(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": name}, "spec": {"cidrs": cidrs},
        })))
    }

    const HTTP: (&str, u16, &str) = ("http", 80, "TCP");
    const HTTP_TARGET: (&str, u16, &str) = ("http", 8080, "TCP");

    fn synced(objects: Vec<Object>) -> ModelBuilder {
        let mut b = ModelBuilder::new("node-a".into(), Vec::new());
        for ev in listed_events(objects) {
            b.handle(ev);
        }
        b.take_changes();
        b
    }

    fn web_port() -> ServicePortName {
        ServicePortName {
            namespace: "ns".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        }
    }

    fn endpoints(b: &ModelBuilder, family: IpFamily) -> Vec<String> {
        let entry = &b.state().services(family)[&web_port()];
        entry.endpoints.iter().map(|e| e.to_string()).collect()
    }

    fn changed(changes: &Changes) -> Vec<String> {
        changes.services.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn nothing_is_synced_before_node_services_and_slices_are_listed() {
        let mut b = ModelBuilder::new("node-a".into(), Vec::new());
        assert!(!b.is_synced());
        b.handle(SourceEvent::Listed(Kind::Service, Vec::new()));
        b.handle(SourceEvent::Listed(Kind::EndpointSlice, Vec::new()));
        assert!(!b.is_synced(), "Node not listed yet");
        b.handle(SourceEvent::Listed(Kind::Node, Vec::new()));
        assert!(b.is_synced());
        let mut b = ModelBuilder::new("node-a".into(), Vec::new());
        b.handle(SourceEvent::Listed(Kind::Node, Vec::new()));
        b.handle(SourceEvent::Applied(service(
            "web",
            &["10.96.0.1"],
            &[HTTP],
            json!({}),
        )));
        b.handle(SourceEvent::Listed(Kind::Service, Vec::new()));
        assert!(!b.is_synced(), "EndpointSlices not listed yet");
        b.handle(SourceEvent::Listed(Kind::EndpointSlice, Vec::new()));
        assert!(b.is_synced());
        let (state, changes) = b.take_changes();
        assert!(changes.full, "first sync is full");
        assert!(
            state.v4.is_empty(),
            "the Service applied before the list is not in it"
        );
        assert!(!b.take_changes().1.full);
    }

    #[test]
    fn slices_are_merged_changed_and_deleted_independently() {
        let svc = service("web", &["10.96.0.1"], &[HTTP], json!({}));
        let a = slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", Some("node-a"), true, None)],
        );
        let b_ = slice(
            "web-b",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.2", Some("node-b"), true, None)],
        );
        let mut b = synced(vec![svc, a.clone(), b_]);
        assert_eq!(
            endpoints(&b, IpFamily::V4),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert!(b.state().v4[&web_port()].endpoints[0].is_local);

        let b2 = slice(
            "web-b",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.3", None, true, None)],
        );
        b.handle(SourceEvent::Applied(b2));
        assert_eq!(
            endpoints(&b, IpFamily::V4),
            ["10.0.0.1:8080", "10.0.0.3:8080"]
        );

        b.handle(SourceEvent::Deleted(a));
        assert_eq!(endpoints(&b, IpFamily::V4), ["10.0.0.3:8080"]);
        let (_, changes) = b.take_changes();
        assert_eq!(changed(&changes), ["ns/web:http"]);
        assert!(!changes.full);
    }

    #[test]
    fn a_batch_ends_where_the_same_events_one_by_one_end() {
        let svc = service("web", &["10.96.0.1"], &[HTTP], json!({}));
        let version = |n: u8, name: &str| {
            let ip = format!("10.0.{n}.1");
            slice(
                name,
                "web",
                "IPv4",
                &[HTTP_TARGET],
                &[(&ip, None, true, None)],
            )
        };
        let events = || {
            vec![
                SourceEvent::Applied(version(1, "web-a")),
                SourceEvent::Applied(version(2, "web-b")),
                SourceEvent::Applied(version(3, "web-a")),
                SourceEvent::Deleted(version(2, "web-b")),
            ]
        };
        let mut one_by_one = synced(vec![svc.clone()]);
        for ev in events() {
            one_by_one.handle(ev);
        }
        let mut batched = synced(vec![svc]);
        batched.handle_all(events());
        assert_eq!(endpoints(&batched, IpFamily::V4), ["10.0.3.1:8080"]);
        assert_eq!(batched.state(), one_by_one.state());
        assert_eq!(changed(&batched.take_changes().1), ["ns/web:http"]);
    }

    #[test]
    fn duplicate_endpoints_across_slices_prefer_non_terminating_then_the_first_slice() {
        let svc = service("web", &["10.96.0.1"], &[HTTP], json!({}));
        let old = |name: &str| {
            let Object::EndpointSlice(mut s) = slice(
                name,
                "web",
                "IPv4",
                &[HTTP_TARGET],
                &[("10.0.0.1", None, false, None)],
            ) else {
                unreachable!()
            };
            s.endpoints[0].conditions.as_mut().unwrap().terminating = Some(true);
            Object::EndpointSlice(s)
        };
        let new = |name: &str| {
            slice(
                name,
                "web",
                "IPv4",
                &[HTTP_TARGET],
                &[("10.0.0.1", Some("node-a"), true, None)],
            )
        };
        for (a, z) in [(old("web-a"), new("web-z")), (new("web-a"), old("web-z"))] {
            let b = synced(vec![svc.clone(), a, z]);
            let ep = &b.state().v4[&web_port()].endpoints;
            assert_eq!(ep.len(), 1);
            assert!(
                ep[0].ready && !ep[0].terminating,
                "the running pod's copy wins"
            );
        }

        let a = slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, false, None)],
        );
        let z = slice(
            "web-z",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, true, None)],
        );
        let b = synced(vec![svc, a, z]);
        assert!(
            !b.state().v4[&web_port()].endpoints[0].ready,
            "web-a sorts first"
        );
    }

    #[test]
    fn slices_match_service_ports_by_name_protocol_and_family() {
        let svc = service(
            "web",
            &["10.96.0.1", "fd00::1"],
            &[HTTP, ("dns", 53, "UDP")],
            json!({"ipFamilies": ["IPv4", "IPv6"]}),
        );
        let v4 = slice(
            "web-4",
            "web",
            "IPv4",
            &[HTTP_TARGET, ("dns", 5353, "TCP"), ("other", 9, "TCP")],
            &[("10.0.0.1", None, true, None)],
        );
        let v6 = slice(
            "web-6",
            "web",
            "IPv6",
            &[HTTP_TARGET],
            &[("fd00::10", None, true, None)],
        );
        let b = synced(vec![svc, v4, v6]);
        assert_eq!(endpoints(&b, IpFamily::V4), ["10.0.0.1:8080"]);
        assert_eq!(endpoints(&b, IpFamily::V6), ["[fd00::10]:8080"]);
        let dns = ServicePortName {
            port: "dns".into(),
            protocol: Protocol::Udp,
            ..web_port()
        };
        assert!(
            b.state().v4[&dns].endpoints.is_empty(),
            "dns/TCP in the slice is not dns/UDP"
        );
        assert_eq!(b.state().v4.len(), 2);
    }

    #[test]
    fn a_slice_can_arrive_before_its_service_and_move_to_another_service() {
        let mut b = synced(Vec::new());
        let s = slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, true, None)],
        );
        b.handle(SourceEvent::Applied(s));
        assert!(b.take_changes().1.is_empty());
        b.handle(SourceEvent::Applied(service(
            "web",
            &["10.96.0.1"],
            &[HTTP],
            json!({}),
        )));
        b.handle(SourceEvent::Applied(service(
            "api",
            &["10.96.0.2"],
            &[HTTP],
            json!({}),
        )));
        assert_eq!(endpoints(&b, IpFamily::V4), ["10.0.0.1:8080"]);
        b.take_changes();

        let moved = slice(
            "web-a",
            "api",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, true, None)],
        );
        b.handle(SourceEvent::Applied(moved));
        assert!(endpoints(&b, IpFamily::V4).is_empty());
        assert_eq!(changed(&b.take_changes().1), ["ns/api:http", "ns/web:http"]);
    }

    #[test]
    fn relist_removes_phantoms_and_an_identical_relist_changes_nothing() {
        let web = service("web", &["10.96.0.1"], &[HTTP], json!({}));
        let api = service("api", &["10.96.0.2"], &[HTTP], json!({}));
        let s = slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, true, None)],
        );
        let mut b = synced(vec![web.clone(), api.clone(), s.clone()]);

        for ev in listed_events(vec![web.clone(), api.clone(), s.clone()]) {
            b.handle(ev);
        }
        assert!(b.take_changes().1.is_empty(), "relist of the same objects");

        b.handle(SourceEvent::Listed(Kind::Service, vec![web]));
        b.handle(SourceEvent::Listed(Kind::EndpointSlice, Vec::new()));
        let (state, changes) = b.take_changes();
        assert_eq!(changed(&changes), ["ns/api:http", "ns/web:http"]);
        assert_eq!(state.v4.len(), 1);
        assert!(endpoints(&b, IpFamily::V4).is_empty());
    }

    #[test]
    fn an_event_for_one_service_reports_only_that_service() {
        let mut objects: Vec<Object> = (0..50)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &[&format!("10.96.0.{i}")],
                    &[HTTP],
                    json!({}),
                )
            })
            .collect();
        objects.push(service("web", &["10.96.1.1"], &[HTTP], json!({})));
        let mut b = synced(objects);
        b.handle(SourceEvent::Applied(slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[("10.0.0.1", None, true, None)],
        )));
        b.handle(SourceEvent::Applied(service(
            "s7",
            &["10.96.0.7"],
            &[("http", 81, "TCP")],
            json!({}),
        )));
        b.handle(SourceEvent::Applied(service(
            "s8",
            &["10.96.0.8"],
            &[HTTP],
            json!({}),
        )));
        let (_, changes) = b.take_changes();
        assert_eq!(
            changed(&changes),
            ["ns/s7:http", "ns/web:http"],
            "s8 did not change"
        );
    }

    #[test]
    fn a_zone_change_recategorizes_and_forces_a_full_sync() {
        let svc = service("web", &["10.96.0.1"], &[HTTP], json!({}));
        let s = slice(
            "web-a",
            "web",
            "IPv4",
            &[HTTP_TARGET],
            &[
                ("10.0.0.1", None, true, Some("zone-a")),
                ("10.0.0.2", None, true, Some("zone-b")),
            ],
        );
        let mut b = synced(vec![node("node-a", Some("zone-a"), &["192.0.2.1"]), svc, s]);
        let cluster = |b: &ModelBuilder| -> Vec<String> {
            let e = &b.state().v4[&web_port()];
            e.categorized
                .cluster
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert_eq!(cluster(&b), ["10.0.0.1:8080"]);

        b.handle(SourceEvent::Applied(node(
            "node-b",
            Some("zone-c"),
            &["192.0.2.2"],
        )));
        assert!(
            b.take_changes().1.is_empty(),
            "another node changes nothing"
        );

        b.handle(SourceEvent::Applied(node(
            "node-a",
            Some("zone-b"),
            &["192.0.2.1"],
        )));
        assert_eq!(cluster(&b), ["10.0.0.2:8080"]);
        let (state, changes) = b.take_changes();
        assert!(changes.full);
        assert_eq!(changed(&changes), ["ns/web:http"]);
        assert_eq!(state.node.zone.as_deref(), Some("zone-b"));

        b.handle(SourceEvent::Deleted(node(
            "node-a",
            Some("zone-b"),
            &["192.0.2.1"],
        )));
        assert_eq!(
            cluster(&b),
            ["10.0.0.1:8080", "10.0.0.2:8080"],
            "no zone: no topology"
        );
    }

    #[test]
    fn node_eligibility_follows_our_node_only_and_does_not_force_a_full_sync() {
        let mut b = synced(vec![node("node-a", None, &["192.0.2.1"])]);
        assert!(b.node_eligible());
        let tainted = |name: &str| {
            Object::Node(from(json!({
                "metadata": {"name": name},
                "spec": {"taints": [{"key": convert::TAINT_TO_BE_DELETED, "effect": "NoSchedule"}]},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
            })))
        };
        b.handle(SourceEvent::Applied(tainted("node-b")));
        assert!(b.node_eligible(), "another node's taint is not ours");
        b.handle(SourceEvent::Applied(tainted("node-a")));
        assert!(!b.node_eligible());
        assert!(
            !b.take_changes().1.full,
            "eligibility is not a rules change"
        );
        b.handle(SourceEvent::Applied(node("node-a", None, &["192.0.2.1"])));
        assert!(b.node_eligible(), "the taint was removed");
    }

    #[test]
    fn a_deleted_node_stays_ineligible_until_it_comes_back() {
        let mut b = synced(vec![node("node-a", None, &["192.0.2.1"])]);
        b.handle(SourceEvent::Deleted(node("node-b", None, &["192.0.2.2"])));
        assert!(b.node_eligible(), "another node's deletion is not ours");
        b.handle(SourceEvent::Deleted(node("node-a", None, &["192.0.2.1"])));
        assert!(!b.node_eligible(), "our Node is gone");
        b.handle(SourceEvent::Applied(node("node-a", None, &["192.0.2.1"])));
        assert!(b.node_eligible(), "our Node is back");
        // Deleted while the watch was down: the relist no longer holds it.
        b.handle(SourceEvent::Listed(Kind::Node, Vec::new()));
        assert!(!b.node_eligible(), "missing from the relist");
        b.handle(SourceEvent::Listed(Kind::Node, Vec::new()));
        assert!(!b.node_eligible(), "still missing");
        let listed = vec![node("node-a", None, &["192.0.2.1"])];
        b.handle(SourceEvent::Listed(Kind::Node, listed));
        assert!(b.node_eligible(), "listed again");
        // A Node list that never held ours (it was not created yet) is a starting node.
        let mut fresh = synced(Vec::new());
        fresh.handle(SourceEvent::Listed(Kind::Node, Vec::new()));
        assert!(fresh.node_eligible());
    }

    #[test]
    fn node_ips_fall_back_per_family_and_service_cidrs_are_merged() {
        let fallback = vec![
            "198.51.100.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        let mut b = ModelBuilder::new("Node-A ".into(), fallback.clone());
        assert_eq!(b.state().node.name, "node-a");
        assert_eq!(b.state().node.ips, fallback);
        b.handle(SourceEvent::Applied(node("node-a", None, &["192.0.2.1"])));
        let want: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        assert_eq!(b.state().node.ips, want);
        b.take_changes();
        b.override_node_ips(vec!["2001:db8::99".parse().unwrap()]);
        let want: Vec<IpAddr> = vec![
            "2001:db8::99".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        ];
        assert_eq!(
            b.state().node.ips,
            want,
            "a bind address wins and becomes primary"
        );
        assert!(b.take_changes().1.full, "node IPs changed");

        b.handle(SourceEvent::Applied(service_cidr(
            "b",
            &["fd00::/112", "10.96.0.0/16"],
        )));
        b.handle(SourceEvent::Applied(service_cidr(
            "a",
            &["10.96.0.0/16", "10.97.0.0/16"],
        )));
        let cidrs: Vec<String> = b
            .state()
            .node
            .service_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(cidrs, ["10.96.0.0/16", "10.97.0.0/16", "fd00::/112"]);
        b.handle(SourceEvent::Deleted(service_cidr("b", &[])));
        assert_eq!(b.state().node.service_cidrs.len(), 2);
    }

    #[test]
    fn a_service_that_becomes_unusable_loses_its_entries_and_nothing_else() {
        let mut b = synced(vec![
            service("web", &["10.96.0.1"], &[HTTP], json!({})),
            service("api", &["10.96.0.2"], &[HTTP], json!({})),
        ]);
        b.handle(SourceEvent::Applied(service(
            "web",
            &["10.96.0.1"],
            &[HTTP],
            json!({"type": "Bogus"}),
        )));
        b.handle(SourceEvent::Applied(service(
            "api",
            &["not-an-ip"],
            &[HTTP],
            json!({"type": "Bogus"}),
        )));
        let nameless = Object::Service(from(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {}}),
        ));
        b.handle(SourceEvent::Applied(nameless));
        let (state, changes) = b.take_changes();
        assert_eq!(changed(&changes), ["ns/api:http", "ns/web:http"]);
        assert!(state.v4.is_empty());
    }

    #[test]
    fn trigger_times_count_only_for_changed_slices_after_start() {
        let mut b = synced(vec![service("web", &["10.96.0.1"], &[HTTP], json!({}))]);
        let stamped = |t: &str, ip: &str| {
            let Object::EndpointSlice(mut s) = slice(
                "web-a",
                "web",
                "IPv4",
                &[HTTP_TARGET],
                &[(ip, None, true, None)],
            ) else {
                unreachable!()
            };
            s.metadata.annotations = Some(
                [(
                    convert::ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
                    t.to_string(),
                )]
                .into(),
            );
            Object::EndpointSlice(s)
        };
        b.handle(SourceEvent::Applied(stamped(
            "2000-01-01T00:00:00Z",
            "10.0.0.1",
        )));
        assert!(
            b.take_changes().1.trigger_times.is_empty(),
            "older than the proxy"
        );
        b.handle(SourceEvent::Applied(stamped(
            "2999-01-01T00:00:00Z",
            "10.0.0.2",
        )));
        b.handle(SourceEvent::Applied(stamped(
            "2999-01-01T00:00:01Z",
            "10.0.0.2",
        )));
        assert_eq!(
            b.take_changes().1.trigger_times.len(),
            1,
            "the second apply changed nothing"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const ZONES: [Option<&str>; 3] = [None, Some("zone-a"), Some("zone-b")];
        const PORT_SETS: [&[(&str, u16, &str)]; 3] = [
            &[("http", 80, "TCP")],
            &[("http", 80, "TCP"), ("dns", 53, "UDP")],
            &[("", 8080, "TCP")],
        ];
        const TARGETS: [&[(&str, u16, &str)]; 4] = [
            &[("http", 8080, "TCP")],
            &[("http", 8081, "TCP"), ("dns", 53, "UDP")],
            &[("", 8080, "TCP")],
            &[],
        ];

        /// One generated object: which slot it occupies and how it looks.
        #[derive(Debug, Clone)]
        enum Gen {
            Service {
                slot: u8,
                families: u8,
                ports: usize,
                etp_local: bool,
                itp_local: bool,
                node_port: bool,
            },
            Slice {
                slot: u8,
                service: u8,
                v6: bool,
                ports: usize,
                eps: Vec<(u8, u8, bool, usize)>,
            },
            Node {
                ours: bool,
                zone: usize,
                ip: u8,
            },
            Cidr {
                slot: u8,
                wide: bool,
            },
        }

        impl Gen {
            fn slot(&self) -> (u8, u8) {
                match self {
                    Gen::Service { slot, .. } => (0, *slot),
                    Gen::Slice { slot, .. } => (1, *slot),
                    Gen::Node { ours, .. } => (2, u8::from(*ours)),
                    Gen::Cidr { slot, .. } => (3, *slot),
                }
            }

            fn object(&self) -> Object {
                match self {
                    Gen::Service {
                        slot,
                        families,
                        ports,
                        etp_local,
                        itp_local,
                        node_port,
                    } => {
                        let v4 = format!("10.96.0.{slot}");
                        let v6 = format!("fd00::{slot}");
                        let ips: Vec<&str> = match families {
                            0 => vec![&v4],
                            1 => vec![&v6],
                            2 => vec![&v4, &v6],
                            _ => vec!["None"],
                        };
                        let mut extra = json!({
                            "externalTrafficPolicy": if *etp_local { "Local" } else { "Cluster" },
                            "internalTrafficPolicy": if *itp_local { "Local" } else { "Cluster" },
                        });
                        if *node_port {
                            extra["type"] = json!("NodePort");
                        }
                        service(&format!("s{slot}"), &ips, PORT_SETS[*ports], extra)
                    }
                    Gen::Slice {
                        slot,
                        service,
                        v6,
                        ports,
                        eps,
                    } => {
                        let addrs: Vec<String> = eps
                            .iter()
                            .map(|(ip, ..)| {
                                if *v6 {
                                    format!("fd00:10::{ip}")
                                } else {
                                    format!("10.0.0.{ip}")
                                }
                            })
                            .collect();
                        let nodes = [None, Some("node-a"), Some("node-b")];
                        let eps: Vec<Ep> = eps
                            .iter()
                            .zip(&addrs)
                            .map(|((_, node, ready, zone), a)| {
                                (a.as_str(), nodes[*node as usize], *ready, ZONES[*zone])
                            })
                            .collect();
                        let family = if *v6 { "IPv6" } else { "IPv4" };
                        slice(
                            &format!("e{slot}"),
                            &format!("s{service}"),
                            family,
                            TARGETS[*ports],
                            &eps,
                        )
                    }
                    Gen::Node { ours, zone, ip } => {
                        let name = if *ours { "node-a" } else { "node-b" };
                        node(name, ZONES[*zone], &[&format!("192.0.2.{ip}")])
                    }
                    Gen::Cidr { slot, wide } => service_cidr(
                        &format!("c{slot}"),
                        &[if *wide {
                            "10.96.0.0/12"
                        } else {
                            "10.96.0.0/16"
                        }],
                    ),
                }
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Apply(Gen),
            /// Deletes whatever occupies the slot of this generated object.
            Delete(Gen),
            Take,
        }

        fn gen() -> impl Strategy<Value = Gen> {
            let ep = (0u8..4, 0u8..3, any::<bool>(), 0usize..3);
            prop_oneof![
                4 => (0u8..3, 0u8..4, 0usize..3, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                    |(slot, families, ports, etp_local, itp_local, node_port)| Gen::Service {
                        slot, families, ports, etp_local, itp_local, node_port
                    }
                ),
                6 => (0u8..4, 0u8..3, any::<bool>(), 0usize..4, proptest::collection::vec(ep, 0..4))
                    .prop_map(|(slot, service, v6, ports, eps)| Gen::Slice { slot, service, v6, ports, eps }),
                2 => (any::<bool>(), 0usize..3, 1u8..3).prop_map(|(ours, zone, ip)| Gen::Node { ours, zone, ip }),
                1 => (0u8..2, any::<bool>()).prop_map(|(slot, wide)| Gen::Cidr { slot, wide }),
            ]
        }

        fn ops() -> impl Strategy<Value = Vec<Op>> {
            let op = prop_oneof![
                6 => gen().prop_map(Op::Apply),
                2 => gen().prop_map(Op::Delete),
                1 => Just(Op::Take),
            ];
            proptest::collection::vec(op, 0..40)
        }

        /// The service ports whose entry differs between two states, in either family.
        fn differing(a: &ProxyState, b: &ProxyState) -> BTreeSet<ServicePortName> {
            let mut out = BTreeSet::new();
            for family in IpFamily::ALL {
                let (x, y) = (a.services(family), b.services(family));
                for name in x.keys().chain(y.keys()) {
                    if x.get(name) != y.get(name) {
                        out.insert(name.clone());
                    }
                }
            }
            out
        }

        /// Plays one op on the objects `current` in the cluster and, unless the watch is
        /// down (`b` is `None`), on the builder. Returns false for `Take`.
        fn step(
            op: &Op,
            current: &mut BTreeMap<(u8, u8), Object>,
            b: Option<&mut ModelBuilder>,
        ) -> bool {
            let ev = match op {
                Op::Apply(g) => {
                    current.insert(g.slot(), g.object());
                    SourceEvent::Applied(g.object())
                }
                // A watch delivers the last state of the deleted object.
                Op::Delete(g) => match current.remove(&g.slot()) {
                    Some(obj) => SourceEvent::Deleted(obj),
                    None => return true,
                },
                Op::Take => return false,
            };
            if let Some(b) = b {
                b.handle(ev);
            }
            true
        }

        fn fresh_state(objects: Vec<Object>, fallback: Vec<IpAddr>) -> ProxyState {
            let mut fresh = ModelBuilder::new("node-a".into(), fallback);
            for ev in listed_events(objects) {
                fresh.handle(ev);
            }
            fresh.state().clone()
        }

        /// Takes the changes and checks they name exactly the ports that differ from `last`.
        fn take_exact(b: &mut ModelBuilder, last: &mut ProxyState) -> Result<(), TestCaseError> {
            let (state, changes) = b.take_changes();
            prop_assert_eq!(&changes.services, &differing(last, &state));
            *last = state;
            Ok(())
        }

        proptest! {
            // Failures print their shrunk input; no regression files in the tree.
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            #[test]
            fn events_converge_to_a_fresh_list_and_changes_are_exact(ops in ops()) {
                let fallback: Vec<IpAddr> = vec!["2001:db8::9".parse().unwrap()];
                let mut b = ModelBuilder::new("node-a".into(), fallback.clone());
                let mut current = BTreeMap::new();
                let mut last = ProxyState::default();
                for op in &ops {
                    if !step(op, &mut current, Some(&mut b)) {
                        take_exact(&mut b, &mut last)?;
                    }
                }
                take_exact(&mut b, &mut last)?;
                prop_assert_eq!(b.state(), &fresh_state(current.into_values().collect(), fallback));
            }

            #[test]
            fn a_relist_after_missed_events_leaves_no_phantoms(seen in ops(), missed in ops()) {
                let mut b = ModelBuilder::new("node-a".into(), Vec::new());
                let mut current = BTreeMap::new();
                for op in &seen {
                    step(op, &mut current, Some(&mut b));
                }
                let mut last = b.take_changes().0;
                // The watch was down (410 Gone) while `missed` happened; then a relist.
                for op in &missed {
                    step(op, &mut current, None);
                }
                let objects: Vec<Object> = current.into_values().collect();
                for ev in listed_events(objects.clone()) {
                    b.handle(ev);
                }
                prop_assert_eq!(b.state(), &fresh_state(objects, Vec::new()));
                take_exact(&mut b, &mut last)?;
            }
        }
    }
}
