//! What each command does: `render`, `apply`, `--cleanup` and the daemon.
//!
//! All of them build the model through the same [`ModelBuilder`] and program it through the
//! same [`Backend`], so that `apply -f` exercises exactly the daemon's code path.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context as _, Result};
use kube_proxy_iptables::{detect_variant, IptablesBackend, IptablesCommand, Variant};
use kube_proxy_ipvs::{FakeDummyLink, FakeIpvs, IpvsBackend, IpvsSettings, Scheduler};
use kube_proxy_model::{Backend, Changes, IpFamily, ProxyOptions, ProxyState, SyncReport};
use kube_proxy_nftables::{NftCommand, NftablesBackend, StaticAddresses};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::builder::ModelBuilder;
use crate::cli::Invocation;
use crate::config::{KubeProxyConfiguration, LocalMode, ProxyMode};
use crate::config_watch;
use crate::conntrack_sysctls;
use crate::events::Events;
use crate::health::{self, HealthState, SharedHealth};
use crate::leftovers;
use crate::metrics::{self, Metrics, NoLocalEndpoints};
use crate::runner::SyncRunner;
use crate::service_health::ServiceHealthServers;
use crate::sources::{apiserver, manifest};

/// Events buffered between the watchers and the sync loop; watchers wait when it is full.
const EVENT_BUFFER: usize = 4096;

/// Prints what the backend would program for the manifests in `files`.
pub fn render(inv: &Invocation, files: &[PathBuf]) -> Result<()> {
    let state = state_from_manifests(&inv.config, files)?;
    let options = proxy_options(inv, &state)?;
    // Rendering never runs `nft` (the executor only satisfies the constructor), and takes
    // the node's interfaces to hold just its node IPs: the output describes that node, not
    // the machine it is rendered on.
    let addresses = StaticAddresses(state.node.ips.clone());
    let backend: Box<dyn Backend> = match inv.config.effective_mode() {
        ProxyMode::NfTables => Box::new(
            NftablesBackend::with_executor(options, NftCommand::new())
                .with_address_source(addresses),
        ),
        // The executor is never run by `render`; any variant does.
        ProxyMode::IpTables => Box::new(
            IptablesBackend::with_executor(options, IptablesCommand::new(Variant::Nft))
                .with_address_source(addresses)
                .with_localhost_node_ports(localhost_node_ports(&inv.config)),
        ),
        // Rendering plans on fakes; the clients are never used.
        ProxyMode::Ipvs => Box::new(
            IpvsBackend::with_clients(
                options,
                ipvs_settings(&inv.config)?,
                FakeIpvs::new(),
                FakeDummyLink::new(),
                NftCommand::new(),
            )
            .with_address_source(addresses),
        ),
    };
    print!("{}", backend.render(&state)?);
    Ok(())
}

/// Programs the current network namespace once from the manifests in `files`. The backend
/// reads its own state back first, so a second run sends only what changed.
pub fn apply(inv: &Invocation, files: &[PathBuf]) -> Result<()> {
    let state = state_from_manifests(&inv.config, files)?;
    let options = proxy_options(inv, &state)?;
    let mut backend = new_backend(&inv.config, options)?;
    let report = backend.sync(&state, &Changes::full())?;
    // A one-shot run serves no metrics.
    clean_stale_flows(&state, backend.as_ref(), &Metrics::default());
    tracing::info!(
        applied = report.applied,
        services = state.v4.len() + state.v6.len(),
        "rules programmed"
    );
    Ok(())
}

/// Deletes the conntrack entries (of `backend`'s protocols: UDP, and SCTP in IPVS mode)
/// that the rules just synced would not create, as upstream does after each sync, family
/// by family, recording upstream's reconciler metrics. The rules are right either way, so
/// a failure is a warning.
fn clean_stale_flows(state: &ProxyState, backend: &dyn Backend, metrics: &Metrics) {
    let protocols = backend.conntrack_protocols();
    for family in IpFamily::ALL {
        let started = std::time::Instant::now();
        let result = kube_proxy_conntrack::cleanup_stale_flows(state, family, protocols);
        let took = started.elapsed();
        metrics.conntrack_reconciled(family, took, *result.as_ref().unwrap_or(&0));
        let took_ms = took.as_millis() as u64;
        match result {
            Ok(deleted) => tracing::debug!(%family, deleted, took_ms, "cleaned conntrack entries"),
            Err(e) => tracing::warn!(%family, error = %e, "cleaning conntrack entries failed"),
        }
    }
}

/// Removes the kernel state of every proxy mode (`--cleanup`), as upstream does.
pub fn cleanup() -> Result<()> {
    leftovers::remove_all()
}

/// The backend options for `state`'s node: the config's, with the CLI's endpoint selection.
fn proxy_options(inv: &Invocation, state: &ProxyState) -> Result<ProxyOptions> {
    let mut options = inv.config.proxy_options(&state.node.pod_cidrs)?;
    options.scheduling = inv.scheduling;
    Ok(options)
}

