//! IPVS mode alone: where it runs, what the node's state dump shows, and the scenarios
//! only IPVS has (graceful termination of real servers, `ipvsadm -Ln` against the
//! manifests).
//!
//! The host kernel has no IPVS: these tests (and every scenario under [`Mode::Ipvs`]) run
//! inside the project's VM (`.ci/vm`, Debian's stock kernel with `ip_vs` loaded), and skip
//! elsewhere, saying so.

// Compiled into every mode's test binary; only `tests/dataplane_ipvs.rs` uses it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use super::*;
use crate::support::netns::LOCAL_POD_GATEWAY;
use crate::support::netns::LOCAL_POD_GATEWAY6;

/// Set by `.ci/vm/guest` for the command it runs; `.ci/vm/init` writes the file.
const VM_MARKER_ENV: &str = "KUBE_PROXY_RS_VM";
const VM_MARKER_FILE: &str = "/run/kube-proxy-rs-vm";

/// True inside the project's VM; otherwise prints why `test` skips.
pub fn in_vm(test: &str) -> bool {
    let marked = std::env::var_os(VM_MARKER_ENV).is_some_and(|v| v == "1");
    if marked && Path::new(VM_MARKER_FILE).exists() {
        return true;
    }
    // Straight to stderr: libtest captures eprintln! of passing tests.
    // One write, so that parallel tests' messages do not interleave.
    let message = format!(
        "{test}: skipped: IPVS mode runs only inside the project's VM ({VM_MARKER_ENV} unset; \
         the host kernel has no IPVS); run with \
         CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/cargo-runner \
         cargo test --test dataplane_ipvs (see .ci/vm/README.md)\n"
    );
    let _ = io::stderr().write_all(message.as_bytes());
    false
}

/// What a failing test prints of the node in IPVS mode (`sh -c`, in the node namespace).
pub const STATE_DUMP: &str = "echo '# ipvsadm -Ln'; ipvsadm -Ln 2>&1; \
     echo '# nft list ruleset'; nft list ruleset 2>&1; \
     echo '# ip addr show kube-ipvs0'; ip addr show kube-ipvs0 2>&1";

/// The IPVS connection of a TCP flow closed with a RST sits in state CLOSE for 10 s
/// (`tcp_timeouts[IP_VS_TCP_S_CLOSE]`); TCG makes everything slower.
const CONNECTION_EXPIRY_LIMIT: Duration = Duration::from_secs(40);

/// A real server as `ipvsadm -Ln` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RealServer {
    /// `10.244.1.2:8080`, `[fd00:10:244:1::2]:8080`.
    address: String,
    /// `Masq`, `Route`, `Tunnel`.
    forward: String,
    weight: u32,
    active: u32,
    inactive: u32,
}

impl RealServer {
    /// What the manifests decide: address, forwarding method, weight.
    fn programmed(&self) -> String {
        format!("{} {} {}", self.address, self.forward, self.weight)
    }
}

/// `ipvsadm -Ln` of the node: each virtual server's line (`TCP 10.96.0.10:80 rr`, with
/// `persistent <timeout>` where set) and its real servers.
struct IpvsTable {
    services: BTreeMap<String, Vec<RealServer>>,
    text: String,
}

impl IpvsTable {
    fn parse(text: &str) -> IpvsTable {
        let mut services: BTreeMap<String, Vec<RealServer>> = BTreeMap::new();
        let mut current: Option<String> = None;
        // The first three lines are the version and the two column headers.
        for line in text.lines().skip(3) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["->", address, forward, weight, active, inactive] => {
                    let service = current
                        .as_ref()
                        .unwrap_or_else(|| panic!("real server before any service:\n{text}"));
                    let number = |s: &str| {
                        s.parse::<u32>()
                            .unwrap_or_else(|e| panic!("{s:?} in {line:?}: {e}\n{text}"))
                    };
                    services.get_mut(service).unwrap().push(RealServer {
                        address: (*address).to_owned(),
                        forward: (*forward).to_owned(),
                        weight: number(weight),
                        active: number(active),
                        inactive: number(inactive),
                    });
                }
                [] => {}
                service => {
                    let service = service.join(" ");
                    services.insert(service.clone(), Vec::new());
                    current = Some(service);
                }
            }
        }
        IpvsTable {
            services,
            text: text.to_owned(),
        }
    }

    /// Every virtual server with its real servers' address, forwarding and weight.
    fn programmed(&self) -> BTreeMap<String, BTreeSet<String>> {
        let servers = |rs: &Vec<RealServer>| rs.iter().map(RealServer::programmed).collect();
        let services = self.services.iter();
        services.map(|(vs, rs)| (vs.clone(), servers(rs))).collect()
    }

    /// The real server `address` of virtual server `service`, if listed.
    fn real_server(&self, service: &str, address: &str) -> Option<&RealServer> {
        let servers = self.services.get(service);
        let servers =
            servers.unwrap_or_else(|| panic!("no virtual server {service}:\n{}", self.text));
        servers.iter().find(|rs| rs.address == address)
    }
}

