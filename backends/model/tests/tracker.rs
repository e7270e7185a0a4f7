//! Tests of [`ChangeTracker`]: property tests that drive it with random operation sequences
//! against a plain reference model, and a few example tests that read as documentation.
//!
//! The reference model is deliberately naive: it keeps the current contents of every
//! `(family, port)` key and a copy of the contents as of the last `take()`, and derives the
//! expected change set by comparing the two. The tracker must agree with it without ever
//! comparing whole snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube_proxy_model::{
    ChangeTracker, Endpoint, IpFamily, NodeInfo, Protocol, ProxyState, ServiceEntry, ServicePort,
    ServicePortName,
};
use proptest::prelude::*;

/// Namespaces and Service names the generated operations use: four Services in all.
const SERVICES: [(&str, &str); 4] = [("a", "web"), ("a", "db"), ("b", "web"), ("b", "dns")];

/// Port names (with protocol) each Service may have. Two share the name `dns` and differ only
/// by protocol, so keys that are equal up to protocol are exercised too.
const PORTS: [(&str, Protocol); 3] = [
    ("http", Protocol::Tcp),
    ("dns", Protocol::Udp),
    ("dns", Protocol::Tcp),
];

/// Versions an entry can take. Few, so that sequences often set a port back to an earlier
/// value (the coalescing case).
const VERSIONS: u8 = 3;

/// The node every entry is categorized for. Entries carry no topology hints, so their
/// categorization does not depend on which [`node`] the tracker is told about.
fn builder_node() -> NodeInfo {
    NodeInfo {
        name: "node-1".into(),
        ..NodeInfo::default()
    }
}

/// The node facts `set_node` is given: same name, differing zone.
fn node(i: u8) -> NodeInfo {
    NodeInfo {
        name: "node-1".into(),
        zone: Some(format!("zone-{i}")),
        ..NodeInfo::default()
    }
}

fn port_name(service: usize, port: usize) -> ServicePortName {
    let (namespace, name) = SERVICES[service];
    let (port, protocol) = PORTS[port];
    ServicePortName {
        namespace: namespace.into(),
        name: name.into(),
        port: port.into(),
        protocol,
    }
}

/// A host address of `family`, distinct for distinct `n`.
fn addr(family: IpFamily, n: u16) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)),
    }
}

/// The entry of port `name` in `family` at `version`: the version changes the port number
/// and the number of endpoints, so different versions are different entries.
fn entry(family: IpFamily, name: &ServicePortName, version: u8) -> ServiceEntry {
    let port = ServicePort::new(name.clone(), addr(family, 1), 8000 + u16::from(version));
    let endpoints = (0..u16::from(version))
        .map(|i| Endpoint::ready(addr(family, 100 + i), 8080, i == 0))
        .collect();
    ServiceEntry::new(port, endpoints, &builder_node())
}

/// One call on the tracker.
#[derive(Debug, Clone)]
enum Op {
    /// `set` one port to a version, or remove it.
    Set {
        family: IpFamily,
        service: usize,
        port: usize,
        version: Option<u8>,
    },
    /// `replace_service` with these ports at these versions (a valid Service never lists
    /// the same port twice).
    Replace {
        family: IpFamily,
        service: usize,
        ports: BTreeMap<usize, u8>,
    },
    /// `set_node` with [`node`]`(i)`.
    Node(u8),
    /// `add_trigger_time` at this many seconds after the epoch.
    Trigger(u64),
    /// `take()`: a sync.
    Take,
}

/// Either IP family.
fn family() -> impl Strategy<Value = IpFamily> {
    prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]
}

