//! Upstream's kube-proxy metrics (`pkg/proxy/metrics`), same names, help texts and buckets,
//! in the Prometheus text format, and the metrics server (`metricsBindAddress`) that serves
//! them with `/proxyMode` and `/configz`, as upstream's `serveMetrics`.
//!
//! Hand-rolled: a dozen fixed metrics need one mutex and a text encoder, not a registry
//! crate with its own dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use kube_proxy_model::{IpFamily, ProxyState};

use crate::config::ProxyMode;
use crate::health::{self, Reply};
use crate::sources::{Kind, SourceEvent};

/// `metrics.ExponentialBuckets(0.001, 2, 15)`: 1 ms to 16.384 s.
fn sync_buckets() -> Vec<f64> {
    std::iter::successors(Some(0.001_f64), |b| Some(b * 2.0))
        .take(15)
        .collect()
}

/// Network programming latency buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s, 120..300 s.
fn network_programming_buckets() -> Vec<f64> {
    let linear =
        |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    linear(0.25, 0.25, 2)
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
        .collect()
}

/// A Prometheus histogram: per-bucket counts (not cumulative), sum and count.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        let counts = vec![0; bounds.len()];
        Histogram {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|le| value <= *le) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Which health endpoint answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Healthz,
    Livez,
}

/// The metric values, behind [`Metrics`]' mutex.
#[derive(Debug)]
struct Values {
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    network_programming: Histogram,
    last_synced: f64,
    last_queued: f64,
    endpoint_changes_pending: u64,
    endpoint_changes_total: u64,
    service_changes_pending: u64,
    service_changes_total: u64,
    /// Per family, from the first successful sync on.
    no_local_endpoints: BTreeMap<IpFamily, NoLocalEndpoints>,
    /// Failed syncs, counted under [`Values::failures_metric`].
    sync_failures: u64,
    /// The name and help of the counter of failed syncs, which depends on the mode.
    failures_metric: (&'static str, &'static str),
    /// Per family, from its first stale-entry cleanup on, as upstream's vectors.
    conntrack_reconcile: BTreeMap<IpFamily, Histogram>,
    conntrack_deleted: BTreeMap<IpFamily, u64>,
    healthz: BTreeMap<u16, u64>,
    livez: BTreeMap<u16, u64>,
}

/// Service ports with a Local traffic policy and no local endpoint, while they do have
/// endpoints elsewhere (those without any endpoint reject instead), per policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// `internalTrafficPolicy: Local`: traffic to the ClusterIP is dropped.
    pub internal: u64,
    /// `externalTrafficPolicy: Local`: traffic from outside the cluster is dropped.
    pub external: u64,
}

impl NoLocalEndpoints {
    /// Counts the service ports of `family` in `state`, as upstream's sync of that
    /// family does.
    pub fn of(state: &ProxyState, family: IpFamily) -> Self {
        let mut counts = NoLocalEndpoints::default();
        for entry in state.services(family).values() {
            let eps = &entry.categorized;
            if !eps.has_any || !eps.local.is_empty() {
                continue;
            }
            counts.internal += u64::from(entry.port.internal_policy_local);
            counts.external += u64::from(entry.port.external_policy_local);
        }
        counts
    }

    /// The counts of each family in `state`.
    pub fn by_family(state: &ProxyState) -> BTreeMap<IpFamily, Self> {
        IpFamily::ALL
            .into_iter()
            .map(|family| (family, NoLocalEndpoints::of(state, family)))
            .collect()
    }
}

/// kube-proxy's metrics, shared by the sync loop and the HTTP servers.
#[derive(Debug)]
pub struct Metrics(Mutex<Values>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::for_mode(ProxyMode::NfTables)
    }
}

