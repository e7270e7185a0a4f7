//! Real packets through a proxy mode: the scenarios every mode must pass, and the harness
//! they run on.
//!
//! Each scenario ([`scenarios`]) builds its own little cluster of network namespaces
//! ([`support::netns::Topology`]), runs `kube-proxy apply` inside the node
//! namespace with manifests describing Services and EndpointSlices, and then
//! sends TCP and UDP requests from pods, the node and an external client. Every
//! pod runs an echo server that answers with its name and the source address it
//! saw, so each check states which endpoint must answer and whether the source
//! must have been masqueraded. The scenarios follow upstream kube-proxy's e2e
//! and proxier tests.
//!
//! A scenario takes the [`Mode`] under test; where upstream's modes differ in what a
//! client sees, the scenario says so with the mode. Each mode's test binary
//! (`tests/dataplane_nftables.rs` for nftables) turns every scenario into a `#[test]` with
//! [`all_scenarios!`].
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); fails loudly without them.

pub mod iptables;
pub mod ipvs;
pub mod scenarios;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use crate::support::netns::{
    self, probe, Answer, Family, Netns, Outcome, Pod, Proto, TcpConversation, Topology, UdpFlow,
    CLIENT_IP, CLIENT_IP6, CLUSTER_CIDR, CLUSTER_CIDR6, LOCAL_POD_CIDR, LOCAL_POD_CIDR6, NODE_IP,
    NODE_IP6, NODE_NAME, NODE_UPLINK_IP, NODE_UPLINK_IP6, OTHER_CLIENT_IP, OTHER_CLIENT_IP6,
    POD_PORT, PROBE_TIMEOUT, REMOTE_NODE_IP, REMOTE_NODE_IP6, REMOTE_NODE_NAME, REMOTE_POD_CIDR,
    REMOTE_POD_CIDR6,
};
use serde_json::{json, Value};

/// The proxy mode a scenario runs under, as `--proxy-mode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    /// `--proxy-mode iptables` on a node whose kubelet uses this variant of the tools.
    /// (Only `tests/dataplane_iptables.rs` builds one.)
    #[allow(dead_code)]
    Iptables(Variant),
    /// `--proxy-mode ipvs`: only inside the project's VM (the host kernel has no IPVS);
    /// elsewhere its tests skip, see [`Mode::runs_here`].
    Ipvs,
}

/// The two implementations of the iptables tools a node may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
    /// `iptables-nft`: iptables rules stored as nf_tables.
    Nft,
}

impl Variant {
    /// `iptables-legacy`, `ip6tables-nft-save` and so on: `tool` is `""`, `"-save"` or
    /// `"-restore"`.
    pub fn binary(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        };
        format!("{base}-{variant}{tool}")
    }

    fn other(self) -> Variant {
        match self {
            Variant::Legacy => Variant::Nft,
            Variant::Nft => Variant::Legacy,
        }
    }
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Iptables(_) => "iptables",
            Mode::Ipvs => "ipvs",
        }
    }

    /// Whether `test` can run under this mode here; if not, says why on stderr (the
    /// test then passes without doing anything).
    pub fn runs_here(self, test: &str) -> bool {
        match self {
            Mode::Nftables | Mode::Iptables(_) => true,
            Mode::Ipvs => ipvs::in_vm(test),
        }
    }
}

/// One `#[test]` per scenario of [`scenarios`], run under `$mode`.
#[macro_export]
macro_rules! all_scenarios {
    ($mode:expr) => {
        $crate::scenario_tests!($mode; harness_routes_plain_traffic,
        cluster_ip_spreads_over_all_endpoints,
        random_endpoint_selection_spreads_fairly,
        node_port_from_external_client_is_masqueraded,
        load_balancer_source_ranges_guard_only_the_load_balancer_ip,
        external_traffic_policy_local,
        internal_traffic_policy_local,
        terminating_endpoints_only_without_ready_ones,
        no_endpoints_and_unserved_ports_reject,
        services_of_other_proxies_are_ignored,
        masquerade_matrix,
        zone_hints_keep_traffic_in_zone,
        client_ip_affinity_sticks_to_one_endpoint,
        incremental_sync_moves_new_connections_keeps_open_ones,
        udp_flows_follow_endpoint_changes,
        harness_routes_plain_ipv6_traffic,
        ipv6_only_service,
        dual_stack_service_keeps_families_apart,
        ipv6_local_policy_source_ranges_and_affinity);
    };
}

