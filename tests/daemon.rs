//! The real `kube-proxy` binary, run as a daemon against the fake API server and observed
//! through the kernel.
//!
//! Each test runs on a thread of its own that first moves into a fresh, private network
//! namespace ([`in_private_netns`]). Everything the test starts from that thread lives
//! there too: the fake API server (bound to `127.0.0.1` of that namespace by the tokio
//! runtime built on the thread), the `kube-proxy` child process, and every `nft` it runs
//! to look at the rules. The namespace disappears with the thread and its children; the
//! host's own namespace is never touched.
//!
//! What the kernel holds is reduced to [`Facts`], one line per thing a Service gets
//! (its `service-ips` element, each endpoint chain its service chain dispatches to, or
//! its `no-endpoint-services` element) plus the node's `nodeport-ips`, so that a test
//! compares what it expects with what is programmed as two sets, and a failure shows
//! exactly what is missing or extra.
//!
//! The daemon runs with upstream's default `syncPeriod` (30 s): every convergence these
//! tests wait for has to come from the API events (or a relist), never from a periodic
//! full resync that would paper over a missed event.

// Each test crate uses a part of the shared support code.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service, Taint};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use support::daemon::*;
use support::fake_apiserver::FakeApiServer;
use support::netns::{output_bounded, run, TOOL_LIMIT};

// ---------------------------------------------------------------------------
// The tests.

/// With the API server holding every request, the daemon programs nothing: not even an
/// empty table. Once the lists complete, the very first table it writes already holds
/// every Service with its endpoints (never a partial model).
#[test]
fn programs_nothing_before_the_initial_lists_complete() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5", "10.244.1.6"]);
        create_backed(server, "db", "10.96.0.20", &["10.244.1.9"]);
        server.create(&service("idle", "10.96.0.30")).unwrap();

        server.pause();
        let mut daemon = Daemon::start(server);
        // Its list requests are now held by the server: nothing may be programmed while
        // they are, however many min-sync periods pass.
        daemon.wait_connected(server);
        daemon.assert_no_table_for(Duration::from_secs(1));

        server.resume();
        let first = daemon.wait_until("the first sync after the lists", || {
            kernel_facts().ok_or_else(|| "no table yet".to_owned())
        });
        // The first sync waits for the Node too, so its NodePort address is already there.
        assert_same_facts(
            &expected_facts(server),
            &first,
            "the first programmed table",
        );
    });
}

/// A Service with endpoints gets its `service-ips` element and one endpoint chain per
/// endpoint; an EndpointSlice update moves them; deleting the Service removes them. A
/// second Service is never disturbed.
#[test]
fn follows_service_and_endpointslice_changes() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5", "10.244.1.6"]);
        create_backed(server, "db", "10.96.0.20", &["10.244.1.9"]);
        let db = programmed("db", "10.96.0.20", &["10.244.1.9"]);

        let mut daemon = Daemon::start(server);
        daemon.wait_for_facts(&on_node(&[
            programmed("web", "10.96.0.10", &["10.244.1.5", "10.244.1.6"]),
            db.clone(),
        ]));

        server
            .update(&slice("web", &["10.244.1.6", "10.244.1.7"]))
            .unwrap();
        daemon.wait_for_facts(&on_node(&[
            programmed("web", "10.96.0.10", &["10.244.1.6", "10.244.1.7"]),
            db.clone(),
        ]));

        // As in a real cluster, the EndpointSlice outlives its Service for a while.
        server.delete::<Service>(NAMESPACE, "web").unwrap();
        daemon.wait_for_facts(&on_node(&[db]));
    });
}

