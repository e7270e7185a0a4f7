//! The real `kube-proxy` daemon's lifecycle, as upstream's: it exits when its `--config`
//! file changes (so that the DaemonSet restarts it with the new one), retries health and
//! metrics addresses that are in use (or exits, with `--bind-address-hard-fail`), and
//! reports a sync that keeps failing on `/healthz` and `/livez` until it recovers.
//!
//! Each test runs the binary in a private network namespace against the fake API server
//! (see `support/daemon.rs`).

// Each test crate uses a part of the shared support code.
#[allow(dead_code)]
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::daemon::*;
use support::netns::run;

/// Upstream's error when the configuration file changed.
const CONFIG_CHANGED: &str = "content of the proxy server's configuration file was updated";

/// A `KubeProxyConfiguration` for the daemon tests: nftables mode, and, as the flags of
/// [`Daemon::start`] say, `nf_conntrack_max` left alone (a private namespace cannot set it).
fn config_text(min_sync_period: &str) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
         kind: KubeProxyConfiguration\n\
         mode: nftables\n\
         clusterCIDR: {CLUSTER_CIDR}\n\
         conntrack:\n  maxPerCore: 0\n\
         nftables:\n  minSyncPeriod: {min_sync_period}\n"
    )
}

/// Lays out `dir` as the kubelet does a ConfigMap volume holding `config.conf`:
/// `config.conf -> ..data/config.conf`, `..data -> ..<version>`.
fn write_configmap(dir: &Path, version: &str, content: &str) -> PathBuf {
    publish_configmap(dir, version, content);
    let path = dir.join("config.conf");
    std::os::unix::fs::symlink("..data/config.conf", &path).expect("symlink config.conf");
    path
}

/// Publishes `content` as the kubelet's atomic writer does: a new `..<version>` directory,
/// `..data` swapped to it with a rename, the previous directory (if any) deleted.
fn publish_configmap(dir: &Path, version: &str, content: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir(&versioned).expect("create the version directory");
    std::fs::write(versioned.join("config.conf"), content).expect("write config.conf");
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(format!("..{version}"), dir.join("..data_tmp"))
        .expect("symlink ..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).expect("delete the old version");
    }
}

/// Starts the daemon with `--config` at the ConfigMap-like `dir`, waits until it watches
/// the file, runs `change` on `dir`, and checks that the daemon exits non-zero with
/// upstream's error.
fn assert_exits_after(change: impl FnOnce(&mut Daemon, &Path) + Send + 'static) {
    in_private_netns(|server| {
        create_node(server);
        let dir = tempfile::tempdir().expect("a config directory");
        let config = write_configmap(dir.path(), "v1", &config_text(MIN_SYNC_PERIOD));
        let mut daemon = Daemon::start_with(server, &[&format!("--config={}", config.display())]);
        daemon.wait_for_log("watching the configuration file");

        change(&mut daemon, dir.path());
        let status = daemon.wait_exit();
        assert!(!status.success(), "kube-proxy exited with {status}");
        let log = daemon.log();
        assert!(
            log.contains(&format!("Error: {CONFIG_CHANGED}")),
            "not upstream's error:\n{log}"
        );
    });
}

/// Where `dir`'s `config.conf` resolves to, so that a test changes the file itself.
fn resolved(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir.join("config.conf")).expect("resolve config.conf")
}

#[test]
fn config_file_written_in_place_stops_the_daemon() {
    assert_exits_after(|_, dir| {
        std::fs::write(resolved(dir), config_text("200ms")).expect("rewrite the file");
    });
}

#[test]
fn config_file_replaced_by_a_rename_stops_the_daemon() {
    assert_exits_after(|_, dir| {
        let target = resolved(dir);
        let new = target.with_file_name("config.conf.new");
        std::fs::write(&new, config_text("200ms")).expect("write the new file");
        std::fs::rename(&new, &target).expect("rename it over the old one");
    });
}

#[test]
fn configmap_update_stops_the_daemon() {
    assert_exits_after(|_, dir| publish_configmap(dir, "v2", &config_text("200ms")));
}