/// Any operation, weighted towards port changes so that sequences touch the same keys often.
fn op() -> impl Strategy<Value = Op> {
    let service = 0..SERVICES.len();
    let port = 0..PORTS.len();
    prop_oneof![
        6 => (family(), service.clone(), port.clone(), proptest::option::of(0..VERSIONS))
            .prop_map(|(family, service, port, version)| Op::Set { family, service, port, version }),
        3 => (family(), service, proptest::collection::btree_map(port, 0..VERSIONS, 0..=PORTS.len()))
            .prop_map(|(family, service, ports)| Op::Replace { family, service, ports }),
        1 => (0..3u8).prop_map(Op::Node),
        1 => (0..1_000_000u64).prop_map(Op::Trigger),
        2 => Just(Op::Take),
    ]
}

type Key = (IpFamily, ServicePortName);

/// The reference model the tracker is checked against.
struct Model {
    /// Current contents.
    contents: BTreeMap<Key, ServiceEntry>,
    /// Contents as of the last `take()`.
    synced: BTreeMap<Key, ServiceEntry>,
    node: NodeInfo,
    node_changed: bool,
    triggers: Vec<SystemTime>,
}

impl Model {
    fn new(node: NodeInfo) -> Self {
        Model {
            contents: BTreeMap::new(),
            synced: BTreeMap::new(),
            node,
            node_changed: false,
            triggers: Vec::new(),
        }
    }

    /// Sets or removes one key; returns whether the contents changed.
    fn set(&mut self, key: Key, value: Option<ServiceEntry>) -> bool {
        let old = match value {
            Some(v) => self.contents.insert(key.clone(), v),
            None => self.contents.remove(&key),
        };
        old.as_ref() != self.contents.get(&key)
    }

    /// Keys whose current value differs from the synced one.
    fn differing(&self) -> BTreeSet<&Key> {
        let keys: BTreeSet<&Key> = self.contents.keys().chain(self.synced.keys()).collect();
        keys.into_iter()
            .filter(|k| self.contents.get(*k) != self.synced.get(*k))
            .collect()
    }

    /// The port names `take()` must report.
    fn expected_services(&self) -> BTreeSet<ServicePortName> {
        self.differing()
            .into_iter()
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// The state built directly from the current contents.
    fn state(&self) -> ProxyState {
        let mut state = ProxyState {
            node: self.node.clone(),
            ..ProxyState::default()
        };
        for ((family, name), e) in &self.contents {
            let map = match family {
                IpFamily::V4 => &mut state.v4,
                IpFamily::V6 => &mut state.v6,
            };
            map.insert(name.clone(), Arc::new(e.clone()));
        }
        state
    }
}

/// Applies `op` to both the tracker and the model and checks that they agree on everything
/// observable: return values, `has_changes`, `pending`, and for `take()` the change set, the
/// snapshot and the trigger times.
fn step(tracker: &mut ChangeTracker, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Set {
            family,
            service,
            port,
            version,
        } => {
            let name = port_name(*service, *port);
            let value = version.map(|v| entry(*family, &name, v));
            let want = model.set((*family, name.clone()), value.clone());
            let got = tracker.set(*family, name, value.map(Arc::new));
            prop_assert_eq!(got, want, "set's return value");
        }
        Op::Replace {
            family,
            service,
            ports,
        } => {
            let (namespace, svc) = SERVICES[*service];
            let after: BTreeMap<ServicePortName, ServiceEntry> = ports
                .iter()
                .map(|(&port, &version)| {
                    let name = port_name(*service, port);
                    let e = entry(*family, &name, version);
                    (name, e)
                })
                .collect();
            let existing: Vec<Key> = model
                .contents
                .keys()
                .filter(|(f, n)| f == family && n.namespace == namespace && n.name == svc)
                .cloned()
                .collect();
            let mut want = false;
            for key in existing.into_iter().filter(|(_, n)| !after.contains_key(n)) {
                want |= model.set(key, None);
            }
            for (name, e) in &after {
                want |= model.set((*family, name.clone()), Some(e.clone()));
            }
            let entries = after.into_values().collect();
            let got = tracker.replace_service(*family, namespace, svc, entries);
            prop_assert_eq!(got, want, "replace_service's return value");
        }
        Op::Node(i) => {
            let new = node(*i);
            let want = model.node != new;
            model.node_changed |= want;
            model.node = new.clone();
            prop_assert_eq!(tracker.set_node(new), want, "set_node's return value");
        }
        Op::Trigger(secs) => {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*secs);
            model.triggers.push(t);
            tracker.add_trigger_time(t);
        }
        Op::Take => {
            let (snapshot, changes) = tracker.take();
            // (a) exactly the ports that differ from the previous snapshot.
            prop_assert_eq!(
                &changes.services,
                &model.expected_services(),
                "changed services"
            );
            // (c) a node change since the last sync forces a full one.
            prop_assert_eq!(changes.full, model.node_changed, "full");
            // (d) trigger times are handed over once, in the order they were added.
            prop_assert_eq!(&changes.trigger_times, &model.triggers, "trigger times");
            // The snapshot is the model as it is now.
            prop_assert_eq!(&snapshot, &model.state(), "snapshot");
            model.synced = model.contents.clone();
            model.node_changed = false;
            model.triggers.clear();
        }
    }
    let differing = model.differing().len();
    prop_assert_eq!(tracker.pending(), differing, "pending() after {:?}", op);
    prop_assert_eq!(
        tracker.has_changes(),
        model.node_changed || differing > 0,
        "has_changes() after {:?}",
        op
    );
    Ok(())
}

