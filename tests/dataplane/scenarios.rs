//! The scenarios, each a function of the [`Mode`] under test.

use super::*;

// ---------------------------------------------------------------------------
// The harness itself, before any kube-proxy is involved.

/// Routing, echo servers and the REJECT/DROP classification work on their own.
pub fn harness_routes_plain_traffic(mode: Mode) {
    let cluster = Cluster::new(mode, &["a", "b"], &["r"]);
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
pub fn cluster_ip_spreads_over_all_endpoints(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
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
/// every endpoint, each with a fair share. IPVS mode refuses the flag, naming
/// what picks endpoints there: the IPVS scheduler.
pub fn random_endpoint_selection_spreads_fairly(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
    cluster.selection = Selection::Random;
    let web = Svc::new("web", 10, &["a", "b", "r"]);
    if mode == Mode::Ipvs {
        let stderr = cluster.apply_refused(&[&web]);
        assert!(
            stderr.contains("--endpoint-selection") && stderr.contains("--ipvs-scheduler"),
            "{stderr}"
        );
        return;
    }
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
pub fn node_port_from_external_client_is_masqueraded(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a"], &["r"]);
    let web = Svc::new("web", 10, &["a", "r"]).node_port(30080);
    cluster.apply(&[&web]);
    let other_address = SocketAddr::from((NODE_UPLINK_IP, web.node_port_addr().port()));
    cluster.check(&[
        (
            Origin::Client(CLIENT_IP),
            web.node_port_addr(),
            cluster.reaches_masqueraded(&["a", "r"]),
        ),
        (
            Origin::Client(CLIENT_IP),
            other_address,
            cluster.not_primary_node_port(&["a", "r"]),
        ),
    ]);
}

/// `loadBalancerSourceRanges` guards only the load-balancer IP: other sources
/// are dropped there but still reach the externalIP and the NodePort.
pub fn load_balancer_source_ranges_guard_only_the_load_balancer_ip(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a"], &["r"]);
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
///
/// IPVS mode differs where upstream's IPVS proxier does: a NodePort virtual
/// server of a Local service has only the local endpoints as real servers,
/// whoever connects (no short-circuit for pods and the node; neither is
/// masqueraded, `KUBE-NODE-PORT-LOCAL-*` returns before `KUBE-MARK-MASQ`, and
/// the node connects from its own address); and with no local endpoint it
/// gets the cluster endpoints instead (`syncEndpoint`, kubernetes PR 97081:
/// "Allow access from local PODs even if no local endpoints exist"), so the
/// external client, unmasqueraded, reaches the remote endpoint: the remote
/// node routes the reply back through this node here, where IPVS un-NATs it.
pub fn external_traffic_policy_local(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "client"], &["r"]);
    let local = Svc::new("local", 10, &["a", "r"])
        .load_balancer(30082, Ipv4Addr::new(198, 18, 0, 30), &[])
        .external_traffic_local();
    let remote_only = Svc::new("remote-only", 11, &["r"])
        .node_port(30083)
        .external_traffic_local();
    cluster.apply(&[&local, &remote_only]);
    let (client, pod) = (Origin::Client(CLIENT_IP), Origin::Pod("client"));
    let pod_ip = cluster.pod_ip("client");
    let (no_local_endpoint, pod_to_node_port, node_to_node_port) = match mode {
        Mode::Nftables | Mode::Iptables(_) => (
            Expect::Dropped,
            reaches(&["a", "r"], pod_ip),
            cluster.reaches_masqueraded(&["a", "r"]),
        ),
        Mode::Ipvs => (
            reaches(&["r"], CLIENT_IP),
            reaches(&["a"], pod_ip),
            reaches(&["a"], NODE_IP),
        ),
    };
    cluster.check(&[
        (client, local.node_port_addr(), reaches(&["a"], CLIENT_IP)),
        (
            client,
            local.load_balancer_addr(),
            reaches(&["a"], CLIENT_IP),
        ),
        (client, remote_only.node_port_addr(), no_local_endpoint),
        (pod, local.cluster_addr(), reaches(&["a", "r"], pod_ip)),
        (pod, remote_only.cluster_addr(), reaches(&["r"], pod_ip)),
        (pod, local.node_port_addr(), pod_to_node_port),
        (pod, remote_only.node_port_addr(), reaches(&["r"], pod_ip)),
        (Origin::Node, local.node_port_addr(), node_to_node_port),
    ]);
}

/// `internalTrafficPolicy: Local`: ClusterIP traffic from pods and the node
/// goes only to local endpoints; with none it is dropped. IPVS mode differs
/// where upstream's IPVS proxier does (`syncEndpoint`, kubernetes PR 97081):
/// a ClusterIP without local endpoints gets the cluster endpoints instead, but
/// only where the port has any, that is where it also serves Cluster-policy
/// traffic (here a NodePort); a ClusterIP-only port has none and drops.
pub fn internal_traffic_policy_local(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "client"], &["r"]);
    let local = Svc::new("local", 10, &["a", "r"]).internal_traffic_local();
    let remote_only = Svc::new("remote-only", 11, &["r"]).internal_traffic_local();
    let remote_node_port = Svc::new("remote-node-port", 12, &["r"])
        .node_port(30084)
        .internal_traffic_local();
    cluster.apply(&[&local, &remote_only, &remote_node_port]);
    let pod = Origin::Pod("client");
    let (from_pod, from_node) = match mode {
        Mode::Nftables | Mode::Iptables(_) => (Expect::Dropped, Expect::Dropped),
        Mode::Ipvs => (
            reaches(&["r"], cluster.pod_ip("client")),
            cluster.reaches_masqueraded(&["r"]),
        ),
    };
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
        (pod, remote_node_port.cluster_addr(), from_pod),
        (Origin::Node, remote_node_port.cluster_addr(), from_node),
    ]);
}

