//! The rules of iptables mode, as upstream's `syncProxyRules` writes them: pure functions
//! from the model to [`RestoreInput`] sections.

use std::net::IpAddr;

use ipnet::IpNet;
use kube_proxy_model::{
    Endpoint, IpFamily, LocalDetector, ProxyOptions, Scheduling, ServiceEntry, ServicePort,
};
use kube_proxy_nftables::addresses::NodePortIps;

use crate::names::*;
use crate::restore::{comment, Args, RestoreInput, Table, TableInput};

/// Above this many endpoints (of one family), rules carry fewer comments, as upstream's
/// `largeClusterEndpointsThreshold`: restore input shrinks by a third.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Everything the rules of one family depend on besides the services.
#[derive(Debug, Clone)]
pub struct Context {
    pub family: IpFamily,
    pub masquerade_all: bool,
    /// The mark bit as upstream prints it (`%#08x`: `0x004000`).
    pub mark: String,
    pub detector: Option<Detector>,
    pub scheduling: Scheduling,
    pub node_ip: Option<IpAddr>,
    pub node_ports: NodePortIps,
    /// NodePorts answer on 127.0.0.0/8 (IPv4 with `iptables.localhostNodePorts`).
    pub localhost_node_ports: bool,
    /// `nf_conntrack_tcp_be_liberal` is 1: no INVALID-drop rule is needed.
    pub tcp_be_liberal: bool,
    /// Leave the per-endpoint comments out (upstream's large cluster mode).
    pub large_cluster: bool,
}

impl Context {
    /// The context of `family` for `options`.
    pub fn new(options: &ProxyOptions, family: IpFamily, node_ip: Option<IpAddr>) -> Self {
        Context {
            family,
            masquerade_all: options.masquerade_all,
            mark: format!("{:#08x}", options.masquerade_mark()),
            detector: detector(&options.local_detector, family),
            scheduling: options.scheduling,
            node_ip,
            node_ports: NodePortIps::All,
            localhost_node_ports: false,
            tcp_be_liberal: false,
            large_cluster: false,
        }
    }
}

/// How rules tell pod traffic from other traffic (upstream's `LocalTrafficDetector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detector {
    pub if_local: Args,
    pub if_not_local: Args,
}

fn detector(d: &LocalDetector, family: IpFamily) -> Option<Detector> {
    let pair = |flag: &str, value: String| Detector {
        if_local: words(&[flag, &value]),
        if_not_local: words(&["!", flag, &value]),
    };
    match d {
        LocalDetector::None => None,
        LocalDetector::BridgeInterface(name) => Some(pair("-i", name.clone())),
        LocalDetector::InterfaceNamePrefix(prefix) => Some(pair("-i", format!("{prefix}+"))),
        // iptables negates only a single address; upstream takes one CIDR per family too.
        LocalDetector::Cidrs(cidrs) => cidrs
            .iter()
            .find(|c| IpFamily::of_net(c) == family)
            .map(|c| pair("-s", c.trunc().to_string())),
    }
}

fn words(w: &[&str]) -> Args {
    w.iter().map(|s| s.to_string()).collect()
}

