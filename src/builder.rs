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
    ServicePortName,
};

use crate::convert::{self, NodeFacts, ObjectKey, SliceEndpoints};
use crate::sources::{Kind, Object, SourceEvent};

/// The current objects and the model built from them.
#[derive(Debug)]
pub struct ModelBuilder {
    node_name: String,
    fallback_node_ips: Vec<IpAddr>,
    /// Our own Node object, once seen.
    node: Option<NodeFacts>,
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
            node: None,
            service_cidrs: BTreeMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            tracker: ChangeTracker::default(),
            listed: HashSet::new(),
            started: SystemTime::now(),
            taken_once: false,
        };
        builder.update_node();
        builder
    }

    /// Folds one event into the model.
    pub fn handle(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Applied(obj) => self.apply(&obj),
            SourceEvent::Deleted(obj) => self.delete(&obj),
            SourceEvent::Listed(kind, objects) => {
                self.relist(kind, &objects);
                self.listed.insert(kind);
            }
        }
    }

    /// True once Services and EndpointSlices have each been listed completely: syncing
    /// earlier would program a partial model and cut traffic to everything not yet seen.
    pub fn is_synced(&self) -> bool {
        self.listed.contains(&Kind::Service) && self.listed.contains(&Kind::EndpointSlice)
    }

    /// The current model.
    pub fn state(&self) -> &ProxyState {
        self.tracker.state()
    }

    /// The change tracker, e.g. to inspect pending changes.
    pub fn tracker_mut(&mut self) -> &mut ChangeTracker {
        &mut self.tracker
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
            self.rebuild_service(&key);
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
            if slice.as_ref().is_none_or(|s| s.service != owner) {
                self.rebuild_service(&owner);
            }
        }
        if let Some(slice) = slice {
            let owner = slice.service.clone();
            self.slice_owner.insert(key.clone(), owner.clone());
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(key.name, slice);
            self.rebuild_service(&owner);
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
            let keys: Vec<ObjectKey> = self.services.keys().cloned().collect();
            for key in keys {
                self.rebuild_service(&key);
            }
        }
    }

    fn node_info(&self) -> NodeInfo {
        let facts = self.node.clone().unwrap_or_default();
        let mut ips = facts.ips;
        for ip in &self.fallback_node_ips {
            if ips
                .iter()
                .all(|have| IpFamily::of(have) != IpFamily::of(ip))
            {
                ips.push(*ip);
            }
        }
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

    /// Recomputes the entries of one Service in both families and hands them to the
    /// tracker. Costs O(ports × endpoints of this Service) plus a log-time lookup.
    fn rebuild_service(&mut self, key: &ObjectKey) {
        let node = self.tracker.state().node.clone();
        let ports = self
            .services
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let slices = self.slices.get(key);
        let mut fresh: [Vec<ServiceEntry>; 2] = Default::default();
        for port in ports {
            let endpoints = slices.map(|s| merge_endpoints(s, port)).unwrap_or_default();
            fresh[family_index(port.family)].push(ServiceEntry::new(
                port.clone(),
                endpoints,
                &node,
            ));
        }
        for (family, entries) in IpFamily::ALL.into_iter().zip(fresh) {
            self.replace_entries(family, key, entries);
        }
    }

    /// Replaces the entries of Service `key` in `family`, looking the old ones up by range
    /// (names sort by namespace, then Service name) instead of scanning every port.
    fn replace_entries(&mut self, family: IpFamily, key: &ObjectKey, entries: Vec<ServiceEntry>) {
        let first = ServicePortName {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            port: String::new(),
            protocol: kube_proxy_model::Protocol::Tcp,
        };
        let mut stale: HashSet<ServicePortName> = self
            .tracker
            .state()
            .services(family)
            .range(first..)
            .map(|(name, _)| name)
            .take_while(|name| name.namespace == key.namespace && name.name == key.name)
            .cloned()
            .collect();
        for entry in entries {
            stale.remove(&entry.port.name);
            self.tracker
                .set(family, entry.port.name.clone(), Some(entry.into()));
        }
        for name in stale {
            self.tracker.set(family, name, None);
        }
    }
}

fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// The endpoints of `port` across a Service's slices, one per `ip:port`. When slices
/// disagree about an endpoint (overlap during a rollout), the first slice by name wins,
/// except that a local copy wins over a remote one, as upstream.
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
                if !merged.contains_key(&key) || ep.is_local {
                    merged.insert(
                        key,
                        Endpoint {
                            port: slice_port.port,
                            ..ep.clone()
                        },
                    );
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
