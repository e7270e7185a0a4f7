//! [`IptablesBackend`]: the [`Backend`] of iptables mode.

use std::collections::{BTreeMap, BTreeSet};

use kube_proxy_model::{
    Backend, BackendError, Changes, IpFamily, ProxyOptions, ProxyState, ServicePortName, SyncReport,
};
use kube_proxy_nftables::addresses::{node_port_ips, AddressSource, NodePortIps, SystemAddresses};

use crate::cleanup::cleanup_with;
use crate::exec::{ExecError, IptablesCommand, IptablesExecutor, Variant};
use crate::names::*;
use crate::restore::{parse_save, RestoreInput, Table};
use crate::rules::*;
use crate::MODE;

const SYSCTL_TCP_BE_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
const SYSCTL_ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// A jump from a built-in chain to one of ours, ensured on every full sync (upstream's
/// `iptablesJumpChains` and `iptablesKubeletJumpChains`, in their order: each is inserted
/// first, so the last one listed ends up on top).
struct Jump {
    table: Table,
    from: &'static str,
    to: &'static str,
    comment: &'static str,
    new_only: bool,
}

const fn jump(
    table: Table,
    from: &'static str,
    to: &'static str,
    comment: &'static str,
    new_only: bool,
) -> Jump {
    Jump {
        table,
        from,
        to,
        comment,
        new_only,
    }
}

const EXTERNAL: &str = "kubernetes externally-visible service portals";
const PORTALS: &str = "kubernetes service portals";
const LB_FIREWALL: &str = "kubernetes load balancer firewall";

const JUMPS: [Jump; 14] = [
    jump(
        Table::Filter,
        "INPUT",
        KUBE_EXTERNAL_SERVICES,
        EXTERNAL,
        true,
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_EXTERNAL_SERVICES,
        EXTERNAL,
        true,
    ),
    jump(
        Table::Filter,
        "INPUT",
        KUBE_NODEPORTS,
        "kubernetes health check service ports",
        false,
    ),
    jump(Table::Filter, "FORWARD", KUBE_SERVICES, PORTALS, true),
    jump(Table::Filter, "OUTPUT", KUBE_SERVICES, PORTALS, true),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_FORWARD,
        "kubernetes forwarding rules",
        false,
    ),
    jump(
        Table::Filter,
        "INPUT",
        KUBE_PROXY_FIREWALL,
        LB_FIREWALL,
        true,
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        KUBE_PROXY_FIREWALL,
        LB_FIREWALL,
        true,
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_PROXY_FIREWALL,
        LB_FIREWALL,
        true,
    ),
    jump(Table::Nat, "OUTPUT", KUBE_SERVICES, PORTALS, false),
    jump(Table::Nat, "PREROUTING", KUBE_SERVICES, PORTALS, false),
    jump(
        Table::Nat,
        "POSTROUTING",
        KUBE_POSTROUTING,
        "kubernetes postrouting rules",
        false,
    ),
    jump(Table::Filter, "INPUT", KUBE_FIREWALL, "", false),
    jump(Table::Filter, "OUTPUT", KUBE_FIREWALL, "", false),
];

impl Jump {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<&str> = Vec::new();
        if self.new_only {
            args.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        if !self.comment.is_empty() {
            args.extend(["-m", "comment", "--comment", self.comment]);
        }
        args.extend(["-j", self.to]);
        args.into_iter().map(String::from).collect()
    }
}

/// What one family's tables hold, as far as this backend knows.
#[derive(Debug, Clone, Default)]
struct Programmed {
    /// The nat chains of each service port.
    chains: BTreeMap<ServicePortName, Vec<String>>,
    /// The last restore input without service chains: a sync that would send the same
    /// sends nothing.
    shared: String,
    large_cluster: bool,
}