/// The fixed chains of each table and their fixed rules; the services add theirs to them.
pub fn skeleton(ctx: &Context) -> RestoreInput {
    let mut input = RestoreInput::default();
    let filter = input.table(Table::Filter);
    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
        KUBE_FIREWALL,
    ] {
        filter.chain(chain);
    }
    let mark_match = format!("{0}/{0}", ctx.mark);
    if !ctx.tcp_be_liberal {
        // Out-of-window packets of a DNATed flow would otherwise reach the pod un-NATed
        // and be answered with a RST.
        filter.rule(
            KUBE_FORWARD,
            words(&["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]),
        );
    }
    filter.rule(
        KUBE_FORWARD,
        words(&[
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-m",
            "mark",
            "--mark",
            &mark_match,
            "-j",
            "ACCEPT",
        ]),
    );
    filter.rule(
        KUBE_FORWARD,
        words(&[
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding conntrack rule",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ]),
    );
    if ctx.localhost_node_ports {
        // route_localnet lets 127.0.0.0/8 be routed; only our DNATed flows may use that.
        filter.rule(
            KUBE_FIREWALL,
            words(&[
                "-m",
                "comment",
                "--comment",
                "block incoming localnet connections",
                "-d",
                "127.0.0.0/8",
                "!",
                "-s",
                "127.0.0.0/8",
                "-m",
                "conntrack",
                "!",
                "--ctstate",
                "RELATED,ESTABLISHED,DNAT",
                "-j",
                "DROP",
            ]),
        );
    }

    let nat = input.table(Table::Nat);
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        nat.chain(chain);
    }
    nat.rule(
        KUBE_POSTROUTING,
        words(&["-m", "mark", "!", "--mark", &mark_match, "-j", "RETURN"]),
    );
    // Clear the mark so that a packet that traverses the stack again is not re-masqueraded.
    nat.rule(
        KUBE_POSTROUTING,
        words(&["-j", "MARK", "--xor-mark", &ctx.mark]),
    );
    nat.rule(
        KUBE_POSTROUTING,
        words(&[
            "-m",
            "comment",
            "--comment",
            "kubernetes service traffic requiring SNAT",
            "-j",
            "MASQUERADE",
            "--random-fully",
        ]),
    );
    nat.rule(
        KUBE_MARK_MASQ,
        words(&["-j", "MARK", "--or-mark", &ctx.mark]),
    );
    input
}

/// Adds the `KUBE-PROXY-CANARY` chains: a rule in an otherwise unused chain of mangle,
/// filter and nat, so that both a deleted table and a flushed one (`iptables -t nat -F`)
/// show as a missing rule.
pub fn add_canaries(input: &mut RestoreInput) {
    if !input.tables.iter().any(|t| t.table == Table::Mangle) {
        input.tables.insert(0, TableInput::new(Table::Mangle));
    }
    for table in [Table::Mangle, Table::Filter, Table::Nat] {
        input.table(table).rule(KUBE_PROXY_CANARY, canary_rule());
    }
}

/// The rule every canary chain holds.
pub fn canary_rule() -> Args {
    words(&["-m", "comment", "--comment", "kube-proxy canary"])
}

/// The final rule of `KUBE-SERVICES`: the jump to `KUBE-NODEPORTS` for local destinations.
pub fn nodeports_jump(ctx: &Context, nat: &mut TableInput) {
    let prefix = words(&[
        "-m",
        "comment",
        "--comment",
        "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
    ]);
    let jump = words(&["-j", KUBE_NODEPORTS]);
    match &ctx.node_ports {
        NodePortIps::All => {
            let mut args = prefix;
            args.extend(words(&["-m", "addrtype", "--dst-type", "LOCAL"]));
            // Localhost NodePorts never work on IPv6, and on IPv4 only with route_localnet.
            match ctx.family {
                IpFamily::V6 => args.extend(words(&["!", "-d", "::1/128"])),
                IpFamily::V4 if !ctx.localhost_node_ports => {
                    args.extend(words(&["!", "-d", "127.0.0.0/8"]))
                }
                IpFamily::V4 => {}
            }
            args.extend(jump);
            nat.rule(KUBE_SERVICES, args);
        }
        NodePortIps::Only(ips) => {
            for ip in ips {
                let mut args = prefix.clone();
                args.extend(words(&["-d", &ip.to_string()]));
                args.extend(jump.clone());
                nat.rule(KUBE_SERVICES, args);
            }
        }
    }
}

/// What one service port contributes: rules in the shared chains of both tables, and its
/// own nat chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Rules of fixed chains: (table, chain, args).
    pub shared: Vec<(Table, &'static str, Args)>,
    /// The port's own nat chains with their rules.
    pub chains: Vec<(String, Vec<Args>)>,
}

/// The facts upstream's `syncProxyRules` derives for one service port.
struct Plan<'a> {
    entry: &'a ServiceEntry,
    names: ServiceChains,
    proto: &'static str,
    /// `ns/name:port`.
    label: String,
    has_endpoints: bool,
    has_internal: bool,
    has_external: bool,
    internal_chain: String,
    external_policy_chain: String,
    uses_fw: bool,
}

impl<'a> Plan<'a> {
    fn new(entry: &'a ServiceEntry) -> Self {
        let port = &entry.port;
        let cat = &entry.categorized;
        let names = ServiceChains::new(&port.name);
        let has_endpoints = cat.has_any;
        let (internal_chain, has_internal) = if port.internal_policy_local {
            (names.local.clone(), has_endpoints && !cat.local.is_empty())
        } else {
            (names.cluster.clone(), has_endpoints)
        };
        let (external_policy_chain, has_external) = if port.external_policy_local {
            (names.local.clone(), has_endpoints && !cat.local.is_empty())
        } else {
            (names.cluster.clone(), has_endpoints)
        };
        Plan {
            entry,
            proto: port.name.protocol.as_str(),
            label: comment(&port.name.to_string()),
            uses_fw: has_endpoints
                && !port.load_balancer_ips.is_empty()
                && !port.load_balancer_source_ranges.is_empty(),
            names,
            has_endpoints,
            has_internal,
            has_external,
            internal_chain,
            external_policy_chain,
        }
    }

    fn port(&self) -> &ServicePort {
        &self.entry.port
    }

    /// `-m comment --comment "<label> <what>"`.
    fn comment(&self, what: &str) -> Args {
        words(&[
            "-m",
            "comment",
            "--comment",
            &comment(&format!("{} {what}", self.label)),
        ])
    }

    /// `-m tcp -p tcp [-d ip] --dport port`.
    fn dest(&self, ip: Option<IpAddr>, port: u16) -> Args {
        let mut args = words(&["-m", self.proto, "-p", self.proto]);
        if let Some(ip) = ip {
            args.extend(words(&["-d", &ip.to_string()]));
        }
        args.extend(words(&["--dport", &port.to_string()]));
        args
    }

    /// The filter verdict for traffic that has no endpoint to go to, if any: REJECT with
    /// no endpoints at all, DROP with none for this policy.
    fn filter_verdict(&self, has: bool) -> Option<(String, &'static str)> {
        if !self.has_endpoints {
            Some((self.with_label("has no endpoints"), "REJECT"))
        } else if !has {
            Some((self.with_label("has no local endpoints"), "DROP"))
        } else {
            None
        }
    }

    fn with_label(&self, what: &str) -> String {
        comment(&format!("{} {what}", self.label))
    }
}

/// Everything one service port contributes, in upstream's order.
pub fn service_rules(ctx: &Context, entry: &ServiceEntry) -> ServiceRules {
    let p = Plan::new(entry);
    let mut out = ServiceRules::default();
    capture_rules(&p, &mut out);
    own_chains(ctx, &p, &mut out);
    out
}

/// The rules in fixed chains that send the port's traffic to its chains or drop it.
fn capture_rules(p: &Plan, out: &mut ServiceRules) {
    let port = p.port();
    let shared = &mut out.shared;
    let ext_chain = &p.names.external;
    let lb_chain = if p.uses_fw {
        &p.names.firewall
    } else {
        ext_chain
    };
    let cluster_dest = p.dest(Some(port.cluster_ip), port.port);
    match p.filter_verdict(p.has_internal) {
        None => shared.push((
            Table::Nat,
            KUBE_SERVICES,
            jump(p.comment("cluster IP"), &cluster_dest, &p.internal_chain),
        )),
        Some((text, verdict)) => shared.push((
            Table::Filter,
            KUBE_SERVICES,
            jump(
                words(&["-m", "comment", "--comment", &text]),
                &cluster_dest,
                verdict,
            ),
        )),
    }
    let external_verdict = p.filter_verdict(p.has_external);
    let drop = |dest: Args| {
        external_verdict.as_ref().map(|(text, verdict)| {
            (
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                jump(words(&["-m", "comment", "--comment", text]), &dest, verdict),
            )
        })
    };
    for ip in &port.external_ips {
        let dest = p.dest(Some(*ip), port.port);
        if p.has_endpoints {
            shared.push((
                Table::Nat,
                KUBE_SERVICES,
                jump(p.comment("external IP"), &dest, ext_chain),
            ));
        }
        shared.extend(drop(dest));
    }
    for ip in &port.load_balancer_ips {
        let dest = p.dest(Some(*ip), port.port);
        if p.has_endpoints {
            shared.push((
                Table::Nat,
                KUBE_SERVICES,
                jump(p.comment("loadbalancer IP"), &dest, lb_chain),
            ));
        }
        if p.uses_fw {
            let what = format!("traffic not accepted by {}", p.names.firewall);
            shared.push((
                Table::Filter,
                KUBE_PROXY_FIREWALL,
                jump(p.comment(&what), &dest, "DROP"),
            ));
        }
    }
    for ip in &port.load_balancer_ips {
        shared.extend(drop(p.dest(Some(*ip), port.port)));
    }
    if port.node_port != 0 {
        let dest = p.dest(None, port.node_port);
        if p.has_endpoints {
            let label = words(&["-m", "comment", "--comment", &p.label]);
            shared.push((Table::Nat, KUBE_NODEPORTS, jump(label, &dest, ext_chain)));
        }
        let mut local = words(&["-m", "addrtype", "--dst-type", "LOCAL"]);
        local.extend(dest);
        shared.extend(drop(local));
    }
    if port.health_check_node_port != 0 {
        let dest = words(&[
            "-m",
            "tcp",
            "-p",
            "tcp",
            "--dport",
            &port.health_check_node_port.to_string(),
        ]);
        shared.push((
            Table::Filter,
            KUBE_NODEPORTS,
            jump(p.comment("health check node port"), &dest, "ACCEPT"),
        ));
    }
}

/// `prefix ++ dest ++ -j target`.
fn jump(mut prefix: Args, dest: &[String], target: &str) -> Args {
    prefix.extend_from_slice(dest);
    prefix.extend(words(&["-j", target]));
    prefix
}

/// The port's own chains: KUBE-EXT, KUBE-FW, KUBE-SVC, KUBE-SVL and KUBE-SEP.
fn own_chains(ctx: &Context, p: &Plan, out: &mut ServiceRules) {
    let port = p.port();
    let cat = &p.entry.categorized;
    let mut chains: Vec<(String, Vec<Args>)> = Vec::new();
    let mut internal_masq = Vec::new();
    if p.has_internal {
        let mut args = p.comment("cluster IP");
        args.extend(p.dest(Some(port.cluster_ip), port.port));
        if ctx.masquerade_all {
            internal_masq.push(jump(args, &[], KUBE_MARK_MASQ));
        } else if let Some(d) = &ctx.detector {
            // Off-cluster clients may route the service range to any node, which then
            // forwards to a pod elsewhere: the reply must come back through this node.
            internal_masq.push(jump(args, &d.if_not_local, KUBE_MARK_MASQ));
        }
    }
    if p.has_endpoints && port.externally_accessible() {
        chains.push((p.names.external.clone(), external_chain(ctx, p)));
    }
    if p.uses_fw {
        chains.push((p.names.firewall.clone(), firewall_chain(ctx, p)));
    }
    let policy_chains = [
        (
            &p.names.cluster,
            &cat.cluster,
            port.uses_cluster_endpoints(),
        ),
        (&p.names.local, &cat.local, port.uses_local_endpoints()),
    ];
    for (name, endpoints, used) in policy_chains {
        if !used || endpoints.is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        if *name == p.internal_chain {
            rules.append(&mut internal_masq);
        }
        rules.extend(endpoint_selection(ctx, p, endpoints));
        chains.push((name.clone(), rules));
    }
    for ep in &cat.all_reachable {
        chains.push((endpoint_chain(&port.name, ep), endpoint_rules(ctx, p, ep)));
    }
    out.chains = chains;
}

/// KUBE-EXT: masquerade (Cluster policy) or the short-circuits of Local policy, then the
/// policy chain.
fn external_chain(ctx: &Context, p: &Plan) -> Vec<Args> {
    let mut rules = Vec::new();
    let cluster = &p.names.cluster;
    if !p.port().external_policy_local {
        rules.push(jump(
            words(&[
                "-m",
                "comment",
                "--comment",
                &p.with_label_for("masquerade traffic for", "external destinations"),
            ]),
            &[],
            KUBE_MARK_MASQ,
        ));
    } else {
        if let Some(d) = &ctx.detector {
            // Pod traffic to an external address is treated as if it had gone out to the
            // load balancer and come back: neither policy applies.
            rules.push(jump(
                words(&[
                    "-m",
                    "comment",
                    "--comment",
                    &p.with_label_for("pod traffic for", "external destinations"),
                ]),
                &d.if_local,
                cluster,
            ));
        }
        let src_local = words(&["-m", "addrtype", "--src-type", "LOCAL"]);
        // The host's own connections pick a local address (often the LB IP itself) as
        // source: masquerade them and let them use any endpoint.
        rules.push(jump(
            words(&[
                "-m",
                "comment",
                "--comment",
                &p.with_label_for("masquerade LOCAL traffic for", "external destinations"),
            ]),
            &src_local,
            KUBE_MARK_MASQ,
        ));
        rules.push(jump(
            words(&[
                "-m",
                "comment",
                "--comment",
                &p.with_label_for("route LOCAL traffic for", "external destinations"),
            ]),
            &src_local,
            cluster,
        ));
    }
    if p.has_external {
        rules.push(words(&["-j", &p.external_policy_chain]));
    }
    rules
}

impl Plan<'_> {
    /// `"<before> <label> <after>"`, cut to a valid comment.
    fn with_label_for(&self, before: &str, after: &str) -> String {
        comment(&format!("{before} {} {after}", self.label))
    }
}