/// The backend of `config`'s mode, ready to program the kernel.
fn new_backend(config: &KubeProxyConfiguration, options: ProxyOptions) -> Result<Box<dyn Backend>> {
    match config.effective_mode() {
        ProxyMode::NfTables => Ok(Box::new(NftablesBackend::new(options)?)),
        // The variant the node's other programs (kubelet) use, as upstream's image picks it.
        ProxyMode::IpTables => Ok(Box::new(IptablesBackend::new(
            options,
            detect_variant(),
            localhost_node_ports(config),
        )?)),
        ProxyMode::Ipvs => Ok(Box::new(IpvsBackend::new(options, ipvs_settings(config)?)?)),
    }
}

/// The `ipvs` section as the IPVS backend takes it.
fn ipvs_settings(config: &KubeProxyConfiguration) -> Result<IpvsSettings> {
    let ipvs = &config.ipvs;
    let scheduler = match ipvs.scheduler.as_str() {
        "" => Scheduler::default(),
        name => Scheduler::new(name).with_context(|| format!("ipvs.scheduler {name:?}"))?,
    };
    let exclude_cidrs = ipvs
        .exclude_cidrs
        .iter()
        .map(|c| {
            c.trim()
                .parse()
                .with_context(|| format!("ipvs.excludeCIDRs entry {c:?}"))
        })
        .collect::<Result<_>>()?;
    let secs = |d: &crate::config::Duration| d.to_std().unwrap_or_default();
    Ok(IpvsSettings {
        scheduler,
        exclude_cidrs,
        strict_arp: ipvs.strict_arp,
        timeouts: kube_proxy_ipvs::Timeouts {
            tcp: secs(&ipvs.tcp_timeout),
            tcp_fin: secs(&ipvs.tcp_fin_timeout),
            udp: secs(&ipvs.udp_timeout),
        },
    })
}

/// `iptables.localhostNodePorts` (default true).
fn localhost_node_ports(config: &KubeProxyConfiguration) -> bool {
    config.iptables.localhost_node_ports.unwrap_or(true)
}

/// The model of the objects in `files`, through the daemon's builder.
fn state_from_manifests(config: &KubeProxyConfiguration, files: &[PathBuf]) -> Result<ProxyState> {
    let objects = manifest::load(files)?;
    let mut builder = new_builder(config)?;
    for ev in manifest::listed_events(objects) {
        builder.handle(ev);
    }
    Ok(builder.take_changes().0)
}

/// A builder for this node. As upstream's `detectNodeIPs`: the Node's addresses when it
/// has them, else loopback (with a warning from upstream, a debug line here); a specific
/// `bindAddress` overrides the primary IP of its family either way.
fn new_builder(config: &KubeProxyConfiguration) -> Result<ModelBuilder> {
    let loopback = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    let mut builder = ModelBuilder::new(config.node_name()?, loopback);
    let bind_ip = config
        .bind_address
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified());
    if let Some(ip) = bind_ip {
        builder.override_node_ips(vec![ip]);
    }
    Ok(builder)
}

/// Runs the proxy until SIGTERM or SIGINT: watch the API server, keep the model, sync the
/// backend as the runner says. Rules stay in place when the process stops.
pub async fn daemon(inv: &Invocation) -> Result<()> {
    let config = &inv.config;
    let mode = config.effective_mode();
    if matches!(mode, ProxyMode::Ipvs) {
        // Fail at start, not at every sync, where the kernel has no IPVS.
        kube_proxy_ipvs::Ipvs::new()
            .context("--proxy-mode ipvs needs the kernel's IPVS (the ip_vs modules)")?;
    }
    let node_name = config.node_name()?;
    // Upstream's errCh: what stops the daemon besides a signal. The sender lives as long as
    // this function, so the sync loop never sees the channel close.
    let (fatal_tx, fatal) = mpsc::channel(4);
    if let Some(path) = &inv.config_file {
        config_watch::spawn(path.clone(), fatal_tx.clone()).await?;
    }
    tokio::task::block_in_place(|| leftovers::remove_replaced(mode));
    let client = apiserver::client(inv.kubeconfig.as_deref(), inv.master.as_deref())
        .await
        .context("building the API client")?;
    let events = Events::new(client.clone(), &node_name);
    conntrack_sysctls::setup(config, &events, &node_name)?;
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(apiserver::run(client, node_name.clone(), tx));
    tracing::info!(node = %node_name, mode = mode.as_str(), "kube-proxy-rs started");
    // Upstream's healthTimeout: a queued update may wait two periodic syncs.
    let health = Arc::new(Mutex::new(HealthState::new(2 * config.sync_period())));
    let metrics = Arc::new(Metrics::for_mode(mode));
    let hard_fail = config.bind_address_hard_fail.then(|| fatal_tx.clone());
    if let Some(addr) = config.healthz_addr()? {
        health::serve(addr, health.clone(), metrics.clone(), hard_fail.clone());
    }
    if let Some(addr) = config.metrics_addr()? {
        let configz = serde_json::to_value(config).context("encoding the configuration")?;
        metrics::serve(addr, metrics.clone(), mode.as_str(), configz, hard_fail);
    }
    let service_health = ServiceHealthServers::new(node_name, events, health.clone());
    let mut proxy = Proxy {
        inv,
        builder: new_builder(config)?,
        runner: SyncRunner::new(config.min_sync_period(), config.sync_period()),
        backend: None,
        health,
        service_health,
        metrics,
    };
    proxy.run(rx, fatal).await
}

