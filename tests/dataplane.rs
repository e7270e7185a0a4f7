//! Real packets through the nftables mode.
//!
//! Each test builds its own little cluster of network namespaces
//! ([`support::netns::Topology`]), runs `kube-proxy apply` inside the node
//! namespace with manifests describing Services and EndpointSlices, and then
//! sends TCP and UDP requests from pods, the node and an external client. Every
//! pod runs an echo server that answers with its name and the source address it
//! saw, so each check states which endpoint must answer and whether the source
//! must have been masqueraded. The scenarios follow upstream kube-proxy's e2e
//! and proxier tests.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); fails loudly without them.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::netns::{
    self, probe, Answer, Family, Netns, Outcome, Pod, Proto, TcpConversation, Topology, UdpFlow,
    CLIENT_IP, CLIENT_IP6, CLUSTER_CIDR, CLUSTER_CIDR6, LOCAL_POD_CIDR, LOCAL_POD_CIDR6, NODE_IP,
    NODE_IP6, NODE_NAME, NODE_UPLINK_IP, NODE_UPLINK_IP6, OTHER_CLIENT_IP, OTHER_CLIENT_IP6,
    POD_PORT, REMOTE_NODE_IP, REMOTE_NODE_IP6, REMOTE_NODE_NAME, REMOTE_POD_CIDR, REMOTE_POD_CIDR6,
};

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
    topology: Topology,
    selection: Selection,
    workdir: tempfile::TempDir,
    applies: usize,
    log: String,
}

impl Cluster {
    fn new(local_pods: &[&str], remote_pods: &[&str]) -> Cluster {
        require_prerequisites();
        Cluster {
            topology: Topology::build(local_pods, remote_pods),
            selection: Selection::RoundRobin,
            workdir: tempfile::tempdir().expect("temporary directory"),
            applies: 0,
            log: String::new(),
        }
    }

    /// Runs `kube-proxy apply` in the node namespace and requires exit 0.
    fn apply(&mut self, services: &[&Svc]) {
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
            .args(["--proxy-mode", "nftables", "--hostname-override", NODE_NAME])
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
        assert!(
            output.status.success(),
            "kube-proxy apply #{} failed: {}",
            self.applies,
            output.status
        );
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
            let mut nft = self.topology.node.command("nft");
            let ruleset = netns::output_bounded(nft.args(["list", "ruleset"]), NFT_LIMIT);
            let ruleset = ruleset.map_or_else(
                |e| e.to_string(),
                |o| String::from_utf8_lossy(&o.stdout).into_owned(),
            );
            eprintln!("{}\n--- nft list ruleset (node) ---\n{ruleset}", self.log);
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
fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "dataplane tests need root (network namespaces, nftables)"
    );
    for (tool, version) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(version)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "dataplane tests need `{tool}`: apt-get install -y iproute2 nftables"
        );
    }
}

// ---------------------------------------------------------------------------
// The harness itself, before any kube-proxy is involved.

/// Routing, echo servers and the REJECT/DROP classification work on their own.
#[test]
fn harness_routes_plain_traffic() {
    let cluster = Cluster::new(&["a", "b"], &["r"]);
    let closed_port = SocketAddr::new(cluster.pod_ip("b"), 9);
    cluster.check(&[
        (
            Origin::Pod("a"),
            cluster.pod_addr("r"),
            reaches(&["r"], cluster.pod_ip("a")),
        ),
        (
            Origin::Node,
            cluster.pod_addr("r"),
            reaches(&["r"], NODE_IP),
        ),
        (
            Origin::Client(OTHER_CLIENT_IP),
            cluster.pod_addr("a"),
            reaches(&["a"], OTHER_CLIENT_IP),
        ),
        (Origin::Pod("a"), closed_port, Expect::Refused),
    ]);
    let drop_all =
        "add table ip t; add chain ip t in { type filter hook input priority 0; policy drop; }";
    let mut nft = cluster.topology.pod("b").netns.command("nft");
    let status = netns::output_bounded(nft.arg(drop_all), NFT_LIMIT)
        .expect("nft finishes")
        .status;
    assert!(status.success(), "nft {drop_all:?}: {status}");
    cluster.check(&[(Origin::Pod("a"), cluster.pod_addr("b"), Expect::Dropped)]);
}