/// Rewriting the file with the same bytes, or a ConfigMap resync that publishes the same
/// content, is no change: the daemon runs on, and still notices a real change later.
#[test]
fn unchanged_config_file_keeps_the_daemon_running() {
    assert_exits_after(|daemon, dir| {
        let same = config_text(MIN_SYNC_PERIOD);
        std::fs::write(resolved(dir), &same).expect("rewrite the same content");
        publish_configmap(dir, "v2", &same);
        // Several of the watcher's once-a-second looks.
        daemon.assert_alive_for(Duration::from_secs(3));
        publish_configmap(dir, "v3", &config_text("200ms"));
    });
}

// ---------------------------------------------------------------------------
// Health and metrics addresses in use.

/// A listener holding a port of this namespace's `127.0.0.1`, and its address.
fn taken_address() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let addr = listener.local_addr().expect("local address").to_string();
    (listener, addr)
}

/// As upstream without `bindAddressHardFail`: health and metrics addresses in use are
/// logged, naming them, and retried while the proxy runs on; both servers answer once
/// their ports are free (a retry every 5 s).
#[test]
fn busy_health_and_metrics_addresses_are_retried_until_free() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        let (health_listener, health) = taken_address();
        let (metrics_listener, metrics) = taken_address();
        let mut daemon = Daemon::start_with(
            server,
            &[
                &format!("--healthz-bind-address={health}"),
                &format!("--metrics-bind-address={metrics}"),
            ],
        );
        daemon.wait_for_log(&format!(
            "healthz server failed: failed to start proxy healthz on {health}"
        ));
        daemon.wait_for_log(&format!(
            "starting metrics server failed: listen tcp {metrics}"
        ));
        // The proxy works without its servers.
        daemon.wait_until("the Service's rules", || {
            service_ip_programmed("10.96.0.10")
                .then_some(())
                .ok_or_else(|| "no rules yet".to_owned())
        });

        drop((health_listener, metrics_listener));
        let port = |addr: &str| addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        for (port, path) in [(port(&health), "/livez"), (port(&metrics), "/proxyMode")] {
            daemon.wait_until(&format!("{path} once its port is free"), || match http_get(
                port, path,
            ) {
                Some((200, _)) => Ok(()),
                other => Err(format!("{path} answered {other:?}")),
            });
        }
    });
}

/// With `--bind-address-hard-fail`, a health or a metrics address in use stops the daemon
/// with an error naming the address.
#[test]
fn busy_address_with_hard_fail_stops_the_daemon() {
    in_private_netns(|server| {
        create_node(server);
        let (_held, addr) = taken_address();
        for (flag, error) in [
            (
                "--healthz-bind-address",
                "healthz server failed: failed to start proxy healthz on",
            ),
            (
                "--metrics-bind-address",
                "starting metrics server failed: listen tcp",
            ),
        ] {
            let mut daemon = Daemon::start_with(
                server,
                &[&format!("{flag}={addr}"), "--bind-address-hard-fail=true"],
            );
            let status = daemon.wait_exit();
            assert!(!status.success(), "kube-proxy ran with {addr} taken");
            let log = daemon.log();
            assert!(
                log.contains(&format!("Error: {error} {addr}")),
                "the error does not name {addr}:\n{log}"
            );
        }
    });
}

// ---------------------------------------------------------------------------
// A sync that fails.

/// Whether `table ip kube-proxy` sends `cluster_ip` to a Service chain.
fn service_ip_programmed(cluster_ip: &str) -> bool {
    let out = std::process::Command::new("nft")
        .args(["list", "map", "ip", "kube-proxy", "service-ips"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout).contains(&format!("{cluster_ip} . tcp . 80"))
}

/// Where `tool` is on this process's `PATH`.
fn real_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} on PATH"))
}

