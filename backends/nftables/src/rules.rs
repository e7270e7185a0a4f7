//! What the table should hold, as upstream's nftables proxier builds it: the fixed
//! skeleton (base chains, dispatch maps, helper chains) and one [`Fragment`] per service
//! port.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kube_proxy_model::{Endpoint, IpFamily, LocalDetector, ProxyOptions, Scheduling, ServiceEntry};

use crate::addresses::NodePortIps;
use crate::ir::{rule_text, BaseChain, ChainType, Family, Hook, KeySyntax, Set, SetFlag};
use crate::names::{
    EndpointNames, ServiceChains, CLUSTER_IPS, CLUSTER_IPS_CHECK, FILTER_FORWARD, FILTER_INPUT,
    FILTER_OUTPUT, FILTER_OUTPUT_POST_DNAT, FILTER_PREROUTING, FIREWALL_CHECK, FIREWALL_IPS,
    MARK_MASQ, MASQUERADING, NAT_OUTPUT, NAT_POSTROUTING, NAT_PREROUTING, NODEPORT_ENDPOINTS_CHECK,
    NODEPORT_IPS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, REJECT_CHAIN, SERVICES,
    SERVICE_ENDPOINTS_CHECK, SERVICE_IPS, SERVICE_NODEPORTS,
};
use crate::table::{ChainState, ElementValue, SetState, TableState};

/// Everything the rules of one family depend on besides the services themselves.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub family: Family,
    /// Masquerade every ClusterIP connection.
    pub masquerade_all: bool,
    /// The masquerade bit as nft prints it (`0x00004000`).
    pub mark: String,
    pub detector: Option<Detector>,
    /// The node's primary IP of this family (`loadBalancerSourceRanges` that contain it
    /// also admit traffic from the load balancer IPs themselves).
    pub node_ip: Option<IpAddr>,
    pub scheduling: Scheduling,
}

/// nft matches for "from a local pod" and its negation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detector {
    pub if_local: String,
    pub if_not_local: String,
}

impl Context {
    pub fn new(opts: &ProxyOptions, family: Family, node_ip: Option<IpAddr>) -> Self {
        Context {
            family,
            masquerade_all: opts.masquerade_all,
            mark: format!("0x{:08x}", opts.masquerade_mark()),
            detector: detector(&opts.local_detector, family),
            node_ip,
            scheduling: opts.scheduling,
        }
    }

    fn ip(&self) -> &'static str {
        self.family.as_str()
    }

    fn addr_type(&self) -> &'static str {
        self.family.addr_type()
    }
}

/// The model's family for a table family.
pub(crate) fn model_family(family: Family) -> IpFamily {
    match family {
        Family::Ip => IpFamily::V4,
        Family::Ip6 => IpFamily::V6,
    }
}

fn detector(d: &LocalDetector, family: Family) -> Option<Detector> {
    let iif = |name: String| Detector {
        if_local: format!("iifname {}", crate::ir::quote(&name)),
        if_not_local: format!("iifname != {}", crate::ir::quote(&name)),
    };
    match d {
        LocalDetector::None => None,
        LocalDetector::BridgeInterface(name) => Some(iif(name.clone())),
        LocalDetector::InterfaceNamePrefix(prefix) => Some(iif(format!("{prefix}*"))),
        LocalDetector::Cidrs(cidrs) => {
            let mine: Vec<IpNet> = cidrs
                .iter()
                .copied()
                .filter(|c| IpFamily::of_net(c) == model_family(family))
                .collect();
            if mine.is_empty() {
                return None;
            }
            let set = if mine.len() == 1 {
                net_text(&mine[0].trunc())
            } else {
                anonymous_set(&mine)
            };
            Some(Detector {
                if_local: format!("{} saddr {set}", family.as_str()),
                if_not_local: format!("{} saddr != {set}", family.as_str()),
            })
        }
    }
}