impl Metrics {
    /// The metrics of a proxy in `mode`. A failed sync is counted as upstream's proxier of
    /// that mode counts it: the nftables proxier's failed transactions, the iptables and
    /// IPVS proxiers' failed `iptables-restore` runs.
    pub fn for_mode(mode: ProxyMode) -> Self {
        let failures_metric = match mode {
            ProxyMode::NfTables => (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
            ),
            ProxyMode::IpTables | ProxyMode::Ipvs => (
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "Cumulative proxy iptables restore failures",
            ),
        };
        Metrics(Mutex::new(Values {
            sync: Histogram::new(sync_buckets()),
            sync_full: Histogram::new(sync_buckets()),
            sync_partial: Histogram::new(sync_buckets()),
            network_programming: Histogram::new(network_programming_buckets()),
            last_synced: 0.0,
            last_queued: 0.0,
            endpoint_changes_pending: 0,
            endpoint_changes_total: 0,
            service_changes_pending: 0,
            service_changes_total: 0,
            no_local_endpoints: BTreeMap::new(),
            sync_failures: 0,
            failures_metric,
            conntrack_reconcile: BTreeMap::new(),
            conntrack_deleted: BTreeMap::new(),
            healthz: BTreeMap::new(),
            livez: BTreeMap::new(),
        }))
    }
}

/// Seconds since the epoch, as Go's `SetToCurrentTime`; 0 before 1970.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// A metrics panic elsewhere must not take the sync loop down with it.
    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the Service and EndpointSlice changes in `ev` (each object of a relist is one).
    pub fn saw(&self, ev: &SourceEvent) {
        let (kind, n) = match ev {
            SourceEvent::Applied(obj) | SourceEvent::Deleted(obj) => (obj.kind(), 1),
            SourceEvent::Listed(kind, objects) => (
                *kind,
                objects.iter().filter(|o| o.kind() == *kind).count() as u64,
            ),
        };
        let mut v = self.values();
        match kind {
            Kind::Service => {
                v.service_changes_total += n;
                v.service_changes_pending += n;
            }
            Kind::EndpointSlice => {
                v.endpoint_changes_total += n;
                v.endpoint_changes_pending += n;
            }
            Kind::Node | Kind::ServiceCidr => {}
        }
    }

    /// A sync was requested at `now`.
    pub fn queued(&self, now: SystemTime) {
        self.values().last_queued = unix_seconds(now);
    }

    /// A sync took the pending changes.
    pub fn changes_taken(&self) {
        let mut v = self.values();
        v.endpoint_changes_pending = 0;
        v.service_changes_pending = 0;
    }

    /// A sync (successful or not) took `elapsed`.
    pub fn sync_took(&self, elapsed: Duration, full: bool) {
        let mut v = self.values();
        let secs = elapsed.as_secs_f64();
        v.sync.observe(secs);
        if full {
            v.sync_full.observe(secs)
        } else {
            v.sync_partial.observe(secs)
        }
    }

    /// A sync succeeded at `now`, programming the EndpointSlice changes made at `triggers`.
    pub fn synced(
        &self,
        now: SystemTime,
        triggers: &[SystemTime],
        no_local: BTreeMap<IpFamily, NoLocalEndpoints>,
    ) {
        let mut v = self.values();
        v.last_synced = unix_seconds(now);
        v.no_local_endpoints = no_local;
        for t in triggers {
            // A trigger time ahead of our clock (skew with the controller) is not latency.
            if let Ok(latency) = now.duration_since(*t) {
                v.network_programming.observe(latency.as_secs_f64());
            }
        }
    }

    /// Programming the rules of a sync failed (the nftables transaction, or
    /// `iptables-restore`).
    pub fn sync_failed(&self) {
        self.values().sync_failures += 1;
    }

    /// The stale conntrack entries of `family` were cleaned up in `elapsed` (successfully
    /// or not), deleting `deleted` of them.
    pub fn conntrack_reconciled(&self, family: IpFamily, elapsed: Duration, deleted: usize) {
        let mut v = self.values();
        v.conntrack_reconcile
            .entry(family)
            .or_insert_with(|| Histogram::new(sync_buckets()))
            .observe(elapsed.as_secs_f64());
        *v.conntrack_deleted.entry(family).or_default() += deleted as u64;
    }

    /// A health probe was answered with `code`.
    pub fn probed(&self, probe: Probe, code: u16) {
        let mut v = self.values();
        let counts = match probe {
            Probe::Healthz => &mut v.healthz,
            Probe::Livez => &mut v.livez,
        };
        *counts.entry(code).or_default() += 1;
    }

    /// Everything in the Prometheus text exposition format (0.0.4).
    pub fn encode(&self) -> String {
        let v = self.values();
        let mut out = Encoder(String::new());
        let reconciles = v.conntrack_reconcile.iter();
        let reconciles = reconciles.map(|(f, h)| (family_label(*f), h)).collect();
        for (name, help, series) in [
            (
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                per_sync(&v.sync),
            ),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                per_sync(&v.sync_full),
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                per_sync(&v.sync_partial),
            ),
            (
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                per_sync(&v.network_programming),
            ),
            (
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                reconciles,
            ),
        ] {
            out.histograms(name, help, &series);
        }
        // A sync's gauges and counters, under each family from their first recording on.
        let per_family = |value: f64, recorded: bool| -> Vec<(String, f64)> {
            let families = recorded.then_some(SYNCED_FAMILIES).into_iter().flatten();
            families.map(|f| (family_label(f), value)).collect()
        };
        let one = |value: f64| vec![(String::new(), value)];
        let by_code = |counts: &BTreeMap<u16, u64>| -> Vec<(String, f64)> {
            counts
                .iter()
                .map(|(code, n)| (format!("code=\"{code}\""), *n as f64))
                .collect()
        };
        let no_local = v.no_local_endpoints.iter().flat_map(|(family, n)| {
            [("external", n.external), ("internal", n.internal)].map(|(policy, count)| {
                let labels = format!("{},traffic_policy=\"{policy}\"", family_label(*family));
                (labels, count as f64)
            })
        });
        let deleted = v.conntrack_deleted.iter();
        let deleted = deleted
            .map(|(f, n)| (family_label(*f), *n as f64))
            .collect();
        let failures = v.sync_failures;
        let (failures_name, failures_help) = v.failures_metric;
        // (name, help, type, samples)
        for (name, help, kind, samples) in [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                "gauge",
                per_family(v.last_synced, v.last_synced > 0.0),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                "gauge",
                per_family(v.last_queued, v.last_queued > 0.0),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                "gauge",
                one(v.endpoint_changes_pending as f64),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
                "counter",
                one(v.endpoint_changes_total as f64),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                "gauge",
                one(v.service_changes_pending as f64),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
                "counter",
                one(v.service_changes_total as f64),
            ),
            (
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                "gauge",
                no_local.collect(),
            ),
            (
                failures_name,
                failures_help,
                "counter",
                per_family(failures as f64, failures > 0),
            ),
            (
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                "counter",
                deleted,
            ),
            (
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                "counter",
                by_code(&v.healthz),
            ),
            (
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
                "counter",
                by_code(&v.livez),
            ),
        ] {
            out.series(name, help, kind, &samples);
        }
        out.0
    }
}

