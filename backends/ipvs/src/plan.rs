//! The pure planning step of IPVS mode: the model in, the desired kernel state out
//! (virtual servers with their real servers, the addresses of `kube-ipvs0`, and the
//! content of the companion nftables table of each family). Nothing here touches a kernel.
//!
//! Which real servers each virtual server gets follows upstream's `syncEndpoint`:
//!
//! * the ClusterIP: the cluster endpoints, or the local ones with
//!   `internalTrafficPolicy: Local`;
//! * each externalIP, LoadBalancer IP and node-port address: the cluster endpoints, or the
//!   local ones with `externalTrafficPolicy: Local`;
//! * a Local policy without local endpoints falls back to the cluster endpoints, as
//!   upstream's IPVS mode does (unlike its iptables and nftables modes, which drop).
//!
//! Every real server is a NAT (`Masq`) one with weight 1.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_proxy_model::{
    CategorizedEndpoints, Endpoint, IpFamily, LocalDetector, Protocol, ProxyOptions, ProxyState,
    ServiceEntry, ServicePortName,
};
use kube_proxy_nftables::ir::{BaseChain, ChainType, Family, Hook, KeySyntax, Set, SetFlag};
use kube_proxy_nftables::table::{ChainState, ElementValue, SetState, TableState};

use crate::{RealServer, Scheduler, ServiceFlags, ServiceKey, Timeouts, VirtualServer};

/// The name of the companion table in each family (`ip`/`ip6 kube-proxy-ipvs`).
pub const COMPANION_TABLE: &str = "kube-proxy-ipvs";

/// The settings specific to IPVS mode (`ipvs.*` of the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsSettings {
    /// `ipvs.scheduler` (`rr` when empty in the configuration).
    pub scheduler: Scheduler,
    /// `ipvs.excludeCIDRs`: virtual servers and `kube-ipvs0` addresses inside them are
    /// never deleted.
    pub exclude_cidrs: Vec<IpNet>,
    /// `ipvs.strictARP`: set `arp_ignore=1` and `arp_announce=2`.
    pub strict_arp: bool,
    /// `ipvs.tcpTimeout`, `tcpFinTimeout`, `udpTimeout`; zero leaves the kernel's value.
    pub timeouts: Timeouts,
}

impl IpvsSettings {
    /// Whether `addr` lies in `excludeCIDRs`.
    pub fn excluded(&self, addr: &IpAddr) -> bool {
        self.exclude_cidrs.iter().any(|net| net.contains(addr))
    }
}

/// One virtual server as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub vs: VirtualServer,
    /// Sorted by address and port.
    pub reals: Vec<RealServer>,
    /// The address belongs on `kube-ipvs0` (every kind but node-port addresses).
    pub bind: bool,
    /// The service port it was made for (the first by name when several claim it).
    pub owner: ServicePortName,
}

/// The whole desired state of the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// The addresses of `kube-ipvs0`.
    pub addresses: BTreeSet<IpAddr>,
    /// The companion table of each managed family.
    pub tables: BTreeMap<Family, TableState>,
}

