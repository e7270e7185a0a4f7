//! [`IpvsBackend`]: the sync step of IPVS mode, diffing the plan against the kernel
//! through [`IpvsClient`], [`DummyLinkClient`] and [`NftExecutor`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use kube_proxy_model::{
    Backend, BackendError, Changes, IpFamily, Protocol, ProxyOptions, ProxyState, SyncReport,
};
use kube_proxy_nftables::addresses::{node_port_ips, NodePortIps};
use kube_proxy_nftables::ir::{Family, Object};
use kube_proxy_nftables::{AddressSource, NftCommand, NftExecutor, SystemAddresses, Transaction};

use crate::companion;
use crate::plan::{plan, IpvsSettings, Plan, COMPANION_TABLE};
use crate::sysctl::{self, ProcSysctls};
use crate::{
    Destination, DummyLink, DummyLinkClient, Error, Ipvs, IpvsClient, RealServer, ServiceKey,
    KUBE_IPVS0,
};

/// The `--proxy-mode` name.
pub(crate) const MODE: &str = "ipvs";

/// A real server being drained: weight 0, deleted once it has no connections left.
type Draining = (ServiceKey, IpAddr, u16);

/// Upstream's IPVS mode. See the crate documentation.
pub struct IpvsBackend {
    options: ProxyOptions,
    settings: IpvsSettings,
    ipvs: Box<dyn IpvsClient>,
    link: Box<dyn DummyLinkClient>,
    nft: Box<dyn NftExecutor>,
    addresses: Box<dyn AddressSource>,
    /// What the kernel holds since the last successful sync; `None` forces a full sync.
    last: Option<Plan>,
    /// TCP real servers at weight 0 waiting for their connections to end.
    draining: BTreeSet<Draining>,
    /// Families this process has programmed (they stay managed when they empty).
    families_seen: BTreeSet<IpFamily>,
}

fn apply_err(message: impl Into<String>) -> BackendError {
    BackendError::Apply {
        mode: MODE,
        message: message.into(),
    }
}

fn kernel_err(what: String) -> impl FnOnce(Error) -> BackendError {
    move |e| apply_err(format!("{what}: {e}"))
}

impl IpvsBackend {
    /// The backend on this network namespace's kernel: opens IPVS (failing with
    /// [`BackendError::Unavailable`] where the kernel has none) and the `kube-ipvs0`
    /// client, sets the sysctls IPVS mode needs and the configured IPVS timeouts.
    pub fn new(options: ProxyOptions, settings: IpvsSettings) -> Result<Self, BackendError> {
        let unavailable = |e: Error| BackendError::Unavailable {
            mode: MODE,
            message: format!("{e} (IPVS mode needs the ip_vs kernel modules)"),
        };
        let ipvs = Ipvs::new().map_err(unavailable)?;
        let link = DummyLink::new(KUBE_IPVS0).map_err(unavailable)?;
        let wanted = sysctl::required(settings.strict_arp, sysctl::kernel_version());
        sysctl::apply(&mut ProcSysctls, &wanted).map_err(apply_err)?;
        let mut backend =
            IpvsBackend::with_clients(options, settings, ipvs, link, NftCommand::new());
        backend.set_timeouts()?;
        Ok(backend)
    }

    /// A backend over the given clients, setting no sysctl (tests, `render`).
    pub fn with_clients(
        options: ProxyOptions,
        settings: IpvsSettings,
        ipvs: impl IpvsClient + 'static,
        link: impl DummyLinkClient + 'static,
        nft: impl NftExecutor + 'static,
    ) -> Self {
        IpvsBackend {
            options,
            settings,
            ipvs: Box::new(ipvs),
            link: Box::new(link),
            nft: Box::new(nft),
            addresses: Box::new(SystemAddresses),
            last: None,
            draining: BTreeSet::new(),
            families_seen: BTreeSet::new(),
        }
    }