/// The families each sync programs, under which its observations are reported. Upstream
/// runs one proxier per family and labels their metrics `ip_family` (v1.33+); our
/// nftables backend programs both families in one transaction, so what a sync observes
/// (its duration, its failure, the programming latency of the changes it carries) is
/// true of both, and is reported under each, as dashboards built for upstream expect.
/// Summing over `ip_family` therefore counts each sync twice. (On a kernel without IPv6
/// nf_tables the backend programs IPv4 only, and IPv6 is listed all the same: the backend
/// does not tell the daemon which families it programs.)
const SYNCED_FAMILIES: [IpFamily; 2] = IpFamily::ALL;

/// What a sync observed in `h`, under each family it programs; the families appear with
/// the first observation, as client_golang's vectors.
fn per_sync(h: &Histogram) -> Vec<(String, &Histogram)> {
    let observed = (h.count > 0)
        .then_some(SYNCED_FAMILIES)
        .into_iter()
        .flatten();
    observed.map(|f| (family_label(f), h)).collect()
}

/// The `ip_family` label of `family`, as upstream spells it (`IPv4`, `IPv6`).
fn family_label(family: IpFamily) -> String {
    format!("ip_family=\"{family}\"")
}

/// `{labels}`, or nothing for no labels.
fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// Writes metric families in the text format. Labels come rendered (`a="x",b="y"`, or
/// empty for none).
struct Encoder(String);

