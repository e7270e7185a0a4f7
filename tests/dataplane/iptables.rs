//! Scenarios of iptables mode alone, each a function of the node's iptables [`Variant`].

// Compiled into every mode's test binary; only `tests/dataplane_iptables.rs` uses it.
#![allow(dead_code)]

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

/// How often the daemon of [`daemon_repairs_an_external_nat_flush_within_one_sync_period`]
/// syncs without changes (`--iptables-sync-period`).
const SYNC_PERIOD: Duration = Duration::from_secs(3);

/// The real daemon (against a fake API server in the node namespace) notices an external
/// `iptables -t nat -F` on its next periodic sync, by its `KUBE-PROXY-CANARY` chain being
/// empty, and restores service traffic within one sync period (plus a probe's slack).
pub fn daemon_repairs_an_external_nat_flush_within_one_sync_period(variant: Variant) {
    use crate::support::fake_apiserver::FakeApiServer;
    use std::time::Instant;

    let cluster = Cluster::new(Mode::Iptables(variant), &["a", "client"], &[]);
    let web = Svc::new("web", 10, &["a"]);
    let (_runtime, server) = cluster.topology.node.enter(|| {
        // Built on a thread in the node namespace: its workers, and the server's
        // socket, are there too.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = runtime.block_on(FakeApiServer::start());
        (runtime, server.expect("start the fake API server"))
    });
    let mut objects = vec![
        node_object(
            NODE_NAME,
            (NODE_IP, NODE_IP6),
            [LOCAL_POD_CIDR, LOCAL_POD_CIDR6],
        ),
        web.service_object(),
    ];
    objects.extend(web.endpoint_slice_objects(&cluster.topology));
    for object in objects {
        let created = match object["kind"].as_str() {
            Some("Node") => server
                .create(
                    &serde_json::from_value::<k8s_openapi::api::core::v1::Node>(object).unwrap(),
                )
                .map(drop),
            Some("Service") => server
                .create(
                    &serde_json::from_value::<k8s_openapi::api::core::v1::Service>(object).unwrap(),
                )
                .map(drop),
            _ => server
                .create(
                    &serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(
                        object,
                    )
                    .unwrap(),
                )
                .map(drop),
        };
        created.expect("create an object on the fake API server");
    }
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let output = || log.as_file().try_clone().expect("dup the log file");
    let sync_period = format!("{}s", SYNC_PERIOD.as_secs());
    let child = cluster
        .topology
        .node
        .command(env!("CARGO_BIN_EXE_kube-proxy"))
        .args(["--proxy-mode", "iptables", "--hostname-override", NODE_NAME])
        .args(["--master", &server.url()])
        .arg(format!("--cluster-cidr={CLUSTER_CIDR},{CLUSTER_CIDR6}"))
        .args(["--iptables-sync-period", &sync_period])
        .args(["--iptables-min-sync-period", "100ms"])
        .args(["--conntrack-max-per-core", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("spawn kube-proxy");
    let mut daemon = KillOnDrop(child);
    let daemon_log = || std::fs::read_to_string(log.path()).expect("read the log");
    let (pod, pod_ip) = (Origin::Pod("client"), cluster.pod_ip("client"));
    let served = Outcome::Answered(answer("a", pod_ip));
    // Polls one new TCP flow at a time until `a` answers, at most `limit`; returns when.
    let mut wait_served = |limit: Duration, what: &str| {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = cluster.send((pod, Proto::Tcp, web.cluster_addr()), 1, |_| true);
            if outcome[0] == served {
                return Instant::now();
            }
            if let Some(status) = daemon.0.try_wait().expect("wait for kube-proxy") {
                panic!("kube-proxy exited with {status}\n{}", daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last {outcome:?}\n{}",
                daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_served(Duration::from_secs(20), "first sync");
    cluster.assert_rules_in_variant(variant);
    let mut flush = cluster
        .topology
        .node
        .command(&variant.binary(Family::V4, ""));
    netns::run(flush.args(["-w", "5", "-t", "nat", "-F"]));
    let flushed = Instant::now();
    // A sync is due at most one period later; allow one probe timeout on top.
    let repaired = wait_served(SYNC_PERIOD + PROBE_TIMEOUT * 2, "repair after the flush");
    assert!(
        daemon_log().contains("canary gone"),
        "repaired without noticing the canary:\n{}",
        daemon_log()
    );
    eprintln!("nat flush repaired after {:?}", repaired - flushed);
    cluster.check(&[(pod, web.cluster_addr(), reaches(&["a"], pod_ip))]);
}

/// A child process killed (if still running) when dropped, even on panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