/// One `#[test]` per named scenario; see [`all_scenarios!`].
#[macro_export]
macro_rules! scenario_tests {
    ($mode:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if $crate::dataplane::Mode::runs_here($mode, stringify!($name)) {
                    $crate::dataplane::scenarios::$name($mode)
                }
            }
        )*
    };
}

/// Every service exposes this port, TCP and UDP, towards the pods' [`POD_PORT`].
const SERVICE_PORT: u16 = 80;
/// An upper bound for one `kube-proxy apply`.
const APPLY_LIMIT: Duration = Duration::from_secs(60);
/// An upper bound for a plain `nft` command.
const NFT_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Services and their endpoints, rendered the way `kubectl get -o yaml` shows them.

/// How a service is exposed beyond its ClusterIP.
enum Exposure {
    ClusterIp,
    NodePort(u16),
    LoadBalancer {
        node_port: u16,
        ingress: IpAddr,
        source_ranges: Vec<&'static str>,
    },
}

impl Exposure {
    fn type_name(&self) -> &'static str {
        match self {
            Exposure::ClusterIp => "ClusterIP",
            Exposure::NodePort(_) => "NodePort",
            Exposure::LoadBalancer { .. } => "LoadBalancer",
        }
    }

    fn node_port(&self) -> Option<u16> {
        match self {
            Exposure::ClusterIp => None,
            Exposure::NodePort(port)
            | Exposure::LoadBalancer {
                node_port: port, ..
            } => Some(*port),
        }
    }
}

/// An endpoint's conditions in its EndpointSlice.
#[derive(Clone, Copy)]
enum Condition {
    Ready,
    /// Terminating but still serving: a fallback when nothing is ready.
    ServingTerminating,
    /// Terminating and no longer serving: never used.
    Terminating,
}

/// A Service, its endpoints (pods of the topology) and its policies.
struct Svc {
    name: &'static str,
    /// `spec.clusterIPs`: one per family of `spec.ipFamilies`, the primary first.
    cluster_ips: Vec<IpAddr>,
    exposure: Exposure,
    external_ips: Vec<Ipv4Addr>,
    external_local: bool,
    internal_local: bool,
    client_ip_affinity: bool,
    endpoints: Vec<(&'static str, Condition)>,
    /// Ready endpoints of one family that replace `endpoints` in that
    /// family's EndpointSlices.
    family_endpoints: BTreeMap<Family, Vec<&'static str>>,
    /// Pods whose endpoint carries a topology hint for the given zone.
    zone_hints: BTreeMap<&'static str, &'static str>,
    /// How many EndpointSlices the endpoints are spread over.
    slices: usize,
    /// `service.kubernetes.io/service-proxy-name`: another proxy's service.
    proxy_name: Option<&'static str>,
}

impl Svc {
    /// A ClusterIP service `10.96.0.<host>` with ready endpoints `pods`.
    fn new(name: &'static str, host: u8, pods: &[&'static str]) -> Svc {
        Svc::single_stack(name, cluster_ip_in(Family::V4, host), pods)
    }

