//! nftables objects as small typed values, in the style of knftables: a table, its chains
//! (regular or base), rules, sets and maps, and their elements.

use std::fmt;

/// The address family of a table. kube-proxy owns one table per IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    /// The nft keyword of the family, also the payload keyword of its addresses
    /// (`ip daddr`, `ip6 daddr`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The nft datatype of one address of this family.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// The netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// Parses the nft keyword.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            _ => return None,
        })
    }
}

/// What makes a chain a base chain. Priorities are numeric: nft 1.0.6 rejects the
/// symbolic `dstnat` on the nat `output` hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// A chain: a name, and hook properties when it is a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
}

impl Chain {
    /// A regular chain (only reached by `jump`/`goto`), or a reference to any chain by name
    /// for `flush` and `delete`.
    pub fn named(name: impl Into<String>) -> Self {
        Chain {
            name: name.into(),
            base: None,
            comment: None,
        }
    }
}

/// One rule appended to a chain. `rule` is nft syntax; rules are written in the form
/// `nft list` prints them back, so that a read-back compares equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub rule: String,
    pub comment: Option<String>,
}

impl Rule {
    /// The rule as `nft list` prints it: its expression, then its comment.
    pub fn text(&self) -> String {
        rule_text(&self.rule, self.comment.as_deref())
    }
}

/// Joins a rule expression and its optional comment as nft prints them.
pub(crate) fn rule_text(rule: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("{rule} comment {}", quote(c)),
        None => rule.to_string(),
    }
}

/// A flag of a set or map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetFlag {
    Constant,
    Dynamic,
    Interval,
    Timeout,
}

impl SetFlag {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            SetFlag::Constant => "constant",
            SetFlag::Dynamic => "dynamic",
            SetFlag::Interval => "interval",
            SetFlag::Timeout => "timeout",
        }
    }

    /// Parses the nft keyword.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "constant" => SetFlag::Constant,
            "dynamic" => SetFlag::Dynamic,
            "interval" => SetFlag::Interval,
            "timeout" => SetFlag::Timeout,
            _ => return None,
        })
    }
}

/// How a set declares its key: by datatype, or by the expression it is looked up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySyntax {
    /// `type ipv4_addr`: a named datatype.
    Type,
    /// `typeof numgen inc mod 1`: what plain integers need, which have no named datatype.
    Typeof,
}

impl KeySyntax {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySyntax::Type => "type",
            KeySyntax::Typeof => "typeof",
        }
    }
}

/// A named set, or a map when `value_type` is set (a verdict map has `verdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Whether `key_type` is a datatype or an expression.
    pub key_syntax: KeySyntax,
    /// `ipv4_addr`, or a concatenation such as `ipv4_addr . inet_proto . inet_service`;
    /// with [`KeySyntax::Typeof`], an expression such as `numgen inc mod 1`.
    pub key_type: String,
    /// The value type of a map; `None` for a set.
    pub value_type: Option<String>,
    pub flags: Vec<SetFlag>,
    /// Default element timeout in seconds.
    pub timeout: Option<u32>,
    pub comment: Option<String>,
}

impl Set {
    /// A set or map referred to by name only, for `flush` and `delete`.
    pub fn named(name: impl Into<String>, is_map: bool) -> Self {
        Set {
            name: name.into(),
            key_syntax: KeySyntax::Type,
            key_type: String::new(),
            value_type: is_map.then(String::new),
            flags: Vec::new(),
            timeout: None,
            comment: None,
        }
    }

    /// `map` or `set`, the nft keyword for this container.
    pub fn keyword(&self) -> &'static str {
        if self.value_type.is_some() {
            "map"
        } else {
            "set"
        }
    }

    /// True when the kernel, not kube-proxy, manages the elements (affinity sets).
    pub fn is_dynamic(&self) -> bool {
        self.flags.contains(&SetFlag::Dynamic)
    }

    /// True when two definitions describe the same kernel object: the parts the kernel
    /// cannot change in place (types and timeout). Comments and flags the kernel adds by
    /// itself are ignored.
    pub fn same_shape(&self, other: &Set) -> bool {
        self.key_syntax == other.key_syntax
            && self.key_type == other.key_type
            && self.value_type == other.value_type
            && self.timeout == other.timeout
    }
}

/// An element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The set or map holding the element.
    pub container: String,
    /// The key, one entry per component of a concatenation.
    pub key: Vec<String>,
    /// The value (for a verdict map, e.g. `goto reject-chain`).
    pub value: Option<String>,
    pub comment: Option<String>,
}

impl Element {
    /// The key as nft prints it: components joined with ` . `.
    pub fn key_text(&self) -> String {
        self.key.join(" . ")
    }
}

/// Anything a transaction can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The family's `kube-proxy` table.
    Table {
        comment: Option<String>,
    },
    Chain(Chain),
    Rule(Rule),
    Set(Set),
    Element(Element),
}

/// Quotes a string for nft (comments, interface names).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}
