//! What a `kube-proxy` table holds, as plain data: what a read-back returns, what the
//! backend believes the kernel holds, and what the fake executor models.

use std::collections::BTreeMap;

use crate::ir::{rule_text, BaseChain, Element, Family, Object, Set};
use crate::transaction::{Op, Transaction, Verb};

/// One chain: its hook (for base chains) and its rules as `nft list` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainState {
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<String>,
}

/// The value and comment of one element.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ElementValue {
    pub value: Option<String>,
    pub comment: Option<String>,
}

/// One set or map with its elements, keyed by the key as nft prints it (`a . b . c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetState {
    pub def: Set,
    pub elements: BTreeMap<String, ElementValue>,
}

/// The content of one family's `kube-proxy` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    pub comment: Option<String>,
    pub chains: BTreeMap<String, ChainState>,
    pub sets: BTreeMap<String, SetState>,
}

/// A transaction step the kernel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

/// The `kube-proxy` tables of both families, as the kernel would hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<Family, TableState>,
}

impl Ruleset {
    /// Applies `tx` all or nothing, with the kernel's checks: objects must exist to be
    /// flushed, deleted or filled, `create` fails on existing objects, and chains and sets
    /// still referenced cannot be deleted.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), ModelError> {
        let mut next = self.clone();
        next.apply_in_place(tx, true)?;
        *self = next;
        Ok(())
    }

    /// Applies `tx`, which the kernel has already accepted, without the reference checks
    /// (they cost a scan of the table per deleted object). On error the ruleset is left
    /// part-way and must be read back.
    pub fn apply_accepted(&mut self, tx: &Transaction) -> Result<(), ModelError> {
        self.apply_in_place(tx, false)
    }

    fn apply_in_place(&mut self, tx: &Transaction, strict: bool) -> Result<(), ModelError> {
        for (i, op) in tx.ops().iter().enumerate() {
            self.apply_op(op, strict)
                .map_err(|e| ModelError(format!("command {}: {e}", i + 1)))?;
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &Op, strict: bool) -> Result<(), ModelError> {
        if let Object::Table { comment } = &op.object {
            return self.apply_table(op.family, op.verb, comment.as_ref());
        }
        let table = self.tables.get_mut(&op.family).ok_or_else(|| {
            err(format!(
                "table {} kube-proxy: No such file or directory",
                op.family
            ))
        })?;
        table.apply_op(op.verb, &op.object, strict)
    }

    fn apply_table(
        &mut self,
        family: Family,
        verb: Verb,
        comment: Option<&String>,
    ) -> Result<(), ModelError> {
        let exists = self.tables.contains_key(&family);
        match verb {
            Verb::Create if exists => Err(err("table exists")),
            Verb::Add | Verb::Create => {
                self.tables.entry(family).or_insert_with(|| TableState {
                    comment: comment.cloned(),
                    ..TableState::default()
                });
                Ok(())
            }
            Verb::Flush => {
                let t = self
                    .tables
                    .get_mut(&family)
                    .ok_or_else(|| err("no table to flush"))?;
                t.chains.values_mut().for_each(|c| c.rules.clear());
                t.sets.values_mut().for_each(|s| s.elements.clear());
                Ok(())
            }
            Verb::Delete => self
                .tables
                .remove(&family)
                .map(|_| ())
                .ok_or_else(|| err("no table to delete")),
        }
    }
}

impl TableState {
    /// Applies one operation on an object inside this table; `strict` adds the kernel's
    /// reference checks.
    pub fn apply_op(
        &mut self,
        verb: Verb,
        object: &Object,
        strict: bool,
    ) -> Result<(), ModelError> {
        match object {
            Object::Table { .. } => Err(err("tables are handled by the ruleset")),
            Object::Chain(c) => self.apply_chain(verb, &c.name, strict, || ChainState {
                base: c.base,
                comment: c.comment.clone(),
                rules: Vec::new(),
            }),
            Object::Rule(r) => match verb {
                Verb::Add => {
                    if strict {
                        self.check_refs(&r.rule)?;
                    }
                    let chain = self.chain_mut(&r.chain)?;
                    chain.rules.push(rule_text(&r.rule, r.comment.as_deref()));
                    Ok(())
                }
                _ => Err(err(format!("rules can only be added (chain {})", r.chain))),
            },
            Object::Set(s) => self.apply_set(verb, s, strict),
            Object::Element(e) => self.apply_element(verb, e, strict),
        }
    }