/// Watches dropped (resumed from history) and then history expired (410 Gone → relist),
/// each time with creates, updates and deletes made while the daemon was cut off: the
/// kernel ends up with exactly the server's Services, and no phantom of a deleted one.
#[test]
fn converges_after_dropped_watches_and_expired_history() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "alpha", "10.96.0.1", &["10.244.1.1"]);
        create_backed(server, "beta", "10.96.0.2", &["10.244.1.2"]);
        create_backed(server, "gamma", "10.96.0.3", &["10.244.1.3"]);
        create_backed(server, "delta", "10.96.0.4", &["10.244.1.4"]);
        let mut daemon = Daemon::start(server);
        daemon.wait_for_facts(&expected_facts(server));
        let lists_before = service_lists(server);

        // Disconnected; the daemon catches up by resuming its watches from history.
        server.pause();
        server.drop_watches();
        server.update(&slice("alpha", &["10.244.1.11"])).unwrap();
        server.delete::<Service>(NAMESPACE, "beta").unwrap();
        server.delete::<EndpointSlice>(NAMESPACE, "beta").unwrap();
        create_backed(server, "epsilon", "10.96.0.5", &["10.244.1.5"]);
        server.resume();
        daemon.wait_for_facts(&expected_facts(server));
        assert_eq!(
            service_lists(server),
            lists_before,
            "dropped watches should resume from history, not relist"
        );

        // Disconnected again, and the history that would replay the changes is gone:
        // only a relist can tell the daemon that gamma and delta's endpoints were deleted.
        server.pause();
        server.drop_watches();
        server.delete::<Service>(NAMESPACE, "gamma").unwrap();
        server.delete::<EndpointSlice>(NAMESPACE, "delta").unwrap();
        server.update(&slice("epsilon", &["10.244.1.50"])).unwrap();
        create_backed(server, "zeta", "10.96.0.6", &["10.244.1.6"]);
        server.expire_history();
        server.resume();
        let expected = expected_facts(server);
        assert!(
            expected.is_superset(&programmed("delta", "10.96.0.4", &[])),
            "delta without its slice should expect a no-endpoints element: {expected:#?}"
        );
        daemon.wait_for_facts(&expected);
        assert!(
            service_lists(server) > lists_before,
            "410 Gone should have made the daemon relist Services"
        );
    });
}

/// Services (and their slices) that belong to another proxy are never programmed; a
/// Service that is handed over to another proxy loses its rules.
#[test]
fn never_programs_services_of_another_proxy() {
    in_private_netns(|server| {
        create_node(server);
        let other = [(PROXY_NAME_LABEL, "other-proxy")];
        server
            .create(&labelled(service("foreign", "10.96.0.30"), &other))
            .unwrap();
        server
            .create(&labelled(slice("foreign", &["10.244.1.30"]), &other))
            .unwrap();
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);

        let web = programmed("web", "10.96.0.10", &["10.244.1.5"]);
        let mut daemon = Daemon::start(server);
        daemon.wait_for_facts(&on_node(&[web]));

        // Handed over: the Service stops matching the daemon's selector (its watch sees
        // a DELETED) while its unlabelled slice stays visible.
        server
            .update(&labelled(service("web", "10.96.0.10"), &other))
            .unwrap();
        daemon.wait_for_facts(&on_node(&[]));

        // A later change syncs again; still nothing of either foreign Service.
        create_backed(server, "late", "10.96.0.40", &["10.244.1.40"]);
        let late = programmed("late", "10.96.0.40", &["10.244.1.40"]);
        daemon.wait_for_facts(&on_node(&[late]));
    });
}

/// SIGTERM stops the daemon promptly with exit status 0 and leaves its rules in place,
/// byte for byte.
#[test]
fn sigterm_exits_zero_and_keeps_the_rules() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        let web = programmed("web", "10.96.0.10", &["10.244.1.5"]);
        let mut daemon = Daemon::start(server);
        // Everything, the Node's address included: nothing is left for a later sync.
        daemon.wait_for_facts(&on_node(&[web]));
        let before = nft(&["list", "table", "ip", "kube-proxy"]);

        let status = daemon.terminate();
        assert!(
            status.success(),
            "kube-proxy exited with {status} after SIGTERM\n{}",
            daemon.log()
        );
        let after = nft(&["list", "table", "ip", "kube-proxy"]);
        assert!(
            before == after,
            "rules changed on exit:\n--- before ---\n{before}\n--- after ---\n{after}"
        );
    });
}