    /// An IPv6-only ClusterIP service `fd00:10:96::<host>` with ready
    /// endpoints `pods`.
    fn new_ipv6(name: &'static str, host: u8, pods: &[&'static str]) -> Svc {
        Svc::single_stack(name, cluster_ip_in(Family::V6, host), pods)
    }

    fn single_stack(name: &'static str, cluster_ip: IpAddr, pods: &[&'static str]) -> Svc {
        Svc {
            name,
            cluster_ips: vec![cluster_ip],
            exposure: Exposure::ClusterIp,
            external_ips: Vec::new(),
            external_local: false,
            internal_local: false,
            client_ip_affinity: false,
            endpoints: pods.iter().map(|pod| (*pod, Condition::Ready)).collect(),
            family_endpoints: BTreeMap::new(),
            zone_hints: BTreeMap::new(),
            slices: 1,
            proxy_name: None,
        }
    }

    /// Adds a ClusterIP of the other family, with the same host part:
    /// `ipFamilyPolicy: RequireDualStack`.
    fn dual_stack(mut self) -> Svc {
        let other = match self.families()[..] {
            [Family::V4] => Family::V6,
            [Family::V6] => Family::V4,
            _ => panic!("{} is dual-stack already", self.name),
        };
        let host = match self.cluster_ips[0] {
            IpAddr::V4(ip) => ip.octets()[3],
            IpAddr::V6(ip) => u8::try_from(ip.segments()[7]).expect("host part fits a u8"),
        };
        self.cluster_ips.push(cluster_ip_in(other, host));
        self
    }

    /// In `family`'s EndpointSlices, ready endpoints `pods` instead of the
    /// service's endpoints.
    fn family_endpoints(mut self, family: Family, pods: &[&'static str]) -> Svc {
        self.family_endpoints.insert(family, pods.to_vec());
        self
    }

    /// `spec.ipFamilies`.
    fn families(&self) -> Vec<Family> {
        self.cluster_ips.iter().map(|ip| Family::of(*ip)).collect()
    }

    fn node_port(mut self, port: u16) -> Svc {
        self.exposure = Exposure::NodePort(port);
        self
    }

    fn load_balancer(
        mut self,
        node_port: u16,
        ingress: impl Into<IpAddr>,
        ranges: &[&'static str],
    ) -> Svc {
        self.exposure = Exposure::LoadBalancer {
            node_port,
            ingress: ingress.into(),
            source_ranges: ranges.to_vec(),
        };
        self
    }

    fn external_ip(mut self, ip: Ipv4Addr) -> Svc {
        self.external_ips.push(ip);
        self
    }

    fn external_traffic_local(mut self) -> Svc {
        self.external_local = true;
        self
    }

    fn internal_traffic_local(mut self) -> Svc {
        self.internal_local = true;
        self
    }

    fn client_ip_affinity(mut self) -> Svc {
        self.client_ip_affinity = true;
        self
    }

    fn zone_hint(mut self, pod: &'static str, zone: &'static str) -> Svc {
        self.zone_hints.insert(pod, zone);
        self
    }

    fn proxied_by(mut self, proxy: &'static str) -> Svc {
        self.proxy_name = Some(proxy);
        self
    }

    fn split_into_slices(mut self, slices: usize) -> Svc {
        self.slices = slices;
        self
    }

    fn endpoint(mut self, pod: &'static str, condition: Condition) -> Svc {
        self.endpoints.push((pod, condition));
        self
    }

    /// The (primary family's) ClusterIP address and service port.
    fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ips[0], SERVICE_PORT)
    }

    /// The ClusterIP address of `family` and service port.
    fn cluster_addr_of(&self, family: Family) -> SocketAddr {
        let ip = self
            .cluster_ips
            .iter()
            .find(|ip| Family::of(**ip) == family);
        let ip = ip.unwrap_or_else(|| panic!("{} has no {family:?} ClusterIP", self.name));
        SocketAddr::new(*ip, SERVICE_PORT)
    }

    /// The node port on the node's primary IP (of the service's primary
    /// family).
    fn node_port_addr(&self) -> SocketAddr {
        self.node_port_addr_of(self.families()[0])
    }

    /// The node port on the node's IP of `family` from its Node object.
    fn node_port_addr_of(&self, family: Family) -> SocketAddr {
        let port = self.exposure.node_port();
        let port = port.unwrap_or_else(|| panic!("{} has no node port", self.name));
        let ip: IpAddr = match family {
            Family::V4 => NODE_IP.into(),
            Family::V6 => NODE_IP6.into(),
        };
        SocketAddr::new(ip, port)
    }

    fn load_balancer_addr(&self) -> SocketAddr {
        match self.exposure {
            Exposure::LoadBalancer { ingress, .. } => SocketAddr::new(ingress, SERVICE_PORT),
            _ => panic!("{} is not a LoadBalancer", self.name),
        }
    }

    fn service_object(&self) -> Value {
        let policy = |local| if local { "Local" } else { "Cluster" };
        let mut spec = json!({
            "type": self.exposure.type_name(),
            "clusterIP": self.cluster_ips[0].to_string(),
            "clusterIPs": self.cluster_ips.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "ipFamilies": self.families().into_iter().map(Family::kube_name).collect::<Vec<_>>(),
            "ipFamilyPolicy": if self.cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
            "ports": self.service_ports(),
            "selector": {"app": self.name},
            "sessionAffinity": if self.client_ip_affinity { "ClientIP" } else { "None" },
            "internalTrafficPolicy": policy(self.internal_local),
        });
        if self.client_ip_affinity {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        if let Some(node_port) = self.exposure.node_port() {
            spec["externalTrafficPolicy"] = json!(policy(self.external_local));
            if self.external_local {
                // The API server allocates one for Local policy on these types.
                spec["healthCheckNodePort"] = json!(node_port + 1000);
            }
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(self.external_ips);
        }
        let mut labels = json!({"app": self.name});
        if let Some(proxy) = self.proxy_name {
            labels["service.kubernetes.io/service-proxy-name"] = json!(proxy);
        }
        let mut annotations = json!({});
        if !self.zone_hints.is_empty() {
            // Under which the EndpointSlice controller writes hints.
            annotations["service.kubernetes.io/topology-mode"] = json!("Auto");
        }
        let mut ingress = Vec::new();
        if let Exposure::LoadBalancer {
            ingress: ip,
            source_ranges,
            ..
        } = &self.exposure
        {
            spec["loadBalancerSourceRanges"] = json!(source_ranges);
            ingress.push(json!({"ip": ip, "ipMode": "VIP"}));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.name,
                "namespace": "default",
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        })
    }

    /// Port 80 over TCP and UDP, both to the pods' echo port.
    fn service_ports(&self) -> Vec<Value> {
        let ports = [("tcp", "TCP"), ("udp", "UDP")].map(|(name, protocol)| {
            let mut port = json!({
                "name": name, "port": SERVICE_PORT, "protocol": protocol, "targetPort": POD_PORT,
            });
            if let Some(node_port) = self.exposure.node_port() {
                port["nodePort"] = json!(node_port);
            }
            port
        });
        ports.into()
    }

    /// The endpoints of each family, split over [`Svc::slices`]
    /// EndpointSlices per family.
    fn endpoint_slice_objects(&self, topology: &Topology) -> Vec<Value> {
        let mut objects = Vec::new();
        for family in self.families() {
            let endpoints: Vec<(&str, Condition)> = match self.family_endpoints.get(&family) {
                Some(pods) => pods.iter().map(|pod| (*pod, Condition::Ready)).collect(),
                None => self.endpoints.clone(),
            };
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|(pod, condition)| self.endpoint_object(topology.pod(pod), *condition, family))
                .collect();
            let per_slice = endpoints.len().div_ceil(self.slices).max(1);
            let mut chunks: Vec<&[Value]> = endpoints.chunks(per_slice).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let slices = chunks.iter().enumerate();
            objects.extend(slices.map(|(i, chunk)| self.endpoint_slice_object(family, i, chunk)));
        }
        objects
    }

    fn endpoint_object(&self, pod: &Pod, condition: Condition, family: Family) -> Value {
        let (ready, serving, terminating) = match condition {
            Condition::Ready => (true, true, false),
            Condition::ServingTerminating => (false, true, true),
            Condition::Terminating => (false, false, true),
        };
        let mut endpoint = json!({
            "addresses": [pod.ip_of(family).to_string()],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": pod.node,
            "zone": zone_of(pod.node),
            "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
        });
        if let Some(zone) = self.zone_hints.get(pod.name.as_str()) {
            endpoint["hints"] = json!({"forZones": [{"name": zone}]});
        }
        endpoint
    }

    fn endpoint_slice_object(&self, family: Family, index: usize, endpoints: &[Value]) -> Value {
        let prefix = match family {
            Family::V4 => "",
            Family::V6 => "v6",
        };
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{prefix}x7k2{index}", self.name),
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": self.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": family.kube_name(),
            "endpoints": endpoints,
            "ports": [
                {"name": "tcp", "port": POD_PORT, "protocol": "TCP"},
                {"name": "udp", "port": POD_PORT, "protocol": "UDP"},
            ],
        })
    }
}