/// kube-proxy's iptables mode: the `KUBE-*` chains in the filter and nat tables (and the
/// canary in mangle) of each family, written with one `iptables-restore` per family.
pub struct IptablesBackend {
    options: ProxyOptions,
    exec: Box<dyn IptablesExecutor>,
    /// Executors of the other variant, used only to clean up.
    other_variants: Vec<Box<dyn IptablesExecutor>>,
    addresses: Box<dyn AddressSource>,
    families: Vec<IpFamily>,
    localhost_node_ports: bool,
    tcp_be_liberal: bool,
    programmed: BTreeMap<IpFamily, Programmed>,
    /// The last sync failed (or none happened yet): the next one rewrites everything.
    needs_full: bool,
}

impl IptablesBackend {
    /// A backend that runs `variant`'s binaries, as upstream's constructor: reads
    /// `nf_conntrack_tcp_be_liberal`, sets `route_localnet` when localhost NodePorts are on,
    /// and programs IPv6 only when ip6tables works.
    pub fn new(
        options: ProxyOptions,
        variant: Variant,
        localhost_node_ports: bool,
    ) -> Result<Self, BackendError> {
        options.validate(MODE)?;
        let mut exec = IptablesCommand::new(variant);
        let mut families = Vec::new();
        for family in IpFamily::ALL {
            match exec.save(family, Some(Table::Nat)) {
                Ok(_) => families.push(family),
                Err(e) if family == IpFamily::V4 => {
                    return Err(BackendError::Unavailable {
                        mode: MODE,
                        message: e.to_string(),
                    })
                }
                Err(e) => tracing::warn!(error = %e, "ip6tables unusable; proxying IPv4 only"),
            }
        }
        let liberal = std::fs::read_to_string(SYSCTL_TCP_BE_LIBERAL).is_ok_and(|v| v.trim() == "1");
        let mut backend = Self::with_executor(options, exec)
            .with_families(&families)
            .with_localhost_node_ports(localhost_node_ports)
            .with_tcp_be_liberal(liberal);
        let other = Variant::ALL.into_iter().filter(|v| *v != variant);
        backend.other_variants = other
            .map(|v| Box::new(IptablesCommand::new(v)) as Box<dyn IptablesExecutor>)
            .collect();
        if backend.localhost_v4() {
            std::fs::write(SYSCTL_ROUTE_LOCALNET, "1")
                .map_err(|source| BackendError::Io { mode: MODE, source })?;
        }
        Ok(backend)
    }

    /// A backend over any executor (the fake in tests); localhost NodePorts on, the
    /// INVALID-drop rule on, both families.
    pub fn with_executor(options: ProxyOptions, exec: impl IptablesExecutor + 'static) -> Self {
        IptablesBackend {
            options,
            exec: Box::new(exec),
            other_variants: Vec::new(),
            addresses: Box::new(SystemAddresses),
            families: IpFamily::ALL.to_vec(),
            localhost_node_ports: true,
            tcp_be_liberal: false,
            programmed: BTreeMap::new(),
            needs_full: true,
        }
    }

    /// Takes the node's interface addresses (for `nodePortAddresses`) from `source`.
    pub fn with_address_source(mut self, source: impl AddressSource + 'static) -> Self {
        self.addresses = Box::new(source);
        self
    }

    /// Programs only `families`.
    pub fn with_families(mut self, families: &[IpFamily]) -> Self {
        self.families = families.to_vec();
        self
    }

    /// `iptables.localhostNodePorts`: IPv4 NodePorts also answer on 127.0.0.0/8.
    pub fn with_localhost_node_ports(mut self, on: bool) -> Self {
        self.localhost_node_ports = on;
        self
    }

    /// Whether `nf_conntrack_tcp_be_liberal` is 1 (then no INVALID-drop rule).
    pub fn with_tcp_be_liberal(mut self, liberal: bool) -> Self {
        self.tcp_be_liberal = liberal;
        self
    }

    /// Localhost NodePorts are in effect: IPv4 is programmed, they are on, and
    /// `nodePortAddresses` does not narrow NodePorts to other addresses.
    fn localhost_v4(&self) -> bool {
        self.localhost_node_ports
            && self.families.contains(&IpFamily::V4)
            && !self.options.node_port_addresses.iter().any(|a| {
                matches!(a, kube_proxy_model::NodePortAddress::Cidr(c)
                    if IpFamily::of_net(c) == IpFamily::V4 && !c.contains(&std::net::IpAddr::from([127, 0, 0, 1])))
                    || matches!(a, kube_proxy_model::NodePortAddress::Primary)
            })
    }