/// SIGTERM also stops a daemon still waiting for its initial lists (requests hanging on
/// a paused server) promptly and with exit status 0, having programmed nothing.
#[test]
fn sigterm_while_waiting_for_the_lists_exits_zero() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        server.pause();
        let mut daemon = Daemon::start(server);
        daemon.wait_connected(server);

        let status = daemon.terminate();
        assert!(
            status.success(),
            "kube-proxy exited with {status} after SIGTERM\n{}",
            daemon.log()
        );
        assert_eq!(kernel_facts(), None, "rules programmed without the lists");
    });
}

/// Objects the API server would normally refuse — an EndpointSlice with an unparsable
/// address, a Service port with an unknown protocol — neither crash the daemon nor stop
/// it from programming other Services, whether they come in the initial list or later
/// through the watch.
#[test]
fn malformed_objects_do_not_disturb_other_services() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "good", "10.96.0.40", &["10.244.1.40"]);
        create_backed(server, "bad-address", "10.96.0.41", &["not-an-ip"]);
        let bad_protocol = with_protocol(service("bad-protocol", "10.96.0.42"), "BOGUS");
        server.create(&bad_protocol).unwrap();
        server
            .create(&slice("bad-protocol", &["10.244.1.42"]))
            .unwrap();

        let mut daemon = Daemon::start(server);
        let good = |endpoints: &[&str]| programmed("good", "10.96.0.40", endpoints);
        daemon.wait_for_service(&good(&["10.244.1.40"]), "good", "10.96.0.40");

        // The same kinds of damage again, now arriving as watch events.
        create_backed(server, "bad-late", "10.96.0.43", &["10.244.1.300"]);
        server
            .create(&with_protocol(
                service("bad-late-protocol", "10.96.0.44"),
                "QUIC",
            ))
            .unwrap();
        server
            .update(&slice("good", &["10.244.1.40", "10.244.1.41"]))
            .unwrap();
        daemon.wait_for_service(&good(&["10.244.1.40", "10.244.1.41"]), "good", "10.96.0.40");
        daemon.assert_alive();
    });
}