// ---------------------------------------------------------------------------
// kube-proxy scenarios.

/// Connections take the endpoints in turn (kube-proxy-rs's default
/// round-robin). Pods keep their source; the node's own traffic to a
/// ClusterIP is masqueraded (it comes from outside the cluster CIDR).
#[test]
fn cluster_ip_spreads_over_all_endpoints() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    // Over two slices, which kube-proxy must merge.
    let web = Svc::new("web", 10, &["a", "b", "r"]).split_into_slices(2);
    cluster.apply(&[&web]);
    let endpoints = ["a", "b", "r"];
    cluster.check(&[
        (
            Origin::Pod("client"),
            web.cluster_addr(),
            reaches(&endpoints, cluster.pod_ip("client")),
        ),
        (
            Origin::Node,
            web.cluster_addr(),
            cluster.reaches_masqueraded(&endpoints),
        ),
    ]);
}

/// `--endpoint-selection=random` (upstream's only behaviour) still reaches
/// every endpoint, each with a fair share.
#[test]
fn random_endpoint_selection_spreads_fairly() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    cluster.selection = Selection::Random;
    let web = Svc::new("web", 10, &["a", "b", "r"]);
    cluster.apply(&[&web]);
    let endpoints = ["a", "b", "r"];
    cluster.check(&[(
        Origin::Pod("client"),
        web.cluster_addr(),
        reaches(&endpoints, cluster.pod_ip("client")),
    )]);
}

/// An external client reaches both local and remote endpoints through a
/// NodePort, masqueraded to the node's address on the way to each.
#[test]
fn node_port_from_external_client_is_masqueraded() {
    let mut cluster = Cluster::new(&["a"], &["r"]);
    let web = Svc::new("web", 10, &["a", "r"]).node_port(30080);
    cluster.apply(&[&web]);
    // In nftables mode --nodeport-addresses defaults to the primary node IP:
    // the node's other address is not a NodePort address, nothing listens.
    let other_address = SocketAddr::from((NODE_UPLINK_IP, web.node_port_addr().port()));
    cluster.check(&[
        (
            Origin::Client(CLIENT_IP),
            web.node_port_addr(),
            cluster.reaches_masqueraded(&["a", "r"]),
        ),
        (Origin::Client(CLIENT_IP), other_address, Expect::Refused),
    ]);
}

/// `loadBalancerSourceRanges` guards only the load-balancer IP: other sources
/// are dropped there but still reach the externalIP and the NodePort.
#[test]
fn load_balancer_source_ranges_guard_only_the_load_balancer_ip() {
    let mut cluster = Cluster::new(&["a"], &["r"]);
    let external_ip = Ipv4Addr::new(198, 18, 0, 10);
    let web = Svc::new("web", 10, &["a", "r"])
        .load_balancer(30081, Ipv4Addr::new(198, 18, 0, 20), &["203.0.113.2/32"])
        .external_ip(external_ip);
    cluster.apply(&[&web]);
    let (allowed, denied) = (Origin::Client(CLIENT_IP), Origin::Client(OTHER_CLIENT_IP));
    let external = SocketAddr::from((external_ip, SERVICE_PORT));
    let everywhere = || cluster.reaches_masqueraded(&["a", "r"]);
    cluster.check(&[
        (allowed, web.load_balancer_addr(), everywhere()),
        (denied, web.load_balancer_addr(), Expect::Dropped),
        (denied, external, everywhere()),
        (denied, web.node_port_addr(), everywhere()),
    ]);
}