    fn context(&self, state: &ProxyState, family: IpFamily) -> Context {
        let mut ctx = Context::new(&self.options, family, state.node.ip(family));
        // Interface addresses change without any API event: ask on every sync.
        ctx.node_ports = node_port_ips(
            &self.options.node_port_addresses,
            family,
            state.node.ip(family),
            &*self.addresses,
        )
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "listing local addresses for nodePortAddresses failed");
            NodePortIps::Only(Vec::new())
        });
        ctx.localhost_node_ports = family == IpFamily::V4 && self.localhost_v4();
        ctx.tcp_be_liberal = self.tcp_be_liberal;
        let endpoints: usize = state
            .services(family)
            .values()
            .map(|e| e.endpoints.len())
            .sum();
        ctx.large_cluster = endpoints > LARGE_CLUSTER_ENDPOINTS;
        ctx
    }

    /// True when every canary of `family` still holds its rule.
    fn canaries_intact(&mut self, family: IpFamily) -> bool {
        [Table::Mangle, Table::Filter, Table::Nat].into_iter().all(|table| {
            match self.exec.list_chain(family, table, KUBE_PROXY_CANARY) {
                Ok(Some(rules)) if rules.contains(&canary_rule()) => true,
                Ok(_) => {
                    tracing::info!(%family, %table, "iptables canary gone: rules were flushed, doing a full sync");
                    false
                }
                Err(e) => {
                    tracing::warn!(%family, %table, error = %e, "checking the iptables canary failed");
                    false
                }
            }
        })
    }

    /// The service chains now in the nat table of `family`.
    fn existing_service_chains(
        &mut self,
        family: IpFamily,
    ) -> Result<BTreeSet<String>, BackendError> {
        let text = self
            .exec
            .save(family, Some(Table::Nat))
            .map_err(|e| backend_error(e, "reading the nat table"))?;
        let saved = parse_save(&text).map_err(|e| BackendError::Apply {
            mode: MODE,
            message: format!("reading the nat table: {e}"),
        })?;
        Ok(saved
            .into_iter()
            .flat_map(|t| t.chains)
            .filter(|c| is_service_chain(c))
            .collect())
    }

    fn ensure_jumps(&mut self, family: IpFamily) -> Result<(), BackendError> {
        for j in &JUMPS {
            self.exec
                .ensure_rule(family, j.table, j.from, &j.args())
                .map_err(|e| backend_error(e, &format!("linking {} from {}", j.to, j.from)))?;
        }
        Ok(())
    }

    /// Syncs one family; returns whether anything was sent.
    fn sync_family(
        &mut self,
        state: &ProxyState,
        changes: &Changes,
        family: IpFamily,
        full: bool,
    ) -> Result<bool, BackendError> {
        let ctx = self.context(state, family);
        let previous = self.programmed.get(&family);
        let full = full || previous.is_none_or(|p| p.large_cluster != ctx.large_cluster);
        let plan = if full {
            let existing = self.existing_service_chains(family)?;
            plan(&ctx, state, None, &Programmed::default(), &existing)
        } else {
            let previous = previous.cloned().unwrap_or_default();
            plan(
                &ctx,
                state,
                Some(&changes.services),
                &previous,
                &BTreeSet::new(),
            )
        };
        let (input, programmed, writes_services) = plan;
        let unchanged = self
            .programmed
            .get(&family)
            .is_some_and(|p| p.shared == programmed.shared);
        if !full && !writes_services && unchanged {
            return Ok(false);
        }
        self.exec
            .restore(family, &input.render())
            .map_err(|e| backend_error(e, &format!("restoring {family} rules")))?;
        if full {
            self.ensure_jumps(family)?;
        }
        self.programmed.insert(family, programmed);
        Ok(true)
    }

    /// The restore input a full sync of `family` sends, without stale chains to delete.
    pub fn render_family(&self, state: &ProxyState, family: IpFamily) -> String {
        let ctx = self.context(state, family);
        plan(&ctx, state, None, &Programmed::default(), &BTreeSet::new())
            .0
            .render()
    }
}