/// The ClusterIP with host part `host` in `family`'s service CIDR.
fn cluster_ip_in(family: Family, host: u8) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(10, 96, 0, host).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, host.into()).into(),
    }
}

/// Each node is in its own zone.
fn zone_of(node: &str) -> &'static str {
    match node {
        NODE_NAME => "zone-a",
        _ => "zone-b",
    }
}

/// A dual-stack Node, IPv4 first (so IPv4 is its primary family).
fn node_object(name: &str, (ip, ip6): (Ipv4Addr, Ipv6Addr), pod_cidrs: [&str; 2]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zone_of(name),
        }},
        "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": ip.to_string()},
            {"type": "InternalIP", "address": ip6.to_string()},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// The `kind: List` document `kubectl get svc,endpointslices,nodes -A -o yaml` prints.
fn manifests(topology: &Topology, services: &[&Svc]) -> String {
    let mut items = vec![
        node_object(
            NODE_NAME,
            (NODE_IP, NODE_IP6),
            [LOCAL_POD_CIDR, LOCAL_POD_CIDR6],
        ),
        node_object(
            REMOTE_NODE_NAME,
            (REMOTE_NODE_IP, REMOTE_NODE_IP6),
            [REMOTE_POD_CIDR, REMOTE_POD_CIDR6],
        ),
    ];
    for svc in services {
        items.push(svc.service_object());
        items.extend(svc.endpoint_slice_objects(topology));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
    serde_norway::to_string(&list).expect("manifests serialise")
}

// ---------------------------------------------------------------------------
// A topology plus the kube-proxy runs against it.

/// Where a request comes from.
#[derive(Clone, Copy, Debug)]
enum Origin {
    Pod(&'static str),
    /// A process in the node's own network namespace.
    Node,
    /// The external client, with the given source address.
    Client(Ipv4Addr),
    /// The external client over IPv6, with the given source address.
    Client6(Ipv6Addr),
}

/// One test's cluster. On a failing test its Drop prints the last manifests,
/// kube-proxy's output and the node's ruleset.
struct Cluster {
    mode: Mode,
    topology: Topology,
    selection: Selection,
    workdir: tempfile::TempDir,
    applies: usize,
    log: String,
}

impl Cluster {
    fn new(mode: Mode, local_pods: &[&str], remote_pods: &[&str]) -> Cluster {
        require_prerequisites(mode);
        let cluster = Cluster {
            mode,
            topology: Topology::build(local_pods, remote_pods),
            selection: Selection::RoundRobin,
            workdir: tempfile::tempdir().expect("temporary directory"),
            applies: 0,
            log: String::new(),
        };
        if let Mode::Iptables(variant) = mode {
            cluster.write_kubelet_hint(variant);
        }
        cluster
    }

    /// What kubelet (1.17 and later) does on every node before kube-proxy starts: it
    /// creates `KUBE-IPTABLES-HINT` in the mangle table of both families with the
    /// iptables variant it uses. kube-proxy's variant detection follows that chain.
    fn write_kubelet_hint(&self, variant: Variant) {
        for family in [Family::V4, Family::V6] {
            let mut iptables = self.topology.node.command(&variant.binary(family, ""));
            netns::run(iptables.args(["-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]));
        }
    }

    /// `iptables-save` and `ip6tables-save` of `variant` in the node namespace: each
    /// binary with its output. Saving every table (no `-t`) lists only the tables that
    /// exist: `iptables-legacy-save -t nat` would create one.
    fn iptables_save(&self, variant: Variant) -> [(String, String); 2] {
        [Family::V4, Family::V6].map(|family| {
            let binary = variant.binary(family, "-save");
            let saved = netns::run(&mut self.topology.node.command(&binary));
            (binary, saved)
        })
    }

    /// After an apply in iptables mode: the rules are in the variant the kubelet hint
    /// names, in both families, and nothing of ours is in the other variant.
    fn assert_rules_in_variant(&self, variant: Variant) {
        for (binary, saved) in self.iptables_save(variant) {
            assert!(
                saved.lines().any(|l| l.starts_with(":KUBE-SERVICES ")),
                "{binary} shows no KUBE-SERVICES after apply #{}:\n{saved}",
                self.applies
            );
        }
        for (binary, saved) in self.iptables_save(variant.other()) {
            assert!(
                !saved.contains("KUBE-"),
                "kube-proxy wrote into the variant the node does not use: {binary}:\n{saved}"
            );
        }
    }

    /// Runs `kube-proxy apply` in the node namespace and requires exit 0.
    fn apply(&mut self, services: &[&Svc]) {
        let output = self.run_apply(services);
        assert!(
            output.status.success(),
            "kube-proxy apply #{} failed: {}",
            self.applies,
            output.status
        );
        if let Mode::Iptables(variant) = self.mode {
            self.assert_rules_in_variant(variant);
        }
    }

    /// Runs `kube-proxy apply`, requires it to fail, and returns its stderr.
    fn apply_refused(&mut self, services: &[&Svc]) -> String {
        let output = self.run_apply(services);
        assert!(
            !output.status.success(),
            "kube-proxy apply #{} succeeded",
            self.applies
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs `kube-proxy apply` of `services` in the node namespace; the log of
    /// the run is kept for failure reports.
    fn run_apply(&mut self, services: &[&Svc]) -> std::process::Output {
        self.applies += 1;
        let path = self
            .workdir
            .path()
            .join(format!("apply-{}.yaml", self.applies));
        let text = manifests(&self.topology, services);
        std::fs::write(&path, &text).expect("write manifests");
        let mut kube_proxy = self.topology.node.command(env!("CARGO_BIN_EXE_kube-proxy"));
        kube_proxy
            .arg("apply")
            .arg("-f")
            .arg(&path)
            .args(["--proxy-mode", self.mode.flag()])
            .args(["--hostname-override", NODE_NAME])
            .arg(format!("--cluster-cidr={CLUSTER_CIDR},{CLUSTER_CIDR6}"));
        if let Selection::Random = self.selection {
            kube_proxy.arg("--endpoint-selection=random");
        }
        let output =
            netns::output_bounded(&mut kube_proxy, APPLY_LIMIT).expect("kube-proxy apply finishes");
        self.log = format!(
            "--- manifests (apply #{}) ---\n{text}\n--- kube-proxy stdout ---\n{}\n--- kube-proxy stderr ---\n{}",
            self.applies,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        output
    }

    fn pod_ip(&self, pod: &str) -> IpAddr {
        IpAddr::V4(self.topology.pod(pod).ip)
    }

    fn pod_ip6(&self, pod: &str) -> IpAddr {
        IpAddr::V6(self.topology.pod(pod).ip6)
    }

    /// Up to `count` requests, each a new flow, from `origin` to `target`.
    /// Stops after the first outcome `acceptable` refuses, so a broken path
    /// costs one timeout rather than `count`.
    fn send(
        &self,
        (origin, proto, target): (Origin, Proto, SocketAddr),
        count: usize,
        acceptable: impl Fn(&Outcome) -> bool + Sync,
    ) -> Vec<Outcome> {
        let (ns, source) = self.origin(origin);
        ns.enter(|| {
            let mut outcomes = Vec::with_capacity(count);
            while outcomes.len() < count {
                let outcome = probe(proto, source, target);
                let stop = !acceptable(&outcome);
                outcomes.push(outcome);
                if stop {
                    break;
                }
            }
            outcomes
        })
    }

    fn origin(&self, origin: Origin) -> (&Netns, Option<IpAddr>) {
        match origin {
            Origin::Pod(pod) => (&self.topology.pod(pod).netns, None),
            Origin::Node => (&self.topology.node, None),
            Origin::Client(ip) => (&self.topology.client, Some(IpAddr::V4(ip))),
            Origin::Client6(ip) => (&self.topology.client, Some(IpAddr::V6(ip))),
        }
    }

    /// A TCP connection from `origin`'s namespace to `target`.
    fn tcp_conversation(&self, origin: Origin, target: SocketAddr) -> TcpConversation {
        let (ns, source) = self.origin(origin);
        let conversation = ns.enter(|| TcpConversation::open(source, target));
        conversation.unwrap_or_else(|e| panic!("TCP connection {origin:?} -> {target}: {e}"))
    }

    /// A UDP socket in `origin`'s namespace, connected to `target`.
    fn udp_flow(&self, origin: Origin, target: SocketAddr) -> UdpFlow {
        let (ns, source) = self.origin(origin);
        let flow = ns.enter(|| UdpFlow::open(source, target));
        flow.unwrap_or_else(|e| panic!("UDP socket {origin:?} -> {target}: {e}"))
    }

    fn pod_addr(&self, pod: &str) -> SocketAddr {
        self.topology.pod(pod).addr()
    }

    /// Answers from each of `pods`, each having seen the node's address
    /// towards it: the source was masqueraded.
    fn reaches_masqueraded(&self, pods: &[&str]) -> Expect {
        let answers = pods.iter().map(|pod| self.masqueraded(pod));
        Expect::Answers(answers.collect())
    }

    fn masqueraded(&self, pod: &str) -> Answer {
        answer(pod, self.topology.node_address_towards(pod))
    }

    /// [`Cluster::reaches_masqueraded`] over IPv6.
    fn reaches_masqueraded6(&self, pods: &[&str]) -> Expect {
        let towards = |pod| self.topology.node_address_towards_in(pod, Family::V6);
        Expect::Answers(pods.iter().map(|pod| answer(pod, towards(pod))).collect())
    }

    fn pod_addr6(&self, pod: &str) -> SocketAddr {
        self.topology.pod(pod).addr_of(Family::V6)
    }

    /// Checks every row over TCP, then every row over UDP.
    fn check(&self, rows: &[(Origin, SocketAddr, Expect)]) {
        for proto in [Proto::Tcp, Proto::Udp] {
            for (origin, target, expect) in rows {
                let flows = (*origin, proto, *target);
                match expect {
                    Expect::Answers(answers) => self.expect_spread(flows, answers),
                    Expect::Refused => self.expect_outcome(flows, Outcome::Refused),
                    Expect::Dropped => self.expect_outcome(flows, Outcome::TimedOut),
                }
            }
        }
    }

    /// Requests reach exactly the `expected` answers, spread as the
    /// cluster's [`Selection`] promises.
    fn expect_spread(&self, flows: (Origin, Proto, SocketAddr), expected: &[Answer]) {
        let count = self.selection.requests_per_endpoint() * expected.len();
        let outcomes = self.send(
            flows,
            count,
            |outcome| matches!(outcome, Outcome::Answered(a) if expected.contains(a)),
        );
        let (origin, proto, target) = flows;
        let what = format!("{proto:?} {origin:?} -> {target}");
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Outcome::Answered(a) if expected.contains(a)),
                "{what}: unexpected {outcome:?}; expected only {expected:?}; all: {:?}",
                tally(&outcomes)
            );
        }
        self.selection.check(&what, &outcomes, expected);
    }

    /// Every one of 30 new flows per protocol from `origin` lands on the same
    /// one of `candidates`.
    fn expect_sticky(&self, origin: Origin, target: SocketAddr, candidates: &[Answer]) {
        for proto in [Proto::Tcp, Proto::Udp] {
            let flows = (origin, proto, target);
            let outcomes = self.send(flows, 30, |outcome| matches!(outcome, Outcome::Answered(_)));
            let first = outcomes[0].answer("first request");
            assert!(
                candidates.contains(first),
                "{proto:?} {origin:?} -> {target}: {first:?} is no endpoint"
            );
            let tally = tally(&outcomes);
            assert_eq!(
                tally.len(),
                1,
                "{proto:?} {origin:?} -> {target} did not stick: {tally:?}"
            );
        }
    }

    /// One request gets `expected` (Refused or TimedOut).
    fn expect_outcome(&self, flows: (Origin, Proto, SocketAddr), expected: Outcome) {
        let outcome = self.send(flows, 1, |_| true).remove(0);
        let (origin, proto, target) = flows;
        assert_eq!(outcome, expected, "{proto:?} {origin:?} -> {target}");
    }
}

/// What a request to a port that a served ClusterIP does not serve gets.
///
/// nftables mode rejects it: upstream's nftables proxier puts every ClusterIP in its
/// `cluster-ips` set and rejects what no service port matched. iptables mode has no rule
/// for it (upstream's iptables proxier writes none; its `proxier_test.go` traces such a
/// packet through untouched): the packet is routed on as plain traffic. In this topology
/// the service CIDR is routed towards the external client's namespace, which does not
/// forward, so the packet vanishes there and the request times out.
///
/// IPVS mode binds the ClusterIP to `kube-ipvs0`, so the packet is for the node itself;
/// upstream's `KUBE-IPVS-FILTER` (filter INPUT, kubernetes issue 72236) rejects new
/// connections to an IPVS address on a port no virtual server has, and so does the
/// companion table's `service-ip-check`.
fn unserved_cluster_ip_port(mode: Mode) -> Expect {
    match mode {
        Mode::Nftables | Mode::Ipvs => Expect::Refused,
        Mode::Iptables(_) => Expect::Dropped,
    }
}

impl Cluster {
    /// What a NodePort request to the node's IPv4 address that is not its primary
    /// (InternalIP) address gets, with `pods` the service's endpoints.
    ///
    /// nftables mode defaults `--nodeport-addresses` to `primary` (upstream's
    /// `platformApplyDefaults`): nothing listens on the other address, the node resets.
    /// iptables mode's default is every local address (upstream jumps to
    /// `KUBE-NODEPORTS` on `-m addrtype --dst-type LOCAL`): the service answers. So does
    /// IPVS mode's: upstream makes a NodePort virtual server on every address of the node
    /// but loopback and `kube-ipvs0`'s (`ipGetter.NodeIPs`).
    fn not_primary_node_port(&self, pods: &[&str]) -> Expect {
        match self.mode {
            Mode::Nftables => Expect::Refused,
            Mode::Iptables(_) | Mode::Ipvs => self.reaches_masqueraded(pods),
        }
    }

    /// [`Cluster::not_primary_node_port`] over IPv6.
    fn not_primary_node_port6(&self, pods: &[&str]) -> Expect {
        match self.mode {
            Mode::Nftables => Expect::Refused,
            Mode::Iptables(_) | Mode::Ipvs => self.reaches_masqueraded6(pods),
        }
    }
}

/// What requests along one path must get.
enum Expect {
    /// Answers spread over exactly these, see [`Cluster::expect_spread`].
    Answers(Vec<Answer>),
    /// Fast failure: TCP RST or ICMP port unreachable (nftables `reject`).
    Refused,
    /// No answer at all (nftables `drop`).
    Dropped,
}

/// Answers from each of `pods`, each having seen `source` as the peer.
fn reaches(pods: &[&str], source: impl Into<IpAddr>) -> Expect {
    let source = source.into();
    Expect::Answers(pods.iter().map(|pod| answer(pod, source)).collect())
}

/// How kube-proxy picks endpoints for new connections, and so what a correct
/// spread looks like.
#[derive(Clone, Copy)]
enum Selection {
    /// The default, `numgen inc`: one counter per service, so consecutive
    /// connections visit the endpoints in a fixed cycle.
    RoundRobin,
    /// `--endpoint-selection=random`, upstream's `numgen random`.
    Random,
}

impl Selection {
    fn requests_per_endpoint(self) -> usize {
        match self {
            Selection::RoundRobin => 10,
            // Enough for the bound below to be tight.
            Selection::Random => 60,
        }
    }

    /// `outcomes` (all answers from `expected`) are spread as promised.
    fn check(self, what: &str, outcomes: &[Outcome], expected: &[Answer]) {
        let period = expected.len();
        match self {
            Selection::RoundRobin => {
                let round = tally(&outcomes[..period]);
                assert_eq!(round.len(), period, "{what}: first round {round:?}");
                for (i, outcome) in outcomes.iter().enumerate() {
                    let cycle = &outcomes[i % period];
                    assert_eq!(
                        outcome, cycle,
                        "{what}: request {i} left the cycle {round:?}"
                    );
                }
            }
            // Each of N endpoints gets at least 40 % of 1/N; a false failure
            // is about one in a million. A perfect cycle instead would mean
            // the flag was ignored (chance: 1/N per request).
            Selection::Random => {
                let cyclic = (0..outcomes.len()).all(|i| outcomes[i] == outcomes[i % period]);
                assert!(!cyclic, "{what}: round-robin instead of random");
                let tally = tally(outcomes);
                let floor = outcomes.len() * 2 / (5 * period);
                for answer in expected {
                    let got = tally.get(&Outcome::Answered(answer.clone())).copied();
                    let got = got.unwrap_or(0);
                    assert!(
                        got >= floor,
                        "{what}: {answer:?} got {got} (< {floor}): {tally:?}"
                    );
                }
            }
        }
    }
}

/// What `pod` answers when the request reached it from `source`.
fn answer(pod: &str, source: impl Into<IpAddr>) -> Answer {
    Answer {
        identity: pod.to_owned(),
        peer: source.into(),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (what, mut dump) = match self.mode {
                Mode::Nftables => ("nft list ruleset", self.topology.node.command("nft")),
                Mode::Iptables(variant) => ("iptables-save", {
                    // Both families of the variant the mode uses, bounded like `nft`.
                    let v4 = variant.binary(Family::V4, "-save");
                    let v6 = variant.binary(Family::V6, "-save");
                    let mut sh = self.topology.node.command("sh");
                    sh.args(["-c", &format!("echo '# {v4}'; {v4}; echo '# {v6}'; {v6}")]);
                    sh
                }),
                Mode::Ipvs => ("ipvsadm -Ln, nft list ruleset, kube-ipvs0", {
                    let mut sh = self.topology.node.command("sh");
                    sh.args(["-c", ipvs::STATE_DUMP]);
                    sh
                }),
            };
            if self.mode == Mode::Nftables {
                dump.args(["list", "ruleset"]);
            }
            let ruleset = netns::output_bounded(&mut dump, NFT_LIMIT);
            let ruleset = ruleset.map_or_else(
                |e| e.to_string(),
                |o| String::from_utf8_lossy(&o.stdout).into_owned(),
            );
            eprintln!("{}\n--- {what} (node) ---\n{ruleset}", self.log);
        }
    }
}

/// Counts equal outcomes.
fn tally(outcomes: &[Outcome]) -> BTreeMap<Outcome, usize> {
    let mut tally = BTreeMap::new();
    for outcome in outcomes {
        *tally.entry(outcome.clone()).or_insert(0) += 1;
    }
    tally
}

/// These tests must run in CI: fail with instructions instead of skipping.
fn require_prerequisites(mode: Mode) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "dataplane tests need root (network namespaces, nftables)"
    );
    let mut tools = vec![("ip".to_owned(), "-V"), ("nft".to_owned(), "--version")];
    if let Mode::Iptables(variant) = mode {
        for family in [Family::V4, Family::V6] {
            for tool in ["", "-save", "-restore"] {
                tools.push((variant.binary(family, tool), "--version"));
            }
        }
    }
    if mode == Mode::Ipvs {
        tools.push(("ipvsadm".to_owned(), "--version"));
    }
    for (tool, version) in tools {
        let ok = Command::new(&tool)
            .arg(version)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "dataplane tests need `{tool}`: apt-get install -y iproute2 nftables iptables ipvsadm"
        );
    }
}