    /// Takes the node's addresses (for NodePorts) from `source`.
    pub fn with_address_source(mut self, source: impl AddressSource + 'static) -> Self {
        self.addresses = Box::new(source);
        self
    }

    /// Sets the configured IPVS timeouts (zero ones stay as they are).
    pub fn set_timeouts(&mut self) -> Result<(), BackendError> {
        let t = self.settings.timeouts;
        if t.tcp.is_zero() && t.tcp_fin.is_zero() && t.udp.is_zero() {
            return Ok(());
        }
        self.ipvs
            .set_config(&t)
            .map_err(kernel_err("setting the IPVS timeouts".into()))
    }

    /// Real servers currently being drained.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// The families to program: those with services, a node IP or a pod CIDR, and those
    /// programmed before. Virtual servers of another family are never touched.
    fn families(&mut self, state: &ProxyState) -> Vec<IpFamily> {
        for family in IpFamily::ALL {
            let node_ip = state.node.ip(family).is_some_and(|ip| !ip.is_loopback());
            let pod_cidr = state
                .node
                .pod_cidrs
                .iter()
                .any(|c| IpFamily::of_net(c) == family);
            if node_ip || pod_cidr || !state.services(family).is_empty() {
                self.families_seen.insert(family);
            }
        }
        self.families_seen.iter().copied().collect()
    }