/// KUBE-FW: the allowed source ranges go on to KUBE-EXT; the rest falls through to the
/// DROP in KUBE-PROXY-FIREWALL (filter), which sees it un-DNATed.
fn firewall_chain(ctx: &Context, p: &Plan) -> Vec<Args> {
    let port = p.port();
    let prefix = p.comment("loadbalancer IP");
    let ext = &p.names.external;
    let mut rules: Vec<Args> = port
        .load_balancer_source_ranges
        .iter()
        .map(|cidr| jump(prefix.clone(), &words(&["-s", &cidr.to_string()]), ext))
        .collect();
    let allow_from_node = ctx.node_ip.is_some_and(|ip| {
        port.load_balancer_source_ranges
            .iter()
            .any(|c: &IpNet| c.contains(&ip))
    });
    if allow_from_node {
        // A VIP configured locally makes the node's own requests arrive with the VIP as
        // source; they must pass when the node itself is allowed.
        for ip in &port.load_balancer_ips {
            rules.push(jump(prefix.clone(), &words(&["-s", &ip.to_string()]), ext));
        }
    }
    rules.push(words(&[
        "-m",
        "comment",
        "--comment",
        &p.with_label_for("other traffic to", "will be dropped by KUBE-PROXY-FIREWALL"),
    ]));
    rules
}

