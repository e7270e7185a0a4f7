//! Scenarios of iptables mode alone, each a function of the node's iptables [`Variant`].

use super::*;

/// `iptables.localhostNodePorts` (on by default): a NodePort answers on `127.0.0.1` of
/// the node, masqueraded, because kube-proxy sets `route_localnet` (upstream's
/// `KUBE-NODEPORTS` jump has no `! -d 127.0.0.0/8` then, and `KUBE-FIREWALL` drops only
/// martian 127/8 traffic that was not DNATed). IPv6 has no such thing: upstream's
/// `KUBE-SERVICES` jumps to `KUBE-NODEPORTS` only for `! -d ::1`, so `[::1]:<nodePort>`
/// reaches the node's own (closed) port and is refused.
pub fn localhost_node_ports(variant: Variant) {
    let mut cluster = Cluster::new(Mode::Iptables(variant), &["a"], &["r"]);
    let web = Svc::new("web", 10, &["a", "r"])
        .dual_stack()
        .node_port(30095);
    cluster.apply(&[&web]);
    let route_localnet = "/proc/sys/net/ipv4/conf/all/route_localnet";
    let value = cluster
        .topology
        .node
        .enter(|| std::fs::read_to_string(route_localnet));
    assert_eq!(value.expect("read route_localnet").trim(), "1");
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 30095));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 30095));
    cluster.check(&[
        (Origin::Node, v4, cluster.reaches_masqueraded(&["a", "r"])),
        (Origin::Node, v6, Expect::Refused),
        // The node's own address still works in both families.
        (
            Origin::Node,
            web.node_port_addr_of(Family::V6),
            cluster.reaches_masqueraded6(&["a", "r"]),
        ),
    ]);
}

/// Another program flushing the nat table (`iptables -t nat -F`, as a firewall reload
/// does) takes every service down until kube-proxy's next sync, which finds its canary
/// chain empty and rewrites everything: the services answer again.
pub fn external_nat_flush_is_repaired_by_the_next_sync(variant: Variant) {
    let mut cluster = Cluster::new(Mode::Iptables(variant), &["a", "client"], &["r"]);
    let web = Svc::new("web", 10, &["a", "r"])
        .dual_stack()
        .node_port(30096);
    cluster.apply(&[&web]);
    let (pod, pod_ip, pod_ip6) = (
        Origin::Pod("client"),
        cluster.pod_ip("client"),
        cluster.pod_ip6("client"),
    );
    let (v4, v6) = (
        web.cluster_addr_of(Family::V4),
        web.cluster_addr_of(Family::V6),
    );
    let serving = |cluster: &Cluster| {
        [
            (pod, v4, reaches(&["a", "r"], pod_ip)),
            (pod, v6, reaches(&["a", "r"], pod_ip6)),
            (
                Origin::Client(CLIENT_IP),
                web.node_port_addr(),
                cluster.reaches_masqueraded(&["a", "r"]),
            ),
        ]
    };
    cluster.check(&serving(&cluster));
    for family in [Family::V4, Family::V6] {
        let mut flush = cluster.topology.node.command(&variant.binary(family, ""));
        netns::run(flush.args(["-w", "5", "-t", "nat", "-F"]));
    }
    // Not DNATed any more: routed on as plain traffic, and lost beyond the node.
    cluster.check(&[
        (pod, v4, Expect::Dropped),
        (pod, v6, Expect::Dropped),
        (
            Origin::Client(CLIENT_IP),
            web.node_port_addr(),
            Expect::Refused,
        ),
    ]);
    cluster.apply(&[&web]);
    cluster.check(&serving(&cluster));
}