/// A CIDR as nft prints it: a host prefix is a bare address.
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// `{ a, b }`, merged and sorted as nft prints anonymous interval sets; a single entry
/// is printed bare.
fn anonymous_set(nets: &[IpNet]) -> String {
    let merged = IpNet::aggregate(&nets.to_vec());
    let items: Vec<String> = merged.iter().map(net_text).collect();
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

const TABLE_COMMENT: &str = "rules for kube-proxy";

/// The comment of the table itself.
pub(crate) fn table_comment() -> Option<String> {
    Some(TABLE_COMMENT.to_string())
}

/// The base chains, hooked at upstream's priorities: filtering sees pre-DNAT addresses.
const BASE_CHAINS: [(&str, ChainType, Hook, i32); 8] = [
    (FILTER_PREROUTING, ChainType::Filter, Hook::Prerouting, -110),
    (FILTER_INPUT, ChainType::Filter, Hook::Input, -110),
    (FILTER_FORWARD, ChainType::Filter, Hook::Forward, -110),
    (FILTER_OUTPUT, ChainType::Filter, Hook::Output, -110),
    (
        FILTER_OUTPUT_POST_DNAT,
        ChainType::Filter,
        Hook::Output,
        -90,
    ),
    (NAT_PREROUTING, ChainType::Nat, Hook::Prerouting, -100),
    (NAT_OUTPUT, ChainType::Nat, Hook::Output, -100),
    (NAT_POSTROUTING, ChainType::Nat, Hook::Postrouting, 100),
];

/// Jumps from base chains to the top-level regular chains, in upstream's order. Reject is
/// only valid in input, forward and output on older kernels, hence the split checks.
const JUMPS: [(&str, &str, &str); 11] = [
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new "),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new "),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new "),
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new "),
    (FIREWALL_CHECK, FILTER_PREROUTING, "ct state new "),
    (FIREWALL_CHECK, FILTER_OUTPUT, "ct state new "),
    (SERVICES, NAT_OUTPUT, ""),
    (SERVICES, NAT_PREROUTING, ""),
    (MASQUERADING, NAT_POSTROUTING, ""),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new "),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT_POST_DNAT, "ct state new "),
];

/// The skeleton of the table: everything but the per-service chains and map elements
/// (except `nodeport-ips`, which depends on the node alone).
pub(crate) fn skeleton(
    ctx: &Context,
    node_ports: &NodePortIps,
    service_cidrs: &[IpNet],
) -> TableState {
    let mut t = TableState {
        comment: table_comment(),
        ..TableState::default()
    };
    for (name, chain_type, hook, priority) in BASE_CHAINS {
        let base = Some(BaseChain {
            chain_type,
            hook,
            priority,
        });
        t.chains.insert(
            name.to_string(),
            ChainState {
                base,
                ..ChainState::default()
            },
        );
    }
    for (dst, src, extra) in JUMPS {
        t.chains.entry(dst.to_string()).or_default();
        push(&mut t, src, format!("{extra}jump {dst}"));
    }
    masquerade_chains(ctx, &mut t);
    cluster_ip_checks(ctx, &mut t, service_cidrs);
    no_endpoint_handling(ctx, &mut t, node_ports);
    dispatch(ctx, &mut t, node_ports);
    t
}

fn push(t: &mut TableState, chain: &str, rule: String) {
    t.chains
        .entry(chain.to_string())
        .or_default()
        .rules
        .push(rule);
}

fn add_set(
    t: &mut TableState,
    name: &str,
    key_type: String,
    value_type: Option<&str>,
    comment: &str,
) {
    let def = Set {
        name: name.to_string(),
        key_syntax: KeySyntax::Type,
        key_type,
        value_type: value_type.map(str::to_string),
        flags: Vec::new(),
        timeout: None,
        comment: Some(comment.to_string()),
    };
    t.sets.insert(
        name.to_string(),
        SetState {
            def,
            elements: BTreeMap::new(),
        },
    );
}

fn masquerade_chains(ctx: &Context, t: &mut TableState) {
    let mark = &ctx.mark;
    push(t, MARK_MASQ, format!("meta mark set meta mark | {mark}"));
    push(
        t,
        MASQUERADING,
        format!("meta mark & {mark} == 0x00000000 return"),
    );
    push(t, MASQUERADING, format!("meta mark set meta mark ^ {mark}"));
    push(t, MASQUERADING, "masquerade fully-random".into());
}

