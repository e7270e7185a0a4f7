//! An in-memory [`IptablesExecutor`]: parses restore input and refuses what the real tools
//! refuse (a jump to a missing chain, deleting a chain still referenced or not empty, a
//! rule in a missing chain, a missing `COMMIT`), committing table by table as they do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kube_proxy_model::IpFamily;

use crate::exec::{ExecError, IptablesExecutor};
use crate::restore::{join_words, split_words, target, Args, Table};

/// Targets that are not chains.
const BUILTIN_TARGETS: [&str; 10] = [
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "MARK",
    "MASQUERADE",
    "DNAT",
    "SNAT",
    "LOG",
    "CONNMARK",
];

/// One table: every chain (built-in ones included) with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTable {
    pub chains: BTreeMap<String, Vec<Args>>,
}

impl FakeTable {
    fn new(table: Table) -> Self {
        FakeTable {
            chains: table
                .builtin_chains()
                .iter()
                .map(|c| (c.to_string(), Vec::new()))
                .collect(),
        }
    }

    fn chain_mut(&mut self, chain: &str) -> Result<&mut Vec<Args>, String> {
        self.chains
            .get_mut(chain)
            .ok_or_else(|| format!("chain {chain} does not exist"))
    }

    fn references(&self, chain: &str) -> usize {
        self.chains
            .values()
            .flatten()
            .filter(|r| target(r) == Some(chain))
            .count()
    }

    /// Every jump must lead to a chain of the table or a built-in target.
    fn check_targets(&self) -> Result<(), String> {
        for (chain, rules) in &self.chains {
            for rule in rules {
                if let Some(t) = target(rule) {
                    if !self.chains.contains_key(t) && !BUILTIN_TARGETS.contains(&t) {
                        return Err(format!("-A {chain}: unknown chain or target {t}"));
                    }
                }
            }
        }
        Ok(())
    }
}

type Tables = BTreeMap<(IpFamily, Table), FakeTable>;

#[derive(Debug, Default)]
struct Inner {
    tables: Tables,
    restores: Vec<(IpFamily, String)>,
    commands: usize,
    fail_next: Option<String>,
}

/// A fake kernel. Clones share state, so a test keeps one handle and gives another to
/// the backend.
#[derive(Debug, Clone, Default)]
pub struct FakeIptables {
    inner: Arc<Mutex<Inner>>,
}