    fn apply_chain(
        &mut self,
        verb: Verb,
        name: &str,
        strict: bool,
        new: impl FnOnce() -> ChainState,
    ) -> Result<(), ModelError> {
        match verb {
            Verb::Add | Verb::Create => {
                if self.chains.contains_key(name) {
                    return if verb == Verb::Create {
                        Err(err(format!("chain {name} exists")))
                    } else {
                        Ok(())
                    };
                }
                self.chains.insert(name.to_string(), new());
                Ok(())
            }
            Verb::Flush => {
                self.chain_mut(name)?.rules.clear();
                Ok(())
            }
            Verb::Delete => {
                self.chain_mut(name)?;
                if let Some(user) = self.chain_user(name).filter(|_| strict) {
                    return Err(err(format!(
                        "chain {name}: Device or resource busy (used by {user})"
                    )));
                }
                self.chains.remove(name);
                Ok(())
            }
        }
    }

    fn apply_set(&mut self, verb: Verb, set: &Set, strict: bool) -> Result<(), ModelError> {
        let name = &set.name;
        match verb {
            Verb::Add | Verb::Create => match self.sets.get(name) {
                Some(_) if verb == Verb::Create => Err(err(format!("set {name} exists"))),
                Some(old) if !old.def.same_shape(set) => Err(err(format!(
                    "set {name} exists with another type or timeout"
                ))),
                Some(_) => Ok(()),
                None => {
                    self.sets.insert(
                        name.clone(),
                        SetState {
                            def: set.clone(),
                            elements: BTreeMap::new(),
                        },
                    );
                    Ok(())
                }
            },
            Verb::Flush => {
                self.set_mut(name)?.elements.clear();
                Ok(())
            }
            Verb::Delete => {
                self.set_mut(name)?;
                let token = format!("@{name}");
                if strict
                    && self
                        .chains
                        .values()
                        .any(|c| c.rules.iter().any(|r| has_token(r, &token)))
                {
                    return Err(err(format!("set {name}: Device or resource busy")));
                }
                self.sets.remove(name);
                Ok(())
            }
        }
    }

    fn apply_element(&mut self, verb: Verb, e: &Element, strict: bool) -> Result<(), ModelError> {
        if let Some(v) = &e.value {
            if verb == Verb::Add && strict {
                self.check_refs(v)?;
            }
        }
        let key = e.key_text();
        let set = self.set_mut(&e.container)?;
        let value = ElementValue {
            value: e.value.clone(),
            comment: e.comment.clone(),
        };
        match verb {
            Verb::Add | Verb::Create => match set.elements.get(&key) {
                None => {
                    set.elements.insert(key, value);
                    Ok(())
                }
                Some(old) if old.value == value.value && verb == Verb::Add => Ok(()),
                Some(_) => Err(err(format!(
                    "element {key} in {}: File exists",
                    e.container
                ))),
            },
            Verb::Delete => set.elements.remove(&key).map(|_| ()).ok_or_else(|| {
                err(format!(
                    "element {key} in {}: No such file or directory",
                    e.container
                ))
            }),
            Verb::Flush => Err(err("elements cannot be flushed")),
        }
    }

    fn chain_mut(&mut self, name: &str) -> Result<&mut ChainState, ModelError> {
        self.chains
            .get_mut(name)
            .ok_or_else(|| err(format!("chain {name}: No such file or directory")))
    }

    fn set_mut(&mut self, name: &str) -> Result<&mut SetState, ModelError> {
        self.sets
            .get_mut(name)
            .ok_or_else(|| err(format!("set {name}: No such file or directory")))
    }

    /// Chains and sets a rule or verdict refers to must exist.
    fn check_refs(&self, text: &str) -> Result<(), ModelError> {
        for target in chain_refs(text) {
            if !self.chains.contains_key(target) {
                return Err(err(format!("jump to unknown chain {target}")));
            }
        }
        for set in text.split_whitespace().filter_map(|w| w.strip_prefix('@')) {
            if !self.sets.contains_key(set) {
                return Err(err(format!("unknown set {set}")));
            }
        }
        Ok(())
    }