fn cluster_ip_checks(ctx: &Context, t: &mut TableState, service_cidrs: &[IpNet]) {
    let ip = ctx.ip();
    add_set(
        t,
        CLUSTER_IPS,
        ctx.addr_type().into(),
        None,
        "Active ClusterIPs",
    );
    let reject = rule_text(
        &format!("{ip} daddr @{CLUSTER_IPS} reject"),
        Some("Reject traffic to invalid ports of ClusterIPs"),
    );
    push(t, CLUSTER_IPS_CHECK, reject);
    let mine: Vec<IpNet> = service_cidrs
        .iter()
        .copied()
        .filter(|c| IpFamily::of_net(c) == model_family(ctx.family))
        .collect();
    if !mine.is_empty() {
        let drop = format!("{ip} daddr {} drop", anonymous_set(&mine));
        push(
            t,
            CLUSTER_IPS_CHECK,
            rule_text(&drop, Some("Drop traffic to unallocated ClusterIPs")),
        );
    }
}

/// The destination match of NodePort traffic, before `meta l4proto . th dport`.
fn node_port_match(ctx: &Context, node_ports: &NodePortIps, with_fib: bool) -> String {
    let ip = ctx.ip();
    match node_ports {
        NodePortIps::Only(_) => format!("{ip} daddr @{NODEPORT_IPS}"),
        NodePortIps::All => {
            let no_localhost = match ctx.family {
                Family::Ip => "ip daddr != 127.0.0.0/8",
                Family::Ip6 => "ip6 daddr != ::1",
            };
            if with_fib {
                format!("fib daddr type local {no_localhost}")
            } else {
                no_localhost.to_string()
            }
        }
    }
}

/// The elements of `nodeport-ips` for `ips`.
pub(crate) fn node_port_elements(ips: &[IpAddr]) -> BTreeMap<String, ElementValue> {
    ips.iter()
        .map(|a| (a.to_string(), ElementValue::default()))
        .collect()
}

