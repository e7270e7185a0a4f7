//! Turns "what the table holds" and "what it should hold" into the smallest transaction
//! that gets from one to the other.
//!
//! Operations are grouped in phases so that every reference is valid when the kernel
//! checks it: new chains and sets first, then chain rewrites, then element changes, and
//! deletions of objects nothing refers to any more last.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::ir::{Chain, Element, Family, Object, Rule, Set};
use crate::names::is_service_chain;
use crate::rules::table_comment;
use crate::table::{ChainState, ElementValue, TableState};
use crate::transaction::Transaction;

/// The table holds something that cannot be changed in place (a base chain hooked
/// elsewhere, a map of another type); only rebuilding the table fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incompatible(pub String);

/// Accumulates the operations of one family.
pub(crate) struct Planner<'a> {
    family: Family,
    kernel: &'a TableState,
    creates: Transaction,
    flushes: Transaction,
    recreates: Transaction,
    rules: Transaction,
    element_deletes: Transaction,
    element_adds: Transaction,
    deletes: Transaction,
    /// Dynamic sets being recreated: chains using them must be rewritten too.
    recreated_sets: HashSet<String>,
    deleted_sets: HashSet<String>,
    new_stale: Vec<String>,
    wanted: Vec<String>,
}

impl<'a> Planner<'a> {
    /// A planner against `kernel`, the current content of the family's table.
    pub fn new(family: Family, kernel: &'a TableState) -> Self {
        Planner {
            family,
            kernel,
            creates: Transaction::new(),
            flushes: Transaction::new(),
            recreates: Transaction::new(),
            rules: Transaction::new(),
            element_deletes: Transaction::new(),
            element_adds: Transaction::new(),
            deletes: Transaction::new(),
            recreated_sets: HashSet::new(),
            deleted_sets: HashSet::new(),
            new_stale: Vec::new(),
            wanted: Vec::new(),
        }
    }