/// `externalTrafficPolicy: Local`: external traffic goes only to local
/// endpoints and keeps the client's address; without a local endpoint it is
/// dropped. Pods and the node itself still reach every endpoint, through the
/// ClusterIP and (short-circuited, as upstream) through the NodePort.
#[test]
fn external_traffic_policy_local() {
    let mut cluster = Cluster::new(&["a", "client"], &["r"]);
    let local = Svc::new("local", 10, &["a", "r"])
        .load_balancer(30082, Ipv4Addr::new(198, 18, 0, 30), &[])
        .external_traffic_local();
    let remote_only = Svc::new("remote-only", 11, &["r"])
        .node_port(30083)
        .external_traffic_local();
    cluster.apply(&[&local, &remote_only]);
    let (client, pod) = (Origin::Client(CLIENT_IP), Origin::Pod("client"));
    let pod_ip = cluster.pod_ip("client");
    cluster.check(&[
        (client, local.node_port_addr(), reaches(&["a"], CLIENT_IP)),
        (
            client,
            local.load_balancer_addr(),
            reaches(&["a"], CLIENT_IP),
        ),
        (client, remote_only.node_port_addr(), Expect::Dropped),
        (pod, local.cluster_addr(), reaches(&["a", "r"], pod_ip)),
        (pod, remote_only.cluster_addr(), reaches(&["r"], pod_ip)),
        (pod, local.node_port_addr(), reaches(&["a", "r"], pod_ip)),
        (pod, remote_only.node_port_addr(), reaches(&["r"], pod_ip)),
        (
            Origin::Node,
            local.node_port_addr(),
            cluster.reaches_masqueraded(&["a", "r"]),
        ),
    ]);
}

/// `internalTrafficPolicy: Local`: ClusterIP traffic from pods and the node
/// goes only to local endpoints; with none it is dropped.
#[test]
fn internal_traffic_policy_local() {
    let mut cluster = Cluster::new(&["a", "client"], &["r"]);
    let local = Svc::new("local", 10, &["a", "r"]).internal_traffic_local();
    let remote_only = Svc::new("remote-only", 11, &["r"]).internal_traffic_local();
    cluster.apply(&[&local, &remote_only]);
    let pod = Origin::Pod("client");
    cluster.check(&[
        (
            pod,
            local.cluster_addr(),
            reaches(&["a"], cluster.pod_ip("client")),
        ),
        (
            Origin::Node,
            local.cluster_addr(),
            cluster.reaches_masqueraded(&["a"]),
        ),
        (pod, remote_only.cluster_addr(), Expect::Dropped),
        (Origin::Node, remote_only.cluster_addr(), Expect::Dropped),
    ]);
}

/// Serving-but-terminating endpoints are a fallback for when no endpoint is
/// ready; non-serving ones are never used, and a service left with only
/// those rejects. With `externalTrafficPolicy: Local` the fallback applies to
/// the node's own endpoints even while remote ones are ready.
#[test]
fn terminating_endpoints_only_without_ready_ones() {
    let mut cluster = Cluster::new(&["a", "b", "c", "client"], &["r"]);
    let with_terminating = |name, host, ready: &[&'static str]| {
        Svc::new(name, host, ready)
            .endpoint("b", Condition::ServingTerminating)
            .endpoint("c", Condition::Terminating)
    };
    let mixed = with_terminating("mixed", 10, &["a"]);
    let draining = with_terminating("draining", 11, &[]);
    let gone = Svc::new("gone", 12, &[]).endpoint("c", Condition::Terminating);
    let local_draining = with_terminating("local-draining", 13, &["r"])
        .node_port(30087)
        .external_traffic_local();
    cluster.apply(&[&mixed, &draining, &gone, &local_draining]);
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    cluster.check(&[
        (pod, mixed.cluster_addr(), reaches(&["a"], pod_ip)),
        (pod, draining.cluster_addr(), reaches(&["b"], pod_ip)),
        (pod, gone.cluster_addr(), Expect::Refused),
        (pod, local_draining.cluster_addr(), reaches(&["r"], pod_ip)),
        (
            Origin::Client(CLIENT_IP),
            local_draining.node_port_addr(),
            reaches(&["b"], CLIENT_IP),
        ),
    ]);
}

/// A service without endpoints rejects on its ClusterIP (from pods and the
/// node) and its NodePort; a served ClusterIP rejects ports it does not serve.
#[test]
fn no_endpoints_and_unserved_ports_reject() {
    let mut cluster = Cluster::new(&["a", "client"], &[]);
    let empty = Svc::new("empty", 10, &[]).node_port(30084);
    let web = Svc::new("web", 11, &["a"]);
    cluster.apply(&[&empty, &web]);
    let unserved = SocketAddr::new(web.cluster_addr().ip(), SERVICE_PORT + 1);
    cluster.check(&[
        (Origin::Pod("client"), empty.cluster_addr(), Expect::Refused),
        (Origin::Node, empty.cluster_addr(), Expect::Refused),
        (
            Origin::Client(CLIENT_IP),
            empty.node_port_addr(),
            Expect::Refused,
        ),
        (Origin::Pod("client"), unserved, Expect::Refused),
    ]);
}