/// The health server answers `/healthz` and `/livez` with upstream's JSON once the first
/// sync is done, and the metrics server serves the sync histogram, the conntrack
/// reconciler's metrics, the probe counters, the proxy mode and the effective
/// configuration, each on the address its flag names. When the cluster autoscaler marks
/// our Node for deletion, `/healthz` turns 503 and `/livez` stays 200.
#[test]
fn serves_health_and_metrics() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        let (healthz, metrics) = (free_local_port(), free_local_port());
        let mut daemon = Daemon::start_with(
            server,
            &[
                &format!("--healthz-bind-address=127.0.0.1:{healthz}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ],
        );
        daemon.wait_for_facts(&on_node(&[programmed(
            "web",
            "10.96.0.10",
            &["10.244.1.5"],
        )]));

        for path in ["/healthz", "/livez"] {
            let (status, body) = daemon.wait_until(&format!("{path} after the first sync"), || {
                http_get(healthz, path)
                    .filter(|(_, body)| body.contains("\"status\""))
                    .ok_or_else(|| format!("no answer with a per-family status from {path} yet"))
            });
            assert_eq!(status, 200, "{path}: {body}");
            let json: Value = serde_json::from_str(&body).expect("health bodies are JSON");
            assert_eq!(json["healthy"], true, "{path}: {body}");
            for field in ["lastUpdated", "currentTime"] {
                assert!(json[field].is_string(), "{path} lacks {field}: {body}");
            }
            assert_eq!(json["status"]["IPv4"]["healthy"], true, "{path}: {body}");
            let eligible = (path == "/healthz").then_some(Value::Bool(true));
            assert_eq!(
                json.get("nodeEligible").cloned(),
                eligible,
                "{path}: {body}"
            );
        }

        let (status, text) = http_get(metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        // Upstream's ip_family label: one sync programs both families, so each reports
        // it. Each sync ends with the stale-entry cleanup of each family (nothing to
        // delete here).
        let count = |name: &str, label: &str| {
            let prefix = format!("{name}_count{label} ");
            let count = text.lines().find_map(|l| l.strip_prefix(&prefix));
            count.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
        };
        for family in ["IPv4", "IPv6"] {
            let label = format!("{{ip_family=\"{family}\"}}");
            let sync = "kubeproxy_sync_proxy_rules_duration_seconds";
            assert!(count(sync, &label) > 0, "no {family} sync:\n{text}");
            let cleanup = "kubeproxy_conntrack_reconciler_sync_duration_seconds";
            assert!(count(cleanup, &label) > 0, "no {family} cleanup:\n{text}");
            let deleted = format!("kubeproxy_conntrack_reconciler_deleted_entries_total{label} 0");
            assert!(
                text.lines().any(|l| l == deleted),
                "no {deleted:?}:\n{text}"
            );
        }
        assert!(
            probes(&text, "200") >= 1,
            "the /healthz probe is not counted:\n{text}"
        );
        assert_eq!(
            http_get(metrics, "/proxyMode"),
            Some((200, "nftables".to_owned()))
        );
        let (status, configz) = http_get(metrics, "/configz").expect("GET /configz");
        assert_eq!(status, 200);
        let configz: Value = serde_json::from_str(&configz).expect("/configz is JSON");
        let config = &configz["kubeproxy.config.k8s.io"];
        assert_eq!(config["mode"], "nftables", "{configz}");
        assert_eq!(config["hostnameOverride"], NODE, "{configz}");

        // The cluster autoscaler is about to delete our Node: load balancers must drain it
        // (/healthz 503), while the proxy itself stays live (/livez 200).
        let mut doomed = our_node();
        let spec = doomed.spec.get_or_insert_with(Default::default);
        spec.taints = Some(vec![Taint {
            key: "ToBeDeletedByClusterAutoscaler".to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        }]);
        server.update(&doomed).unwrap();
        let body = daemon.wait_until(
            "/healthz to fail for a Node being deleted",
            || match http_get(healthz, "/healthz") {
                Some((503, body)) => Ok(body),
                other => Err(format!("/healthz answered {other:?}")),
            },
        );
        let json: Value = serde_json::from_str(&body).expect("health bodies are JSON");
        assert_eq!(json["nodeEligible"], false, "{body}");
        assert_eq!(json["healthy"], true, "the proxy itself is fine: {body}");
        assert_eq!(http_get(healthz, "/livez").map(|(code, _)| code), Some(200));
        let (_, text) = http_get(metrics, "/metrics").expect("GET /metrics");
        assert!(probes(&text, "503") >= 1, "503 not counted:\n{text}");
    });
}

/// A wildcard IPv4 bind address (`healthzBindAddress`' default `0.0.0.0:10256`, a
/// `metricsBindAddress` of `0.0.0.0:10249`) serves both families, as upstream's Go
/// listeners do: an IPv6 or dual-stack node's load balancers and scrapers reach it on
/// its IPv6 addresses.
#[test]
fn wildcard_bind_addresses_answer_on_ipv6_too() {
    in_private_netns(|server| {
        create_node(server);
        let (healthz, metrics) = (free_local_port(), free_local_port());
        let mut daemon = Daemon::start_with(
            server,
            &[
                &format!("--healthz-bind-address=0.0.0.0:{healthz}"),
                &format!("--metrics-bind-address=0.0.0.0:{metrics}"),
            ],
        );
        let v6 = |port: u16| std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let (status, body) = daemon.wait_until("/healthz on [::1]", || {
            http_get_at(v6(healthz), "/healthz").ok_or("nothing answers on [::1]".to_owned())
        });
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"lastUpdated\""), "{body}");
        assert_eq!(http_get(healthz, "/livez").map(|(code, _)| code), Some(200));
        assert_eq!(
            http_get_at(v6(metrics), "/proxyMode"),
            Some((200, "nftables".to_owned()))
        );
        assert_eq!(
            http_get(metrics, "/proxyMode"),
            Some((200, "nftables".to_owned()))
        );
    });
}

