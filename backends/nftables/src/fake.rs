//! An in-memory [`NftExecutor`] that models the kernel's tables from the IR, for tests.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::exec::{ExecError, NftExecutor};
use crate::ir::Family;
use crate::table::{Ruleset, TableState};
use crate::transaction::Transaction;

#[derive(Debug, Default)]
struct Inner {
    ruleset: Ruleset,
    applied: Vec<Transaction>,
    reads: usize,
    fail_next: Option<String>,
}

/// A fake kernel. Clones share state, so a test keeps one handle and gives another to
/// the backend. It models one table per family, whatever its name: a test gives each
/// table owner (the nftables backend, IPVS mode's companion table) a fake of its own.
#[derive(Debug, Clone, Default)]
pub struct FakeNft {
    inner: Arc<Mutex<Inner>>,
}

impl FakeNft {
    /// An empty kernel.
    pub fn new() -> Self {
        FakeNft::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has failed already.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table of `family`, if it exists.
    pub fn table(&self, family: Family) -> Option<TableState> {
        self.lock().ruleset.tables.get(&family).cloned()
    }

    /// Every transaction applied successfully so far.
    pub fn applied(&self) -> Vec<Transaction> {
        self.lock().applied.clone()
    }

    /// Number of successfully applied transactions.
    pub fn apply_count(&self) -> usize {
        self.lock().applied.len()
    }

    /// Number of table read-backs.
    pub fn read_count(&self) -> usize {
        self.lock().reads
    }

    /// Makes the next `apply` fail with `message`, as a kernel refusal would.
    pub fn fail_next_apply(&self, message: &str) {
        self.lock().fail_next = Some(message.to_string());
    }

    /// Applies a transaction directly, as another process sharing the kernel would.
    pub fn apply_external(&self, tx: &Transaction) -> Result<(), ExecError> {
        let mut inner = self.lock();
        inner
            .ruleset
            .apply(tx)
            .map_err(|e| ExecError::Refused(e.to_string()))
    }
}

impl NftExecutor for FakeNft {
    fn apply(&mut self, tx: &Transaction) -> Result<(), ExecError> {
        let mut inner = self.lock();
        if let Some(msg) = inner.fail_next.take() {
            return Err(ExecError::Refused(msg));
        }
        inner
            .ruleset
            .apply(tx)
            .map_err(|e| ExecError::Refused(e.to_string()))?;
        inner.applied.push(tx.clone());
        Ok(())
    }

    fn read_table(&mut self, family: Family) -> Result<Option<TableState>, ExecError> {
        let mut inner = self.lock();
        inner.reads += 1;
        Ok(inner.ruleset.tables.get(&family).cloned())
    }

    fn read_named_table(
        &mut self,
        family: Family,
        _name: &str,
    ) -> Result<Option<TableState>, ExecError> {
        self.read_table(family)
    }
}