/// A service labelled for another proxy (`service-proxy-name`) is left
/// alone, and handled once the label is gone (upstream e2e: "should implement
/// service.kubernetes.io/service-proxy-name").
#[test]
fn services_of_other_proxies_are_ignored() {
    let mut cluster = Cluster::new(&["a", "client"], &[]);
    let other = Svc::new("other", 10, &["a"]).proxied_by("other-proxy");
    cluster.apply(&[&other]);
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    cluster.check(&[(pod, other.cluster_addr(), Expect::Dropped)]);
    let ours = Svc::new("other", 10, &["a"]);
    cluster.apply(&[&ours]);
    cluster.check(&[(pod, ours.cluster_addr(), reaches(&["a"], pod_ip))]);
}

/// Which source each kind of service traffic arrives with.
#[test]
fn masquerade_matrix() {
    let mut cluster = Cluster::new(&["a", "b"], &["r"]);
    let to_remote = Svc::new("to-remote", 10, &["r"]).node_port(30085);
    let to_a = Svc::new("to-a", 11, &["a"]).node_port(30086);
    cluster.apply(&[&to_remote, &to_a]);
    let (a, b) = (cluster.pod_ip("a"), cluster.pod_ip("b"));
    let (remote_ip, remote_np) = (to_remote.cluster_addr(), to_remote.node_port_addr());
    let (a_ip, a_np) = (to_a.cluster_addr(), to_a.node_port_addr());
    let masqueraded = |pod| cluster.reaches_masqueraded(&[pod]);
    let client = Origin::Client(CLIENT_IP);
    cluster.check(&[
        // Pod to a remote pod, or to another pod on the same bridge: the
        // source is kept.
        (Origin::Pod("a"), remote_ip, reaches(&["r"], a)),
        (Origin::Pod("b"), a_ip, reaches(&["a"], b)),
        // Hairpin: a pod reaching itself must be masqueraded, or it would
        // answer itself directly and drop the reply.
        (Origin::Pod("a"), a_ip, masqueraded("a")),
        // The node is outside the cluster CIDR.
        (Origin::Node, remote_ip, masqueraded("r")),
        // NodePort traffic with externalTrafficPolicy: Cluster is always
        // masqueraded: from outside, from pods (including hairpin), from the
        // node.
        (client, remote_np, masqueraded("r")),
        (client, a_np, masqueraded("a")),
        (Origin::Pod("b"), a_np, masqueraded("a")),
        (Origin::Pod("a"), a_np, masqueraded("a")),
        (Origin::Node, remote_np, masqueraded("r")),
    ]);
}

/// Topology-aware routing: when every ready endpoint has a zone hint and
/// some are hinted for this node's zone, only those serve; otherwise the
/// hints are ignored.
#[test]
fn zone_hints_keep_traffic_in_zone() {
    let mut cluster = Cluster::new(&["a", "client"], &["r"]);
    let both = ["a", "r"];
    let zonal = Svc::new("zonal", 10, &both)
        .zone_hint("a", "zone-a")
        .zone_hint("r", "zone-b");
    let partial = Svc::new("partial", 11, &both).zone_hint("a", "zone-a");
    let elsewhere = Svc::new("elsewhere", 12, &both)
        .zone_hint("a", "zone-b")
        .zone_hint("r", "zone-b");
    cluster.apply(&[&zonal, &partial, &elsewhere]);
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    cluster.check(&[
        (pod, zonal.cluster_addr(), reaches(&["a"], pod_ip)),
        (
            Origin::Node,
            zonal.cluster_addr(),
            cluster.reaches_masqueraded(&["a"]),
        ),
        (pod, partial.cluster_addr(), reaches(&both, pod_ip)),
        (pod, elsewhere.cluster_addr(), reaches(&both, pod_ip)),
    ]);
}