impl Cluster {
    /// `ipvsadm -Ln` in the node namespace.
    fn ipvs_table(&self) -> IpvsTable {
        let mut ipvsadm = self.topology.node.command("ipvsadm");
        IpvsTable::parse(&netns::run(ipvsadm.arg("-Ln")))
    }

    /// The addresses on the node's `kube-ipvs0` (link-local ones aside).
    fn kube_ipvs0_addresses(&self) -> BTreeSet<IpAddr> {
        let shown = self.topology.node.ip("-o addr show dev kube-ipvs0");
        let mut addresses = BTreeSet::new();
        for line in shown.lines() {
            let mut fields = line.split_whitespace();
            while let Some(field) = fields.next() {
                if field != "inet" && field != "inet6" {
                    continue;
                }
                let cidr = fields.next().expect("an address after inet");
                let ip: IpAddr = cidr.split('/').next().unwrap().parse().expect(cidr);
                let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80);
                if !link_local {
                    addresses.insert(ip);
                }
            }
        }
        addresses
    }
}

/// `ip:port` as `ipvsadm -Ln` prints it.
fn ipvs_address(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The node's addresses of `family` that upstream's IPVS proxier makes NodePort virtual
/// servers on by default (`--nodeport-addresses` unset): every address of the node but
/// loopback, link-local IPv6 and `kube-ipvs0`'s (`ipGetter.NodeIPs`).
fn node_port_addresses(family: Family) -> Vec<IpAddr> {
    match family {
        Family::V4 => vec![
            NODE_IP.into(),
            NODE_UPLINK_IP.into(),
            LOCAL_POD_GATEWAY.into(),
        ],
        Family::V6 => vec![
            NODE_IP6.into(),
            NODE_UPLINK_IP6.into(),
            LOCAL_POD_GATEWAY6.into(),
        ],
    }
}

/// The virtual servers upstream's IPVS proxier programs for `services` (each with only
/// ready endpoints and Cluster traffic policies): per family and protocol one on each
/// ClusterIP, externalIP and load-balancer IP, and one per node address for a NodePort;
/// scheduler `rr`, `persistent <timeout>` for ClientIP affinity; every endpoint a
/// masqueraded real server of weight 1.
fn expected_virtual_servers(
    topology: &Topology,
    services: &[&Svc],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut expected = BTreeMap::new();
    for svc in services {
        for family in svc.families() {
            let mut addresses: Vec<(IpAddr, u16)> =
                vec![(svc.cluster_addr_of(family).ip(), SERVICE_PORT)];
            for ip in &svc.external_ips {
                if family == Family::V4 {
                    addresses.push(((*ip).into(), SERVICE_PORT));
                }
            }
            if let Exposure::LoadBalancer { ingress, .. } = svc.exposure {
                if Family::of(ingress) == family {
                    addresses.push((ingress, SERVICE_PORT));
                }
            }
            if let Some(node_port) = svc.exposure.node_port() {
                let nodes = node_port_addresses(family).into_iter();
                addresses.extend(nodes.map(|ip| (ip, node_port)));
            }
            let pods: Vec<&str> = match svc.family_endpoints.get(&family) {
                Some(pods) => pods.clone(),
                None => svc.endpoints.iter().map(|(pod, _)| *pod).collect(),
            };
            let real_servers: BTreeSet<String> = pods
                .iter()
                .map(|pod| {
                    let ip = topology.pod(pod).ip_of(family);
                    format!("{} Masq 1", ipvs_address(ip, POD_PORT))
                })
                .collect();
            let persistence = if svc.client_ip_affinity {
                " persistent 10800"
            } else {
                ""
            };
            for proto in ["TCP", "UDP"] {
                for (ip, port) in &addresses {
                    let vs = format!("{proto} {} rr{persistence}", ipvs_address(*ip, *port));
                    expected.insert(vs, real_servers.clone());
                }
            }
        }
    }
    expected
}

/// `ipvsadm -Ln` holds exactly the virtual servers the manifests call for (ClusterIPs,
/// a NodePort on each node address, a load-balancer IP, an externalIP, both families,
/// `rr`, weights 1, persistence with the affinity timeout), and `kube-ipvs0` exactly the
/// service addresses upstream binds there (ClusterIPs, externalIPs, load-balancer IPs; not
/// the node's). A second apply with one service gone removes its virtual servers and
/// addresses. Real packets cross the programmed table: see every scenario.
pub fn ipvsadm_matches_the_manifests() {
    let mut cluster = Cluster::new(Mode::Ipvs, &["a", "b"], &["r"]);
    let web = Svc::new("web", 10, &["a", "r"])
        .dual_stack()
        .family_endpoints(Family::V6, &["b", "r"])
        .node_port(30080);
    let external_ip = Ipv4Addr::new(198, 18, 0, 10);
    let lb = Svc::new("lb", 11, &["b"])
        .load_balancer(30081, Ipv4Addr::new(198, 18, 0, 20), &[])
        .external_ip(external_ip);
    let sticky = Svc::new("sticky", 12, &["a", "b", "r"]).client_ip_affinity();
    let sticky6 = Svc::new_ipv6("sticky6", 13, &["a", "r"]).client_ip_affinity();
    let services = [&web, &lb, &sticky, &sticky6];
    cluster.apply(&services);
    let check = |cluster: &Cluster, services: &[&Svc]| {
        let table = cluster.ipvs_table();
        let expected = expected_virtual_servers(&cluster.topology, services);
        assert_eq!(
            table.programmed(),
            expected,
            "ipvsadm -Ln after apply #{} differs from the manifests:\n{}",
            cluster.applies,
            table.text
        );
        let mut bound = BTreeSet::new();
        for svc in services {
            bound.extend(svc.cluster_ips.iter().copied());
            bound.extend(svc.external_ips.iter().map(|ip| IpAddr::V4(*ip)));
            if let Exposure::LoadBalancer { ingress, .. } = svc.exposure {
                bound.insert(ingress);
            }
        }
        assert_eq!(
            cluster.kube_ipvs0_addresses(),
            bound,
            "addresses on kube-ipvs0 after apply #{}",
            cluster.applies
        );
    };
    check(&cluster, &services);
    let remaining = [&web, &sticky6];
    cluster.apply(&remaining);
    check(&cluster, &remaining);
}

/// Graceful termination (upstream's `gracefuldeleteManager`): removing an endpoint from
/// the EndpointSlice keeps an open TCP connection to it working, while new connections
/// avoid it: its real server stays with weight 0 as long as IPVS tracks a connection to
/// it. Once that connection is gone (closed with a RST, so IPVS forgets it after its
/// 10 s CLOSE state rather than 2 min of TIME_WAIT), the next sync removes the real
/// server. UDP has no graceful termination upstream: its real server goes at once.
pub fn graceful_termination_keeps_open_connections() {
    let mut cluster = Cluster::new(Mode::Ipvs, &["a", "b", "client"], &[]);
    let web = Svc::new("web", 10, &["a", "b"]);
    cluster.apply(&[&web]);
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    let mut open = cluster.tcp_conversation(pod, web.cluster_addr());
    let first = open.exchange().answer("before the removal").clone();
    let (kept, removed) = match first.identity.as_str() {
        "a" => ("b", "a"),
        _ => ("a", "b"),
    };
    let after = Svc::new("web", 10, &[kept]);
    cluster.apply(&[&after]);
    assert_eq!(
        open.exchange(),
        Outcome::Answered(first.clone()),
        "the open connection to {removed} after {removed} left the EndpointSlice"
    );
    cluster.check(&[(pod, web.cluster_addr(), reaches(&[kept], pod_ip))]);

    let vs = |proto| format!("{proto} {} rr", web.cluster_addr());
    let (tcp, udp) = (vs("TCP"), vs("UDP"));
    let removed_rs = ipvs_address(cluster.pod_ip(removed), POD_PORT);
    let kept_rs = ipvs_address(cluster.pod_ip(kept), POD_PORT);
    let table = cluster.ipvs_table();
    let draining = table.real_server(&tcp, &removed_rs);
    let draining = draining.unwrap_or_else(|| {
        panic!(
            "{removed_rs} left {tcp} with a connection open:\n{}",
            table.text
        )
    });
    assert_eq!(
        (draining.weight, draining.active),
        (0, 1),
        "{removed_rs} of {tcp} while draining (weight, active connections):\n{}",
        table.text
    );
    let serving = table.real_server(&tcp, &kept_rs).map(|rs| rs.weight);
    assert_eq!(serving, Some(1), "{kept_rs} of {tcp}:\n{}", table.text);
    assert!(
        table.real_server(&udp, &removed_rs).is_none(),
        "{removed_rs} still in {udp} (no graceful termination for UDP):\n{}",
        table.text
    );

    open.reset();
    let start = Instant::now();
    loop {
        let table = cluster.ipvs_table();
        let rs = table.real_server(&tcp, &removed_rs).cloned();
        let rs =
            rs.unwrap_or_else(|| panic!("{removed_rs} left {tcp} before a sync:\n{}", table.text));
        if rs.active + rs.inactive == 0 {
            break;
        }
        assert!(
            start.elapsed() < CONNECTION_EXPIRY_LIMIT,
            "IPVS still tracks the closed connection to {removed_rs} after {CONNECTION_EXPIRY_LIMIT:?}:\n{}",
            table.text
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.apply(&[&after]);
    let table = cluster.ipvs_table();
    assert!(
        table.real_server(&tcp, &removed_rs).is_none(),
        "{removed_rs} still in {tcp} after the connection closed and a sync ran:\n{}",
        table.text
    );
    cluster.check(&[(pod, web.cluster_addr(), reaches(&[kept], pod_ip))]);
}
