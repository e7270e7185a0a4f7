//! `iptables-restore` input as data: tables of chains and rules, rendered with upstream's
//! layout (chain lines first, then rules, then deletions, then `COMMIT`), and the reverse,
//! a tokenizer for `iptables-save` output and restore input.

use std::fmt::{self, Write as _};

/// The tables kube-proxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Mangle,
    Filter,
    Nat,
}

impl Table {
    /// The name iptables uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// Parses an iptables table name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mangle" => Some(Table::Mangle),
            "filter" => Some(Table::Filter),
            "nat" => Some(Table::Nat),
            _ => None,
        }
    }

    /// The built-in chains of the table.
    pub fn builtin_chains(&self) -> &'static [&'static str] {
        match self {
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The arguments of one rule after `-A CHAIN`, one word each.
pub type Args = Vec<String>;

/// What one restore does to one table: chains (re)written in full, and chains deleted.
///
/// With `--noflush`, a chain line (`:KUBE-SERVICES - [0:0]`) creates the chain or flushes
/// it, so every listed chain ends up with exactly the rules given here, and chains that are
/// not listed keep theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInput {
    pub table: Table,
    /// Chains in the order they are written, with their complete rules.
    pub chains: Vec<(String, Vec<Args>)>,
    /// Chains flushed and then deleted (`-X`).
    pub deleted: Vec<String>,
    /// Rules deleted (`-D CHAIN args`) from chains that are otherwise left alone.
    pub unlinked: Vec<(String, Args)>,
}

impl TableInput {
    /// An input that changes nothing in `table`.
    pub fn new(table: Table) -> Self {
        TableInput {
            table,
            chains: Vec::new(),
            deleted: Vec::new(),
            unlinked: Vec::new(),
        }
    }

    /// The rules of `chain`, declaring it (at the end) if it is not yet.
    pub fn chain(&mut self, chain: &str) -> &mut Vec<Args> {
        let i = match self.chains.iter().position(|(name, _)| name == chain) {
            Some(i) => i,
            None => {
                self.chains.push((chain.to_string(), Vec::new()));
                self.chains.len() - 1
            }
        };
        &mut self.chains[i].1
    }

    /// Appends a rule to `chain`.
    pub fn rule(&mut self, chain: &str, args: Args) {
        self.chain(chain).push(args);
    }

    /// True when the input would change nothing.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.deleted.is_empty() && self.unlinked.is_empty()
    }

    /// Number of rules written.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|(_, rules)| rules.len()).sum()
    }

    /// Renders the table's section of the restore input, `COMMIT` included.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "*{}", self.table);
        for name in self.chains.iter().map(|(n, _)| n).chain(&self.deleted) {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, args) in &self.unlinked {
            let _ = writeln!(out, "-D {name} {}", join_words(args));
        }
        for (name, rules) in &self.chains {
            for args in rules {
                let _ = writeln!(out, "-A {name} {}", join_words(args));
            }
        }
        for name in &self.deleted {
            let _ = writeln!(out, "-X {name}");
        }
        out.push_str("COMMIT\n");
    }
}

/// The complete input of one `iptables-restore` run (one IP family).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreInput {
    pub tables: Vec<TableInput>,
}

impl RestoreInput {
    /// The input for `table`, added (at the end) if missing.
    pub fn table(&mut self, table: Table) -> &mut TableInput {
        let i = match self.tables.iter().position(|t| t.table == table) {
            Some(i) => i,
            None => {
                self.tables.push(TableInput::new(table));
                self.tables.len() - 1
            }
        };
        &mut self.tables[i]
    }

    /// True when a restore of this input would change nothing.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(TableInput::is_empty)
    }

    /// The text `iptables-restore` reads; tables with nothing to do are left out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in self.tables.iter().filter(|t| !t.is_empty()) {
            t.render(&mut out);
        }
        out
    }
}

/// Words joined by spaces, each quoted when iptables-restore would otherwise split it.
pub fn join_words(words: &[String]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if w.is_empty() || w.contains(char::is_whitespace) {
            let _ = write!(out, "\"{w}\"");
        } else {
            out.push_str(w);
        }
    }
    out
}

/// The longest comment the kernel's comment match accepts, in bytes.
const COMMENT_MAX: usize = 255;

/// A comment that iptables-restore accepts for any name: no quotes or backslashes (its
/// parser has no escapes) and at most 255 bytes, cut between characters.
pub fn comment(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if matches!(c, '"' | '\\') { '_' } else { c })
        .collect();
    if s.len() > COMMENT_MAX {
        let cut = (0..=COMMENT_MAX)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

/// A line of save output or restore input could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unterminated quote in {0:?}")]
pub struct UnterminatedQuote(pub String);

/// Splits a line into words as iptables-restore does: whitespace separates, double quotes
/// group.
pub fn split_words(line: &str) -> Result<Vec<String>, UnterminatedQuote> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut in_quote, mut in_word) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_quote {
        return Err(UnterminatedQuote(line.to_string()));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// One table of `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    /// Every chain, built-in ones included, in the order listed.
    pub chains: Vec<String>,
    /// Every rule: its chain and the words after `-A CHAIN`.
    pub rules: Vec<(String, Args)>,
}

/// Parses `iptables-save` output (comment lines, such as iptables-nft's notes about
/// tables it cannot show, are skipped).
pub fn parse_save(text: &str) -> Result<Vec<SavedTable>, UnterminatedQuote> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.trim().to_string(),
                ..SavedTable::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else {
            continue;
        };
        if let Some(rest) = line.strip_prefix(':') {
            table
                .chains
                .extend(rest.split_whitespace().next().map(String::from));
        } else if line.starts_with("-A ") {
            let mut words = split_words(line)?;
            if words.len() >= 2 {
                let args = words.split_off(2);
                table.rules.push((words.swap_remove(1), args));
            }
        }
    }
    Ok(tables)
}

/// The chain a rule jumps or goes to (`-j`/`-g`), if any.
pub fn target(args: &[String]) -> Option<&str> {
    args.windows(2)
        .find(|w| w[0] == "-j" || w[0] == "-g" || w[0] == "--jump" || w[0] == "--goto")
        .map(|w| w[1].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Args {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn renders_upstream_layout() {
        let mut input = RestoreInput::default();
        let nat = input.table(Table::Nat);
        nat.rule(
            "KUBE-SERVICES",
            words(&[
                "-m",
                "comment",
                "--comment",
                "ns/s:p cluster IP",
                "-j",
                "KUBE-SVC-X",
            ]),
        );
        nat.chain("KUBE-SVC-X");
        nat.deleted.push("KUBE-SEP-OLD".into());
        input.table(Table::Filter);
        assert_eq!(
            input.render(),
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n:KUBE-SEP-OLD - [0:0]\n\
             -A KUBE-SERVICES -m comment --comment \"ns/s:p cluster IP\" -j KUBE-SVC-X\n\
             -X KUBE-SEP-OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn splits_what_it_joins() {
        let args = words(&["-m", "comment", "--comment", "a b", "", "-j", "X"]);
        assert_eq!(split_words(&join_words(&args)).unwrap(), args);
        assert!(split_words("-A X \"open").is_err());
        assert_eq!(target(&args), Some("X"));
    }

    #[test]
    fn comments_are_always_acceptable() {
        assert_eq!(comment("a\"b\\c"), "a_b_c");
        let long = comment(&"é".repeat(200));
        assert!(long.len() <= COMMENT_MAX && long.ends_with('é'));
    }
}