/// `sessionAffinity: ClientIP`: every connection from one client lands on
/// the endpoint its first one picked.
#[test]
fn client_ip_affinity_sticks_to_one_endpoint() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    let endpoints = ["a", "b", "r"];
    let sticky = Svc::new("sticky", 10, &endpoints).client_ip_affinity();
    cluster.apply(&[&sticky]);
    let pod_ip = cluster.pod_ip("client");
    let origins = [
        (
            Origin::Pod("client"),
            endpoints.map(|pod| answer(pod, pod_ip)),
        ),
        (Origin::Node, endpoints.map(|pod| cluster.masqueraded(pod))),
    ];
    for proto in [Proto::Tcp, Proto::Udp] {
        for (origin, candidates) in &origins {
            let flows = (*origin, proto, sticky.cluster_addr());
            let outcomes =
                cluster.send(flows, 30, |outcome| matches!(outcome, Outcome::Answered(_)));
            let first = outcomes[0].answer("first request");
            assert!(
                candidates.contains(first),
                "{proto:?} {origin:?}: {first:?} is no endpoint"
            );
            let tally = tally(&outcomes);
            assert_eq!(
                tally.len(),
                1,
                "{proto:?} {origin:?} did not stick: {tally:?}"
            );
        }
    }
}

/// A second apply with other endpoints: new connections go only to the new
/// set while an established TCP connection to a removed endpoint keeps
/// working; a service that gained endpoints starts answering and a deleted
/// one stops.
#[test]
fn incremental_sync_moves_new_connections_keeps_open_ones() {
    let mut cluster = Cluster::new(&["a", "b", "c", "client"], &["r"]);
    let web = Svc::new("web", 10, &["a", "b"]);
    let late = Svc::new("late", 11, &[]);
    let deleted = Svc::new("deleted", 12, &["b"]);
    cluster.apply(&[&web, &late, &deleted]);
    let pod = Origin::Pod("client");
    let pod_ip = cluster.pod_ip("client");
    cluster.check(&[
        (pod, late.cluster_addr(), Expect::Refused),
        (pod, deleted.cluster_addr(), reaches(&["b"], pod_ip)),
    ]);
    let mut open = cluster.tcp_conversation(pod, web.cluster_addr());
    let first = open.exchange().answer("before the update").clone();
    cluster.apply(&[
        &Svc::new("web", 10, &["c", "r"]),
        &Svc::new("late", 11, &["a"]),
    ]);
    assert_eq!(
        open.exchange(),
        Outcome::Answered(first),
        "established connection after the update"
    );
    cluster.check(&[
        (pod, web.cluster_addr(), reaches(&["c", "r"], pod_ip)),
        (pod, late.cluster_addr(), reaches(&["a"], pod_ip)),
        (pod, deleted.cluster_addr(), Expect::Dropped),
    ]);
}

/// UDP flows (same socket, same 5-tuple) follow endpoint changes: a flow
/// whose endpoint was removed moves to the new one, through the ClusterIP and
/// the NodePort, so kube-proxy must clear the stale conntrack entries
/// (upstream e2e: "preserve UDP traffic when server pod cycles for a
/// ClusterIP/NodePort service"); a flow rejected for lack of endpoints is
/// answered once the service has some.
#[test]
fn udp_flows_follow_endpoint_changes() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &[]);
    let dns = Svc::new("dns", 10, &["a"]).node_port(30088);
    let late = Svc::new("late", 11, &[]);
    cluster.apply(&[&dns, &late]);
    let (pod, client) = (Origin::Pod("client"), Origin::Client(CLIENT_IP));
    let flows = [
        cluster.udp_flow(pod, dns.cluster_addr()),
        cluster.udp_flow(client, dns.node_port_addr()),
        cluster.udp_flow(pod, late.cluster_addr()),
    ];
    let from_pod = |pod| Outcome::Answered(answer(pod, cluster.pod_ip("client")));
    let from_client = |pod| Outcome::Answered(cluster.masqueraded(pod));
    let before = [from_pod("a"), from_client("a"), Outcome::Refused];
    let after = [from_pod("b"), from_client("b"), from_pod("b")];
    let exchange = || flows.each_ref().map(UdpFlow::exchange);
    let what = "[dns cluster IP, dns node port, late]";
    assert_eq!(exchange(), before, "{what} before the update");
    let dns = Svc::new("dns", 10, &["b"]).node_port(30088);
    cluster.apply(&[&dns, &Svc::new("late", 11, &["b"])]);
    assert_eq!(exchange(), after, "{what} after the update");
}