proptest! {
    // No regression files: the tree is shared, and a failure prints its shrunk input.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (a), (c) and (d) at every `take()`, plus agreement of `has_changes`/`pending` after
    /// every operation; then one last `take()` so that trailing changes are checked too.
    #[test]
    fn take_reports_exactly_what_differs(ops in proptest::collection::vec(op(), 0..60)) {
        let mut tracker = ChangeTracker::new(node(0));
        let mut model = Model::new(node(0));
        for op in ops.iter().chain([&Op::Take]) {
            step(&mut tracker, &mut model, op)?;
        }
        // Right after a take nothing is pending, and a second take reports nothing.
        let (_, again) = tracker.take();
        prop_assert!(again.is_empty() && again.trigger_times.is_empty(), "second take: {:?}", again);
    }

    /// (b) the state after any sequence equals the state built directly from the final
    /// contents, whether or not syncs happened in between; and a fresh tracker given only
    /// the final contents reaches the same state, reporting every present port once.
    #[test]
    fn state_depends_only_on_final_contents(ops in proptest::collection::vec(op(), 0..60)) {
        let mut tracker = ChangeTracker::new(node(0));
        let mut model = Model::new(node(0));
        for op in &ops {
            step(&mut tracker, &mut model, op)?;
        }
        let want = model.state();
        prop_assert_eq!(tracker.state(), &want);

        let mut fresh = ChangeTracker::new(model.node.clone());
        // Insert in reverse key order: the result must not depend on the order either.
        for ((family, name), e) in model.contents.iter().rev() {
            fresh.set(*family, name.clone(), Some(Arc::new(e.clone())));
        }
        let (snapshot, changes) = fresh.take();
        prop_assert_eq!(&snapshot, &want);
        let present: BTreeSet<ServicePortName> =
            model.contents.keys().map(|(_, name)| name.clone()).collect();
        prop_assert_eq!(changes.services, present);
        prop_assert!(!changes.full, "a tracker created on its node has no node change");
    }
}

/// The key of `http` of `a/web`, the port the example tests use.
fn web_http() -> ServicePortName {
    port_name(0, 0)
}

fn set_web(tracker: &mut ChangeTracker, family: IpFamily, version: Option<u8>) -> bool {
    let value = version.map(|v| Arc::new(entry(family, &web_http(), v)));
    tracker.set(family, web_http(), value)
}