/// Builds the restore input of one family. `selection` is `None` for a full sync, else the
/// changed service ports, whose chains alone are written. Returns the input, what the
/// tables hold afterwards, and whether it writes or deletes service chains.
fn plan(
    ctx: &Context,
    state: &ProxyState,
    selection: Option<&BTreeSet<ServicePortName>>,
    previous: &Programmed,
    existing: &BTreeSet<String>,
) -> (RestoreInput, Programmed, bool) {
    let mut input = skeleton(ctx);
    if selection.is_none() {
        add_canaries(&mut input);
    }
    let mut chains = previous.chains.clone();
    let mut stale: BTreeSet<String> = existing.clone();
    let services = state.services(ctx.family);
    let mut writes = false;
    for (name, entry) in services {
        let rules = service_rules(ctx, entry);
        let write = selection.is_none_or(|s| s.contains(name));
        add_service(&mut input, &rules, write);
        if write {
            writes |= !rules.chains.is_empty();
            let names = chain_names(&rules);
            if let Some(old) = chains.insert(name.clone(), names) {
                stale.extend(old);
            }
        }
    }
    if let Some(selected) = selection {
        for name in selected.iter().filter(|n| !services.contains_key(*n)) {
            stale.extend(chains.remove(name).unwrap_or_default());
        }
    }
    for wanted in chains.values().flatten() {
        stale.remove(wanted);
    }
    nodeports_jump(ctx, input.table(Table::Nat));
    let shared = shared_text(&input);
    writes |= !stale.is_empty();
    input.table(Table::Nat).deleted = stale.into_iter().collect();
    let programmed = Programmed {
        chains,
        shared,
        large_cluster: ctx.large_cluster,
    };
    (input, programmed, writes)
}

/// The input without service chains and without the canaries of a full sync.
fn shared_text(input: &RestoreInput) -> String {
    let mut shared = input.clone();
    shared.tables.retain(|t| t.table != Table::Mangle);
    for t in &mut shared.tables {
        t.chains
            .retain(|(name, _)| !is_service_chain(name) && name != KUBE_PROXY_CANARY);
    }
    shared.render()
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

impl Backend for IptablesBackend {
    fn mode(&self) -> &'static str {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, changes: &Changes) -> Result<SyncReport, BackendError> {
        self.options.validate(MODE)?;
        let mut full = changes.full || self.needs_full;
        for family in self.families.clone() {
            full = full || !self.canaries_intact(family);
        }
        self.needs_full = true;
        let mut applied = false;
        for family in self.families.clone() {
            applied |= self.sync_family(state, changes, family, full)?;
        }
        self.needs_full = false;
        Ok(SyncReport { full, applied })
    }

    fn render(&self, state: &ProxyState) -> Result<String, BackendError> {
        self.options.validate(MODE)?;
        let mut out = String::new();
        for &family in &self.families {
            if family == IpFamily::V6 && state.v6.is_empty() && !state.v4.is_empty() {
                continue;
            }
            let tool = match family {
                IpFamily::V4 => "iptables-restore",
                IpFamily::V6 => "ip6tables-restore",
            };
            out.push_str(&format!("# {family}: {tool} --noflush input\n"));
            out.push_str(&self.render_family(state, family));
        }
        Ok(out)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.programmed.clear();
        self.needs_full = true;
        let families = self.families.clone();
        cleanup_with(&mut *self.exec, &families).map_err(|e| backend_error(e, "cleaning up"))?;
        for exec in &mut self.other_variants {
            match cleanup_with(&mut **exec, &IpFamily::ALL) {
                Ok(_) => {}
                Err(e) if e.is_missing_tool() => {}
                Err(e) => return Err(backend_error(e, "cleaning up the other iptables variant")),
            }
        }
        Ok(())
    }
}
