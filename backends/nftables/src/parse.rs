//! Parses `nft list table <family> kube-proxy` output back into a [`TableState`].
//!
//! Only the syntax nft prints for the objects this crate creates is understood; a line it
//! cannot place is an error rather than a guess, so that the backend falls back to a full
//! rewrite instead of trusting a wrong picture of the kernel.

use std::collections::BTreeMap;

use crate::ir::{BaseChain, ChainType, Hook, KeySyntax, Set, SetFlag};
use crate::table::{ChainState, ElementValue, SetState, TableState};

/// `nft list` output that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse nft output line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

enum Block {
    Table,
    Chain(String, ChainState),
    Set(SetState),
}

/// Parses the text of one table listing.
pub fn parse_table(text: &str) -> Result<TableState, ParseError> {
    let mut table = TableState::default();
    let mut block: Option<Block> = None;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    while let Some((n, line)) = lines.next() {
        let fail = |message: &str| ParseError {
            line: n,
            message: format!("{message}: {line:?}"),
        };
        if line.is_empty() {
            continue;
        }
        match block.take() {
            None if line.starts_with("table ") && line.ends_with('{') => block = Some(Block::Table),
            None => return Err(fail("expected a table")),
            Some(Block::Table) => block = table_line(&mut table, line).map_err(|m| fail(&m))?,
            Some(Block::Chain(name, mut chain)) => {
                if line == "}" {
                    table.chains.insert(name, chain);
                    block = Some(Block::Table);
                } else {
                    chain_line(&mut chain, line).map_err(|m| fail(&m))?;
                    block = Some(Block::Chain(name, chain));
                }
            }
            Some(Block::Set(mut set)) => {
                if line == "}" {
                    table.sets.insert(set.def.name.clone(), set);
                    block = Some(Block::Table);
                    continue;
                }
                if let Some(rest) = line.strip_prefix("elements = {") {
                    let body = collect_braced(rest, &mut lines)
                        .ok_or_else(|| fail("unterminated elements"))?;
                    if !set.def.is_dynamic() {
                        set.elements = parse_elements(&body);
                    }
                } else {
                    set_line(&mut set.def, line).map_err(|m| fail(&m))?;
                }
                block = Some(Block::Set(set));
            }
        }
    }
    match block {
        None => Ok(table),
        Some(_) => Err(ParseError {
            line: text.lines().count(),
            message: "unexpected end of listing".into(),
        }),
    }
}

fn table_line(table: &mut TableState, line: &str) -> Result<Option<Block>, String> {
    if line == "}" {
        return Ok(None);
    }
    if let Some(c) = line.strip_prefix("comment ") {
        table.comment = Some(unquote(c));
    } else if let Some(name) = open_block(line, "chain ") {
        return Ok(Some(Block::Chain(name, ChainState::default())));
    } else if let Some(name) = open_block(line, "set ") {
        return Ok(Some(Block::Set(empty_set(name, false))));
    } else if let Some(name) = open_block(line, "map ") {
        return Ok(Some(Block::Set(empty_set(name, true))));
    } else if !line.starts_with("flags ") {
        return Err("unknown table content".into());
    }
    Ok(Some(Block::Table))
}

fn open_block(line: &str, keyword: &str) -> Option<String> {
    let rest = line.strip_prefix(keyword)?.strip_suffix('{')?;
    Some(rest.trim().to_string())
}

fn empty_set(name: String, is_map: bool) -> SetState {
    SetState {
        def: Set::named(name, is_map),
        elements: BTreeMap::new(),
    }
}

fn chain_line(chain: &mut ChainState, line: &str) -> Result<(), String> {
    if line.starts_with("type ") && line.contains(" hook ") {
        chain.base = Some(parse_base_chain(line)?);
    } else if let Some(c) = line.strip_prefix("comment ") {
        chain.comment = Some(unquote(c));
    } else {
        chain.rules.push(line.to_string());
    }
    Ok(())
}

/// `type filter hook output priority -110; policy accept;`
fn parse_base_chain(line: &str) -> Result<BaseChain, String> {
    let head = line.split(';').next().unwrap_or_default();
    let words: Vec<&str> = head.split_whitespace().collect();
    let [_, ty, _, hook, _, prio @ ..] = words.as_slice() else {
        return Err("malformed base chain".into());
    };
    let chain_type = match *ty {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        other => return Err(format!("unsupported chain type {other}")),
    };
    let hook = Hook::parse(hook).ok_or("unknown hook")?;
    Ok(BaseChain {
        chain_type,
        hook,
        priority: parse_priority(prio)?,
    })
}

/// A numeric priority, or a standard name with an optional offset (`dstnat - 10`).
fn parse_priority(words: &[&str]) -> Result<i32, String> {
    let bad = || format!("bad priority {}", words.join(" "));
    let base = match words.first().copied().ok_or_else(bad)? {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        n => return n.parse().map_err(|_| bad()),
    };
    match words.get(1..) {
        Some(["+", n]) => Ok(base + n.parse::<i32>().map_err(|_| bad())?),
        Some(["-", n]) => Ok(base - n.parse::<i32>().map_err(|_| bad())?),
        Some([]) => Ok(base),
        _ => Err(bad()),
    }
}