/// Serving-but-terminating endpoints are a fallback for when no endpoint is
/// ready; non-serving ones are never used, and a service left with only
/// those rejects. With `externalTrafficPolicy: Local` the fallback applies to
/// the node's own endpoints even while remote ones are ready.
pub fn terminating_endpoints_only_without_ready_ones(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "c", "client"], &["r"]);
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
/// node) and its NodePort; a served ClusterIP rejects ports it does not serve
/// in nftables mode only (see [`unserved_cluster_ip_port`]).
pub fn no_endpoints_and_unserved_ports_reject(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "client"], &[]);
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
        (
            Origin::Pod("client"),
            unserved,
            unserved_cluster_ip_port(mode),
        ),
    ]);
}

/// A service labelled for another proxy (`service-proxy-name`) is left
/// alone, and handled once the label is gone (upstream e2e: "should implement
/// service.kubernetes.io/service-proxy-name").
pub fn services_of_other_proxies_are_ignored(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "client"], &[]);
    let other = Svc::new("other", 10, &["a"]).proxied_by("other-proxy");
    cluster.apply(&[&other]);
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    cluster.check(&[(pod, other.cluster_addr(), Expect::Dropped)]);
    let ours = Svc::new("other", 10, &["a"]);
    cluster.apply(&[&ours]);
    cluster.check(&[(pod, ours.cluster_addr(), reaches(&["a"], pod_ip))]);
}

/// Which source each kind of service traffic arrives with.
pub fn masquerade_matrix(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b"], &["r"]);
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
pub fn zone_hints_keep_traffic_in_zone(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "client"], &["r"]);
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
pub fn client_ip_affinity_sticks_to_one_endpoint(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
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
pub fn incremental_sync_moves_new_connections_keeps_open_ones(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "c", "client"], &["r"]);
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
pub fn udp_flows_follow_endpoint_changes(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &[]);
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
pub fn harness_routes_plain_ipv6_traffic(mode: Mode) {
    let cluster = Cluster::new(mode, &["a", "b"], &["r"]);
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
pub fn ipv6_only_service(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
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
        (
            client,
            not_primary,
            cluster.not_primary_node_port6(&endpoints),
        ),
        (pod, empty.cluster_addr(), Expect::Refused),
        (Origin::Node, empty.cluster_addr(), Expect::Refused),
        (client, empty.node_port_addr(), Expect::Refused),
        (pod, unserved, unserved_cluster_ip_port(mode)),
    ]);
}

/// A dual-stack Service (`ipFamilies: [IPv4, IPv6]`, one EndpointSlice per
/// family) answers on both ClusterIPs and on the NodePort of both node IPs,
/// each family from its own slice only. The slices name different pods
/// (`b` only for IPv6) so that an endpoint leaking into the other family's
/// rules shows. Emptying the IPv6 slice makes only IPv6 reject, open IPv6
/// UDP flows included (their conntrack entries must go), while an open IPv4
/// UDP flow keeps its endpoint.
pub fn dual_stack_service_keeps_families_apart(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
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
pub fn ipv6_local_policy_source_ranges_and_affinity(mode: Mode) {
    let mut cluster = Cluster::new(mode, &["a", "b", "client"], &["r"]);
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
