//! [`NftablesBackend`]: the [`Backend`] of nftables mode.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube_proxy_model::{Backend, BackendError, Changes, ProxyOptions, ProxyState, SyncReport};

use crate::addresses::{node_port_ips, AddressSource, NodePortIps, SystemAddresses};
use crate::exec::{ExecError, NftCommand, NftExecutor};
use crate::ir::{Chain, Family, Object};
use crate::names::NODEPORT_IPS;
use crate::plan::{plan_rebuild, plan_table, Planned};
use crate::rules::{model_family, node_port_elements, skeleton, Context};
use crate::sync::ServiceIndex;
use crate::table::{Ruleset, TableState};
use crate::transaction::Transaction;

const MODE: &str = "nftables";

/// How long a flushed service chain is kept before it is deleted (upstream's delay).
const STALE_CHAIN_GRACE: Duration = Duration::from_secs(1);

/// kube-proxy's nftables mode: programs `table ip kube-proxy` and `table ip6 kube-proxy`.
pub struct NftablesBackend {
    options: ProxyOptions,
    exec: Box<dyn NftExecutor>,
    addresses: Box<dyn AddressSource>,
    /// The families programmed (both unless the kernel lacks IPv6 nf_tables).
    families: Vec<Family>,
    /// What the kernel holds, as far as this backend knows; `None` until read back.
    kernel: Option<Ruleset>,
    index: BTreeMap<Family, ServiceIndex>,
    /// Flushed service chains and when they became stale.
    stale: BTreeMap<(Family, String), Instant>,
    stale_grace: Duration,
    /// The last sync failed (or none happened yet): the next one rebuilds everything.
    needs_full: bool,
}