    /// The addresses that get a virtual server per NodePort, per family: those
    /// `nodePortAddresses` selects, never loopback, IPv6 link-local, a service address
    /// or an address on `kube-ipvs0` (`bound`: upstream's `ipGetter.NodeIPs` leaves out
    /// the dummy link's addresses, including those of deleted services that this sync is
    /// about to unbind).
    fn node_port_addresses(
        &self,
        state: &ProxyState,
        families: &[IpFamily],
        bound: &BTreeSet<IpAddr>,
    ) -> Result<BTreeMap<IpFamily, Vec<IpAddr>>, BackendError> {
        let io = |source| BackendError::Io { mode: MODE, source };
        let frontends: BTreeSet<IpAddr> = IpFamily::ALL
            .iter()
            .flat_map(|&f| state.services(f).values())
            .flat_map(|e| {
                let p = &e.port;
                std::iter::once(p.cluster_ip)
                    .chain(p.external_ips.iter().copied())
                    .chain(p.load_balancer_ips.iter().copied())
            })
            .collect();
        let mut out = BTreeMap::new();
        for &family in families {
            let entries = &self.options.node_port_addresses;
            let node_ip = state.node.ip(family);
            let mut ips =
                match node_port_ips(entries, family, node_ip, &*self.addresses).map_err(io)? {
                    NodePortIps::Only(ips) => ips,
                    NodePortIps::All => self
                        .addresses
                        .local_addresses()
                        .map_err(io)?
                        .into_iter()
                        .filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback())
                        .collect(),
                };
            ips.retain(|ip| !frontends.contains(ip) && !bound.contains(ip) && !is_link_local(ip));
            ips.sort();
            ips.dedup();
            out.insert(family, ips);
        }
        Ok(out)
    }

    fn plan(&mut self, state: &ProxyState) -> Result<(Plan, Vec<IpFamily>), BackendError> {
        let families = self.families(state);
        let bound: BTreeSet<IpAddr> = match self.link.addresses() {
            Ok(addrs) => addrs.into_iter().collect(),
            // No kube-ipvs0 yet (the first sync creates it): nothing bound.
            Err(e) if e.errno() == Some(libc::ENODEV) => BTreeSet::new(),
            Err(e) => return Err(kernel_err(format!("listing the addresses of {KUBE_IPVS0}"))(e)),
        };
        let nodes = self.node_port_addresses(state, &families, &bound)?;
        let plan = plan(state, &families, &self.options, &self.settings, &nodes);
        Ok((plan, families))
    }

    /// Whether a kernel object at `addr` is ours to change: a managed family, and not in
    /// `excludeCIDRs`.
    fn owned(&self, families: &[IpFamily], addr: &IpAddr) -> bool {
        families.contains(&IpFamily::of(addr)) && !self.settings.excluded(addr)
    }

    fn full_sync(&mut self, plan: &Plan, families: &[IpFamily]) -> Result<bool, BackendError> {
        let mut changed = false;
        self.link
            .ensure()
            .map_err(kernel_err(format!("creating link {KUBE_IPVS0}")))?;
        let kernel: BTreeMap<ServiceKey, _> = self
            .ipvs
            .services()
            .map_err(kernel_err("listing IPVS services".into()))?
            .into_iter()
            .map(|vs| (vs.key(), vs))
            .collect();
        for key in kernel.keys() {
            if !plan.services.contains_key(key) && self.owned(families, &key.addr) {
                self.delete_service(key)?;
                changed = true;
            }
        }
        for (key, desired) in &plan.services {
            let existed = match kernel.get(key) {
                Some(vs) if *vs == desired.vs => true,
                Some(_) => {
                    self.update_service(desired)?;
                    changed = true;
                    true
                }
                None => {
                    self.add_service(desired)?;
                    changed = true;
                    false
                }
            };
            let current = if existed {
                self.destinations(key)?
            } else {
                Vec::new()
            };
            changed |= self.reconcile_reals(key, &desired.reals, current)?;
        }
        let bound: BTreeSet<IpAddr> = self
            .link
            .addresses()
            .map_err(kernel_err(format!("listing the addresses of {KUBE_IPVS0}")))?
            .into_iter()
            .collect();
        for addr in plan.addresses.difference(&bound) {
            self.bind(*addr)?;
            changed = true;
        }
        for addr in bound.difference(&plan.addresses) {
            if self.owned(families, addr) {
                self.unbind(*addr)?;
                changed = true;
            }
        }
        let mut tx = Transaction::for_table(COMPANION_TABLE);
        for (family, desired) in &plan.tables {
            let current = self
                .nft
                .read_named_table(*family, COMPANION_TABLE)
                .map_err(|e| apply_err(format!("reading table {family} {COMPANION_TABLE}: {e}")))?;
            companion::diff(&mut tx, *family, current.as_ref(), desired);
        }
        changed |= self.send(&tx)?;
        Ok(changed)
    }

    fn partial_sync(&mut self, last: &Plan, plan: &Plan) -> Result<bool, BackendError> {
        let mut changed = false;
        for (key, old) in &last.services {
            if !plan.services.contains_key(key) && !self.settings.excluded(&old.vs.addr) {
                self.delete_service(key)?;
                changed = true;
            }
        }
        for (key, desired) in &plan.services {
            let old = last.services.get(key);
            if old == Some(desired) {
                continue;
            }
            changed = true;
            match old {
                Some(o) if o.vs == desired.vs => {}
                Some(_) => self.update_service(desired)?,
                None => self.add_service(desired)?,
            }
            let current = if old.is_some() {
                self.destinations(key)?
            } else {
                Vec::new()
            };
            self.reconcile_reals(key, &desired.reals, current)?;
        }
        for addr in plan.addresses.difference(&last.addresses) {
            self.bind(*addr)?;
            changed = true;
        }
        for addr in last.addresses.difference(&plan.addresses) {
            if !self.settings.excluded(addr) {
                self.unbind(*addr)?;
                changed = true;
            }
        }
        let mut tx = Transaction::for_table(COMPANION_TABLE);
        for (family, desired) in &plan.tables {
            companion::diff(&mut tx, *family, last.tables.get(family), desired);
        }
        changed |= self.send(&tx)?;
        Ok(changed)
    }

    fn send(&mut self, tx: &Transaction) -> Result<bool, BackendError> {
        if tx.is_empty() {
            return Ok(false);
        }
        self.nft
            .apply(tx)
            .map_err(|e| apply_err(format!("table {COMPANION_TABLE}: {e}")))?;
        Ok(true)
    }

    fn add_service(&mut self, desired: &crate::plan::DesiredService) -> Result<(), BackendError> {
        let vs = &desired.vs;
        match self.ipvs.add_service(vs) {
            Err(e) if e.is_exists() => self.ipvs.update_service(vs),
            other => other,
        }
        .map_err(kernel_err(format!(
            "adding virtual server {} ({})",
            vs.key(),
            desired.owner
        )))
    }

    fn update_service(
        &mut self,
        desired: &crate::plan::DesiredService,
    ) -> Result<(), BackendError> {
        let vs = &desired.vs;
        self.ipvs.update_service(vs).map_err(kernel_err(format!(
            "updating virtual server {} ({})",
            vs.key(),
            desired.owner
        )))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), BackendError> {
        self.draining.retain(|(k, _, _)| k != key);
        match self.ipvs.delete_service(key) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
        .map_err(kernel_err(format!("deleting virtual server {key}")))
    }

    fn destinations(&mut self, key: &ServiceKey) -> Result<Vec<Destination>, BackendError> {
        self.ipvs
            .destinations(key)
            .map_err(kernel_err(format!("listing the real servers of {key}")))
    }

    fn bind(&mut self, addr: IpAddr) -> Result<(), BackendError> {
        self.link
            .add_address(addr)
            .map(drop)
            .map_err(kernel_err(format!("adding {addr} to {KUBE_IPVS0}")))
    }

    fn unbind(&mut self, addr: IpAddr) -> Result<(), BackendError> {
        self.link
            .delete_address(addr)
            .map(drop)
            .map_err(kernel_err(format!("removing {addr} from {KUBE_IPVS0}")))
    }

    /// Makes the real servers of `key` the `desired` ones, given the `current` ones;
    /// returns whether it changed anything. Surplus TCP real servers with connections are
    /// drained (weight 0), the others deleted at once.
    fn reconcile_reals(
        &mut self,
        key: &ServiceKey,
        desired: &[RealServer],
        current: Vec<Destination>,
    ) -> Result<bool, BackendError> {
        let mut changed = false;
        let mut by_addr: BTreeMap<(IpAddr, u16), Destination> = current
            .into_iter()
            .map(|d| ((d.server.addr, d.server.port), d))
            .collect();
        for real in desired {
            // An endpoint that comes back while draining gets its weight back (upstream
            // deletes and re-adds it, which breaks its remaining connections).
            self.draining.remove(&(*key, real.addr, real.port));
            let what = format!("real server {}:{} of {key}", real.addr, real.port);
            match by_addr.remove(&(real.addr, real.port)) {
                Some(d) if d.server == *real => {}
                Some(_) => {
                    self.ipvs
                        .update_destination(key, real)
                        .map_err(kernel_err(format!("updating {what}")))?;
                    changed = true;
                }
                None => {
                    self.ipvs
                        .add_destination(key, real)
                        .map_err(kernel_err(format!("adding {what}")))?;
                    changed = true;
                }
            }
        }
        for dest in by_addr.into_values() {
            changed |= self.retire(key, dest)?;
        }
        Ok(changed)
    }

    /// Upstream's `GracefulDeleteRS`: delete at once when UDP or SCTP or without
    /// connections, else weight 0 and delete later.
    fn retire(&mut self, key: &ServiceKey, dest: Destination) -> Result<bool, BackendError> {
        let server = dest.server;
        let what = format!("real server {}:{} of {key}", server.addr, server.port);
        let graceful = key.protocol == Protocol::Tcp;
        let conns = dest.stats.active_conns + dest.stats.inactive_conns;
        if !graceful || conns == 0 {
            self.draining.remove(&(*key, server.addr, server.port));
            return match self.ipvs.delete_destination(key, &server) {
                Err(e) if e.is_not_found() => Ok(false),
                other => other.map(|()| true),
            }
            .map_err(kernel_err(format!("deleting {what}")));
        }
        let newly = self.draining.insert((*key, server.addr, server.port));
        if server.weight == 0 {
            return Ok(false);
        }
        let drained = RealServer {
            weight: 0,
            ..server
        };
        self.ipvs
            .update_destination(key, &drained)
            .map_err(kernel_err(format!("draining {what}")))?;
        if newly {
            tracing::debug!(%key, real = %server.addr, port = server.port, conns, "draining real server");
        }
        Ok(true)
    }

    /// Deletes the drained real servers that have no connections left; forgets those that
    /// are gone or wanted again.
    fn check_draining(&mut self, plan: &Plan) -> Result<bool, BackendError> {
        let mut changed = false;
        let keys: BTreeSet<ServiceKey> = self.draining.iter().map(|(k, _, _)| *k).collect();
        for key in keys {
            let dests = self.destinations(&key)?;
            let entries: Vec<Draining> = self
                .draining
                .iter()
                .filter(|(k, _, _)| *k == key)
                .copied()
                .collect();
            for entry @ (_, addr, port) in entries {
                let wanted = plan
                    .services
                    .get(&key)
                    .is_some_and(|d| d.reals.iter().any(|r| (r.addr, r.port) == (addr, port)));
                let dest = dests
                    .iter()
                    .find(|d| (d.server.addr, d.server.port) == (addr, port));
                match dest {
                    Some(d) if !wanted => changed |= self.retire(&key, *d)?,
                    _ => {
                        self.draining.remove(&entry);
                    }
                }
            }
        }
        Ok(changed)
    }

    /// The plan `state` leads to, with the node's addresses from the address source.
    pub fn plan_for(&mut self, state: &ProxyState) -> Result<Plan, BackendError> {
        Ok(self.plan(state)?.0)
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl Backend for IpvsBackend {
    fn mode(&self) -> &'static str {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, changes: &Changes) -> Result<SyncReport, BackendError> {
        let (plan, families) = self.plan(state)?;
        let last = self.last.take();
        let full = changes.full || last.is_none();
        let result = match &last {
            Some(last) if !full => self.partial_sync(last, &plan),
            _ => self.full_sync(&plan, &families),
        }
        .and_then(|changed| Ok(changed | self.check_draining(&plan)?));
        match result {
            Ok(applied) => {
                self.last = Some(plan);
                Ok(SyncReport { full, applied })
            }
            // `last` stays `None`: the next sync reads the kernel back.
            Err(e) => Err(e),
        }
    }

    fn render(&self, state: &ProxyState) -> Result<String, BackendError> {
        let mut scratch = IpvsBackend {
            options: self.options.clone(),
            settings: self.settings.clone(),
            ipvs: Box::new(crate::FakeIpvs::new()),
            link: Box::new(crate::FakeDummyLink::new()),
            nft: Box::new(kube_proxy_nftables::FakeNft::new()),
            addresses: Box::new(kube_proxy_nftables::StaticAddresses(
                self.addresses
                    .local_addresses()
                    .map_err(|source| BackendError::Io { mode: MODE, source })?,
            )),
            last: None,
            draining: BTreeSet::new(),
            families_seen: self.families_seen.clone(),
        };
        let plan = scratch.plan_for(state)?;
        Ok(render_plan(&plan))
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let services = self
            .ipvs
            .services()
            .map_err(kernel_err("listing IPVS services".into()))?;
        for vs in services {
            if !self.settings.excluded(&vs.addr) {
                self.delete_service(&vs.key())?;
            }
        }
        self.link
            .delete()
            .map_err(kernel_err(format!("deleting link {KUBE_IPVS0}")))?;
        let mut tx = Transaction::for_table(COMPANION_TABLE);
        for family in Family::ALL {
            tx.destroy(family, Object::Table { comment: None });
        }
        self.send(&tx)?;
        self.last = None;
        self.draining.clear();
        Ok(())
    }

    /// SCTP too: a removed SCTP real server is deleted at once, as a UDP one, and IPVS
    /// never rewrites the reply tuple of a conntrack entry that already exists, so an
    /// association it schedules anew would keep the entry of the deleted server.
    fn conntrack_protocols(&self) -> &'static [Protocol] {
        &[Protocol::Udp, Protocol::Sctp]
    }
}

