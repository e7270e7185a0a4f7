//! Coalescing change tracking between syncs, as upstream's change trackers do.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use crate::service::{IpFamily, Protocol, ServicePortName};
use crate::state::{NodeInfo, ProxyState, ServiceEntry};

/// What changed since the previous sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The backend must rebuild all of its state (first sync, periodic resync, after a
    /// failure, or when node facts that every rule depends on changed).
    pub full: bool,
    /// Service ports whose entry differs, in either family, from what the last sync saw
    /// (added, removed or changed). Empty with `full == false` means nothing to do.
    pub services: BTreeSet<ServicePortName>,
    /// `endpoints.kubernetes.io/last-change-trigger-time` of the EndpointSlice changes
    /// folded into this sync, for the network-programming-latency metric.
    pub trigger_times: Vec<SystemTime>,
}

impl Changes {
    /// True when a sync would have nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty()
    }

    /// Changes that force a full sync.
    pub fn full() -> Self {
        Changes {
            full: true,
            ..Changes::default()
        }
    }
}

/// Holds the current model and remembers, for each service port touched since the last
/// sync, what it was at that sync. A port changed and changed back, or added then removed,
/// between two syncs is therefore not reported at all.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    state: ProxyState,
    baseline: HashMap<(IpFamily, ServicePortName), Option<Arc<ServiceEntry>>>,
    node_changed: bool,
    trigger_times: Vec<SystemTime>,
}

impl ChangeTracker {
    /// A tracker over an empty model on the given node.
    pub fn new(node: NodeInfo) -> Self {
        ChangeTracker {
            state: ProxyState {
                node,
                ..ProxyState::default()
            },
            ..Default::default()
        }
    }

    /// The current model, including changes not yet taken.
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// Replaces every port of Service `namespace/name` in `family` with `entries`
    /// (empty removes the Service). Returns whether the model changed.
    pub fn replace_service(
        &mut self,
        family: IpFamily,
        namespace: &str,
        name: &str,
        entries: Vec<ServiceEntry>,
    ) -> bool {
        // Names sort by namespace, then Service name: the old ports are one range, found
        // without scanning every port of the cluster.
        let first = ServicePortName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        let mut stale: BTreeSet<ServicePortName> = self
            .state
            .services(family)
            .range(first..)
            .map(|(k, _)| k)
            .take_while(|k| k.namespace == namespace && k.name == name)
            .cloned()
            .collect();
        let mut changed = false;
        for entry in entries {
            stale.remove(&entry.port.name);
            changed |= self.set(family, entry.port.name.clone(), Some(Arc::new(entry)));
        }
        for k in stale {
            changed |= self.set(family, k, None);
        }
        changed
    }

    /// Sets or removes one service port. Returns whether the model changed.
    pub fn set(
        &mut self,
        family: IpFamily,
        name: ServicePortName,
        entry: Option<Arc<ServiceEntry>>,
    ) -> bool {
        let map = self.state.services_mut(family);
        let current = map.get(&name).cloned();
        if current.as_deref() == entry.as_deref() {
            return false;
        }
        let key = (family, name);
        let baseline = self.baseline.entry(key.clone()).or_insert(current);
        // Back to what the last sync saw: nothing is pending for this port any more.
        let reverted = baseline.as_deref() == entry.as_deref();
        match entry {
            Some(e) => map.insert(key.1.clone(), e),
            None => map.remove(&key.1),
        };
        if reverted {
            self.baseline.remove(&key);
        }
        true
    }

    /// Replaces the node facts. Every entry's categorization depends on them, so callers
    /// rebuild the entries afterwards; the next sync is a full one.
    pub fn set_node(&mut self, node: NodeInfo) -> bool {
        if self.state.node == node {
            return false;
        }
        self.state.node = node;
        self.node_changed = true;
        true
    }

    /// Records an EndpointSlice's last-change-trigger-time for the next sync.
    pub fn add_trigger_time(&mut self, t: SystemTime) {
        self.trigger_times.push(t);
    }

    /// Number of service ports whose change is still pending.
    pub fn pending(&self) -> usize {
        self.baseline.len()
    }

    /// True when [`take`](Self::take) would report something.
    pub fn has_changes(&self) -> bool {
        self.node_changed || self.baseline.iter().any(|(k, v)| self.differs(k, v))
    }

    /// Takes the changes since the last call and a snapshot of the model to sync.
    pub fn take(&mut self) -> (ProxyState, Changes) {
        let baseline = std::mem::take(&mut self.baseline);
        let services = baseline
            .iter()
            .filter(|(k, v)| self.differs(k, v))
            .map(|((_, name), _)| name.clone())
            .collect();
        let changes = Changes {
            full: std::mem::take(&mut self.node_changed),
            services,
            trigger_times: std::mem::take(&mut self.trigger_times),
        };
        (self.state.clone(), changes)
    }

    fn differs(
        &self,
        (family, name): &(IpFamily, ServicePortName),
        was: &Option<Arc<ServiceEntry>>,
    ) -> bool {
        self.state.services(*family).get(name).map(|e| &**e) != was.as_deref()
    }
}