impl NftablesBackend {
    /// A backend that runs the `nft` binary. Fails when the options are invalid or the
    /// kernel would not accept our IPv4 table (nft missing, no permission, no nf_tables);
    /// without IPv6 nf_tables support it programs IPv4 only, as upstream does.
    pub fn new(options: ProxyOptions) -> Result<Self, BackendError> {
        options.validate(MODE)?;
        let nft = NftCommand::new();
        let mut families = Vec::new();
        for family in Family::ALL {
            let mut probe = Transaction::new();
            probe.add(family, Object::Table { comment: None });
            match nft.check(&probe) {
                Ok(()) => families.push(family),
                Err(e) if family == Family::Ip => {
                    return Err(BackendError::Unavailable {
                        mode: MODE,
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no IPv6 nftables support; proxying IPv4 only")
                }
            }
        }
        Ok(Self::with_executor(options, nft).with_families(&families))
    }

    /// A backend over any executor (the fake in tests).
    pub fn with_executor(options: ProxyOptions, exec: impl NftExecutor + 'static) -> Self {
        NftablesBackend {
            options,
            exec: Box::new(exec),
            addresses: Box::new(SystemAddresses),
            families: Family::ALL.to_vec(),
            kernel: None,
            index: BTreeMap::new(),
            stale: BTreeMap::new(),
            stale_grace: STALE_CHAIN_GRACE,
            needs_full: true,
        }
    }

    /// Takes the node's interface addresses (for `nodePortAddresses`) from `source`.
    pub fn with_address_source(mut self, source: impl AddressSource + 'static) -> Self {
        self.addresses = Box::new(source);
        self
    }

    /// Programs only `families` (and leaves the other family's table alone).
    pub fn with_families(mut self, families: &[Family]) -> Self {
        self.families = families.to_vec();
        self
    }

    /// Sets how long flushed service chains wait before deletion (default 1 s).
    pub fn with_stale_chain_grace(mut self, grace: Duration) -> Self {
        self.stale_grace = grace;
        self
    }

    fn context(&self, state: &ProxyState, family: Family) -> Context {
        Context::new(&self.options, family, state.node.ip(model_family(family)))
    }

    /// The addresses of `family` that accept NodePorts now. Interface addresses change
    /// without any API event, so every sync asks again, as upstream does; when that fails,
    /// none accept, as upstream's would.
    fn node_ports(&self, state: &ProxyState, family: Family) -> NodePortIps {
        let family = model_family(family);
        node_port_ips(
            &self.options.node_port_addresses,
            family,
            state.node.ip(family),
            &*self.addresses,
        )
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "listing local addresses for nodePortAddresses failed");
            NodePortIps::Only(Vec::new())
        })
    }

    /// The skeleton of `family`'s table for `state`.
    fn skeleton(&self, ctx: &Context, state: &ProxyState) -> TableState {
        let node_ports = self.node_ports(state, ctx.family);
        skeleton(ctx, &node_ports, &state.node.service_cidrs)
    }

    /// Reads both tables back and reconciles everything.
    fn plan_full(
        &mut self,
        state: &ProxyState,
    ) -> Result<(Ruleset, Vec<(Family, Planned)>), BackendError> {
        let mut kernel = Ruleset::default();
        let mut unreadable = Vec::new();
        for &family in &self.families {
            match self.exec.read_table(family) {
                Ok(Some(t)) => {
                    kernel.tables.insert(family, t);
                }
                Ok(None) => {}
                // A listing this version cannot read (from a newer nft, say) must not fail
                // every sync: the table is rebuilt atomically, as upstream always does.
                Err(ExecError::Parse(e)) => {
                    tracing::warn!(%family, error = %e, "cannot read back the kube-proxy table; rebuilding it");
                    kernel.tables.insert(family, TableState::default());
                    unreadable.push(family);
                }
                Err(e) => return Err(backend_error(e, "reading back the kube-proxy tables")),
            }
        }
        let mut plans = Vec::new();
        for &family in &self.families {
            let ctx = self.context(state, family);
            let mut desired = self.skeleton(&ctx, state);
            let index =
                ServiceIndex::rebuild(&ctx, state.services(model_family(family)), &mut desired);
            self.index.insert(family, index);
            let planned = if unreadable.contains(&family) {
                plan_rebuild(family, &desired)
            } else {
                plan_table(family, kernel.tables.get(&family), &desired)
            };
            plans.push((family, planned));
        }
        Ok((kernel, plans))
    }

    /// Plans only the changed service ports and `nodeport-ips`; `None` when that is not
    /// possible.
    fn plan_partial(
        &mut self,
        state: &ProxyState,
        changes: &Changes,
    ) -> Option<Vec<(Family, Planned)>> {
        let mut plans = Vec::new();
        for family in self.families.clone() {
            plans.push((family, self.plan_partial_family(state, changes, family)?));
        }
        Some(plans)
    }

    fn plan_partial_family(
        &mut self,
        state: &ProxyState,
        changes: &Changes,
        family: Family,
    ) -> Option<Planned> {
        let ctx = self.context(state, family);
        let node_ports = self.node_ports(state, family);
        let table = self.kernel.as_ref()?.tables.get(&family)?;
        // Switching between the set and every local address rewrites skeleton rules.
        if table.sets.contains_key(NODEPORT_IPS) != matches!(node_ports, NodePortIps::Only(_)) {
            tracing::info!(%family, "NodePort addresses changed form, doing a full sync");
            return None;
        }
        let index = self.index.get_mut(&family)?;
        let services = state.services(model_family(family));
        let mut planner = index
            .plan_changes(&ctx, services, &changes.services, table)
            .map_err(|why| {
                tracing::warn!(%family, reason = %why.0, "partial sync impossible, doing a full one");
            })
            .ok()?;
        if let NodePortIps::Only(ips) = &node_ports {
            planner.elements(NODEPORT_IPS, &node_port_elements(ips));
        }
        Some(planner.into_planned())
    }

    /// Deletes service chains flushed at least the grace period ago, in a transaction of
    /// their own so that a kernel still busy with one cannot fail the sync. Returns
    /// whether anything was sent.
    fn delete_stale_chains(&mut self) -> bool {
        let Some(kernel) = self.kernel.as_mut() else {
            return false;
        };
        let now = Instant::now();
        let due: Vec<(Family, String)> = self
            .stale
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.stale_grace)
            .map(|(k, _)| k.clone())
            .collect();
        let mut tx = Transaction::new();
        for key in &due {
            self.stale.remove(key);
            let (family, name) = key;
            if kernel
                .tables
                .get(family)
                .is_some_and(|t| t.chains.contains_key(name))
            {
                tx.delete(*family, Object::Chain(Chain::named(name.clone())));
            }
        }
        if tx.is_empty() {
            return false;
        }
        tracing::info!(chains = tx.len(), "deleting stale nftables chains");
        match self.exec.apply(&tx) {
            Ok(()) => {
                if kernel.apply_accepted(&tx).is_err() {
                    self.kernel = None;
                }
                true
            }
            Err(e) => {
                // They stay in the table and are found again by the next full sync.
                tracing::warn!(error = %e, "deleting stale chains failed; will retry later");
                false
            }
        }
    }

    fn record_stale(&mut self, plans: &[(Family, Planned)], full: bool) {
        let now = Instant::now();
        let mut next = if full {
            BTreeMap::new()
        } else {
            std::mem::take(&mut self.stale)
        };
        for (family, planned) in plans {
            for name in &planned.wanted {
                next.remove(&(*family, name.clone()));
            }
            for name in &planned.new_stale {
                let key = (*family, name.clone());
                let since = self.stale.get(&key).copied().unwrap_or(now);
                next.insert(key, since);
            }
        }
        self.stale = next;
    }
}

