//! The per-family bookkeeping that makes partial syncs possible: which chains, sets and
//! elements each service port put in the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube_proxy_model::{ServiceMap, ServicePortName};

use crate::plan::{Incompatible, Planner};
use crate::rules::{service_fragment, Context, Fragment};
use crate::table::{ElementValue, SetState, TableState};

/// What one service port owns in the table, so that a later sync can remove it.
#[derive(Debug, Clone, Default)]
struct Footprint {
    chains: Vec<String>,
    sets: Vec<String>,
    elements: Vec<(&'static str, String)>,
}

/// The elements of the shared sets and maps with the service ports that want them. Two
/// ports can want the same key (ports sharing a ClusterIP in `cluster-ips`, or two
/// Services claiming one external IP); the first port by name wins, deterministically.
#[derive(Debug, Default)]
struct Owners {
    by_key: HashMap<(&'static str, String), BTreeMap<ServicePortName, ElementValue>>,
}

impl Owners {
    fn insert(
        &mut self,
        container: &'static str,
        key: String,
        owner: &ServicePortName,
        value: ElementValue,
    ) {
        self.by_key
            .entry((container, key))
            .or_default()
            .insert(owner.clone(), value);
    }

    fn remove(&mut self, container: &'static str, key: &str, owner: &ServicePortName) {
        let k = (container, key.to_string());
        if let Some(owners) = self.by_key.get_mut(&k) {
            owners.remove(owner);
            if owners.is_empty() {
                self.by_key.remove(&k);
            }
        }
    }

    fn effective(&self, container: &'static str, key: &str) -> Option<&ElementValue> {
        self.by_key
            .get(&(container, key.to_string()))
            .and_then(|o| o.values().next())
    }
}

/// The service-owned part of one family's table, as last synced.
#[derive(Debug, Default)]
pub(crate) struct ServiceIndex {
    footprints: HashMap<ServicePortName, Footprint>,
    owners: Owners,
}

impl ServiceIndex {
    /// Rebuilds the index from every service and adds their objects to `desired`, which
    /// holds the skeleton.
    pub fn rebuild(ctx: &Context, services: &ServiceMap, desired: &mut TableState) -> Self {
        let mut index = ServiceIndex::default();
        for (name, entry) in services {
            let fragment = service_fragment(ctx, entry);
            index.record(name, &fragment);
            for set in fragment.sets {
                desired.sets.entry(set.def.name.clone()).or_insert(set);
            }
            desired.chains.extend(fragment.chains);
        }
        for ((container, key), owners) in &index.owners.by_key {
            if let (Some(set), Some(value)) =
                (desired.sets.get_mut(*container), owners.values().next())
            {
                set.elements.insert(key.clone(), value.clone());
            }
        }
        index
    }

    fn record(&mut self, name: &ServicePortName, fragment: &Fragment) {
        let mut fp = Footprint {
            chains: fragment.chains.keys().cloned().collect(),
            sets: fragment.sets.iter().map(|s| s.def.name.clone()).collect(),
            elements: Vec::with_capacity(fragment.elements.len()),
        };
        for e in &fragment.elements {
            self.owners
                .insert(e.container, e.key.clone(), name, e.value.clone());
            fp.elements.push((e.container, e.key.clone()));
        }
        self.footprints.insert(name.clone(), fp);
    }

    /// Plans the changes of the service ports in `changed` against `kernel`.
    pub fn plan_changes<'k>(
        &mut self,
        ctx: &Context,
        services: &ServiceMap,
        changed: &BTreeSet<ServicePortName>,
        kernel: &'k TableState,
    ) -> Result<Planner<'k>, Incompatible> {
        let mut planner = Planner::new(ctx.family, kernel);
        let mut touched: BTreeSet<(&'static str, String)> = BTreeSet::new();
        for name in changed {
            let old = self.footprints.remove(name).unwrap_or_default();
            let fragment = services
                .get(name)
                .map(|e| service_fragment(ctx, e))
                .unwrap_or_default();
            plan_objects(&mut planner, &old, &fragment)?;
            for (container, key) in old.elements {
                self.owners.remove(container, &key, name);
                touched.insert((container, key));
            }
            touched.extend(
                fragment
                    .elements
                    .iter()
                    .map(|e| (e.container, e.key.clone())),
            );
            if services.contains_key(name) {
                self.record(name, &fragment);
            }
        }
        for (container, key) in &touched {
            planner.element(container, key, self.owners.effective(container, key));
        }
        Ok(planner)
    }
}

/// Plans the chains and sets of one service port: what it had and what it needs now.
fn plan_objects(
    planner: &mut Planner,
    old: &Footprint,
    new: &Fragment,
) -> Result<(), Incompatible> {
    // A ClientIP-affinity port has one set per endpoint: look them up, never scan.
    let new_sets: HashMap<&String, &SetState> = new.sets.iter().map(|s| (&s.def.name, s)).collect();
    let sets: BTreeSet<&String> = old.sets.iter().chain(new_sets.keys().copied()).collect();
    for name in sets {
        planner.set(name, new_sets.get(name).map(|s| &s.def))?;
    }
    for set in new.sets.iter().filter(|s| !s.def.is_dynamic()) {
        planner.elements(&set.def.name, &set.elements);
    }
    let chains: BTreeSet<&String> = old.chains.iter().chain(new.chains.keys()).collect();
    for name in chains {
        planner.chain(name, new.chains.get(name))?;
    }
    Ok(())
}