fn no_endpoint_handling(ctx: &Context, t: &mut TableState, node_ports: &NodePortIps) {
    let (ip, addr) = (ctx.ip(), ctx.addr_type());
    if let NodePortIps::Only(ips) = node_ports {
        add_set(
            t,
            NODEPORT_IPS,
            addr.into(),
            None,
            "IPs that accept NodePort traffic",
        );
        t.sets.get_mut(NODEPORT_IPS).expect("just added").elements = node_port_elements(ips);
    }
    add_set(
        t,
        NO_ENDPOINT_SERVICES,
        format!("{addr} . inet_proto . inet_service"),
        Some("verdict"),
        "vmap to drop or reject packets to services with no endpoints",
    );
    add_set(
        t,
        NO_ENDPOINT_NODEPORTS,
        "inet_proto . inet_service".into(),
        Some("verdict"),
        "vmap to drop or reject packets to service nodeports with no endpoints",
    );
    let reject = t.chains.entry(REJECT_CHAIN.to_string()).or_default();
    reject.comment = Some("helper for @no-endpoint-services / @no-endpoint-nodeports".into());
    reject.rules.push("reject".into());
    push(
        t,
        SERVICE_ENDPOINTS_CHECK,
        format!("{ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
    );
    let np = node_port_match(ctx, node_ports, false);
    push(
        t,
        NODEPORT_ENDPOINTS_CHECK,
        format!("{np} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
    );
}

fn dispatch(ctx: &Context, t: &mut TableState, node_ports: &NodePortIps) {
    let (ip, addr) = (ctx.ip(), ctx.addr_type());
    let concat = format!("{addr} . inet_proto . inet_service");
    add_set(
        t,
        FIREWALL_IPS,
        concat.clone(),
        Some("verdict"),
        "destinations that are subject to LoadBalancerSourceRanges",
    );
    push(
        t,
        FIREWALL_CHECK,
        format!("{ip} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"),
    );
    add_set(
        t,
        SERVICE_IPS,
        concat,
        Some("verdict"),
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    );
    add_set(
        t,
        SERVICE_NODEPORTS,
        "inet_proto . inet_service".into(),
        Some("verdict"),
        "NodePort traffic",
    );
    push(
        t,
        SERVICES,
        format!("{ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
    );
    let np = node_port_match(ctx, node_ports, true);
    push(
        t,
        SERVICES,
        format!("{np} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
    );
}

/// One element a service port contributes to a shared set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FragmentElement {
    pub container: &'static str,
    pub key: String,
    pub value: ElementValue,
}

/// Everything one service port contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fragment {
    /// Its own chains (all service chains: their names contain `/`).
    pub chains: BTreeMap<String, ChainState>,
    /// Its own sets: affinity sets, and the maps its chains pick endpoints from.
    pub sets: Vec<SetState>,
    /// Its elements in the shared sets and maps.
    pub elements: Vec<FragmentElement>,
}

impl Fragment {
    fn element(
        &mut self,
        container: &'static str,
        key: String,
        value: &str,
        comment: Option<&str>,
    ) {
        let value = ElementValue {
            value: (container != CLUSTER_IPS).then(|| value.to_string()),
            comment: comment.map(str::to_string),
        };
        self.elements.push(FragmentElement {
            container,
            key,
            value,
        });
    }

    fn rule(&mut self, chain: &str, rule: String) {
        self.chains
            .entry(chain.to_string())
            .or_default()
            .rules
            .push(rule);
    }
}

/// How a service port's traffic is routed, decided from its policies and endpoints as
/// upstream's `syncProxyRules` does.
struct Plan<'a> {
    entry: &'a ServiceEntry,
    chains: ServiceChains,
    proto: &'static str,
    has_endpoints: bool,
    has_internal: bool,
    has_external: bool,
    uses_cluster_chain: bool,
    uses_local_chain: bool,
    uses_external_chain: bool,
    uses_firewall: bool,
}

impl<'a> Plan<'a> {
    fn new(entry: &'a ServiceEntry) -> Self {
        let port = &entry.port;
        let cat = &entry.categorized;
        let has_endpoints = cat.has_any;
        Plan {
            entry,
            chains: ServiceChains::new(&port.name),
            proto: port.name.protocol.as_str(),
            has_endpoints,
            has_internal: has_endpoints && !(port.internal_policy_local && cat.local.is_empty()),
            has_external: has_endpoints && !(port.external_policy_local && cat.local.is_empty()),
            uses_cluster_chain: !cat.cluster.is_empty() && port.uses_cluster_endpoints(),
            uses_local_chain: !cat.local.is_empty() && port.uses_local_endpoints(),
            uses_external_chain: has_endpoints && port.externally_accessible(),
            uses_firewall: !port.load_balancer_ips.is_empty()
                && !port.load_balancer_source_ranges.is_empty(),
        }
    }

    fn internal_chain(&self) -> &str {
        if self.entry.port.internal_policy_local {
            &self.chains.local
        } else {
            &self.chains.cluster
        }
    }

    fn external_policy_chain(&self) -> &str {
        if self.entry.port.external_policy_local {
            &self.chains.local
        } else {
            &self.chains.cluster
        }
    }

    /// Verdict for traffic that finds no usable endpoint: reject when the service has
    /// none anywhere, drop when only the Local-policy ones are missing.
    fn no_endpoint_verdict(&self) -> &'static str {
        if self.has_endpoints {
            "drop"
        } else {
            "goto reject-chain"
        }
    }

    fn key(&self, ip: &IpAddr, port: u16) -> String {
        format!("{ip} . {} . {port}", self.proto)
    }
}

/// The fragment of one service port.
pub(crate) fn service_fragment(ctx: &Context, entry: &ServiceEntry) -> Fragment {
    let plan = Plan::new(entry);
    let mut f = Fragment::default();
    dispatch_elements(&plan, &mut f);
    internal_rules(ctx, &plan, &mut f);
    external_rules(ctx, &plan, &mut f);
    firewall_rules(ctx, &plan, &mut f);
    endpoint_rules(ctx, &plan, &mut f);
    f
}

