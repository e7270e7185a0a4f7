//! Health-check node ports, as upstream's `ServiceHealthServer`: one HTTP listener per
//! LoadBalancer Service with `externalTrafficPolicy: Local` (the ones with a
//! `healthCheckNodePort`), on the node-port addresses, telling the load balancer whether
//! this node has endpoints of that Service.
//!
//! * Any path answers 200 while the Service has a local ready endpoint and the proxy is
//!   healthy ([`HealthState::proxier_healthy`](crate::health::HealthState::proxier_healthy)),
//!   503 otherwise; upstream's JSON body and headers, including
//!   `X-Load-Balancing-Endpoint-Weight` (the local endpoint count).
//! * The listeners follow the model only after a successful sync: a load balancer is told
//!   about endpoints only once the rules to reach them are programmed.
//! * A Service whose port or addresses change is closed and reopened. A port that cannot be
//!   bound is logged and recorded as a `FailedToStartServiceHealthcheck` Event on the
//!   Service, nothing else stops, and the next sync tries again (as upstream).
//!
//! One proxy here programs both IP families, where upstream runs one server per family.
//! So a Service gets one set of listeners: the node-port addresses of each family the
//! node has, or the wildcard `[::]` (both families, as Go's `0.0.0.0` listener is) when
//! `nodePortAddresses` accepts every address of such a family. Its count is the larger of
//! the two families' (a dual-stack pod is one endpoint, not two).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use kube_proxy_model::{IpFamily, NodeInfo, NodePortAddress, ProxyState};
use kube_proxy_nftables::addresses::{node_port_ips, AddressSource, NodePortIps};
use kube_proxy_nftables::SystemAddresses;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::events::{self, Events};
use crate::health::{self, Reply, SharedHealth};

/// The namespace and name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one Service's health-check port should be and report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub port: u16,
    /// Distinct local ready endpoint IPs (upstream's `LocalReadyEndpoints`): a pod serving
    /// several ports of the Service counts once; terminating endpoints never count.
    pub local_endpoints: usize,
}

/// The health-check ports `state` asks for: every Service with a `healthCheckNodePort`
/// (the model sets it only for LoadBalancer Services with `externalTrafficPolicy: Local`).
pub fn wanted(state: &ProxyState) -> BTreeMap<ServiceName, Wanted> {
    let mut ports = BTreeMap::new();
    let mut local_ips: BTreeMap<(ServiceName, IpFamily), BTreeSet<IpAddr>> = BTreeMap::new();
    for family in IpFamily::ALL {
        for (port_name, entry) in state.services(family) {
            if entry.port.health_check_node_port == 0 {
                continue;
            }
            let service = ServiceName {
                namespace: port_name.namespace.clone(),
                name: port_name.name.clone(),
            };
            let ips = local_ips.entry((service.clone(), family)).or_default();
            ips.extend(
                entry
                    .endpoints
                    .iter()
                    .filter(|ep| ep.is_local && ep.ready)
                    .map(|ep| ep.ip),
            );
            ports.insert(service, entry.port.health_check_node_port);
        }
    }
    ports
        .into_iter()
        .map(|(service, port)| {
            let local_endpoints = IpFamily::ALL
                .iter()
                .filter_map(|&family| local_ips.get(&(service.clone(), family)))
                .map(BTreeSet::len)
                .max()
                .unwrap_or(0);
            let wanted = Wanted {
                port,
                local_endpoints,
            };
            (service, wanted)
        })
        .collect()
}

/// The addresses health-check ports listen on, given `nodePortAddresses` (`entries`).
///
/// The families are those the node has a (non-loopback) IP of, else IPv4 alone, as
/// upstream runs a proxier per node-IP family. A family whose node-port addresses are
/// all its addresses makes the answer the wildcard `[::]`, which Go's `0.0.0.0` listener
/// is too; otherwise each family contributes its node-port IPs.
pub fn listen_ips(
    entries: &[NodePortAddress],
    node: &NodeInfo,
    source: &dyn AddressSource,
) -> io::Result<Vec<IpAddr>> {
    let mut families: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|&f| node.ip(f).is_some_and(|ip| !ip.is_loopback()))
        .collect();
    if families.is_empty() {
        families.push(IpFamily::V4);
    }
    let mut ips = Vec::new();
    for family in families {
        match node_port_ips(entries, family, node.ip(family), source)? {
            NodePortIps::All => return Ok(vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]),
            NodePortIps::Only(only) => ips.extend(only),
        }
    }
    Ok(ips)
}