/// An executor failure as the caller sees it; `doing` says what the backend was doing.
fn backend_error(e: ExecError, doing: &str) -> BackendError {
    match e {
        ExecError::Io { source, .. } => BackendError::Io { mode: MODE, source },
        other => BackendError::Apply {
            mode: MODE,
            message: format!("{doing}: {other}"),
        },
    }
}

impl Backend for NftablesBackend {
    fn mode(&self) -> &'static str {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, changes: &Changes) -> Result<SyncReport, BackendError> {
        self.options.validate(MODE)?;
        let mut report = SyncReport {
            full: changes.full || self.needs_full || self.kernel.is_none(),
            applied: false,
        };
        report.applied = self.delete_stale_chains();
        self.needs_full = true;
        let partial = if report.full {
            None
        } else {
            self.plan_partial(state, changes)
        };
        let mut plans = match partial {
            Some(plans) => plans,
            None => {
                report.full = true;
                let (kernel, plans) = self.plan_full(state)?;
                self.kernel = Some(kernel);
                plans
            }
        };
        let mut tx = Transaction::new();
        for (_, planned) in &mut plans {
            tx.extend(std::mem::take(&mut planned.tx));
        }
        if !tx.is_empty() {
            if let Err(e) = self.exec.apply(&tx) {
                self.kernel = None;
                return Err(backend_error(e, "syncing"));
            }
            report.applied = true;
            let kernel = self.kernel.as_mut().expect("planning needs a known kernel");
            if let Err(e) = kernel.apply_accepted(&tx) {
                tracing::warn!(error = %e, "table model out of step; reading back next sync");
                self.kernel = None;
            }
        }
        self.record_stale(&plans, report.full);
        self.needs_full = self.kernel.is_none();
        tracing::debug!(full = report.full, ops = tx.len(), "nftables sync done");
        Ok(report)
    }

    fn render(&self, state: &ProxyState) -> Result<String, BackendError> {
        self.options.validate(MODE)?;
        let mut tx = Transaction::new();
        for &family in &self.families {
            let ctx = self.context(state, family);
            let mut desired = self.skeleton(&ctx, state);
            ServiceIndex::rebuild(&ctx, state.services(model_family(family)), &mut desired);
            tx.extend(plan_table(family, None, &desired).tx);
        }
        Ok(tx.render())
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut tx = Transaction::new();
        for &family in &self.families {
            tx.destroy(family, Object::Table { comment: None });
        }
        self.kernel = None;
        self.index.clear();
        self.stale.clear();
        self.needs_full = true;
        self.exec
            .apply(&tx)
            .map_err(|e| backend_error(e, "cleaning up"))
    }
}