// ---------------------------------------------------------------------------
// IPv6 and dual-stack: the same node, programmed through `table ip6 kube-proxy`.

/// The harness's IPv6 routing and echo servers work on their own.
#[test]
fn harness_routes_plain_ipv6_traffic() {
    let cluster = Cluster::new(&["a", "b"], &["r"]);
    let closed_port = SocketAddr::new(cluster.pod_ip6("b"), 9);
    cluster.check(&[
        (
            Origin::Pod("a"),
            cluster.pod_addr6("r"),
            reaches(&["r"], cluster.pod_ip6("a")),
        ),
        (
            Origin::Node,
            cluster.pod_addr6("r"),
            reaches(&["r"], NODE_IP6),
        ),
        (
            Origin::Client6(CLIENT_IP6),
            cluster.pod_addr6("a"),
            reaches(&["a"], CLIENT_IP6),
        ),
        (Origin::Pod("a"), closed_port, Expect::Refused),
    ]);
}

/// An IPv6-only Service: its ClusterIP spreads round-robin over local and
/// remote endpoints, keeping a pod's source and masquerading the node's own
/// traffic and a pod reaching itself; its NodePort, on the node's IPv6
/// InternalIP only, masquerades the external client. Without endpoints, its
/// ClusterIP and NodePort reject, as do ports the ClusterIP does not serve.
#[test]
fn ipv6_only_service() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    let endpoints = ["a", "b", "r"];
    let web = Svc::new_ipv6("web6", 10, &endpoints).node_port(30090);
    let itself = Svc::new_ipv6("self6", 11, &["a"]);
    let empty = Svc::new_ipv6("empty6", 12, &[]).node_port(30091);
    cluster.apply(&[&web, &itself, &empty]);
    let (pod, client) = (Origin::Pod("client"), Origin::Client6(CLIENT_IP6));
    let pod_ip = cluster.pod_ip6("client");
    let not_primary = SocketAddr::new(NODE_UPLINK_IP6.into(), 30090);
    let unserved = SocketAddr::new(web.cluster_addr().ip(), SERVICE_PORT + 1);
    cluster.check(&[
        (pod, web.cluster_addr(), reaches(&endpoints, pod_ip)),
        (
            Origin::Node,
            web.cluster_addr(),
            cluster.reaches_masqueraded6(&endpoints),
        ),
        (
            Origin::Pod("a"),
            itself.cluster_addr(),
            cluster.reaches_masqueraded6(&["a"]),
        ),
        (
            client,
            web.node_port_addr(),
            cluster.reaches_masqueraded6(&endpoints),
        ),
        (client, not_primary, Expect::Refused),
        (pod, empty.cluster_addr(), Expect::Refused),
        (Origin::Node, empty.cluster_addr(), Expect::Refused),
        (client, empty.node_port_addr(), Expect::Refused),
        (pod, unserved, Expect::Refused),
    ]);
}