fn dispatch_elements(plan: &Plan, f: &mut Fragment) {
    let port = &plan.entry.port;
    let name = port.name.to_string();
    let comment = Some(name.as_str());
    let external_goto = format!("goto {}", plan.chains.external);
    f.element(CLUSTER_IPS, port.cluster_ip.to_string(), "", None);
    let cluster_key = plan.key(&port.cluster_ip, port.port);
    if plan.has_internal {
        f.element(
            SERVICE_IPS,
            cluster_key,
            &format!("goto {}", plan.internal_chain()),
            None,
        );
    } else {
        f.element(
            NO_ENDPOINT_SERVICES,
            cluster_key,
            plan.no_endpoint_verdict(),
            comment,
        );
    }
    for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
        if plan.has_endpoints {
            f.element(SERVICE_IPS, plan.key(ip, port.port), &external_goto, None);
        }
        if !plan.has_external {
            f.element(
                NO_ENDPOINT_SERVICES,
                plan.key(ip, port.port),
                plan.no_endpoint_verdict(),
                comment,
            );
        }
    }
    if plan.uses_firewall {
        for ip in &port.load_balancer_ips {
            f.element(
                FIREWALL_IPS,
                plan.key(ip, port.port),
                &format!("goto {}", plan.chains.firewall),
                None,
            );
        }
    }
    if port.node_port != 0 {
        let key = format!("{} . {}", plan.proto, port.node_port);
        if plan.has_endpoints {
            f.element(SERVICE_NODEPORTS, key.clone(), &external_goto, None);
        }
        if !plan.has_external {
            f.element(
                NO_ENDPOINT_NODEPORTS,
                key,
                plan.no_endpoint_verdict(),
                comment,
            );
        }
    }
}

/// Masquerades ClusterIP traffic that does not come from a local pod (or all of it with
/// `masqueradeAll`): such traffic may come from off-node through a static route.
fn internal_rules(ctx: &Context, plan: &Plan, f: &mut Fragment) {
    if !plan.has_internal {
        return;
    }
    let port = &plan.entry.port;
    let dest = format!(
        "{} daddr {} {} dport {}",
        ctx.ip(),
        port.cluster_ip,
        plan.proto,
        port.port
    );
    let chain = plan.internal_chain().to_string();
    if ctx.masquerade_all {
        f.rule(&chain, format!("{dest} jump {MARK_MASQ}"));
    } else if let Some(d) = &ctx.detector {
        f.rule(
            &chain,
            format!("{dest} {} jump {MARK_MASQ}", d.if_not_local),
        );
    }
}

fn external_rules(ctx: &Context, plan: &Plan, f: &mut Fragment) {
    if !plan.uses_external_chain {
        return;
    }
    let ext = plan.chains.external.clone();
    f.chains.entry(ext.clone()).or_default();
    if !plan.entry.port.external_policy_local {
        // Endpoints may be on other nodes: masquerade so replies come back through us.
        f.rule(&ext, format!("jump {MARK_MASQ}"));
    } else if plan.uses_cluster_chain {
        // Pods and the node itself bypass Local policy, as if they had gone out to the
        // load balancer and come back; the node's traffic needs masquerade because its
        // source would be the service IP itself.
        let cluster = &plan.chains.cluster;
        if let Some(d) = &ctx.detector {
            f.rule(
                &ext,
                rule_text(
                    &format!("{} goto {cluster}", d.if_local),
                    Some("short-circuit pod traffic"),
                ),
            );
        }
        f.rule(
            &ext,
            rule_text(
                &format!("fib saddr type local jump {MARK_MASQ}"),
                Some("masquerade local traffic"),
            ),
        );
        f.rule(
            &ext,
            rule_text(
                &format!("fib saddr type local goto {cluster}"),
                Some("short-circuit local traffic"),
            ),
        );
    }
    if plan.has_external {
        f.rule(&ext, format!("goto {}", plan.external_policy_chain()));
    }
}