/// The daemon's state: the model, when to sync, and the backend once it exists.
struct Proxy<'a> {
    inv: &'a Invocation,
    builder: ModelBuilder,
    runner: SyncRunner,
    /// Created at the first sync, when the Node's podCIDRs are known; rebuilt when the
    /// options it depends on change.
    backend: Option<(ProxyOptions, Box<dyn Backend>)>,
    /// What `/healthz` and `/livez` report.
    health: SharedHealth,
    /// The health-check node ports, updated after each successful sync.
    service_health: ServiceHealthServers,
    metrics: Arc<Metrics>,
}

impl Proxy<'_> {
    /// Syncs until a signal (`Ok`) or an error on `fatal` (that error).
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<crate::sources::SourceEvent>,
        mut fatal: mpsc::Receiver<anyhow::Error>,
    ) -> Result<()> {
        let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
        loop {
            let due = self.next_due();
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { bail!("the API watchers stopped") };
                    // Fold in what is already queued before deciding anything, but at most
                    // one buffer's worth, so that sustained churn cannot starve the syncs.
                    let queued = std::iter::from_fn(|| rx.try_recv().ok()).take(EVENT_BUFFER);
                    let metrics = &self.metrics;
                    let batch = std::iter::once(ev).chain(queued).inspect(|ev| metrics.saw(ev));
                    self.builder.handle_all(batch);
                    if self.builder.tracker().has_changes() {
                        self.runner.request();
                        self.queued(SystemTime::now());
                    }
                    health::lock(&self.health).set_node_eligible(self.builder.node_eligible());
                }
                _ = tokio::time::sleep_until(due) => self.sync(),
                Some(e) = fatal.recv() => return Err(e),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tracing::info!("stopping; the rules stay in place");
        Ok(())
    }

    /// When to sync next; never before both initial lists are in.
    fn next_due(&self) -> Instant {
        let now = Instant::now();
        if self.builder.is_synced() {
            self.runner.next_due(now)
        } else {
            now + std::time::Duration::from_secs(3600)
        }
    }

    /// Records that changes await a sync, for the health check and the metrics.
    fn queued(&self, now: SystemTime) {
        health::lock(&self.health).queued_update(now);
        self.metrics.queued(now);
    }

    fn sync(&mut self) {
        let full = self.runner.start(Instant::now());
        let (state, mut changes) = self.builder.take_changes();
        changes.full |= full;
        self.metrics.changes_taken();
        let started = std::time::Instant::now();
        let result = self.sync_state(&state, &mut changes);
        if let Err(e) = &result {
            tracing::error!(
                error = format!("{e:#}"),
                "sync failed; retrying with a full sync"
            );
        }
        let full = changes.full || result.as_ref().is_ok_and(|report| report.full);
        self.metrics.sync_took(started.elapsed(), full);
        if result.is_ok() {
            let now = SystemTime::now();
            let no_local = NoLocalEndpoints::by_family(&state);
            self.metrics.synced(now, &changes.trigger_times, no_local);
            health::lock(&self.health).synced(now);
            let (options, _) = self.backend.as_ref().expect("synced through a backend");
            let node_port_addresses = &options.node_port_addresses;
            self.service_health.update(&state, node_port_addresses);
        }
        self.runner.finish(Instant::now(), full, result.is_ok());
    }

    fn sync_state(&mut self, state: &ProxyState, changes: &mut Changes) -> Result<SyncReport> {
        if self.inv.config.local_mode() == LocalMode::NodeCidr && state.node.pod_cidrs.is_empty() {
            bail!(
                "detectLocalMode is NodeCIDR but Node {:?} has no podCIDRs yet",
                state.node.name
            );
        }
        let options = proxy_options(self.inv, state)?;
        if self.backend.as_ref().is_none_or(|(o, _)| *o != options) {
            let backend = new_backend(&self.inv.config, options.clone())?;
            self.backend = Some((options, backend));
            changes.full = true;
        }
        let (_, backend) = self.backend.as_mut().expect("backend was just set");
        let started = std::time::Instant::now();
        let report = tokio::task::block_in_place(|| backend.sync(state, changes))
            .inspect_err(|_| self.metrics.sync_failed())?;
        tokio::task::block_in_place(|| clean_stale_flows(state, backend.as_ref(), &self.metrics));
        // Upstream logs every sync only at -v=2; one that changed the kernel is worth more.
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let changed = changes.services.len();
        if report.applied {
            tracing::info!(full = report.full, changed, elapsed_ms, "synced rules");
        } else {
            tracing::debug!(
                full = report.full,
                changed,
                elapsed_ms,
                "synced rules: nothing to change"
            );
        }
        Ok(report)
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("installing a signal handler")
}