/// The plan as `ipvsadm -Ln` lists it, then `kube-ipvs0`'s addresses, then the companion
/// table as an `nft -f` script.
pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str("# IPVS virtual servers (ipvsadm -Ln)\n");
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    for (key, d) in &plan.services {
        let _ = write!(
            out,
            "{:<4} {} {}",
            key.protocol.as_str().to_ascii_uppercase(),
            addr_port(key.addr, key.port),
            d.vs.scheduler
        );
        if d.vs.flags.contains(crate::ServiceFlags::PERSISTENT) {
            let _ = write!(out, " persistent {}", d.vs.timeout);
        }
        let _ = writeln!(out, "  # {}", d.owner);
        for r in &d.reals {
            let _ = writeln!(
                out,
                "  -> {:<28} Masq    {:<6} 0          0",
                addr_port(r.addr, r.port),
                r.weight
            );
        }
    }
    let _ = writeln!(out, "\n# addresses of {KUBE_IPVS0}");
    for addr in &plan.addresses {
        let _ = writeln!(out, "{addr}");
    }
    out.push_str("\n# nftables companion table\n");
    let mut tx = Transaction::for_table(COMPANION_TABLE);
    for (family, table) in &plan.tables {
        companion::create(&mut tx, *family, table);
    }
    out.push_str(&tx.render());
    out
}

fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Removes what IPVS mode leaves in this network namespace: every virtual server outside
/// `exclude_cidrs`, the `kube-ipvs0` link and the companion tables. A kernel without IPVS
/// (or with the `ip_vs` module not loaded) has no virtual servers to remove; that is not
/// an error, and the module is not loaded to find out.
pub fn cleanup_leftovers(exclude_cidrs: &[ipnet::IpNet]) -> Result<(), BackendError> {
    let loaded = std::path::Path::new("/sys/module/ip_vs").exists();
    let mut failures = Vec::new();
    if loaded {
        match Ipvs::new() {
            Ok(mut ipvs) => {
                let services = ipvs.services().unwrap_or_else(|e| {
                    failures.push(format!("listing IPVS services: {e}"));
                    Vec::new()
                });
                for vs in services {
                    if exclude_cidrs.iter().any(|n| n.contains(&vs.addr)) {
                        continue;
                    }
                    match ipvs.delete_service(&vs.key()) {
                        Err(e) if !e.is_not_found() => {
                            failures.push(format!("deleting virtual server {}: {e}", vs.key()))
                        }
                        _ => {}
                    }
                }
            }
            Err(Error::Unavailable(_)) => {}
            Err(e) => failures.push(format!("opening IPVS: {e}")),
        }
    }
    match DummyLink::new(KUBE_IPVS0).and_then(|mut l| l.delete()) {
        Ok(_) | Err(Error::Unavailable(_)) => {}
        Err(e) => failures.push(format!("deleting link {KUBE_IPVS0}: {e}")),
    }
    let mut nft = NftCommand::new();
    for family in Family::ALL {
        match nft.read_named_table(family, COMPANION_TABLE) {
            Ok(None) => {}
            Err(e) => failures.push(format!("reading table {family} {COMPANION_TABLE}: {e}")),
            Ok(Some(_)) => {
                let mut tx = Transaction::for_table(COMPANION_TABLE);
                tx.destroy(family, Object::Table { comment: None });
                if let Err(e) = nft.apply(&tx) {
                    failures.push(format!("deleting table {family} {COMPANION_TABLE}: {e}"));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(apply_err(failures.join("; ")))
    }
}