/// The nft family of a model family.
pub fn nft_family(family: IpFamily) -> Family {
    match family {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// Plans `state` for the families in `families`. `node_port_ips` holds, per family, the
/// addresses that get a virtual server for each NodePort.
pub fn plan(
    state: &ProxyState,
    families: &[IpFamily],
    options: &ProxyOptions,
    settings: &IpvsSettings,
    node_port_ips: &BTreeMap<IpFamily, Vec<IpAddr>>,
) -> Plan {
    let mut plan = Plan::default();
    for &family in families {
        let nodes = node_port_ips.get(&family).map(Vec::as_slice).unwrap_or(&[]);
        let mut table = Companion::new(family, options);
        for entry in state.services(family).values() {
            plan_entry(&mut plan, &mut table, entry, settings, nodes, state);
        }
        plan.tables.insert(nft_family(family), table.finish());
    }
    plan.addresses = plan
        .services
        .values()
        .filter(|d| d.bind)
        .map(|d| d.vs.addr)
        .collect();
    plan
}

fn reals(endpoints: &[Endpoint]) -> Vec<RealServer> {
    let mut v: Vec<RealServer> = endpoints
        .iter()
        .map(|ep| RealServer::new(ep.ip, ep.port, 1))
        .collect();
    v.sort_by_key(|r| (r.addr, r.port));
    v.dedup_by_key(|r| (r.addr, r.port));
    v
}

/// The endpoints of one traffic policy, as upstream's IPVS `syncEndpoint` picks them: a
/// Local policy takes the local endpoints, or the cluster ones when this node has none
/// (kubernetes PR 97081: local pods keep reaching an `externalTrafficPolicy: Local`
/// service through its external addresses). The cluster endpoints are empty when no
/// traffic of the port uses the Cluster policy, so a Local-only port stays local.
fn policy_endpoints(local_only: bool, cat: &CategorizedEndpoints) -> &[Endpoint] {
    if local_only && !cat.local.is_empty() {
        &cat.local
    } else {
        &cat.cluster
    }
}

fn plan_entry(
    plan: &mut Plan,
    table: &mut Companion,
    entry: &ServiceEntry,
    settings: &IpvsSettings,
    node_port_ips: &[IpAddr],
    state: &ProxyState,
) {
    let port = &entry.port;
    let proto = port.name.protocol;
    let cat = &entry.categorized;
    let internal = reals(policy_endpoints(port.internal_policy_local, cat));
    let external = reals(policy_endpoints(port.external_policy_local, cat));
    let mut add = |addr: IpAddr, vport: u16, reals: &Vec<RealServer>, bind: bool| {
        let mut vs = VirtualServer::new(addr, vport, proto, settings.scheduler.clone());
        if let Some(affinity) = port.session_affinity {
            vs.flags = ServiceFlags::PERSISTENT;
            vs.timeout = affinity.timeout_seconds;
        }
        let desired = DesiredService {
            vs,
            reals: reals.clone(),
            bind,
            owner: port.name.clone(),
        };
        // Two Services claiming one address and port (externalIPs may collide): the first
        // by name keeps it, deterministically.
        plan.services.entry(desired.vs.key()).or_insert(desired);
    };
    add(port.cluster_ip, port.port, &internal, true);
    table.cluster_ip(port.cluster_ip, proto, port.port);
    table.no_endpoints(port.cluster_ip, proto, port.port, &internal, cat.has_any);
    table.service_port(port.cluster_ip, proto, port.port);

    let frontends = port.external_ips.iter().chain(&port.load_balancer_ips);
    for &ip in frontends {
        add(ip, port.port, &external, true);
        table.service_port(ip, proto, port.port);
        table.no_endpoints(ip, proto, port.port, &external, cat.has_any);
        if !port.external_policy_local {
            table.masq_external(ip, proto, port.port);
        }
    }
    for &ip in &port.load_balancer_ips {
        if port.health_check_node_port != 0 {
            table.service_port(ip, Protocol::Tcp, port.health_check_node_port);
        }
        if !port.load_balancer_source_ranges.is_empty() {
            let node_ip = state.node.ip(port.family);
            let mut allowed: Vec<IpNet> = port
                .load_balancer_source_ranges
                .iter()
                .map(IpNet::trunc)
                .collect();
            // As upstream: ranges that hold the node IP also admit the load balancer IPs
            // themselves (hairpin traffic through the load balancer).
            if node_ip.is_some_and(|n| allowed.iter().any(|r| r.contains(&n))) {
                allowed.extend(port.load_balancer_ips.iter().map(|&lb| IpNet::from(lb)));
            }
            table.firewall(ip, proto, port.port, &allowed);
        }
    }
    if port.node_port != 0 {
        for &ip in node_port_ips {
            add(ip, port.node_port, &external, false);
            table.no_endpoints(ip, proto, port.node_port, &external, cat.has_any);
            if !port.external_policy_local {
                table.masq_external(ip, proto, port.node_port);
            }
        }
    }
    for ep in cat.all_reachable.iter().filter(|ep| ep.is_local) {
        table.hairpin(ep, proto);
    }
}

// Names in the companion table.
pub(crate) const CLUSTER_IPS: &str = "cluster-ips";
pub(crate) const MASQ_EXTERNAL: &str = "masq-external";
pub(crate) const SERVICE_IPS: &str = "service-ips";
pub(crate) const SERVICE_PORTS: &str = "service-ports";
pub(crate) const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub(crate) const FIREWALL: &str = "firewall";
pub(crate) const FIREWALL_ALLOW: &str = "firewall-allow";
pub(crate) const HAIRPIN: &str = "hairpin";
const FILTER_INPUT: &str = "filter-input";
const FILTER_OUTPUT: &str = "filter-output";
const SERVICE_CHECKS: &str = "service-checks";
const FIREWALL_CHECK: &str = "firewall-check";
const SERVICE_IP_CHECK: &str = "service-ip-check";
const REJECT_CHAIN: &str = "reject-chain";
const NAT_PREROUTING: &str = "nat-prerouting";
const NAT_OUTPUT: &str = "nat-output";
const NAT_POSTROUTING: &str = "nat-postrouting";
const SERVICES: &str = "services";
const MARK_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";

/// The companion table of one family being built.
struct Companion {
    family: Family,
    table: TableState,
}

/// `ip daddr . meta l4proto . th dport`, the key of most sets.
fn dst_key(family: Family) -> String {
    format!("{family} daddr . meta l4proto . th dport")
}

impl Companion {
    fn new(family: IpFamily, options: &ProxyOptions) -> Self {
        let family = nft_family(family);
        let ip = family.as_str();
        let addr = family.addr_type();
        let triple = format!("{addr} . inet_proto . inet_service");
        let mut t = TableState {
            comment: Some("rules for kube-proxy IPVS mode".into()),
            ..TableState::default()
        };
        let sets: [(&str, String, Option<&str>, bool, &str); 8] = [
            (
                CLUSTER_IPS,
                triple.clone(),
                None,
                false,
                "ClusterIP, protocol and port of every service",
            ),
            (
                MASQ_EXTERNAL,
                triple.clone(),
                None,
                false,
                "external frontends with externalTrafficPolicy Cluster",
            ),
            (
                SERVICE_IPS,
                addr.into(),
                None,
                false,
                "addresses on kube-ipvs0",
            ),
            (
                SERVICE_PORTS,
                triple.clone(),
                None,
                false,
                "ports served on kube-ipvs0 addresses",
            ),
            (
                NO_ENDPOINT_SERVICES,
                triple.clone(),
                Some("verdict"),
                false,
                "frontends without usable endpoints",
            ),
            (
                FIREWALL,
                triple.clone(),
                None,
                false,
                "load balancer frontends with source ranges",
            ),
            (
                FIREWALL_ALLOW,
                format!("{triple} . {addr}"),
                None,
                true,
                "allowed sources of load balancer frontends",
            ),
            (
                HAIRPIN,
                format!("{triple} . {addr}"),
                None,
                false,
                "local endpoints reaching themselves through a service",
            ),
        ];
        for (name, key_type, value_type, interval, comment) in sets {
            let def = Set {
                name: name.into(),
                key_syntax: KeySyntax::Type,
                key_type,
                value_type: value_type.map(str::to_string),
                flags: if interval {
                    vec![SetFlag::Interval]
                } else {
                    Vec::new()
                },
                timeout: None,
                comment: Some(comment.into()),
            };
            t.sets.insert(
                name.into(),
                SetState {
                    def,
                    elements: BTreeMap::new(),
                },
            );
        }
        let bases = [
            (FILTER_INPUT, ChainType::Filter, Hook::Input, -110),
            (FILTER_OUTPUT, ChainType::Filter, Hook::Output, -110),
            (NAT_PREROUTING, ChainType::Nat, Hook::Prerouting, -100),
            (NAT_OUTPUT, ChainType::Nat, Hook::Output, -100),
            (NAT_POSTROUTING, ChainType::Nat, Hook::Postrouting, 100),
        ];
        for (name, chain_type, hook, priority) in bases {
            t.chains.insert(
                name.into(),
                ChainState {
                    base: Some(BaseChain {
                        chain_type,
                        hook,
                        priority,
                    }),
                    ..ChainState::default()
                },
            );
        }
        let key = dst_key(family);
        let mark = format!("0x{:08x}", options.masquerade_mark());
        let mut rules: Vec<(&str, String)> = vec![
            (FILTER_INPUT, format!("ct state new jump {SERVICE_CHECKS}")),
            (FILTER_OUTPUT, format!("ct state new jump {SERVICE_CHECKS}")),
            (
                SERVICE_CHECKS,
                format!("{key} vmap @{NO_ENDPOINT_SERVICES}"),
            ),
            (
                SERVICE_CHECKS,
                format!("{key} @{FIREWALL} jump {FIREWALL_CHECK}"),
            ),
            (
                SERVICE_CHECKS,
                format!("{ip} daddr @{SERVICE_IPS} jump {SERVICE_IP_CHECK}"),
            ),
            (
                FIREWALL_CHECK,
                format!("{key} . {ip} saddr @{FIREWALL_ALLOW} return"),
            ),
            (FIREWALL_CHECK, "drop".into()),
            (SERVICE_IP_CHECK, format!("{key} @{SERVICE_PORTS} return")),
            (SERVICE_IP_CHECK, "reject".into()),
            (REJECT_CHAIN, "reject".into()),
            (NAT_PREROUTING, format!("jump {SERVICES}")),
            (NAT_OUTPUT, format!("jump {SERVICES}")),
            (NAT_POSTROUTING, format!("jump {MASQUERADING}")),
        ];
        let to_cluster_ip = format!("{key} @{CLUSTER_IPS} jump {MARK_MASQ}");
        if options.masquerade_all {
            rules.push((SERVICES, to_cluster_ip));
        } else if let Some(not_local) = not_local_match(&options.local_detector, family) {
            rules.push((SERVICES, format!("{not_local} {to_cluster_ip}")));
        }
        // Node-originated connections to a VIP leave with the VIP (bound to kube-ipvs0) as
        // their source: masquerade them, as upstream's `src,dst` match does.
        rules.push((
            SERVICES,
            format!("{ip} saddr . meta l4proto . th dport @{CLUSTER_IPS} jump {MARK_MASQ}"),
        ));
        rules.push((SERVICES, format!("{key} @{MASQ_EXTERNAL} jump {MARK_MASQ}")));
        rules.push((MARK_MASQ, format!("meta mark set meta mark | {mark}")));
        // IPVS NAT does not mark the flow `ct status dnat`: hairpin traffic is recognized
        // after IPVS by the endpoint reaching itself.
        rules.push((
            MASQUERADING,
            format!("{key} . {ip} saddr @{HAIRPIN} masquerade fully-random"),
        ));
        rules.push((
            MASQUERADING,
            format!("meta mark & {mark} == 0x00000000 return"),
        ));
        rules.push((MASQUERADING, format!("meta mark set meta mark ^ {mark}")));
        rules.push((MASQUERADING, "masquerade fully-random".into()));
        for (chain, rule) in rules {
            t.chains.entry(chain.into()).or_default().rules.push(rule);
        }
        Companion { family, table: t }
    }

    fn element(&mut self, set: &str, key: String, value: Option<String>) {
        let elements = &mut self.table.sets.get_mut(set).expect("planned set").elements;
        elements.entry(key).or_insert(ElementValue {
            value,
            comment: None,
        });
    }

    fn cluster_ip(&mut self, ip: IpAddr, proto: Protocol, port: u16) {
        self.element(CLUSTER_IPS, triple(ip, proto, port), None);
    }

    fn masq_external(&mut self, ip: IpAddr, proto: Protocol, port: u16) {
        self.element(MASQ_EXTERNAL, triple(ip, proto, port), None);
    }

    /// A frontend on a `kube-ipvs0` address.
    fn service_port(&mut self, ip: IpAddr, proto: Protocol, port: u16) {
        self.element(SERVICE_IPS, ip.to_string(), None);
        self.element(SERVICE_PORTS, triple(ip, proto, port), None);
    }

    /// Without real servers, new connections are rejected (no endpoints anywhere) or
    /// dropped (endpoints exist, none this traffic policy may use), as in nftables mode.
    fn no_endpoints(
        &mut self,
        ip: IpAddr,
        proto: Protocol,
        port: u16,
        reals: &[RealServer],
        has_any: bool,
    ) {
        if reals.is_empty() {
            let verdict = if has_any {
                "drop".to_string()
            } else {
                format!("goto {REJECT_CHAIN}")
            };
            self.element(NO_ENDPOINT_SERVICES, triple(ip, proto, port), Some(verdict));
        }
    }

    fn firewall(&mut self, ip: IpAddr, proto: Protocol, port: u16, allowed: &[IpNet]) {
        self.element(FIREWALL, triple(ip, proto, port), None);
        for net in allowed {
            let key = format!("{} . {}", triple(ip, proto, port), net_text(net));
            self.element(FIREWALL_ALLOW, key, None);
        }
    }

    fn hairpin(&mut self, ep: &Endpoint, proto: Protocol) {
        let key = format!("{} . {}", triple(ep.ip, proto, ep.port), ep.ip);
        self.element(HAIRPIN, key, None);
    }

    fn finish(self) -> TableState {
        let _ = self.family;
        self.table
    }
}

/// `addr . proto . port` as nft prints an element key.
fn triple(ip: IpAddr, proto: Protocol, port: u16) -> String {
    format!("{ip} . {} . {port}", proto.as_str())
}

/// A CIDR as nft prints it: a host prefix is a bare address.
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The nft match for "not from a local pod", as nftables mode spells it.
fn not_local_match(detector: &LocalDetector, family: Family) -> Option<String> {
    let model_family = match family {
        Family::Ip => IpFamily::V4,
        Family::Ip6 => IpFamily::V6,
    };
    match detector {
        LocalDetector::None => None,
        LocalDetector::BridgeInterface(name) => Some(format!("iifname != \"{name}\"")),
        LocalDetector::InterfaceNamePrefix(prefix) => Some(format!("iifname != \"{prefix}*\"")),
        LocalDetector::Cidrs(cidrs) => {
            let mine: Vec<IpNet> = cidrs
                .iter()
                .map(IpNet::trunc)
                .filter(|c| IpFamily::of_net(c) == model_family)
                .collect();
            let merged = IpNet::aggregate(&mine);
            let items: Vec<String> = merged.iter().map(net_text).collect();
            match items.as_slice() {
                [] => None,
                [one] => Some(format!("{family} saddr != {one}")),
                _ => Some(format!("{family} saddr != {{ {} }}", items.join(", "))),
            }
        }
    }
}