impl FakeIptables {
    /// No tables at all.
    pub fn new() -> Self {
        FakeIptables::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has failed already.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules of `chain`, if it exists.
    pub fn chain(&self, family: IpFamily, table: Table, chain: &str) -> Option<Vec<Args>> {
        self.lock()
            .tables
            .get(&(family, table))
            .and_then(|t| t.chains.get(chain).cloned())
    }

    /// The names of every chain of `table` (built-in ones included).
    pub fn chains(&self, family: IpFamily, table: Table) -> Vec<String> {
        self.lock()
            .tables
            .get(&(family, table))
            .map(|t| t.chains.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every successful restore input so far, with its family.
    pub fn restores(&self) -> Vec<(IpFamily, String)> {
        self.lock().restores.clone()
    }

    /// Number of single commands run (`-S`, `-C`/`-I`, save).
    pub fn command_count(&self) -> usize {
        self.lock().commands
    }

    /// Makes the next restore fail with `message`.
    pub fn fail_next_restore(&self, message: &str) {
        self.lock().fail_next = Some(message.to_string());
    }

    /// Removes every rule of every chain of `table`, as `iptables -t TABLE -F` does.
    pub fn flush_table(&self, family: IpFamily, table: Table) {
        if let Some(t) = self.lock().tables.get_mut(&(family, table)) {
            t.chains.values_mut().for_each(Vec::clear);
        }
    }

    /// Restores `input` as another program sharing the kernel would.
    pub fn restore_external(&self, family: IpFamily, input: &str) -> Result<(), ExecError> {
        restore_into(&mut self.lock().tables, family, input)
    }
}

fn refused(message: String) -> ExecError {
    ExecError::Refused {
        tool: "fake iptables-restore".into(),
        message,
    }
}

/// Applies restore input table by table, as `iptables-restore --noflush` does.
fn restore_into(tables: &mut Tables, family: IpFamily, input: &str) -> Result<(), ExecError> {
    let mut open: Option<(Table, FakeTable)> = None;
    for (n, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |why: String| refused(format!("line {}: {why}: {line}", n + 1));
        if let Some(name) = line.strip_prefix('*') {
            if open.is_some() {
                return Err(fail("COMMIT expected".into()));
            }
            let table = Table::parse(name).ok_or_else(|| fail("unknown table".into()))?;
            let current = tables.get(&(family, table)).cloned();
            open = Some((table, current.unwrap_or_else(|| FakeTable::new(table))));
            continue;
        }
        let Some((table, state)) = open.as_mut() else {
            return Err(fail("no table".into()));
        };
        if line == "COMMIT" {
            state.check_targets().map_err(fail)?;
            tables.insert((family, *table), state.clone());
            open = None;
            continue;
        }
        apply_line(*table, state, line).map_err(fail)?;
    }
    match open {
        Some(_) => Err(refused("COMMIT expected at end of input".into())),
        None => Ok(()),
    }
}

fn apply_line(table: Table, state: &mut FakeTable, line: &str) -> Result<(), String> {
    if let Some(rest) = line.strip_prefix(':') {
        let chain = rest.split_whitespace().next().unwrap_or_default();
        // A chain line creates a chain, or flushes it (--noflush leaves the others).
        state.chains.insert(chain.to_string(), Vec::new());
        return Ok(());
    }
    let words = split_words(line).map_err(|e| e.to_string())?;
    let (verb, chain, args) = match words.as_slice() {
        [verb, chain, args @ ..] => (verb.as_str(), chain.as_str(), args.to_vec()),
        _ => return Err("incomplete line".into()),
    };
    match verb {
        "-A" => state.chain_mut(chain)?.push(args),
        "-I" => state.chain_mut(chain)?.insert(0, args),
        "-D" => {
            let rules = state.chain_mut(chain)?;
            let i = rules
                .iter()
                .position(|r| *r == args)
                .ok_or("no matching rule to delete")?;
            rules.remove(i);
        }
        "-F" => state.chain_mut(chain)?.clear(),
        "-N" if state.chains.contains_key(chain) => return Err("chain already exists".into()),
        "-N" => {
            state.chains.insert(chain.to_string(), Vec::new());
        }
        "-X" => {
            if table.builtin_chains().contains(&chain) {
                return Err("cannot delete a built-in chain".into());
            }
            if !state.chain_mut(chain)?.is_empty() {
                return Err("chain is not empty".into());
            }
            if state.references(chain) > 0 {
                return Err("chain is still referenced".into());
            }
            state.chains.remove(chain);
        }
        _ => return Err(format!("unknown command {verb}")),
    }
    Ok(())
}

fn render_table(name: Table, table: &FakeTable) -> String {
    let mut out = format!("*{name}\n");
    for chain in table.chains.keys() {
        let policy = if name.builtin_chains().contains(&chain.as_str()) {
            "ACCEPT"
        } else {
            "-"
        };
        out.push_str(&format!(":{chain} {policy} [0:0]\n"));
    }
    for (chain, rules) in &table.chains {
        for r in rules {
            out.push_str(&format!("-A {chain} {}\n", join_words(r)));
        }
    }
    out.push_str("COMMIT\n");
    out
}

impl IptablesExecutor for FakeIptables {
    fn restore(&mut self, family: IpFamily, input: &str) -> Result<(), ExecError> {
        let mut inner = self.lock();
        if let Some(message) = inner.fail_next.take() {
            return Err(refused(message));
        }
        restore_into(&mut inner.tables, family, input)?;
        inner.restores.push((family, input.to_string()));
        Ok(())
    }

    fn save(&mut self, family: IpFamily, table: Option<Table>) -> Result<String, ExecError> {
        let mut inner = self.lock();
        inner.commands += 1;
        Ok(inner
            .tables
            .iter()
            .filter(|((f, t), _)| *f == family && table.is_none_or(|want| want == *t))
            .map(|((_, t), state)| render_table(*t, state))
            .collect())
    }

    fn list_chain(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<Args>>, ExecError> {
        let mut inner = self.lock();
        inner.commands += 1;
        Ok(inner
            .tables
            .get(&(family, table))
            .and_then(|t| t.chains.get(chain).cloned()))
    }

    fn ensure_rule(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
        rule: &[String],
    ) -> Result<bool, ExecError> {
        let mut inner = self.lock();
        inner.commands += 1;
        let state = inner
            .tables
            .entry((family, table))
            .or_insert_with(|| FakeTable::new(table));
        let target_missing = target(rule)
            .is_some_and(|t| !state.chains.contains_key(t) && !BUILTIN_TARGETS.contains(&t));
        if target_missing {
            return Err(refused(format!(
                "-I {chain}: target of {rule:?} does not exist"
            )));
        }
        let rules = state.chain_mut(chain).map_err(refused)?;
        if rules.iter().any(|r| r == rule) {
            return Ok(false);
        }
        rules.insert(0, rule.to_vec());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpFamily = IpFamily::V4;

    #[test]
    fn refuses_what_iptables_restore_refuses() {
        let mut fake = FakeIptables::new();
        let cases = [
            (
                "*nat\n:A - [0:0]\n-A A -j MISSING\nCOMMIT\n",
                "unknown chain",
            ),
            ("*nat\n-A NOPE -j ACCEPT\nCOMMIT\n", "does not exist"),
            (
                "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-X B\nCOMMIT\n",
                "referenced",
            ),
            (
                "*nat\n:A - [0:0]\n-A A -j ACCEPT\n-X A\nCOMMIT\n",
                "not empty",
            ),
            ("*nat\n-X PREROUTING\nCOMMIT\n", "built-in"),
            ("*nat\n:A - [0:0]\n", "COMMIT expected"),
            (
                "*nat\n-A OUTPUT -m comment --comment \"x\nCOMMIT\n",
                "quote",
            ),
        ];
        for (input, why) in cases {
            let err = fake.restore(V4, input).unwrap_err().to_string();
            assert!(err.contains(why), "{input:?}: {err}");
        }
        assert!(fake.chains(V4, Table::Nat).is_empty(), "nothing committed");
    }

    #[test]
    fn noflush_keeps_unlisted_chains_and_commits_per_table() {
        let mut fake = FakeIptables::new();
        fake.restore(
            V4,
            "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        // B is not listed: it keeps its rule, and A may jump to it.
        fake.restore(V4, "*nat\n:A - [0:0]\n-A A -j B\n-A A -j RETURN\nCOMMIT\n")
            .unwrap();
        assert_eq!(fake.chain(V4, Table::Nat, "B").unwrap().len(), 1);
        assert_eq!(fake.chain(V4, Table::Nat, "A").unwrap().len(), 2);
        // The filter table commits before nat fails.
        let err = fake.restore(V4, "*filter\n:F - [0:0]\nCOMMIT\n*nat\n-X B\nCOMMIT\n");
        assert!(err.is_err());
        assert!(fake.chain(V4, Table::Filter, "F").is_some());
        assert!(fake.chain(V4, Table::Nat, "B").is_some());
        let saved = fake.save(V4, Some(Table::Nat)).unwrap();
        assert!(
            saved.contains(":B - [0:0]\n") && saved.contains("-A A -j B\n"),
            "{saved}"
        );
    }

    #[test]
    fn ensure_rule_inserts_once() {
        let mut fake = FakeIptables::new();
        fake.restore(V4, "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
            .unwrap();
        let rule: Args = vec!["-j".into(), "KUBE-SERVICES".into()];
        assert!(fake.ensure_rule(V4, Table::Nat, "OUTPUT", &rule).unwrap());
        assert!(!fake.ensure_rule(V4, Table::Nat, "OUTPUT", &rule).unwrap());
        let missing: Args = vec!["-j".into(), "KUBE-NOPE".into()];
        assert!(fake
            .ensure_rule(V4, Table::Nat, "OUTPUT", &missing)
            .is_err());
    }
}