    /// Brings chain `name` to `desired` (`None`: it should not exist). Plan the sets a
    /// chain uses before the chain.
    pub fn chain(&mut self, name: &str, desired: Option<&ChainState>) -> Result<(), Incompatible> {
        let f = self.family;
        match (desired, self.kernel.chains.get(name)) {
            (Some(d), None) => {
                let chain = Chain {
                    name: name.to_string(),
                    base: d.base,
                    comment: d.comment.clone(),
                };
                self.creates.add(f, Object::Chain(chain));
                self.add_rules(name, d);
                self.wanted.push(name.to_string());
            }
            (Some(d), Some(k)) => {
                if d.base != k.base {
                    return Err(Incompatible(format!(
                        "chain {name} has other hook properties"
                    )));
                }
                if d.rules != k.rules || self.uses_recreated_set(k) {
                    self.flushes.flush(f, Object::Chain(Chain::named(name)));
                    self.add_rules(name, d);
                }
                self.wanted.push(name.to_string());
            }
            (None, Some(k)) => {
                if !k.rules.is_empty() {
                    self.flushes.flush(f, Object::Chain(Chain::named(name)));
                }
                // Kernels before 6.2 notice only a little later that a map element no
                // longer jumps to a chain, so service chains are deleted by a later sync.
                if is_service_chain(name) {
                    self.new_stale.push(name.to_string());
                } else {
                    self.deletes.delete(f, Object::Chain(Chain::named(name)));
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn add_rules(&mut self, chain: &str, desired: &ChainState) {
        for rule in &desired.rules {
            let rule = Rule {
                chain: chain.to_string(),
                rule: rule.clone(),
                comment: None,
            };
            self.rules.add(self.family, Object::Rule(rule));
        }
    }

    fn uses_recreated_set(&self, chain: &ChainState) -> bool {
        !self.recreated_sets.is_empty()
            && chain.rules.iter().any(|r| {
                r.split_whitespace().any(|w| {
                    w.strip_prefix('@')
                        .is_some_and(|s| self.recreated_sets.contains(s))
                })
            })
    }

    /// Brings set or map `name` to `desired` (`None`: it should not exist). Elements are
    /// planned separately.
    pub fn set(&mut self, name: &str, desired: Option<&Set>) -> Result<(), Incompatible> {
        let f = self.family;
        match (desired, self.kernel.sets.get(name)) {
            (Some(d), None) => self.creates.add(f, Object::Set(d.clone())),
            (Some(d), Some(k)) if !d.same_shape(&k.def) => {
                if !d.is_dynamic() {
                    return Err(Incompatible(format!(
                        "{} {name} has another type",
                        d.keyword()
                    )));
                }
                // An affinity timeout changed: the set is recreated (losing affinities, as
                // upstream's would) after the chains using it were flushed.
                self.recreates
                    .delete(f, Object::Set(Set::named(name, false)));
                self.recreates.add(f, Object::Set(d.clone()));
                self.recreated_sets.insert(name.to_string());
            }
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(k)) => {
                self.deletes
                    .delete(f, Object::Set(Set::named(name, k.def.value_type.is_some())));
                self.deleted_sets.insert(name.to_string());
            }
        }
        Ok(())
    }

    /// Brings one element of `container` to `desired` (`None`: absent).
    pub fn element(&mut self, container: &str, key: &str, desired: Option<&ElementValue>) {
        if self.deleted_sets.contains(container) {
            return;
        }
        let current = self
            .kernel
            .sets
            .get(container)
            .and_then(|s| s.elements.get(key));
        if desired == current {
            return;
        }
        let elem = |v: Option<&ElementValue>| Element {
            container: container.to_string(),
            key: key.split(" . ").map(str::to_string).collect(),
            value: v.and_then(|v| v.value.clone()),
            comment: v.and_then(|v| v.comment.clone()),
        };
        if current.is_some() {
            self.element_deletes
                .delete(self.family, Object::Element(elem(None)));
        }
        if let Some(d) = desired {
            self.element_adds
                .add(self.family, Object::Element(elem(Some(d))));
        }
    }

    /// Brings every element of the static set or map `name` to `desired`.
    pub fn elements(&mut self, name: &str, desired: &BTreeMap<String, ElementValue>) {
        let kernel: &TableState = self.kernel;
        let current = kernel.sets.get(name).map(|s| &s.elements);
        for key in union(desired.keys(), current.into_iter().flat_map(|e| e.keys())) {
            self.element(name, key, desired.get(key));
        }
    }

    /// The result: operations, and which service chains became stale or are wanted.
    pub fn into_planned(mut self) -> Planned {
        let new_stale = std::mem::take(&mut self.new_stale);
        let wanted = std::mem::take(&mut self.wanted);
        Planned {
            tx: self.finish(),
            new_stale,
            wanted,
        }
    }

    /// The operations, in an order the kernel accepts.
    fn finish(self) -> Transaction {
        let mut tx = self.creates;
        for phase in [
            self.flushes,
            self.recreates,
            self.rules,
            self.element_deletes,
            self.element_adds,
            self.deletes,
        ] {
            tx.extend(phase);
        }
        tx
    }
}

/// What a reconciliation produced.
#[derive(Debug, Default)]
pub(crate) struct Planned {
    pub tx: Transaction,
    /// Service chains flushed now, to be deleted by a later sync.
    pub new_stale: Vec<String>,
    /// Chains that are wanted (again), so not stale.
    pub wanted: Vec<String>,
}

/// Reconciles the whole table: `kernel` is `None` when the table does not exist. A table
/// that cannot be changed in place is rebuilt.
pub(crate) fn plan_table(
    family: Family,
    kernel: Option<&TableState>,
    desired: &TableState,
) -> Planned {
    let Some(kernel) = kernel else {
        return plan_create(family, desired);
    };
    diff_table(family, kernel, desired).unwrap_or_else(|Incompatible(why)| {
        tracing::warn!(%family, reason = %why, "rebuilding the kube-proxy table");
        plan_rebuild(family, desired)
    })
}

/// Deletes the table, whatever it holds, and creates it anew, in one transaction.
pub(crate) fn plan_rebuild(family: Family, desired: &TableState) -> Planned {
    let mut tx = Transaction::new();
    tx.destroy(family, Object::Table { comment: None });
    let created = plan_create(family, desired);
    tx.extend(created.tx);
    Planned { tx, ..created }
}

/// Creates the table from nothing.
fn plan_create(family: Family, desired: &TableState) -> Planned {
    let mut tx = Transaction::new();
    tx.add(
        family,
        Object::Table {
            comment: table_comment(),
        },
    );
    let planned = diff_table(family, &TableState::default(), desired)
        .expect("an empty table is compatible with anything");
    tx.extend(planned.tx);
    Planned { tx, ..planned }
}

fn diff_table(
    family: Family,
    kernel: &TableState,
    desired: &TableState,
) -> Result<Planned, Incompatible> {
    let mut p = Planner::new(family, kernel);
    for name in union(desired.sets.keys(), kernel.sets.keys()) {
        p.set(name, desired.sets.get(name).map(|s| &s.def))?;
    }
    for name in union(desired.chains.keys(), kernel.chains.keys()) {
        p.chain(name, desired.chains.get(name))?;
    }
    for (name, set) in &desired.sets {
        if !set.def.is_dynamic() {
            p.elements(name, &set.elements);
        }
    }
    Ok(p.into_planned())
}

fn union<'a>(
    a: impl Iterator<Item = &'a String>,
    b: impl Iterator<Item = &'a String>,
) -> BTreeSet<&'a String> {
    a.chain(b).collect()
}