/// A UDP conntrack entry that sends a Service's frontend to something that is not its
/// endpoint is deleted after the sync, and counted in upstream's reconciler metric.
#[test]
fn stale_udp_entries_are_deleted_and_counted() {
    in_private_netns(|server| {
        create_node(server);
        server
            .create(&with_protocol(service("dns", "10.96.0.20"), "UDP"))
            .unwrap();
        let mut endpoints = slice("dns", &["10.244.1.5"]);
        for port in endpoints.ports.iter_mut().flatten() {
            port.protocol = Some("UDP".to_owned());
        }
        server.create(&endpoints).unwrap();
        // A client's flow to the ClusterIP, DNATed to a pod that is no endpoint (any more).
        let stale = "src=10.0.0.1 dst=10.96.0.20 sport=40000 dport=80 src=10.244.1.99";
        let insert = "-I -p udp -s 10.0.0.1 -d 10.96.0.20 --sport 40000 --dport 80 \
                      -r 10.244.1.99 -q 10.0.0.1 --reply-port-src 8080 --reply-port-dst 40000 \
                      -t 300 -u SEEN_REPLY";
        run(Command::new("conntrack").args(insert.split_whitespace()));
        let udp_entries = || run(Command::new("conntrack").args(["-L", "-p", "udp"]));
        assert!(udp_entries().contains(stale), "{}", udp_entries());
        let metrics = free_local_port();
        let flag = format!("--metrics-bind-address=127.0.0.1:{metrics}");
        let mut daemon = Daemon::start_with(server, &[&flag]);
        let deleted = "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 1";
        daemon.wait_until("the deleted entry to be counted", || {
            let (_, text) = http_get(metrics, "/metrics").ok_or("no /metrics yet")?;
            text.lines().any(|l| l == deleted).then_some(()).ok_or(text)
        });
        assert!(!udp_entries().contains(stale), "{}", udp_entries());
    });
}