impl Encoder {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family of one sample per `(labels, value)`. With no samples it prints nothing,
    /// as client_golang's vectors before their first use.
    fn series(&mut self, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
        if samples.is_empty() {
            return;
        }
        self.header(name, help, kind);
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{} {value}", braces(labels));
        }
    }

    /// A family of one histogram per `(labels, histogram)`; with none it prints nothing.
    fn histograms(&mut self, name: &str, help: &str, series: &[(String, &Histogram)]) {
        if series.is_empty() {
            return;
        }
        self.header(name, help, "histogram");
        for (labels, h) in series {
            // The labels go before `le` in buckets, and alone on the sum and count.
            let prefix = if labels.is_empty() {
                String::new()
            } else {
                format!("{labels},")
            };
            let mut cumulative = 0;
            for (le, n) in h.bounds.iter().zip(&h.counts) {
                cumulative += n;
                let _ = writeln!(self.0, "{name}_bucket{{{prefix}le=\"{le}\"}} {cumulative}");
            }
            let (inf, alone) = (h.count, braces(labels));
            let _ = writeln!(
                self.0,
                "{name}_bucket{{{prefix}le=\"+Inf\"}} {inf}\n{name}_sum{alone} {}\n{name}_count{alone} {}",
                h.sum, h.count
            );
        }
    }
}

