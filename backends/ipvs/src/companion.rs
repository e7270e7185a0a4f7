//! The difference between two contents of the companion table, as one transaction.

use kube_proxy_nftables::ir::{Chain, Element, Family, Object, Rule, SetFlag};
use kube_proxy_nftables::table::TableState;
use kube_proxy_nftables::Transaction;

/// Appends to `tx` what turns `current` (`None`: no table) into `desired`. Elements and
/// the rules of changed chains are changed in place; when the table's shape differs
/// (chains, hooks, set types), the table is replaced, atomically with the rest.
pub(crate) fn diff(
    tx: &mut Transaction,
    family: Family,
    current: Option<&TableState>,
    desired: &TableState,
) {
    let Some(current) = current.filter(|c| same_shape(c, desired)) else {
        if current.is_some() {
            // nft 1.0.6 has no `destroy`: add, then delete, then build anew.
            tx.destroy(family, Object::Table { comment: None });
        }
        create(tx, family, desired);
        return;
    };
    for (name, chain) in &desired.chains {
        if current.chains[name].rules != chain.rules {
            tx.flush(family, Object::Chain(Chain::named(name.clone())));
            add_rules(tx, family, name, &chain.rules);
        }
    }
    for (name, set) in &desired.sets {
        let now = &current.sets[name].elements;
        for (key, value) in now {
            if set.elements.get(key) != Some(value) {
                tx.delete(family, element(name, key, value.value.clone()));
            }
        }
        for (key, value) in &set.elements {
            if now.get(key) != Some(value) {
                tx.add(family, element(name, key, value.value.clone()));
            }
        }
    }
}

/// Everything of `desired`, for a family that has no table.
pub(crate) fn create(tx: &mut Transaction, family: Family, desired: &TableState) {
    tx.add(
        family,
        Object::Table {
            comment: desired.comment.clone(),
        },
    );
    for (name, chain) in &desired.chains {
        tx.add(
            family,
            Object::Chain(Chain {
                name: name.clone(),
                base: chain.base,
                comment: chain.comment.clone(),
            }),
        );
    }
    for set in desired.sets.values() {
        tx.add(family, Object::Set(set.def.clone()));
    }
    for (name, chain) in &desired.chains {
        add_rules(tx, family, name, &chain.rules);
    }
    for (name, set) in &desired.sets {
        for (key, value) in &set.elements {
            tx.add(family, element(name, key, value.value.clone()));
        }
    }
}

fn add_rules(tx: &mut Transaction, family: Family, chain: &str, rules: &[String]) {
    for rule in rules {
        tx.add(
            family,
            Object::Rule(Rule {
                chain: chain.to_string(),
                rule: rule.clone(),
                comment: None,
            }),
        );
    }
}

fn element(set: &str, key: &str, value: Option<String>) -> Object {
    Object::Element(Element {
        container: set.to_string(),
        key: vec![key.to_string()],
        value,
        comment: None,
    })
}

/// Whether `current` can be turned into `desired` by changing rules and elements only.
fn same_shape(current: &TableState, desired: &TableState) -> bool {
    let chains_match = current.chains.len() == desired.chains.len()
        && desired.chains.iter().all(|(name, chain)| {
            current
                .chains
                .get(name)
                .is_some_and(|c| c.base == chain.base)
        });
    let interval = |flags: &[SetFlag]| flags.contains(&SetFlag::Interval);
    let sets_match = current.sets.len() == desired.sets.len()
        && desired.sets.iter().all(|(name, set)| {
            current.sets.get(name).is_some_and(|s| {
                s.def.same_shape(&set.def) && interval(&s.def.flags) == interval(&set.def.flags)
            })
        });
    current.comment == desired.comment && chains_match && sets_match
}