/// How many `/healthz` probes the metrics `text` counts with status `code`.
fn probes(text: &str, code: &str) -> u64 {
    let prefix = format!("kubeproxy_proxy_healthz_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn nft(args: &[&str]) -> String {
    run(Command::new("nft").args(args))
}

// ---------------------------------------------------------------------------
// Facts: what is programmed for each Service, as comparable lines.

type Facts = BTreeSet<String>;

/// `ip/proto/port`, as in a `service-ips` key.
fn destination(cluster_ip: &str, protocol: &str, port: impl std::fmt::Display) -> String {
    format!("{cluster_ip}/{}/{port}", protocol.to_lowercase())
}

/// The Service port's ClusterIP sends to `chain` (kind and `ns/name/proto/port`).
fn service_ip_fact(destination: &str, chain: &str) -> String {
    format!("service-ips {destination} -> {chain}")
}

/// The Service port's chain dispatches to `endpoint` (`ip/port`).
fn endpoint_fact(service_port: &str, endpoint: &str) -> String {
    format!("endpoint {service_port} -> {endpoint}")
}

/// The Service port has no endpoints, so its ClusterIP rejects.
fn no_endpoints_fact(destination: &str) -> String {
    format!("no-endpoints {destination}")
}

/// The facts of test Service `name` ([`service`]) with ready `endpoints`.
fn programmed(name: &str, cluster_ip: &str, endpoints: &[&str]) -> Facts {
    let to = destination(cluster_ip, "TCP", SERVICE_PORT);
    if endpoints.is_empty() {
        return [no_endpoints_fact(&to)].into();
    }
    let service_port = format!("{NAMESPACE}/{name}/tcp/{PORT_NAME}");
    let mut facts: Facts = [service_ip_fact(&to, &format!("service {service_port}"))].into();
    facts.extend(
        endpoints
            .iter()
            .map(|ip| endpoint_fact(&service_port, &format!("{ip}/{TARGET_PORT}"))),
    );
    facts
}

/// NodePorts are accepted on the node's address.
fn nodeport_fact(node_ip: &str) -> String {
    format!("nodeport-ips {node_ip}")
}

/// The facts of `services` on our node, whose InternalIP [`create_node`] sets.
fn on_node(services: &[Facts]) -> Facts {
    let mut facts: Facts = [nodeport_fact(NODE_IP)].into();
    facts.extend(services.iter().flatten().cloned());
    facts
}

/// The facts that concern Service `name` at `cluster_ip`.
fn about(facts: &Facts, name: &str, cluster_ip: &str) -> Facts {
    let (by_name, by_ip) = (format!(" {NAMESPACE}/{name}/"), format!(" {cluster_ip}/"));
    facts
        .iter()
        .filter(|f| f.contains(&by_name) || f.contains(&by_ip))
        .cloned()
        .collect()
}

/// What kube-proxy should program for the objects `server` holds, derived from them
/// independently of the daemon: NodePorts on our Node's InternalIP (upstream's nftables
/// default), and every Service not claimed by another proxy, each port with the ready
/// endpoints of the slices labelled with the Service's name.
fn expected_facts(server: &FakeApiServer) -> Facts {
    let slices = server.objects::<EndpointSlice>();
    let mut facts = Facts::new();
    for node in server.objects::<Node>() {
        if node.metadata.name.as_deref() != Some(NODE) {
            continue;
        }
        let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
        let internal = addresses.iter().filter(|a| a.type_ == "InternalIP");
        facts.extend(internal.map(|a| nodeport_fact(&a.address)));
    }
    for svc in server.objects::<Service>() {
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        if labels.contains_key(PROXY_NAME_LABEL) {
            continue;
        }
        let (namespace, name) = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let spec = svc.spec.clone().unwrap_or_default();
        let cluster_ip = spec.cluster_ip.unwrap_or_default();
        let backing: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                let labels = s.metadata.labels.clone().unwrap_or_default();
                s.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && labels.get(SERVICE_NAME_LABEL) == Some(&name)
                    && !labels.contains_key(PROXY_NAME_LABEL)
            })
            .collect();
        for port in spec.ports.unwrap_or_default() {
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            let port_name = port.name.clone().unwrap_or_default();
            let to = destination(&cluster_ip, &protocol, port.port);
            let service_port =
                format!("{namespace}/{name}/{}/{port_name}", protocol.to_lowercase());
            let endpoints = ready_endpoints(&backing, &port_name);
            if endpoints.is_empty() {
                facts.insert(no_endpoints_fact(&to));
                continue;
            }
            facts.insert(service_ip_fact(&to, &format!("service {service_port}")));
            facts.extend(endpoints.iter().map(|ep| endpoint_fact(&service_port, ep)));
        }
    }
    facts
}

/// `ip/port` of each ready endpoint in `slices` for the port named `port_name`.
fn ready_endpoints(slices: &[&EndpointSlice], port_name: &str) -> BTreeSet<String> {
    let mut endpoints = BTreeSet::new();
    for slice in slices {
        let ports = slice.ports.clone().unwrap_or_default();
        let Some(port) = ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
            if ready != Some(false) {
                endpoints.insert(format!("{}/{port}", endpoint.addresses[0]));
            }
        }
    }
    endpoints
}

/// Shows what is missing from and extra in `actual`; `None` when they are equal.
fn facts_diff(expected: &Facts, actual: &Facts) -> Option<String> {
    let missing: Vec<_> = expected.difference(actual).collect();
    let extra: Vec<_> = actual.difference(expected).collect();
    (!missing.is_empty() || !extra.is_empty())
        .then(|| format!("missing: {missing:#?}\nextra: {extra:#?}"))
}

fn assert_same_facts(expected: &Facts, actual: &Facts, what: &str) {
    if let Some(diff) = facts_diff(expected, actual) {
        panic!("{what} differs from what was expected:\n{diff}");
    }
}