/// Serves `/metrics`, `/proxyMode` (the mode's name), `/configz` (`config`, the effective
/// configuration, under upstream's `kubeproxy.config.k8s.io` key) and `/healthz` (a plain
/// `ok`) on `addr` in the background. An address that cannot be bound is handled as
/// [`health::spawn_http_on`] says.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mode: &'static str,
    config: serde_json::Value,
    hard_fail: Option<health::FatalErrors>,
) {
    let configz = serde_json::json!({ "kubeproxy.config.k8s.io": config }).to_string();
    let context = format!("starting metrics server failed: listen tcp {addr}");
    health::spawn_http_on(addr, context, hard_fail, move |path| match path {
        "/metrics" => Reply::ok("text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        "/proxyMode" => Reply::ok("text/plain; charset=utf-8", mode.to_owned()),
        "/configz" => Reply::ok("application/json", configz.clone()),
        "/healthz" => Reply::ok("text/plain; charset=utf-8", "ok".to_owned()),
        _ => Reply::not_found(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Object;

    /// The samples of `text` whose line starts with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn buckets_are_upstreams() {
        let sync = sync_buckets();
        assert_eq!(sync.len(), 15);
        assert_eq!((sync[0], sync[14]), (0.001, 16.384));
        let np = network_programming_buckets();
        assert_eq!(np.len(), 2 + 59 + 12 + 7);
        assert_eq!(&np[..4], [0.25, 0.5, 1.0, 2.0]);
        assert_eq!(&np[np.len() - 2..], [270.0, 300.0]);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count_per_family() {
        let m = Metrics::default();
        assert!(
            !m.encode().contains("_duration_seconds"),
            "no family before the first sync"
        );
        m.sync_took(Duration::from_millis(3), true);
        m.sync_took(Duration::from_millis(3), false);
        m.sync_took(Duration::from_secs(60), false);
        let text = m.encode();
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        assert!(text.contains(&format!(
            "# HELP {name} SyncProxyRules latency in seconds\n# TYPE {name} histogram\n"
        )));
        // One sync programs both families: each reports it.
        let buckets = lines(&text, &format!("{name}_bucket"));
        assert_eq!(buckets.len(), 2 * 16);
        let v4 = "ip_family=\"IPv4\"";
        assert_eq!(buckets[0], format!("{name}_bucket{{{v4},le=\"0.001\"}} 0"));
        assert_eq!(buckets[2], format!("{name}_bucket{{{v4},le=\"0.004\"}} 2"));
        assert_eq!(
            buckets[14],
            format!("{name}_bucket{{{v4},le=\"16.384\"}} 2")
        );
        assert_eq!(buckets[15], format!("{name}_bucket{{{v4},le=\"+Inf\"}} 3"));
        let v6: Vec<String> = buckets[16..]
            .iter()
            .map(|b| b.replace("IPv6", "IPv4"))
            .collect();
        assert_eq!(buckets[..16], v6, "the same buckets under IPv6");
        assert_eq!(
            lines(&text, &format!("{name}_count")),
            [
                format!("{name}_count{{ip_family=\"IPv4\"}} 3"),
                format!("{name}_count{{ip_family=\"IPv6\"}} 3")
            ]
        );
        assert_eq!(
            lines(&text, &format!("{name}_sum{{{v4}}}")),
            [format!("{name}_sum{{{v4}}} 60.006")]
        );
        let full = "kubeproxy_sync_full_proxy_rules_duration_seconds_count";
        let partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds_count";
        assert_eq!(lines(&text, full)[0], format!("{full}{{{v4}}} 1"));
        assert_eq!(
            lines(&text, partial)[1],
            format!("{partial}{{ip_family=\"IPv6\"}} 2")
        );
    }

    #[test]
    fn counters_gauges_and_labelled_families() {
        let m = Metrics::default();
        let text = m.encode();
        for family in [
            "kubeproxy_proxy_healthz_total",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        ] {
            assert!(!text.contains(family), "{family} before its first value");
        }
        m.probed(Probe::Healthz, 200);
        m.probed(Probe::Healthz, 200);
        m.probed(Probe::Healthz, 503);
        m.probed(Probe::Livez, 200);
        m.sync_failed();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        m.queued(at);
        m.synced(
            at,
            &[at - Duration::from_millis(300), at + Duration::from_secs(5)],
            [
                (
                    IpFamily::V4,
                    NoLocalEndpoints {
                        internal: 2,
                        external: 1,
                    },
                ),
                (IpFamily::V6, NoLocalEndpoints::default()),
            ]
            .into(),
        );
        let text = m.encode();
        for want in [
            "# TYPE kubeproxy_proxy_healthz_total counter",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 2",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1700000000.5",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 1700000000.5",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv6\"} 1700000000.5",
            "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 2",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"internal\"} 0",
            // Only the trigger in the past counts; it falls into the 0.5 s bucket.
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.25\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.5\"} 1",
            "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv6\"} 1",
            // Not per family upstream either.
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
    }

    #[test]
    fn sync_failures_are_counted_under_the_modes_upstream_name() {
        let iptables = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total";
        let nftables = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total";
        for (mode, name, other) in [
            (ProxyMode::IpTables, iptables, nftables),
            (ProxyMode::Ipvs, iptables, nftables),
            (ProxyMode::NfTables, nftables, iptables),
        ] {
            let m = Metrics::for_mode(mode);
            m.sync_failed();
            let text = m.encode();
            for want in [
                format!("# TYPE {name} counter"),
                format!("{name}{{ip_family=\"IPv4\"}} 1"),
                format!("{name}{{ip_family=\"IPv6\"}} 1"),
            ] {
                assert!(
                    text.lines().any(|l| l == want),
                    "{mode:?}: no {want:?} in\n{text}"
                );
            }
            assert!(!text.contains(other), "{mode:?}: {other} in\n{text}");
        }
        let help = "# HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total \
                    Cumulative proxy iptables restore failures";
        let m = Metrics::for_mode(ProxyMode::IpTables);
        m.sync_failed();
        assert!(m.encode().lines().any(|l| l == help));
    }

    #[test]
    fn conntrack_reconciler_families_appear_with_their_first_cleanup() {
        let m = Metrics::default();
        assert!(!m.encode().contains("kubeproxy_conntrack_reconciler"));
        m.conntrack_reconciled(IpFamily::V4, Duration::from_millis(3), 2);
        m.conntrack_reconciled(IpFamily::V4, Duration::from_millis(20), 1);
        m.conntrack_reconciled(IpFamily::V6, Duration::from_millis(1), 0);
        let text = m.encode();
        let name = "kubeproxy_conntrack_reconciler_sync_duration_seconds";
        let deleted = "kubeproxy_conntrack_reconciler_deleted_entries_total";
        for want in [
            format!("# HELP {name} ReconcileConntrackFlowsLatency latency in seconds"),
            format!("# TYPE {name} histogram"),
            format!("{name}_bucket{{ip_family=\"IPv4\",le=\"0.002\"}} 0"),
            format!("{name}_bucket{{ip_family=\"IPv4\",le=\"0.004\"}} 1"),
            format!("{name}_bucket{{ip_family=\"IPv4\",le=\"0.032\"}} 2"),
            format!("{name}_bucket{{ip_family=\"IPv4\",le=\"+Inf\"}} 2"),
            format!("{name}_sum{{ip_family=\"IPv4\"}} 0.023"),
            format!("{name}_count{{ip_family=\"IPv4\"}} 2"),
            format!("{name}_bucket{{ip_family=\"IPv6\",le=\"0.001\"}} 1"),
            format!("{name}_count{{ip_family=\"IPv6\"}} 1"),
            format!("# HELP {deleted} Cumulative conntrack flows deleted by conntrack reconciler"),
            format!("# TYPE {deleted} counter"),
            format!("{deleted}{{ip_family=\"IPv4\"}} 3"),
            format!("{deleted}{{ip_family=\"IPv6\"}} 0"),
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        assert_eq!(lines(&text, &format!("{name}_bucket")).len(), 2 * 16);
        assert_eq!(lines(&text, &format!("# TYPE {name}")).len(), 1);
    }

    #[test]
    fn no_local_endpoints_counts_local_policies_with_endpoints_elsewhere_only() {
        use kube_proxy_model::{
            Endpoint, NodeInfo, Protocol, ServiceEntry, ServicePort, ServicePortName,
        };
        let node = NodeInfo::default();
        let mut state = ProxyState::default();
        let mut add =
            |name: &str, ip: &str, shape: fn(&mut ServicePort), endpoints: &[(&str, bool)]| {
                let name = ServicePortName {
                    namespace: "ns".into(),
                    name: name.into(),
                    port: String::new(),
                    protocol: Protocol::Tcp,
                };
                let mut port = ServicePort::new(name.clone(), ip.parse().unwrap(), 80);
                shape(&mut port);
                let eps = endpoints
                    .iter()
                    .map(|(ip, local)| Endpoint::ready(ip.parse().unwrap(), 8080, *local))
                    .collect();
                let map = if port.family == IpFamily::V4 {
                    &mut state.v4
                } else {
                    &mut state.v6
                };
                map.insert(
                    name,
                    std::sync::Arc::new(ServiceEntry::new(port, eps, &node)),
                );
            };
        let internal: fn(&mut ServicePort) = |p| p.internal_policy_local = true;
        let external: fn(&mut ServicePort) = |p| {
            p.node_port = 30080;
            p.external_policy_local = true;
        };
        add(
            "remote-only",
            "10.96.0.1",
            internal,
            &[("10.244.2.1", false)],
        );
        add(
            "remote-only-v6",
            "fd00::1",
            internal,
            &[("fd00:244::1", false)],
        );
        add("external", "10.96.0.2", external, &[("10.244.2.2", false)]);
        add("none-at-all", "10.96.0.3", internal, &[]);
        add("has-local", "10.96.0.4", internal, &[("10.244.1.4", true)]);
        add("cluster", "10.96.0.5", |_| {}, &[("10.244.2.5", false)]);
        let counts = |internal, external| NoLocalEndpoints { internal, external };
        assert_eq!(
            NoLocalEndpoints::by_family(&state),
            [(IpFamily::V4, counts(1, 1)), (IpFamily::V6, counts(1, 0))].into()
        );
    }

    #[test]
    fn change_counts_by_kind_and_pending_reset_by_a_sync() {
        let m = Metrics::default();
        let svc = Object::Service(Box::default());
        let slice = Object::EndpointSlice(Box::default());
        m.saw(&SourceEvent::Listed(
            Kind::Service,
            vec![svc.clone(), svc.clone(), slice.clone()],
        ));
        m.saw(&SourceEvent::Applied(slice.clone()));
        m.saw(&SourceEvent::Deleted(slice));
        m.saw(&SourceEvent::Applied(Object::Node(Box::default())));
        let text = m.encode();
        for want in [
            "kubeproxy_sync_proxy_rules_service_changes_total 2",
            "kubeproxy_sync_proxy_rules_service_changes_pending 2",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 2",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 2",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        m.changes_taken();
        let text = m.encode();
        assert!(text
            .lines()
            .any(|l| l == "kubeproxy_sync_proxy_rules_service_changes_pending 0"));
        assert!(text
            .lines()
            .any(|l| l == "kubeproxy_sync_proxy_rules_endpoint_changes_total 2"));
    }
}