/// A directory with an `nft` that fails while `flag` exists and otherwise runs the real
/// `nft` (the daemon finds `nft` on its `PATH`), and the `PATH` that puts it first.
fn failing_nft(dir: &Path, flag: &Path) -> String {
    let path = std::env::var("PATH").expect("PATH");
    let real = real_tool("nft");
    let wrapper = dir.join("nft");
    let script = format!(
        "#!/bin/sh\n\
         if [ -e '{}' ]; then echo 'nft: failing on purpose' >&2; exit 1; fi\n\
         exec '{}' \"$@\"\n",
        flag.display(),
        real.display()
    );
    std::fs::write(&wrapper, script).expect("write the nft wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("make the wrapper executable");
    format!("{}:{path}", dir.display())
}

/// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` from the metrics server on
/// `port`, summed over its samples (one per IP family where it is labelled; 0 when absent).
fn sync_failures(port: u16) -> f64 {
    let (_, text) = http_get(port, "/metrics").expect("GET /metrics");
    let name = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total";
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Syncs that fail for real (`nft` exits 1) while a change is queued: once the health
/// timeout (2 × `--iptables-sync-period` = 2 s) passes, `/healthz` and `/livez` answer
/// 503 with upstream's body and the failures are counted; once `nft` works again the
/// retry programs the change and both answer 200 again.
#[test]
fn a_failing_sync_turns_health_503_until_it_recovers() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        let tools = tempfile::tempdir().expect("a directory for the wrapper");
        let flag = tools.path().join("fail");
        let path = failing_nft(tools.path(), &flag);
        let (healthz, metrics) = (free_local_port(), free_local_port());
        let mut daemon = Daemon::start_with_env(
            server,
            &[
                "--iptables-sync-period=1s",
                &format!("--healthz-bind-address=127.0.0.1:{healthz}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ],
            &[("PATH", &path)],
        );
        let answer = |path: &str| http_get(healthz, path).map(|(code, _)| code);
        daemon.wait_until("the first sync", || {
            (service_ip_programmed("10.96.0.10") && answer("/healthz") == Some(200))
                .then_some(())
                .ok_or_else(|| format!("/healthz answered {:?}", answer("/healthz")))
        });
        let before = sync_failures(metrics);

        std::fs::write(&flag, "").expect("create the flag file");
        create_backed(server, "db", "10.96.0.20", &["10.244.1.9"]);
        let body = daemon.wait_until("/healthz to fail", || match http_get(healthz, "/healthz") {
            Some((503, body)) => Ok(body),
            other => Err(format!("/healthz answered {other:?}")),
        });
        let json: Value = serde_json::from_str(&body).expect("health bodies are JSON");
        assert_eq!(json["healthy"], false, "{body}");
        assert_eq!(json["nodeEligible"], true, "{body}");
        assert_eq!(json["status"]["IPv4"]["healthy"], false, "{body}");
        assert_ne!(json["lastUpdated"], json["currentTime"], "{body}");
        let (code, body) = http_get(healthz, "/livez").expect("GET /livez");
        assert_eq!(code, 503, "/livez: {body}");
        assert!(
            sync_failures(metrics) > before,
            "no nftables sync failure counted"
        );
        assert!(
            !service_ip_programmed("10.96.0.20"),
            "db programmed by a failing nft"
        );

        std::fs::remove_file(&flag).expect("remove the flag file");
        daemon.wait_until("the retry to program the change", || {
            service_ip_programmed("10.96.0.20")
                .then_some(())
                .ok_or_else(|| "db not programmed yet".to_owned())
        });
        for path in ["/healthz", "/livez"] {
            daemon.wait_until(&format!("{path} to recover"), || match answer(path) {
                Some(200) => Ok(()),
                other => Err(format!("{path} answered {other:?}")),
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Other modes' leftovers.

/// A chain of neither kube-proxy mode, which no cleanup may touch.
const FOREIGN_CHAIN: &str = "CNI-FOREIGN";

/// A set of no kube-proxy mode, which no cleanup may touch.
const FOREIGN_SET: &str = "CNI-FOREIGN-SET";

/// What upstream's iptables and IPVS modes leave behind in this namespace: iptables mode's
/// `nat` chains, IPVS mode's `filter` chain matching its ipsets (one of each family), and a
/// foreign chain and set beside them.
fn leave_iptables_mode_rules() {
    let iptables = |args: &str| {
        run(std::process::Command::new("iptables").args(args.split(' ')));
    };
    let ipset = |args: &str| {
        run(std::process::Command::new("ipset").args(args.split(' ')));
    };
    iptables("-t nat -N KUBE-SERVICES");
    iptables("-t nat -N KUBE-SVC-ABCDEFGHIJKLMNOP");
    iptables("-t nat -A KUBE-SERVICES -j KUBE-SVC-ABCDEFGHIJKLMNOP");
    iptables("-t nat -A PREROUTING -j KUBE-SERVICES");
    iptables(&format!("-t nat -N {FOREIGN_CHAIN}"));
    iptables(&format!("-t nat -A PREROUTING -j {FOREIGN_CHAIN}"));
    ipset("create KUBE-CLUSTER-IP hash:ip,port");
    ipset("create KUBE-6-CLUSTER-IP hash:ip,port family inet6");
    ipset(&format!("create {FOREIGN_SET} hash:ip"));
    iptables("-N KUBE-IPVS-FILTER");
    iptables("-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN");
    iptables("-A INPUT -j KUBE-IPVS-FILTER");
}

/// `Ok` once the `nat` and `filter` tables hold no `KUBE-` chain or jump and no upstream
/// ipset is left, while the foreign chain with its jump and the foreign set are still
/// there; otherwise what is left.
fn iptables_mode_rules_gone() -> Result<(), String> {
    let save = run(&mut std::process::Command::new("iptables-save"));
    assert!(
        save.contains(&format!("-A PREROUTING -j {FOREIGN_CHAIN}")),
        "a foreign rule was removed:\n{save}"
    );
    let sets = run(std::process::Command::new("ipset").args(["list", "-n"]));
    assert!(
        sets.contains(FOREIGN_SET),
        "a foreign set was removed: {sets}"
    );
    let left = format!("{save}\n{sets}");
    (!left.contains("KUBE-")).then_some(()).ok_or(left)
}

/// nftables mode starts by removing iptables mode's chains, as upstream's does, and
/// leaves everything else alone.
#[test]
fn nftables_mode_removes_iptables_leftovers_at_start() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        leave_iptables_mode_rules();
        assert!(iptables_mode_rules_gone().is_err());
        let mut daemon = Daemon::start(server);
        daemon.wait_until("iptables mode's chains to go", iptables_mode_rules_gone);
        daemon.wait_until("the Service's rules", || {
            service_ip_programmed("10.96.0.10")
                .then_some(())
                .ok_or_else(|| "no rules yet".to_owned())
        });
    });
}

/// iptables mode starts by removing nftables mode's tables, as upstream's does.
#[test]
fn iptables_mode_removes_nftables_leftovers_at_start() {
    in_private_netns(|server| {
        create_node(server);
        let nft = |args: &[&str]| run(std::process::Command::new("nft").args(args));
        nft(&["add", "table", "ip", "kube-proxy"]);
        nft(&["add", "table", "ip", "foreign"]);
        let mut daemon = Daemon::start_with(server, &["--proxy-mode=iptables"]);
        daemon.wait_until("nftables mode's table to go", || {
            let tables = nft(&["list", "tables"]);
            assert!(
                tables.contains("table ip foreign"),
                "a foreign table went: {tables}"
            );
            (!tables.contains("kube-proxy")).then_some(()).ok_or(tables)
        });
    });
}

/// IPVS mode, which programs nftables here, starts by removing what upstream's iptables
/// and IPVS modes left in iptables and ipset: iptables mode's DNAT chains would take
/// Service traffic before IPVS sees it, IPVS mode's filter chains reject by stale sets.
/// Needs a kernel with IPVS (the project's VM: `.ci/vm/README.md`), and skips elsewhere,
/// saying so.
#[test]
fn ipvs_mode_removes_iptables_leftovers_at_start() {
    in_private_netns(|server| {
        if kube_proxy_ipvs::Ipvs::new().is_err() {
            eprintln!("ipvs_mode_removes_iptables_leftovers_at_start: skipped: no IPVS here");
            return;
        }
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        leave_iptables_mode_rules();
        assert!(iptables_mode_rules_gone().is_err());
        let mut daemon = Daemon::start_with(server, &["--proxy-mode=ipvs"]);
        daemon.wait_until("upstream's iptables chains and ipsets to go", || {
            iptables_mode_rules_gone()
        });
    });
}

/// Without the iptables tools there is nothing of iptables mode to remove: the daemon
/// starts, says nothing failed, and programs its rules.
#[test]
fn a_missing_iptables_does_not_stop_the_start() {
    in_private_netns(|server| {
        create_node(server);
        create_backed(server, "web", "10.96.0.10", &["10.244.1.5"]);
        let tools = tempfile::tempdir().expect("a directory for the tools");
        std::os::unix::fs::symlink(real_tool("nft"), tools.path().join("nft")).expect("link nft");
        let path = tools.path().to_str().expect("a UTF-8 path").to_owned();
        let mut daemon = Daemon::start_with_env(server, &[], &[("PATH", &path)]);
        daemon.wait_until("the Service's rules", || {
            service_ip_programmed("10.96.0.10")
                .then_some(())
                .ok_or_else(|| "no rules yet".to_owned())
        });
        let log = daemon.log();
        assert!(!log.contains("leftovers failed"), "{log}");
    });
}

/// `--cleanup` removes nftables mode's tables and iptables mode's chains, leaves foreign
/// rules alone, and exits 0.
#[test]
fn cleanup_removes_every_modes_rules() {
    in_private_netns(|_| {
        run(std::process::Command::new("nft").args(["add", "table", "ip", "kube-proxy"]));
        run(std::process::Command::new("nft").args(["add", "table", "ip6", "kube-proxy"]));
        leave_iptables_mode_rules();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-proxy"))
            .arg("--cleanup")
            .output()
            .expect("run kube-proxy --cleanup");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--cleanup failed: {stderr}");
        iptables_mode_rules_gone().unwrap_or_else(|save| panic!("left:\n{save}\n{stderr}"));
        let tables = run(std::process::Command::new("nft").args(["list", "tables"]));
        assert!(!tables.contains("kube-proxy"), "left: {tables}\n{stderr}");
    });
}

/// `--cleanup` removes IPVS mode's state: every virtual service and the `kube-ipvs0` link.
/// Needs a kernel with IPVS and dummy links (the project's VM: `.ci/vm/README.md`), and
/// skips elsewhere, saying so.
#[test]
fn cleanup_removes_ipvs_mode_state() {
    use kube_proxy_ipvs::{Ipvs, IpvsClient, Scheduler, VirtualServer};
    in_private_netns(|_| {
        let ip = |args: &str| {
            std::process::Command::new("ip")
                .args(args.split(' '))
                .output()
                .expect("run ip")
        };
        // Opening the client loads `ip_vs` where the kernel can.
        let ipvs = Ipvs::new().ok();
        let link = ip("link add kube-ipvs0 type dummy");
        let (Some(mut ipvs), true) = (ipvs, link.status.success()) else {
            eprintln!("cleanup_removes_ipvs_mode_state: skipped: no IPVS or dummy links here");
            return;
        };
        assert!(ip("addr add 10.96.0.10/32 dev kube-ipvs0").status.success());
        let service = VirtualServer::new(
            "10.96.0.10".parse().unwrap(),
            80,
            kube_proxy_model::Protocol::Tcp,
            Scheduler::default(),
        );
        ipvs.add_service(&service).expect("add a virtual service");

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-proxy"))
            .arg("--cleanup")
            .output()
            .expect("run kube-proxy --cleanup");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--cleanup failed: {stderr}");
        assert_eq!(ipvs.services().expect("list IPVS"), [], "{stderr}");
        assert!(!ip("link show kube-ipvs0").status.success(), "{stderr}");
    });
}

/// The DaemonSet's command line (`--config` and `--hostname-override=$(NODE_NAME)`, nothing
/// else) with the ConfigMap's shape of configuration: the API server comes from
/// `clientConnection.kubeconfig`, the health and metrics servers from the defaults
/// (`0.0.0.0:10256`, `127.0.0.1:10249`). The daemon syncs and answers there as upstream's
/// e2e test "should check kube-proxy urls" expects.
#[test]
fn runs_as_the_daemonset_runs_it() {
    in_private_netns(|server| {
        create_node(server);
        let dir = tempfile::tempdir().expect("a config directory");
        let kubeconfig = dir.path().join("kubeconfig.conf");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- cluster:\n    server: {}\n  name: default\n\
                 contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\n\
                 current-context: default\n\
                 users:\n- name: default\n  user: {{}}\n",
                server.url()
            ),
        )
        .expect("write the kubeconfig");
        let config = format!(
            "{}clientConnection:\n  kubeconfig: {}\n",
            config_text(MIN_SYNC_PERIOD),
            kubeconfig.display()
        );
        let config = write_configmap(dir.path(), "v1", &config);
        let mut daemon = Daemon::start_exactly(&[
            &format!("--config={}", config.display()),
            &format!("--hostname-override={}", NODE.to_uppercase()),
        ]);
        let (status, body) = daemon.wait_until("/healthz on 10256 after a sync", || {
            http_get(10256, "/healthz")
                .filter(|(_, body)| body.contains("\"status\""))
                .ok_or_else(|| "no synced answer on 10256 yet".to_owned())
        });
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"lastUpdated\""), "{body}");
        assert_eq!(
            http_get(10249, "/proxyMode"),
            Some((200, "nftables".to_owned()))
        );
        let (status, text) = http_get(10249, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}"),
            "{text}"
        );
    });
}