// ---------------------------------------------------------------------------
// Reading the kernel.

/// What `table ip kube-proxy` programs, as [`Facts`]; `None` when there is no table.
///
/// Endpoints are the chains a live `service-*` chain dispatches to, in its rules or
/// through the maps its rules look up (`vmap @…`); an endpoint chain
/// with rules that no service chain uses, or one used but empty, shows up as an odd
/// fact so that it fails any comparison. (Flushed, rule-less chains awaiting deletion
/// are upstream's normal way of retiring chains and are ignored.)
fn kernel_facts() -> Option<Facts> {
    let out = output_bounded(
        Command::new("nft").args(["-j", "list", "table", "ip", "kube-proxy"]),
        TOOL_LIMIT,
    )
    .expect("run nft");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("No such file or directory"),
            "nft list table failed: {stderr}"
        );
        return None;
    }
    let json: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    let table = Table::parse(&json);
    let mut facts = Facts::new();
    for (key, target) in table.map_elements("service-ips") {
        facts.insert(service_ip_fact(&key, &chain_subject(&target)));
    }
    for (key, _) in table.map_elements("no-endpoint-services") {
        facts.insert(no_endpoints_fact(&key));
    }
    for element in table.elements("nodeport-ips") {
        facts.insert(nodeport_fact(&element_key(element)));
    }
    let mut used = BTreeSet::new();
    for (chain, rules) in &table.chains {
        if !chain.starts_with("service-") {
            continue;
        }
        let through_maps = map_refs(rules)
            .flat_map(|map| table.map_elements(&map))
            .map(|(_, target)| target);
        let targets = goto_targets(rules).chain(through_maps);
        for endpoint in targets.filter(|t| t.starts_with("endpoint-")) {
            facts.insert(endpoint_chain_fact(&endpoint, &table));
            used.insert(endpoint);
        }
    }
    for (chain, rules) in &table.chains {
        if chain.starts_with("endpoint-") && !rules.is_empty() && !used.contains(chain) {
            facts.insert(format!("unused endpoint chain with rules: {chain}"));
        }
    }
    Some(facts)
}

/// The fact for endpoint chain `chain` (`endpoint-HASH-ns/name/proto/port__ip/port`).
fn endpoint_chain_fact(chain: &str, table: &Table) -> String {
    if table.chains.get(chain).is_none_or(Vec::is_empty) {
        return format!("service chain jumps to a missing or empty chain: {chain}");
    }
    let subject = chain_subject(chain);
    match subject
        .strip_prefix("endpoint ")
        .and_then(|s| s.split_once("__"))
    {
        Some((service_port, endpoint)) => endpoint_fact(service_port, endpoint),
        None => format!("unparsable endpoint chain name: {chain}"),
    }
}

/// `service-ABCDEFGH-ns/name/tcp/http` → `service ns/name/tcp/http`: the chain's kind
/// and what it is for, without the hash.
fn chain_subject(chain: &str) -> String {
    chain
        .split_once('-')
        .and_then(|(kind, rest)| Some((kind, rest.split_once('-')?.1)))
        .map_or_else(|| chain.to_owned(), |(kind, what)| format!("{kind} {what}"))
}

/// Every `goto` target in `rules` (in verdict maps or plain).
fn goto_targets(rules: &[Value]) -> impl Iterator<Item = String> {
    find_in(rules, |v| {
        v.get("goto")?["target"].as_str().map(str::to_owned)
    })
}

/// The maps that `rules` look up: nft's JSON writes a named set or map as `"@name"`.
fn map_refs(rules: &[Value]) -> impl Iterator<Item = String> {
    find_in(rules, |v| v.as_str()?.strip_prefix('@').map(str::to_owned))
}