fn firewall_rules(ctx: &Context, plan: &Plan, f: &mut Fragment) {
    if !plan.uses_firewall {
        return;
    }
    let port = &plan.entry.port;
    let mut sources: Vec<IpNet> = port.load_balancer_source_ranges.clone();
    // A VIP-style load balancer IP is often local: the node's own requests to it then come
    // from the VIP itself and must be allowed when the node is.
    let allow_node = ctx
        .node_ip
        .is_some_and(|ip| sources.iter().any(|c| c.contains(&ip)));
    if allow_node {
        sources.extend(port.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    let rule = format!("{} saddr != {} drop", ctx.ip(), anonymous_set(&sources));
    f.rule(&plan.chains.firewall, rule);
}

fn endpoint_rules(ctx: &Context, plan: &Plan, f: &mut Fragment) {
    let entry = plan.entry;
    let affinity = entry.port.session_affinity;
    let ip = ctx.ip();
    // Hashing names is the costliest step of rendering: once per endpoint.
    let mut names = HashMap::with_capacity(entry.categorized.all_reachable.len());
    for ep in &entry.categorized.all_reachable {
        let n = EndpointNames::new(&entry.port.name, ep);
        if let Some(a) = affinity {
            f.sets.push(SetState {
                def: Set {
                    name: n.affinity_set.clone(),
                    key_syntax: KeySyntax::Type,
                    key_type: ctx.addr_type().into(),
                    value_type: None,
                    // The kernel adds `dynamic` by itself; declaring it avoids a mismatch.
                    flags: vec![SetFlag::Dynamic, SetFlag::Timeout],
                    timeout: Some(a.timeout_seconds),
                    comment: None,
                },
                elements: BTreeMap::new(),
            });
        }
        f.rule(&n.chain, format!("{ip} saddr {} jump {MARK_MASQ}", ep.ip));
        if affinity.is_some() {
            f.rule(
                &n.chain,
                format!("update @{} {{ {ip} saddr }}", n.affinity_set),
            );
        }
        f.rule(
            &n.chain,
            format!("meta l4proto {} dnat to {}", plan.proto, ep.addr()),
        );
        names.insert(ep.addr(), n);
    }
    if plan.uses_cluster_chain {
        balance(
            ctx,
            plan,
            &plan.chains.cluster,
            &entry.categorized.cluster,
            &names,
            f,
        );
    }
    if plan.uses_local_chain {
        balance(
            ctx,
            plan,
            &plan.chains.local,
            &entry.categorized.local,
            &names,
            f,
        );
    }
}

/// Affinity lookups, then the load-balancing vmap over `endpoints`, which are all among
/// the reachable ones named in `names`.
fn balance(
    ctx: &Context,
    plan: &Plan,
    chain: &str,
    endpoints: &[Endpoint],
    names: &HashMap<SocketAddr, EndpointNames>,
    f: &mut Fragment,
) {
    let port = &plan.entry.port.name;
    let names: Vec<EndpointNames> = endpoints
        .iter()
        .map(|ep| {
            names
                .get(&ep.addr())
                .cloned()
                .unwrap_or_else(|| EndpointNames::new(port, ep))
        })
        .collect();
    f.chains.entry(chain.to_string()).or_default();
    if plan.entry.port.session_affinity.is_some() {
        for n in &names {
            f.rule(
                chain,
                format!("{} saddr @{} goto {}", ctx.ip(), n.affinity_set, n.chain),
            );
        }
    }
    let mode = match ctx.scheduling {
        Scheduling::RoundRobin => "inc",
        Scheduling::Random => "random",
    };
    f.rule(
        chain,
        format!("numgen {mode} mod {} vmap @{chain}", names.len()),
    );
    f.sets.push(endpoint_map(chain, &names));
}

/// The map a load-balancing chain picks its endpoint chain from, named after the chain.
///
/// Upstream writes it as an anonymous map in the rule. Every anonymous set gets a
/// generated name (`__map%d`), and the kernel (most likely) finds a free one by scanning
/// all the table's sets: loading 5k Services that way took 57 s, with named maps 5 s.
fn endpoint_map(chain: &str, endpoints: &[EndpointNames]) -> SetState {
    let elements = endpoints
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let value = ElementValue {
                value: Some(format!("goto {}", n.chain)),
                comment: None,
            };
            (i.to_string(), value)
        })
        .collect();
    SetState {
        def: Set {
            name: chain.to_string(),
            key_syntax: KeySyntax::Typeof,
            key_type: "numgen inc mod 1".into(),
            value_type: Some("verdict".into()),
            flags: Vec::new(),
            timeout: None,
            comment: None,
        },
        elements,
    }
}
