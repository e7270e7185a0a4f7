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

// Only the fake API server and the bounded tool runners are used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec, Taint,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use support::fake_apiserver::FakeApiServer;
use support::netns::{output_bounded, run, TOOL_LIMIT};

/// Our node, its address and its pods' range.
const NODE: &str = "node-a";
const NODE_IP: &str = "192.0.2.10";
const POD_CIDR: &str = "10.244.1.0/24";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const NAMESPACE: &str = "default";
/// Every test Service listens on TCP port 80 (named `http`), its endpoints on 8080.
const SERVICE_PORT: i32 = 80;
const TARGET_PORT: i32 = 8080;
const PORT_NAME: &str = "http";

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// `--iptables-min-sync-period` (which is also nftables mode's): short, so that waits
/// are dominated by the daemon's reaction to events rather than by rate limiting.
const MIN_SYNC_PERIOD: &str = "100ms";
/// Upper bound for the kernel to reflect a change: generous enough for a relist after
/// the watcher's first backoff step (~0.8 s) with a debug build on a loaded machine.
const CONVERGE: Duration = Duration::from_secs(15);
/// How long a SIGTERMed daemon may take to exit.
const EXIT: Duration = Duration::from_secs(5);
/// Pause between two looks at the kernel.
const POLL: Duration = Duration::from_millis(50);

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
/// sync is done, and the metrics server serves the sync histogram, the probe counters, the
/// proxy mode and the effective configuration, each on the address its flag names. When the cluster autoscaler marks
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
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_duration_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(count.is_some_and(|n| n > 0), "no synced duration:\n{text}");
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

/// A health server address already in use stops the daemon at start, naming the address.
#[test]
fn health_server_bind_failure_is_an_error_naming_the_address() {
    in_private_netns(|server| {
        create_node(server);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = taken.local_addr().expect("local address");
        let mut daemon = Daemon::start_with(server, &[&format!("--healthz-bind-address={addr}")]);
        let status = daemon.wait_exit();
        assert!(!status.success(), "kube-proxy ran with {addr} taken");
        let log = daemon.log();
        assert!(
            log.contains(&format!("failed to start proxy healthz on {addr}")),
            "the error does not name {addr}:\n{log}"
        );
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

/// An unused TCP port on `127.0.0.1` of this namespace (nothing else runs in it).
fn free_local_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// `GET path` from `127.0.0.1:port`: the status and body, or `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

// ---------------------------------------------------------------------------
// A private network namespace per test.

/// Runs `test` on a new thread inside a new network namespace (with `lo` up), with a
/// fake API server serving on that namespace's `127.0.0.1`. A panic in `test` fails
/// the calling test; the namespace goes away with the thread and its children.
fn in_private_netns(test: impl FnOnce(&FakeApiServer) + Send + 'static) {
    let name = thread::current().name().unwrap_or("daemon-test").to_owned();
    let outcome = thread::Builder::new()
        .name(name)
        .spawn(move || {
            enter_new_netns();
            // Built here so that its worker threads, and with them every socket the
            // fake server opens, are in this namespace too.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let server = runtime
                .block_on(FakeApiServer::start())
                .expect("start the fake API server");
            test(&server);
        })
        .expect("spawn the test thread")
        .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Moves the calling thread (only) into a new network namespace and brings `lo` up.
fn enter_new_netns() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "daemon tests need root (network namespaces, nftables)"
    );
    // SAFETY: plain syscall; CLONE_NEWNET affects only the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    // Everything below runs commands that change the namespace they run in: make sure
    // it is not the host's (the main thread's).
    let ns = |path| std::fs::read_link(path).expect("read a netns link");
    assert_ne!(
        ns("/proc/thread-self/ns/net"),
        ns("/proc/self/ns/net"),
        "still in the host's network namespace"
    );
    run(Command::new("ip").args(["link", "set", "lo", "up"]));
}

fn nft(args: &[&str]) -> String {
    run(Command::new("nft").args(args))
}

/// Established TCP connections from this namespace to the fake API server.
fn connections_to(server: &FakeApiServer) -> usize {
    let port = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the fake's URL ends in its port");
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read net/tcp");
    // Lines are `sl local_address rem_address st ...`, addresses as `HEXIP:HEXPORT`;
    // state 01 is ESTABLISHED.
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields.get(2).and_then(|a| a.rsplit(':').next());
            remote_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && fields.get(3) == Some(&"01")
        })
        .count()
}

// ---------------------------------------------------------------------------
// The daemon.

/// A running `kube-proxy`, killed (if still running) when dropped, even on panic.
struct Daemon {
    child: Child,
    /// Its stdout and stderr, shown when a test fails.
    log: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `kube-proxy` in nftables mode, as node [`NODE`], against `server`.
    fn start(server: &FakeApiServer) -> Daemon {
        Daemon::start_with(server, &[])
    }