#[test]
fn add_then_remove_between_syncs_reports_nothing() {
    let mut tracker = ChangeTracker::new(node(0));
    assert!(set_web(&mut tracker, IpFamily::V4, Some(1)));
    assert!(tracker.has_changes());
    assert!(set_web(&mut tracker, IpFamily::V4, None));
    assert!(!tracker.has_changes());
    assert_eq!(tracker.pending(), 0);
    let (state, changes) = tracker.take();
    assert!(changes.is_empty(), "{changes:?}");
    assert!(state.v4.is_empty());
}

#[test]
fn change_and_change_back_reports_nothing_but_other_family_counts() {
    let mut tracker = ChangeTracker::new(node(0));
    set_web(&mut tracker, IpFamily::V4, Some(1));
    tracker.take();

    set_web(&mut tracker, IpFamily::V4, Some(2));
    set_web(&mut tracker, IpFamily::V4, Some(1));
    assert!(tracker.take().1.is_empty());

    // A change in the other family alone reports the port name.
    set_web(&mut tracker, IpFamily::V6, Some(1));
    let (state, changes) = tracker.take();
    assert_eq!(changes.services, BTreeSet::from([web_http()]));
    assert!(state.v4.contains_key(&web_http()) && state.v6.contains_key(&web_http()));
}

#[test]
fn setting_an_equal_entry_is_not_a_change() {
    let mut tracker = ChangeTracker::new(node(0));
    set_web(&mut tracker, IpFamily::V4, Some(1));
    tracker.take();
    assert!(!set_web(&mut tracker, IpFamily::V4, Some(1)));
    assert!(!set_web(&mut tracker, IpFamily::V6, None));
    assert_eq!(tracker.pending(), 0);
    assert!(tracker.take().1.is_empty());
}

#[test]
fn replace_service_removes_ports_it_no_longer_lists() {
    let mut tracker = ChangeTracker::new(node(0));
    let (dns_udp, dns_tcp) = (port_name(0, 1), port_name(0, 2));
    let other = port_name(1, 0);
    let e = |name: &ServicePortName| entry(IpFamily::V4, name, 1);
    tracker.replace_service(IpFamily::V4, "a", "web", vec![e(&web_http()), e(&dns_udp)]);
    tracker.set(IpFamily::V4, other.clone(), Some(Arc::new(e(&other))));
    tracker.take();

    assert!(tracker.replace_service(IpFamily::V4, "a", "web", vec![e(&dns_udp), e(&dns_tcp)]));
    let (state, changes) = tracker.take();
    assert_eq!(
        changes.services,
        BTreeSet::from([web_http(), dns_tcp.clone()])
    );
    let names: BTreeSet<_> = state.v4.keys().cloned().collect();
    assert_eq!(names, BTreeSet::from([other, dns_udp, dns_tcp]));

    // Replacing with nothing removes the Service; doing it again changes nothing.
    assert!(tracker.replace_service(IpFamily::V4, "a", "web", Vec::new()));
    assert!(!tracker.replace_service(IpFamily::V4, "a", "web", Vec::new()));
    assert_eq!(tracker.take().0.v4.len(), 1);
}

#[test]
fn node_change_forces_a_full_sync_once() {
    let mut tracker = ChangeTracker::new(node(0));
    assert!(!tracker.set_node(node(0)), "same node facts are no change");
    assert!(!tracker.has_changes());
    assert!(tracker.set_node(node(1)));
    assert!(tracker.has_changes());
    let (state, changes) = tracker.take();
    assert!(changes.full && !changes.is_empty());
    assert_eq!(state.node, node(1));
    assert!(!tracker.take().1.full);
}

#[test]
fn trigger_times_are_handed_over_once() {
    let mut tracker = ChangeTracker::new(node(0));
    let times: Vec<SystemTime> = [30, 10, 20]
        .iter()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(*s))
        .collect();
    for t in &times {
        tracker.add_trigger_time(*t);
    }
    let (_, changes) = tracker.take();
    assert_eq!(changes.trigger_times, times);
    // Trigger times alone do not make a sync necessary.
    assert!(changes.is_empty());
    assert!(tracker.take().1.trigger_times.is_empty());
}
