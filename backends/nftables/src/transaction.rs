//! A [`Transaction`]: verbs over nft objects, rendered to one `nft -f -` script that the
//! kernel applies atomically.

use std::fmt::Write;

use crate::ir::{quote, Chain, Element, Family, Object, Set};

/// The name of the table kube-proxy owns in each family.
pub const TABLE: &str = "kube-proxy";

/// What to do with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Create the object, or do nothing when it exists.
    Add,
    /// Create the object; fail when it exists.
    Create,
    /// Remove the rules of a chain or the elements of a set or map.
    Flush,
    /// Remove the object; fail when it does not exist.
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "add",
            Verb::Create => "create",
            Verb::Flush => "flush",
            Verb::Delete => "delete",
        }
    }
}

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub family: Family,
    pub verb: Verb,
    pub object: Object,
}

/// An ordered list of operations, applied all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    ops: Vec<Op>,
    /// The table the script acts on; `None` is [`TABLE`].
    table: Option<String>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// An empty transaction on the table `name` of each family instead of [`TABLE`]
    /// (the IPVS mode's companion table).
    pub fn for_table(name: impl Into<String>) -> Self {
        Transaction {
            ops: Vec::new(),
            table: Some(name.into()),
        }
    }

    /// The name of the table this transaction acts on.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(TABLE)
    }

    /// Appends one operation.
    pub fn push(&mut self, family: Family, verb: Verb, object: Object) {
        self.ops.push(Op {
            family,
            verb,
            object,
        });
    }

    /// `add`: creates the object unless it exists; appends a rule or element.
    pub fn add(&mut self, family: Family, object: Object) {
        self.push(family, Verb::Add, object);
    }

    /// `flush`: empties a chain, set or map.
    pub fn flush(&mut self, family: Family, object: Object) {
        self.push(family, Verb::Flush, object);
    }

    /// `delete`: removes an object that must exist.
    pub fn delete(&mut self, family: Family, object: Object) {
        self.push(family, Verb::Delete, object);
    }

    /// Removes a table, chain, set or map whether or not it exists. nft 1.0.6 has no
    /// `destroy` verb, so this is `add` followed by `delete`.
    pub fn destroy(&mut self, family: Family, object: Object) {
        self.add(family, object.clone());
        self.delete(family, object);
    }

    /// Appends all operations of `other`.
    pub fn extend(&mut self, other: Transaction) {
        self.ops.extend(other.ops);
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The `nft -f` script: one command per line, except that consecutive element
    /// operations with the same verb on the same set or map share one command.
    ///
    /// The kernel (most likely) finds a set by walking the table's list of sets, once per
    /// command: at 10k Services (10k maps), one command per element made loading the
    /// table take 43 s of kernel time, one per set 12.5 s.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let table = self.table();
        let mut ops = self.ops.iter().peekable();
        while let Some(op) = ops.next() {
            match &op.object {
                Object::Element(first) => {
                    let same_command = |next: &&Op| {
                        next.family == op.family
                            && next.verb == op.verb
                            && matches!(&next.object, Object::Element(e) if e.container == first.container)
                    };
                    let mut elements = vec![first];
                    while let Some(Op {
                        object: Object::Element(e),
                        ..
                    }) = ops.next_if(same_command)
                    {
                        elements.push(e);
                    }
                    render_elements(&mut out, op, table, &elements);
                }
                _ => render_op(&mut out, op, table),
            }
            out.push('\n');
        }
        out
    }
}

fn render_op(out: &mut String, op: &Op, table: &str) {
    let verb = op.verb.as_str();
    let fam = op.family.as_str();
    match &op.object {
        Object::Table { comment } => {
            let _ = write!(out, "{verb} table {fam} {table}");
            if op.verb == Verb::Add || op.verb == Verb::Create {
                if let Some(c) = comment {
                    let _ = write!(out, " {{ comment {} ; }}", quote(c));
                }
            }
        }
        Object::Chain(chain) => {
            let _ = write!(out, "{verb} chain {fam} {table} {}", chain.name);
            if op.verb == Verb::Add || op.verb == Verb::Create {
                render_chain_props(out, chain);
            }
        }
        Object::Rule(rule) => {
            let _ = write!(
                out,
                "{verb} rule {fam} {table} {} {}",
                rule.chain,
                rule.text()
            );
        }
        Object::Set(set) => {
            let _ = write!(out, "{verb} {} {fam} {table} {}", set.keyword(), set.name);
            if op.verb == Verb::Add || op.verb == Verb::Create {
                render_set_props(out, set);
            }
        }
        Object::Element(elem) => render_elements(out, op, table, &[elem]),
    }
}

/// One command for `elements`, which all belong to the container of the first.
fn render_elements(out: &mut String, op: &Op, table: &str, elements: &[&Element]) {
    let verb = op.verb.as_str();
    let fam = op.family.as_str();
    let _ = write!(
        out,
        "{verb} element {fam} {table} {} {{ ",
        elements[0].container
    );
    for (i, elem) in elements.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        render_element(out, elem, op.verb == Verb::Delete);
    }
    out.push_str(" }");
}

fn render_chain_props(out: &mut String, chain: &Chain) {
    if chain.base.is_none() && chain.comment.is_none() {
        return;
    }
    out.push_str(" {");
    if let Some(b) = &chain.base {
        let _ = write!(
            out,
            " type {} hook {} priority {} ;",
            b.chain_type.as_str(),
            b.hook.as_str(),
            b.priority
        );
    }
    if let Some(c) = &chain.comment {
        let _ = write!(out, " comment {} ;", quote(c));
    }
    out.push_str(" }");
}