/// Upstream's JSON body, field for field.
#[derive(Serialize)]
struct Body<'a> {
    service: BodyService<'a>,
    #[serde(rename = "localEndpoints")]
    local_endpoints: usize,
    #[serde(rename = "serviceProxyHealthy")]
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct BodyService<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// The answer of `service`'s health-check port.
pub fn reply(service: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> Reply {
    let body = Body {
        service: BodyService {
            namespace: &service.namespace,
            name: &service.name,
        },
        local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    // Upstream prints a dedented, tab-indented template: exactly serde's pretty output
    // with a tab as the indent.
    let mut json = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut json, formatter);
    body.serialize(&mut serializer)
        .expect("health-check bodies serialize");
    Reply {
        code: if local_endpoints > 0 && proxy_healthy {
            200
        } else {
            503
        },
        content_type: "application/json",
        headers: vec![(
            "X-Load-Balancing-Endpoint-Weight",
            local_endpoints.to_string(),
        )],
        body: String::from_utf8(json).expect("serde_json writes UTF-8"),
    }
}

/// One Service's open listeners.
struct Listeners {
    port: u16,
    ips: Vec<IpAddr>,
    /// What its routes answer from, so that a new count needs no rebinding.
    local_endpoints: Arc<AtomicUsize>,
    /// The serving tasks; each owns its listening socket.
    tasks: Vec<JoinHandle<()>>,
}

/// The health-check node ports of this node: opened, updated and closed by [`update`].
///
/// [`update`]: ServiceHealthServers::update
pub struct ServiceHealthServers {
    node_name: String,
    events: Events,
    health: SharedHealth,
    open: BTreeMap<ServiceName, Listeners>,
}

impl ServiceHealthServers {
    /// None open yet. Answers report `health`; ports that fail to open are recorded as
    /// Events through `events` about node `node_name`'s proxy.
    pub fn new(node_name: String, events: Events, health: SharedHealth) -> Self {
        ServiceHealthServers {
            node_name,
            events,
            health,
            open: BTreeMap::new(),
        }
    }

    /// Makes the listeners match `state`, just synced, with `nodePortAddresses` `entries`:
    /// upstream's `SyncServices` then `SyncEndpoints`. Needs the multi-threaded runtime.
    pub fn update(&mut self, state: &ProxyState, entries: &[NodePortAddress]) {
        let wanted = wanted(state);
        let ips = if wanted.is_empty() {
            Vec::new()
        } else {
            listen_ips(entries, &state.node, &SystemAddresses).unwrap_or_else(|e| {
                tracing::error!(error = %e, "listing local addresses failed; health-check ports listen on all addresses");
                vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
            })
        };
        // Close first, so that a port one Service leaves is free for another.
        let stale: Vec<ServiceName> = self
            .open
            .iter()
            .filter(|(name, l)| {
                wanted
                    .get(*name)
                    .is_none_or(|w| w.port != l.port || l.ips != ips)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let listeners = self.open.remove(&name).expect("listed above");
            tracing::info!(service = %name, port = listeners.port, "closing healthcheck");
            close(listeners.tasks);
        }
        for (name, want) in wanted {
            match self.open.get(&name) {
                Some(open) => open
                    .local_endpoints
                    .store(want.local_endpoints, Ordering::Relaxed),
                None => self.open_listeners(name, want, &ips),
            }
        }
    }

    /// Opens `name`'s listeners on `ips`, or reports why not.
    fn open_listeners(&mut self, name: ServiceName, want: Wanted, ips: &[IpAddr]) {
        let local_endpoints = Arc::new(AtomicUsize::new(want.local_endpoints));
        let mut tasks = Vec::with_capacity(ips.len());
        for &ip in ips {
            let addr = SocketAddr::new(ip, want.port);
            match bind(addr) {
                Ok(listener) => {
                    let route = self.route(name.clone(), local_endpoints.clone());
                    tasks.push(health::spawn_http(listener, route));
                }
                Err(e) => {
                    // Nothing half-open stays behind: the next sync retries from scratch.
                    close(tasks);
                    self.failed(&name, want.port, &format!("listen tcp {addr}: bind: {e}"));
                    return;
                }
            }
        }
        tracing::info!(service = %name, port = want.port, "opened healthcheck");
        let listeners = Listeners {
            port: want.port,
            ips: ips.to_vec(),
            local_endpoints,
            tasks,
        };
        self.open.insert(name, listeners);
    }

    /// What `name`'s listeners answer, whatever the path.
    fn route(
        &self,
        name: ServiceName,
        local_endpoints: Arc<AtomicUsize>,
    ) -> impl Fn(&str) -> Reply + Send + Sync + 'static {
        let health = self.health.clone();
        move |_path| {
            let healthy = health::lock(&health).proxier_healthy(SystemTime::now());
            reply(&name, local_endpoints.load(Ordering::Relaxed), healthy)
        }
    }

    /// Logs and records (upstream's Event) that `name`'s port could not be opened.
    fn failed(&self, name: &ServiceName, port: u16, error: &str) {
        tracing::error!(node = %self.node_name, service = %name, port, error, "failed to start healthcheck");
        let note = format!(
            "node {} failed to start healthcheck {:?} on port {port}: {error}",
            self.node_name,
            name.to_string()
        );
        let regarding = events::service_ref(&name.namespace, &name.name);
        self.events
            .warning(regarding, "FailedToStartServiceHealthcheck", "Listen", note);
    }
}

/// Binds `addr` now. The wildcard `[::]` falls back to `0.0.0.0` on a kernel without
/// IPv6, as Go's listener does.
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    // std binds synchronously (with SO_REUSEADDR, as Go does), so that a failure is
    // known within this sync.
    let listener = std::net::TcpListener::bind(addr).or_else(|e| {
        let wildcard = addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        if wildcard && e.kind() != io::ErrorKind::AddrInUse {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            std::net::TcpListener::bind(v4).map_err(|_| e)
        } else {
            Err(e)
        }
    })?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Stops serving tasks and waits until they are gone, so that their ports are closed
/// (free to bind again, refusing connections) when this returns.
fn close(tasks: Vec<JoinHandle<()>>) {
    for task in &tasks {
        task.abort();
    }
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            for task in tasks {
                // Cancelled, as asked: nothing to report.
                let _ = task.await;
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_proxy_model::{Endpoint, Protocol, ServiceEntry, ServicePort, ServicePortName};
    use kube_proxy_nftables::StaticAddresses;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(svc: &str) -> ServiceName {
        ServiceName {
            namespace: "ns".into(),
            name: svc.into(),
        }
    }

    /// Port `port` of Service `ns/svc` with health-check port `hc` and `endpoints`.
    fn entry(
        svc: &str,
        port: &str,
        hc: u16,
        endpoints: Vec<Endpoint>,
    ) -> (ServicePortName, Arc<ServiceEntry>) {
        let port_name = ServicePortName {
            namespace: "ns".into(),
            name: svc.into(),
            port: port.into(),
            protocol: Protocol::Tcp,
        };
        let mut sp = ServicePort::new(port_name.clone(), ip("10.96.0.1"), 80);
        sp.health_check_node_port = hc;
        sp.external_policy_local = hc != 0;
        let node = NodeInfo {
            name: "node-a".into(),
            ..NodeInfo::default()
        };
        (port_name, Arc::new(ServiceEntry::new(sp, endpoints, &node)))
    }

    fn local(addr: &str, port: u16) -> Endpoint {
        Endpoint::ready(ip(addr), port, true)
    }

    #[test]
    fn wanted_counts_distinct_local_ready_ips_of_services_with_a_port() {
        let mut terminating = local("10.244.1.9", 8080);
        terminating.ready = false;
        terminating.terminating = true;
        let v4 = [
            // Two ports served by the same local pod: one endpoint.
            entry(
                "lb",
                "http",
                30100,
                vec![
                    local("10.244.1.5", 8080),
                    Endpoint::ready(ip("10.244.2.5"), 8080, false),
                    terminating,
                ],
            ),
            entry("lb", "https", 30100, vec![local("10.244.1.5", 8443)]),
            entry(
                "remote",
                "http",
                30200,
                vec![Endpoint::ready(ip("10.244.2.6"), 8080, false)],
            ),
            entry("cluster", "http", 0, vec![local("10.244.1.7", 8080)]),
        ];
        let state = ProxyState {
            v4: v4.into_iter().collect(),
            // A dual-stack pod counts once, not once per family.
            v6: [entry("lb", "http", 30100, vec![local("fd00::5", 8080)])]
                .into_iter()
                .collect(),
            ..ProxyState::default()
        };
        let got = wanted(&state);
        let expected: BTreeMap<_, _> = [
            (
                name("lb"),
                Wanted {
                    port: 30100,
                    local_endpoints: 1,
                },
            ),
            (
                name("remote"),
                Wanted {
                    port: 30200,
                    local_endpoints: 0,
                },
            ),
        ]
        .into();
        assert_eq!(got, expected);
    }

    #[test]
    fn reply_is_upstreams_body_and_headers() {
        let ok = reply(&name("lb"), 2, true);
        assert_eq!(ok.code, 200);
        assert_eq!(ok.content_type, "application/json");
        assert_eq!(
            ok.headers,
            [("X-Load-Balancing-Endpoint-Weight", "2".to_owned())]
        );
        assert_eq!(
            ok.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(reply(&name("lb"), 0, true).code, 503, "no local endpoint");
        let sick = reply(&name("lb"), 2, false);
        assert_eq!(sick.code, 503, "proxy unhealthy");
        assert!(sick.body.contains("\"serviceProxyHealthy\": false"));
    }

    #[test]
    fn listen_ips_follow_node_port_addresses_per_node_family() {
        let node = |ips: &[&str]| NodeInfo {
            ips: ips.iter().map(|s| ip(s)).collect(),
            ..NodeInfo::default()
        };
        let host = StaticAddresses(vec![
            ip("192.0.2.10"),
            ip("10.0.0.7"),
            ip("2001:db8::10"),
            ip("127.0.0.1"),
        ]);
        let cidr = |s: &str| NodePortAddress::Cidr(s.parse().unwrap());
        let wildcard = vec![ip("::")];

        // Unset or a /0: every address (Go's wildcard listener).
        assert_eq!(
            listen_ips(&[], &node(&["192.0.2.10"]), &host).unwrap(),
            wildcard
        );
        assert_eq!(
            listen_ips(&[cidr("0.0.0.0/0")], &node(&["192.0.2.10"]), &host).unwrap(),
            wildcard
        );
        // `primary`: the node's IP of each family it has, and only those families.
        let primary = [NodePortAddress::Primary];
        assert_eq!(
            listen_ips(&primary, &node(&["192.0.2.10"]), &host).unwrap(),
            [ip("192.0.2.10")]
        );
        assert_eq!(
            listen_ips(&primary, &node(&["192.0.2.10", "2001:db8::10"]), &host).unwrap(),
            [ip("192.0.2.10"), ip("2001:db8::10")]
        );
        // CIDRs: the local addresses inside them.
        assert_eq!(
            listen_ips(&[cidr("10.0.0.0/8")], &node(&["192.0.2.10"]), &host).unwrap(),
            [ip("10.0.0.7")]
        );
        // A node with only the loopback fallback counts as IPv4-only.
        assert_eq!(
            listen_ips(&[cidr("10.0.0.0/8")], &node(&["127.0.0.1", "::1"]), &host).unwrap(),
            [ip("10.0.0.7")]
        );
    }
}