/// Every value `pick` finds anywhere in the JSON of `rules`.
fn find_in(rules: &[Value], pick: impl Fn(&Value) -> Option<String>) -> std::vec::IntoIter<String> {
    fn walk(value: &Value, pick: &dyn Fn(&Value) -> Option<String>, out: &mut Vec<String>) {
        out.extend(pick(value));
        match value {
            Value::Object(map) => map.values().for_each(|v| walk(v, pick, out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, pick, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    rules.iter().for_each(|rule| walk(rule, &pick, &mut out));
    out.into_iter()
}

/// The parts of `nft -j list table` output the facts are made of.
struct Table<'a> {
    /// Chain name → its rules' `expr` arrays.
    chains: std::collections::BTreeMap<String, Vec<Value>>,
    /// Every `set` and `map` object.
    sets: Vec<&'a Value>,
}

impl<'a> Table<'a> {
    fn parse(json: &'a Value) -> Table<'a> {
        let items = json["nftables"].as_array().expect("nftables array");
        let mut chains = std::collections::BTreeMap::<String, Vec<Value>>::new();
        let mut sets = Vec::new();
        for item in items {
            if let Some(name) = item["chain"]["name"].as_str() {
                chains.entry(name.to_owned()).or_default();
            } else if let Some(chain) = item["rule"]["chain"].as_str() {
                let expr = item["rule"]["expr"].clone();
                chains.entry(chain.to_owned()).or_default().push(expr);
            } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
                sets.push(set);
            }
        }
        Table { chains, sets }
    }

    /// The elements of set or map `name` (for a map, `[key, value]` pairs).
    fn elements(&self, name: &str) -> &[Value] {
        let set = self.sets.iter().find(|m| m["name"] == name);
        set.and_then(|set| set["elem"].as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// `(key, goto target or other verdict)` of map `name`'s elements.
    fn map_elements(&self, name: &str) -> Vec<(String, String)> {
        self.elements(name)
            .iter()
            .map(|pair| {
                let verdict = pair[1]["goto"]["target"]
                    .as_str()
                    .map_or_else(|| pair[1].to_string(), str::to_owned);
                (element_key(&pair[0]), verdict)
            })
            .collect()
    }
}

/// A set element or map key as text, concatenations joined with `/` (`ip/proto/port`).
fn element_key(key: &Value) -> String {
    // Elements with a comment come as `{"elem": {"val": KEY, "comment": ..}}`.
    let key = key["elem"].get("val").unwrap_or(key);
    match key["concat"].as_array() {
        Some(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join("/"),
        None => scalar(key),
    }
}

/// A JSON string without quotes, anything else as JSON.
fn scalar(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Waits on what the kernel holds, as [`Facts`].
trait KernelWaits {
    /// Waits until the kernel holds exactly `expected`.
    fn wait_for_facts(&mut self, expected: &Facts);
    /// Waits until the kernel's facts about one Service are exactly `expected`.
    fn wait_for_service(&mut self, expected: &Facts, name: &str, cluster_ip: &str);
    /// Checks for `window` that the daemon is running and has created no table.
    fn assert_no_table_for(&mut self, window: Duration);
}

impl KernelWaits for Daemon {
    fn wait_for_facts(&mut self, expected: &Facts) {
        self.wait_until("the kernel to hold exactly the expected rules", || {
            let actual = kernel_facts().ok_or_else(|| "no kube-proxy table".to_owned())?;
            facts_diff(expected, &actual).map_or(Ok(()), Err)
        });
    }

    fn wait_for_service(&mut self, expected: &Facts, name: &str, cluster_ip: &str) {
        self.wait_until(&format!("the kernel to hold {name}'s rules"), || {
            let actual = kernel_facts().ok_or_else(|| "no kube-proxy table".to_owned())?;
            facts_diff(expected, &about(&actual, name, cluster_ip)).map_or(Ok(()), Err)
        });
    }

    fn assert_no_table_for(&mut self, window: Duration) {
        let end = Instant::now() + window;
        while Instant::now() < end {
            self.assert_alive();
            if let Some(facts) = kernel_facts() {
                panic!(
                    "kube-proxy programmed rules before its lists completed: {facts:#?}\n{}",
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }
}