/// The affinity checks, then one rule per endpoint choosing it round-robin or at random;
/// the last one always matches.
fn endpoint_selection(ctx: &Context, p: &Plan, endpoints: &[Endpoint]) -> Vec<Args> {
    let port = p.port();
    let label = |ep: &Endpoint| {
        if ctx.large_cluster {
            Vec::new()
        } else {
            words(&[
                "-m",
                "comment",
                "--comment",
                &comment(&format!("{} -> {ep}", p.label)),
            ])
        }
    };
    let mut rules = Vec::new();
    if let Some(affinity) = port.session_affinity {
        for ep in endpoints {
            let chain = endpoint_chain(&port.name, ep);
            let mut args = label(ep);
            args.extend(words(&[
                "-m",
                "recent",
                "--name",
                &chain,
                "--rcheck",
                "--seconds",
                &affinity.timeout_seconds.to_string(),
                "--reap",
                "-j",
                &chain,
            ]));
            rules.push(args);
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut args = label(ep);
        if i + 1 < n {
            args.extend(selection(ctx.scheduling, n - i));
        }
        args.extend(words(&["-j", &endpoint_chain(&port.name, ep)]));
        rules.push(args);
    }
    rules
}

/// The match that picks one of the `remaining` endpoints not yet passed over.
fn selection(scheduling: Scheduling, remaining: usize) -> Args {
    match scheduling {
        // Each rule keeps its own counter, and sees only what earlier rules passed on:
        // taking every remaining-th connection spreads them evenly.
        Scheduling::RoundRobin => words(&[
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            &remaining.to_string(),
            "--packet",
            "0",
        ]),
        Scheduling::Random => words(&[
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability(remaining),
        ]),
    }
}

/// Upstream's `%0.10f` of `1/n`.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// KUBE-SEP: masquerade hairpin traffic, remember the client for affinity, DNAT.
fn endpoint_rules(ctx: &Context, p: &Plan, ep: &Endpoint) -> Vec<Args> {
    let port = p.port();
    let chain = endpoint_chain(&port.name, ep);
    let label = if ctx.large_cluster {
        Vec::new()
    } else {
        words(&["-m", "comment", "--comment", &p.label])
    };
    // A pod reaching itself through the service must see the node as the source, or its
    // reply would bypass the reverse DNAT.
    let hairpin = jump(
        label.clone(),
        &words(&["-s", &ep.ip.to_string()]),
        KUBE_MARK_MASQ,
    );
    let mut dnat = label;
    if port.session_affinity.is_some() {
        dnat.extend(words(&["-m", "recent", "--name", &chain, "--set"]));
    }
    dnat.extend(words(&[
        "-m",
        p.proto,
        "-p",
        p.proto,
        "-j",
        "DNAT",
        "--to-destination",
        &ep.addr().to_string(),
    ]));
    vec![hairpin, dnat]
}

/// The names of the nat chains `rules` creates.
pub fn chain_names(rules: &ServiceRules) -> Vec<String> {
    rules.chains.iter().map(|(n, _)| n.clone()).collect()
}

/// Adds `rules` to `input`: shared rules always, own chains when `with_chains`.
pub fn add_service(input: &mut RestoreInput, rules: &ServiceRules, with_chains: bool) {
    for (table, chain, args) in &rules.shared {
        input.table(*table).rule(chain, args.clone());
    }
    if with_chains {
        let nat = input.table(Table::Nat);
        for (name, chain_rules) in &rules.chains {
            nat.chain(name).extend(chain_rules.iter().cloned());
        }
    }
}