/// A dual-stack Service (`ipFamilies: [IPv4, IPv6]`, one EndpointSlice per
/// family) answers on both ClusterIPs and on the NodePort of both node IPs,
/// each family from its own slice only. The slices name different pods
/// (`b` only for IPv6) so that an endpoint leaking into the other family's
/// rules shows. Emptying the IPv6 slice makes only IPv6 reject, open IPv6
/// UDP flows included (their conntrack entries must go), while an open IPv4
/// UDP flow keeps its endpoint.
#[test]
fn dual_stack_service_keeps_families_apart() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    let (v4_pods, v6_pods) = (["a", "r"], ["b", "r"]);
    let dual = |v6: &[&'static str]| {
        Svc::new("dual", 10, &v4_pods)
            .dual_stack()
            .family_endpoints(Family::V6, v6)
            .node_port(30092)
    };
    let web = dual(&v6_pods);
    cluster.apply(&[&web]);
    let pod = Origin::Pod("client");
    let (v4, v6) = (
        web.cluster_addr_of(Family::V4),
        web.cluster_addr_of(Family::V6),
    );
    let (np4, np6) = (
        web.node_port_addr_of(Family::V4),
        web.node_port_addr_of(Family::V6),
    );
    let ipv4_rows = |cluster: &Cluster| {
        [
            (pod, v4, reaches(&v4_pods, cluster.pod_ip("client"))),
            (Origin::Node, v4, cluster.reaches_masqueraded(&v4_pods)),
            (
                Origin::Client(CLIENT_IP),
                np4,
                cluster.reaches_masqueraded(&v4_pods),
            ),
        ]
    };
    cluster.check(&ipv4_rows(&cluster));
    cluster.check(&[
        (pod, v6, reaches(&v6_pods, cluster.pod_ip6("client"))),
        (Origin::Node, v6, cluster.reaches_masqueraded6(&v6_pods)),
        (
            Origin::Client6(CLIENT_IP6),
            np6,
            cluster.reaches_masqueraded6(&v6_pods),
        ),
    ]);
    let flows = [
        cluster.udp_flow(pod, v4),
        cluster.udp_flow(pod, v6),
        cluster.udp_flow(Origin::Client6(CLIENT_IP6), np6),
    ];
    let exchange = || flows.each_ref().map(UdpFlow::exchange);
    let before = exchange();
    let what = "UDP flows [IPv4 ClusterIP, IPv6 ClusterIP, IPv6 NodePort]";
    for (outcome, candidates) in before.iter().zip([&v4_pods, &v6_pods, &v6_pods]) {
        let identity = &outcome.answer(what).identity;
        assert!(
            candidates.contains(&identity.as_str()),
            "{what}: {identity} answered, expected one of {candidates:?}"
        );
    }
    cluster.apply(&[&dual(&[])]);
    let after = [before[0].clone(), Outcome::Refused, Outcome::Refused];
    assert_eq!(exchange(), after, "{what} after emptying the IPv6 slice");
    cluster.check(&ipv4_rows(&cluster));
    cluster.check(&[
        (pod, v6, Expect::Refused),
        (Origin::Client6(CLIENT_IP6), np6, Expect::Refused),
    ]);
}

/// The IPv6 side of policies whose nft sets and matches are per family:
/// `externalTrafficPolicy: Local` keeps the external client's IPv6 source
/// and serves only local endpoints; IPv6 `loadBalancerSourceRanges` drop
/// other sources at the IPv6 load-balancer IP only; `ClientIP` affinity
/// sticks by IPv6 source, from a pod and from the node.
#[test]
fn ipv6_local_policy_source_ranges_and_affinity() {
    let mut cluster = Cluster::new(&["a", "b", "client"], &["r"]);
    let ingress = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x20);
    let allowed_range = "2001:db8:1::2/128";
    let local = Svc::new_ipv6("local6", 20, &["a", "r"])
        .load_balancer(30093, ingress, &[allowed_range])
        .external_traffic_local();
    let endpoints = ["a", "b", "r"];
    let sticky = Svc::new_ipv6("sticky6", 21, &endpoints).client_ip_affinity();
    cluster.apply(&[&local, &sticky]);
    let (allowed, denied) = (
        Origin::Client6(CLIENT_IP6),
        Origin::Client6(OTHER_CLIENT_IP6),
    );
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip6("client"));
    cluster.check(&[
        (
            allowed,
            local.load_balancer_addr(),
            reaches(&["a"], CLIENT_IP6),
        ),
        (denied, local.load_balancer_addr(), Expect::Dropped),
        (
            denied,
            local.node_port_addr(),
            reaches(&["a"], OTHER_CLIENT_IP6),
        ),
        (pod, local.cluster_addr(), reaches(&["a", "r"], pod_ip)),
    ]);
    let towards = |pod| cluster.topology.node_address_towards_in(pod, Family::V6);
    cluster.expect_sticky(
        pod,
        sticky.cluster_addr(),
        &endpoints.map(|pod| answer(pod, pod_ip)),
    );
    cluster.expect_sticky(
        Origin::Node,
        sticky.cluster_addr(),
        &endpoints.map(|pod| answer(pod, towards(pod))),
    );
}