    /// Some rule or map element that jumps to chain `name`, if any.
    fn chain_user(&self, name: &str) -> Option<String> {
        let refers = |text: &str| chain_refs(text).any(|t| t == name);
        for (chain, state) in &self.chains {
            if state.rules.iter().any(|r| refers(r)) {
                return Some(format!("chain {chain}"));
            }
        }
        for (set, state) in &self.sets {
            if state
                .elements
                .values()
                .any(|v| v.value.as_deref().is_some_and(refers))
            {
                return Some(format!("map {set}"));
            }
        }
        None
    }
}

/// The chains a rule or verdict jumps to.
pub(crate) fn chain_refs(text: &str) -> impl Iterator<Item = &str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let targets: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "jump" || w[0] == "goto")
        .map(|w| w[1].trim_end_matches(','))
        .collect();
    targets.into_iter()
}

fn has_token(text: &str, token: &str) -> bool {
    text.split_whitespace().any(|w| w == token)
}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Chain, KeySyntax, Rule};

    fn elem(container: &str, key: &str, value: &str) -> Object {
        Object::Element(Element {
            container: container.into(),
            key: key.split(" . ").map(String::from).collect(),
            value: Some(value.into()),
            comment: None,
        })
    }

    fn base() -> Transaction {
        let mut tx = Transaction::new();
        tx.add(Family::Ip, Object::Table { comment: None });
        tx.add(Family::Ip, Object::Chain(Chain::named("target")));
        tx.add(Family::Ip, Object::Chain(Chain::named("caller")));
        tx.add(
            Family::Ip,
            Object::Set(Set {
                key_syntax: KeySyntax::Type,
                name: "m".into(),
                key_type: "inet_proto . inet_service".into(),
                value_type: Some("verdict".into()),
                flags: vec![],
                timeout: None,
                comment: None,
            }),
        );
        tx
    }

    fn fails(rs: &Ruleset, tx: &Transaction) -> String {
        let mut copy = rs.clone();
        let e = copy.apply(tx).unwrap_err().to_string();
        assert_eq!(&copy, rs, "a failed transaction changes nothing");
        e
    }

    #[test]
    fn models_the_kernels_checks() {
        let mut rs = Ruleset::default();
        rs.apply(&base()).unwrap();
        let jump = Rule {
            chain: "caller".into(),
            rule: "jump target".into(),
            comment: None,
        };
        let mut tx = Transaction::new();
        tx.add(Family::Ip, Object::Rule(jump));
        tx.add(Family::Ip, elem("m", "tcp . 80", "goto target"));
        rs.apply(&tx).unwrap();

        let mut del = Transaction::new();
        del.delete(Family::Ip, Object::Chain(Chain::named("target")));
        assert!(fails(&rs, &del).contains("busy"));
        let mut conflict = Transaction::new();
        conflict.add(Family::Ip, elem("m", "tcp . 80", "drop"));
        assert!(fails(&rs, &conflict).contains("File exists"));
        let mut create = Transaction::new();
        create.push(
            Family::Ip,
            crate::transaction::Verb::Create,
            Object::Chain(Chain::named("caller")),
        );
        assert!(fails(&rs, &create).contains("exists"));
        let mut dangling = Transaction::new();
        dangling.add(Family::Ip, elem("m", "udp . 53", "goto nowhere"));
        assert!(fails(&rs, &dangling).contains("unknown chain"));
        let mut missing = Transaction::new();
        missing.flush(Family::Ip6, Object::Chain(Chain::named("caller")));
        assert!(fails(&rs, &missing).contains("No such file"));

        // Once nothing refers to it any more, the chain can go, in the same transaction.
        let mut ok = Transaction::new();
        ok.flush(Family::Ip, Object::Chain(Chain::named("caller")));
        ok.delete(Family::Ip, elem("m", "tcp . 80", ""));
        ok.delete(Family::Ip, Object::Chain(Chain::named("target")));
        rs.apply(&ok).unwrap();
        assert!(!rs.tables[&Family::Ip].chains.contains_key("target"));
    }
}