    /// As [`Daemon::start`], with `extra` flags.
    fn start_with(server: &FakeApiServer, extra: &[&str]) -> Daemon {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let output = || log.as_file().try_clone().expect("dup the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-proxy"))
            .args(["--proxy-mode", "nftables", "--hostname-override", NODE])
            .args(["--master", &server.url()])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .args(["--iptables-min-sync-period", MIN_SYNC_PERIOD])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("spawn kube-proxy");
        Daemon { child, log }
    }

    /// Everything the daemon printed so far.
    fn log(&self) -> String {
        // Opened anew, so that reading never moves the offset the child writes at.
        let text = std::fs::read_to_string(self.log.path()).expect("read the log");
        format!("--- kube-proxy output ---\n{text}")
    }

    /// Panics, with its output, if the daemon is no longer running.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for kube-proxy") {
            panic!("kube-proxy exited with {status}\n{}", self.log());
        }
    }

    /// Polls `probe` until it returns `Ok`, for at most [`CONVERGE`]. Fails with `what`,
    /// the last `Err` and the daemon's output on timeout, or as soon as the daemon dies.
    fn wait_until<T>(&mut self, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + CONVERGE;
        loop {
            self.assert_alive();
            match probe() {
                Ok(value) => return value,
                Err(last) if Instant::now() >= deadline => {
                    panic!("{what}: not within {CONVERGE:?}\n{last}\n{}", self.log())
                }
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    /// Waits until the kernel holds exactly `expected`.
    fn wait_for_facts(&mut self, expected: &Facts) {
        self.wait_until("the kernel to hold exactly the expected rules", || {
            let actual = kernel_facts().ok_or_else(|| "no kube-proxy table".to_owned())?;
            facts_diff(expected, &actual).map_or(Ok(()), Err)
        });
    }

    /// Waits until the kernel's facts about one Service are exactly `expected`.
    fn wait_for_service(&mut self, expected: &Facts, name: &str, cluster_ip: &str) {
        self.wait_until(&format!("the kernel to hold {name}'s rules"), || {
            let actual = kernel_facts().ok_or_else(|| "no kube-proxy table".to_owned())?;
            facts_diff(expected, &about(&actual, name, cluster_ip)).map_or(Ok(()), Err)
        });
    }

    /// Waits until the daemon has its watchers' requests open on `server` (which, when
    /// paused, holds them unanswered).
    fn wait_connected(&mut self, server: &FakeApiServer) {
        // One connection per concurrent request: the Service, EndpointSlice and Node
        // lists (and ServiceCIDR discovery) are all sent at start.
        self.wait_until("kube-proxy to connect to the API server", || {
            let open = connections_to(server);
            (open >= 3)
                .then_some(())
                .ok_or(format!("{open} connections open"))
        });
    }

    /// Checks for `window` that the daemon is running and has created no table.
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

    /// Sends SIGTERM and waits (at most [`EXIT`]) for the daemon to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "kill(SIGTERM)"
        );
        self.wait_exit()
    }

    /// Waits (at most [`EXIT`]) for the daemon to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kube-proxy") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kube-proxy still running after {EXIT:?}\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// API objects: ClusterIP Services with one TCP port and their EndpointSlices.

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        ..ObjectMeta::default()
    }
}

/// `default/<name>` at `cluster_ip`, TCP port 80 (`http`) to target port 8080.
fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: SERVICE_PORT,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::Int(TARGET_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The EndpointSlice (named like the Service) of Service `service`: one ready endpoint
/// on this node per address, port `http` 8080/TCP.
fn slice(service: &str, addresses: &[&str]) -> EndpointSlice {
    let mut metadata = meta(service);
    metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
    EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: addresses
            .iter()
            .map(|address| Endpoint {
                addresses: vec![address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(NODE.to_owned()),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.to_owned()),
            port: Some(TARGET_PORT),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}

/// `obj` with `labels` added.
fn labelled<K: kube::Resource>(mut obj: K, labels: &[(&str, &str)]) -> K {
    let all = obj.meta_mut().labels.get_or_insert_with(Default::default);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    obj
}

/// `svc` with its port's protocol replaced.
fn with_protocol(mut svc: Service, protocol: &str) -> Service {
    let spec = svc.spec.as_mut().expect("test services have a spec");
    for port in spec.ports.iter_mut().flatten() {
        port.protocol = Some(protocol.to_owned());
    }
    svc
}

/// Creates Service `name` and its EndpointSlice.
fn create_backed(server: &FakeApiServer, name: &str, cluster_ip: &str, endpoints: &[&str]) {
    server.create(&service(name, cluster_ip)).unwrap();
    server.create(&slice(name, endpoints)).unwrap();
}

/// Our Node, with its podCIDR and InternalIP.
fn create_node(server: &FakeApiServer) {
    server.create(&our_node()).unwrap();
}

/// Our Node as [`create_node`] creates it.
fn our_node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(POD_CIDR.to_owned()),
            pod_cidrs: Some(vec![POD_CIDR.to_owned()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".to_owned(),
                address: NODE_IP.to_owned(),
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// How many times the daemon has listed Services (not counting watches).
fn service_lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
        .count()
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
/// Endpoints are the chains a live `service-*` chain dispatches to; an endpoint chain
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
        for endpoint in goto_targets(rules).filter(|t| t.starts_with("endpoint-")) {
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
fn goto_targets(rules: &[Value]) -> impl Iterator<Item = String> + '_ {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(target) = map.get("goto").and_then(|g| g["target"].as_str()) {
                    out.push(target.to_owned());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    rules.iter().for_each(|rule| walk(rule, &mut out));
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