fn set_line(def: &mut Set, line: &str) -> Result<(), String> {
    let declared = [KeySyntax::Type, KeySyntax::Typeof]
        .into_iter()
        .find_map(|k| Some((k, line.strip_prefix(k.as_str())?.strip_prefix(' ')?)));
    if let Some((syntax, ty)) = declared {
        def.key_syntax = syntax;
        match ty.split_once(" : ") {
            Some((k, v)) => {
                def.key_type = k.to_string();
                def.value_type = Some(v.to_string());
            }
            None => def.key_type = ty.to_string(),
        }
    } else if let Some(flags) = line.strip_prefix("flags ") {
        def.flags = flags
            .split(',')
            .map(|f| SetFlag::parse(f.trim()).ok_or(format!("unknown flag {f}")))
            .collect::<Result<_, _>>()?;
    } else if let Some(t) = line.strip_prefix("timeout ") {
        def.timeout = Some(parse_duration(t).ok_or("bad timeout")?);
    } else if let Some(c) = line.strip_prefix("comment ") {
        def.comment = Some(unquote(c));
    } else if !(line.starts_with("size ")
        || line.starts_with("policy ")
        || line.starts_with("gc-interval "))
    {
        return Err("unknown set property".into());
    }
    Ok(())
}

/// nft's duration syntax (`3h`, `1h30m5s`, `10800s`), in whole seconds.
fn parse_duration(s: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = std::mem::take(&mut num).parse().ok()?;
        total += match c {
            'd' => n * 86400,
            'h' => n * 3600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0
            }
            'm' => n * 60,
            's' => n,
            _ => return None,
        };
    }
    if !num.is_empty() {
        total += num.parse::<u64>().ok()?;
    }
    u32::try_from(total).ok()
}

/// Gathers the text up to the brace closing `elements = {`, across wrapped lines.
fn collect_braced<'a>(
    first: &'a str,
    rest: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Option<String> {
    let mut body = String::new();
    let mut line = first;
    loop {
        if let Some(end) = closing_brace(line) {
            body.push_str(&line[..end]);
            return Some(body);
        }
        body.push_str(line);
        body.push(' ');
        line = rest.next()?.1;
    }
}

fn closing_brace(s: &str) -> Option<usize> {
    let mut quoted = false;
    s.char_indices().find_map(|(i, c)| {
        if c == '"' {
            quoted = !quoted;
        }
        (!quoted && c == '}').then_some(i)
    })
}

/// `k1 . k2 comment "c" : v, k3 ...`
fn parse_elements(body: &str) -> BTreeMap<String, ElementValue> {
    let mut out = BTreeMap::new();
    for item in split_outside_quotes(body, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key_part, value) = match item.find(" : ") {
            Some(i) => (&item[..i], Some(item[i + 3..].trim().to_string())),
            None => (item, None),
        };
        let (key, comment) = match key_part.find(" comment \"") {
            Some(i) => (&key_part[..i], Some(unquote(&key_part[i + 9..]))),
            None => (key_part, None),
        };
        out.insert(key.trim().to_string(), ElementValue { value, comment });
    }
    out
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"table ip kube-proxy {
	comment "rules for kube-proxy"
	map no-endpoint-services {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "vmap to drop or reject packets to services with no endpoints"
		elements = { 172.30.0.42 . udp . 53 comment "ns/x:dns" : goto reject-chain,
			     172.30.0.43 . tcp . 80 comment "ns/y" : drop }
	}

	set affinity-X {
		type ipv4_addr
		size 65535
		flags dynamic,timeout
		timeout 3h1s
		elements = { 10.0.0.9 timeout 3h expires 2h59m }
	}

	chain nat-output {
		type nat hook output priority dstnat; policy accept;
		jump services
	}

	chain reject-chain {
		comment "helper for @no-endpoint-services / @no-endpoint-nodeports"
		reject
	}
}
"#;

    #[test]
    fn parses_sets_maps_and_chains() {
        let t = parse_table(LISTING).unwrap();
        assert_eq!(t.comment.as_deref(), Some("rules for kube-proxy"));
        let m = &t.sets["no-endpoint-services"];
        assert_eq!(m.def.value_type.as_deref(), Some("verdict"));
        assert_eq!(m.def.key_type, "ipv4_addr . inet_proto . inet_service");
        assert_eq!(m.elements.len(), 2);
        assert_eq!(
            m.elements["172.30.0.42 . udp . 53"],
            ElementValue {
                value: Some("goto reject-chain".into()),
                comment: Some("ns/x:dns".into())
            }
        );
        let a = &t.sets["affinity-X"];
        assert_eq!(a.def.timeout, Some(10801));
        assert!(a.def.is_dynamic());
        assert!(
            a.elements.is_empty(),
            "dynamic elements belong to the kernel"
        );
        let c = &t.chains["nat-output"];
        assert_eq!(c.base.unwrap().priority, -100);
        assert_eq!(c.rules, vec!["jump services"]);
        assert_eq!(t.chains["reject-chain"].rules, vec!["reject"]);
    }

    #[test]
    fn rejects_unknown_content() {
        let e = parse_table("table ip kube-proxy {\n\tfrobnicate\n}\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_table("table ip kube-proxy {\n\tchain x {\n").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3h"), Some(10800));
        assert_eq!(parse_duration("1d2h3m4s"), Some(93784));
        assert_eq!(parse_duration("250ms"), Some(0));
        assert_eq!(parse_duration("10800"), Some(10800));
        assert_eq!(parse_duration("x"), None);
    }
}