fn render_set_props(out: &mut String, set: &Set) {
    let _ = write!(out, " {{ {} {}", set.key_syntax.as_str(), set.key_type);
    if let Some(v) = &set.value_type {
        let _ = write!(out, " : {v}");
    }
    out.push_str(" ;");
    if !set.flags.is_empty() {
        let flags: Vec<&str> = set.flags.iter().map(|f| f.as_str()).collect();
        let _ = write!(out, " flags {} ;", flags.join(","));
    }
    if let Some(t) = set.timeout {
        let _ = write!(out, " timeout {t}s ;");
    }
    if let Some(c) = &set.comment {
        let _ = write!(out, " comment {} ;", quote(c));
    }
    out.push_str(" }");
}

fn render_element(out: &mut String, elem: &Element, key_only: bool) {
    out.push_str(&elem.key_text());
    if key_only {
        return;
    }
    if let Some(c) = &elem.comment {
        let _ = write!(out, " comment {}", quote(c));
    }
    if let Some(v) = &elem.value {
        let _ = write!(out, " : {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BaseChain, ChainType, Hook, KeySyntax, Rule, SetFlag};

    #[test]
    fn renders_every_object_kind() {
        let mut tx = Transaction::new();
        tx.add(
            Family::Ip,
            Object::Table {
                comment: Some("rules for kube-proxy".into()),
            },
        );
        tx.add(
            Family::Ip,
            Object::Chain(Chain {
                name: "nat-output".into(),
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Output,
                    priority: -100,
                }),
                comment: None,
            }),
        );
        tx.add(
            Family::Ip6,
            Object::Set(Set {
                key_syntax: KeySyntax::Type,
                name: "affinity-X".into(),
                key_type: "ipv6_addr".into(),
                value_type: None,
                flags: vec![SetFlag::Dynamic, SetFlag::Timeout],
                timeout: Some(10800),
                comment: None,
            }),
        );
        tx.add(
            Family::Ip,
            Object::Rule(Rule {
                chain: "services".into(),
                rule: "reject".into(),
                comment: Some("c".into()),
            }),
        );
        let elem = Element {
            container: "no-endpoint-services".into(),
            key: vec!["10.0.0.1".into(), "tcp".into(), "80".into()],
            value: Some("goto reject-chain".into()),
            comment: Some("ns/svc:p".into()),
        };
        tx.add(Family::Ip, Object::Element(elem.clone()));
        tx.delete(Family::Ip, Object::Element(elem));
        tx.destroy(Family::Ip, Object::Chain(Chain::named("x")));
        assert_eq!(
            tx.render(),
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
             add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
             add set ip6 kube-proxy affinity-X { type ipv6_addr ; flags dynamic,timeout ; timeout 10800s ; }\n\
             add rule ip kube-proxy services reject comment \"c\"\n\
             add element ip kube-proxy no-endpoint-services { 10.0.0.1 . tcp . 80 comment \"ns/svc:p\" : goto reject-chain }\n\
             delete element ip kube-proxy no-endpoint-services { 10.0.0.1 . tcp . 80 }\n\
             add chain ip kube-proxy x\n\
             delete chain ip kube-proxy x\n"
        );
        assert_eq!(tx.len(), 8);
    }

    #[test]
    fn renders_another_table_name() {
        let mut tx = Transaction::for_table("kube-proxy-ipvs");
        tx.add(Family::Ip6, Object::Table { comment: None });
        tx.flush(Family::Ip, Object::Chain(Chain::named("x")));
        assert_eq!(tx.table(), "kube-proxy-ipvs");
        assert_eq!(
            tx.render(),
            "add table ip6 kube-proxy-ipvs\nflush chain ip kube-proxy-ipvs x\n"
        );
        assert_eq!(Transaction::new().table(), TABLE);
    }

    #[test]
    fn consecutive_elements_of_one_container_share_a_command() {
        let elem = |container: &str, key: &str| {
            Object::Element(Element {
                container: container.into(),
                key: vec![key.into()],
                value: Some(format!("goto c{key}")),
                comment: None,
            })
        };
        let mut tx = Transaction::new();
        tx.add(Family::Ip, elem("m", "0"));
        tx.add(Family::Ip, elem("m", "1"));
        tx.add(Family::Ip6, elem("m", "2"));
        tx.delete(Family::Ip6, elem("m", "3"));
        tx.add(Family::Ip6, elem("n", "4"));
        tx.add(Family::Ip6, elem("n", "5"));
        tx.add(Family::Ip6, Object::Chain(Chain::named("x")));
        tx.add(Family::Ip6, elem("n", "6"));
        assert_eq!(
            tx.render(),
            "add element ip kube-proxy m { 0 : goto c0, 1 : goto c1 }\n\
             add element ip6 kube-proxy m { 2 : goto c2 }\n\
             delete element ip6 kube-proxy m { 3 }\n\
             add element ip6 kube-proxy n { 4 : goto c4, 5 : goto c5 }\n\
             add chain ip6 kube-proxy x\n\
             add element ip6 kube-proxy n { 6 : goto c6 }\n"
        );
        assert_eq!(tx.len(), 8, "operations are counted one by one");
    }
}
