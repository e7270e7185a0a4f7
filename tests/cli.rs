//! The command line and config file: from arguments to the options a backend is built
//! with (through the public API), and the built binary as an operator runs it (`--help`,
//! a bad config file, `render`, `apply` and `--cleanup` in a private network namespace).

use std::io::Write;
use std::time::Duration;

use ipnet::IpNet;
use kube_proxy::cli::{parse, Command, Invocation};
use kube_proxy::config::ProxyMode;
use kube_proxy_model::{LocalDetector, NodePortAddress, ProxyOptions, Scheduling};

fn invoke(args: &[&str]) -> Invocation {
    parse(std::iter::once("kube-proxy").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn config_file(body: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
    )
    .unwrap();
    file
}

#[test]
fn flags_become_backend_options() {
    let inv = invoke(&[
        "--proxy-mode=nftables",
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        "--masquerade-all",
        "--nodeport-addresses=10.0.0.0/8",
        "--hostname-override=Worker-1",
        "--iptables-min-sync-period=0s",
    ]);
    assert_eq!(inv.command, Command::Daemon);
    assert_eq!(inv.config.effective_mode(), ProxyMode::NfTables);
    assert_eq!(inv.config.node_name().unwrap(), "worker-1");
    assert_eq!(inv.config.sync_period(), Duration::from_secs(30));
    assert_eq!(inv.config.min_sync_period(), Duration::ZERO);
    assert_eq!(
        inv.config.proxy_options(&[]).unwrap(),
        ProxyOptions {
            masquerade_all: true,
            masquerade_bit: 14,
            local_detector: LocalDetector::Cidrs(vec![
                net("10.244.0.0/16"),
                net("fd00:10:244::/56")
            ]),
            node_port_addresses: vec![NodePortAddress::Cidr(net("10.0.0.0/8"))],
            // The file format has no selection; the CLI's `scheduling` supplies it.
            scheduling: Scheduling::RoundRobin,
        }
    );
    assert_eq!(inv.scheduling, Scheduling::RoundRobin);
}

#[test]
fn config_file_becomes_backend_options() {
    let file = config_file(
        "mode: ipvs\niptables:\n  masqueradeBit: 9\n  masqueradeAll: true\ndetectLocalMode: NodeCIDR\nipvs:\n  syncPeriod: 1m\n  minSyncPeriod: 2s\n",
    );
    let inv = invoke(&["--config", file.path().to_str().unwrap()]);
    assert_eq!(inv.config.effective_mode(), ProxyMode::Ipvs);
    assert_eq!(inv.config.sync_period(), Duration::from_secs(60));
    assert_eq!(inv.config.min_sync_period(), Duration::from_secs(2));
    let pod_cidrs = [net("10.244.3.0/24"), net("fd00:10:244:3::/64")];
    assert_eq!(
        inv.config.proxy_options(&pod_cidrs).unwrap(),
        ProxyOptions {
            masquerade_all: true,
            masquerade_bit: 9,
            local_detector: LocalDetector::Cidrs(pod_cidrs.to_vec()),
            node_port_addresses: Vec::new(),
            scheduling: Scheduling::RoundRobin,
        }
    );
}

#[test]
fn written_config_reproduces_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kube-proxy.yaml");
    let out_arg = format!("--write-config-to={}", out.display());
    let written = invoke(&[
        &out_arg,
        "--proxy-mode=nftables",
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix=veth",
        "--conntrack-max-per-core=0",
        "--metrics-bind-address=0.0.0.0:10249",
    ]);
    let Command::WriteConfig { path } = &written.command else {
        panic!("expected WriteConfig, got {:?}", written.command);
    };
    written.config.write_file(path).unwrap();

    let reread = invoke(&["--config", out.to_str().unwrap()]);
    assert_eq!(reread.config, written.config);
    assert_eq!(
        reread.config.proxy_options(&[]).unwrap(),
        written.config.proxy_options(&[]).unwrap()
    );
    assert_eq!(reread.config.conntrack.max_per_core, Some(0));
    assert_eq!(reread.config.metrics_bind_address, "0.0.0.0:10249");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let file = config_file("nftables:\n  masqueradeAll: maybe\n");
    let path = file.path().to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["--config", path],
        &["--config", "/no/such/file.yaml"],
        &["--iptables-masquerade-bit=99"],
        &["--cluster-cidr=not-a-cidr"],
        &["--detect-local-mode=BridgeInterface"],
        &["--conntrack-min=-1"],
        &["--ipvs-udp-timeout=forever"],
        &["render"],
        &["--masquerade-all", "false"],
    ];
    for args in cases {
        let result = parse(std::iter::once("kube-proxy").chain(args.iter().copied()));
        let err = result.expect_err(&format!("{args:?} should be rejected"));
        assert!(!err.is_help());
        assert_eq!(err.exit_code(), 1);
        assert!(!err.to_string().is_empty());
    }
}

// The built binary, as an operator runs it.

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/cluster.yaml");
const EXAMPLE_FLAGS: &[&str] = &[
    "--proxy-mode=nftables",
    "--hostname-override=node-a",
    "--cluster-cidr=10.244.0.0/16",
];

/// Runs `program args` under `timeout`, so that a hang fails the test instead of CI.
fn run(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_upstream_flags() {
    let out = run(BIN, &["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--proxy-mode",
        "--hostname-override",
        "--bind-address",
        "--cluster-cidr",
        "--detect-local-mode",
        "--nodeport-addresses",
        "--masquerade-all",
        "--iptables-masquerade-bit",
        "--iptables-sync-period",
        "--iptables-min-sync-period",
        "--ipvs-scheduler",
        "--conntrack-max-per-core",
        "--healthz-bind-address",
        "--metrics-bind-address",
        "--kubeconfig",
        "--master",
        "--cleanup",
        "--write-config-to",
        "--version",
    ] {
        assert!(help.contains(flag), "--help does not list {flag}");
    }
}

#[test]
fn a_typo_in_the_config_file_fails_at_start_naming_the_field() {
    let file = config_file("mode: nftables\nnftables:\n  masqueradeBitt: 14\n");
    let out = run(BIN, &["--config", &file.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nftables.masqueradeBitt"), "{stderr}");
}

#[test]
fn render_of_the_bundled_example_is_accepted_by_nft() {
    let out = run(BIN, &[&["render", "-f", EXAMPLE], EXAMPLE_FLAGS].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    for table in ["add table ip kube-proxy", "add table ip6 kube-proxy"] {
        assert!(script.contains(table), "no {table:?} in:\n{script}");
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(script.as_bytes()).unwrap();
    // A private network namespace: the check never looks at the host's rules.
    let path = file.path().display().to_string();
    let check = run("unshare", &["-n", "nft", "-c", "-f", &path]);
    assert!(check.status.success(), "nft -c: {}", text(&check.stderr));
}

#[test]
fn apply_twice_then_cleanup_in_a_private_namespace() {
    let flags = EXAMPLE_FLAGS.join(" ");
    // One shell in a namespace of its own: apply, apply again (nothing to send), clean up.
    let script = format!(
        "set -e
        {BIN} apply -f {EXAMPLE} {flags}
        nft list table ip kube-proxy >/dev/null
        {BIN} apply -f {EXAMPLE} {flags} 2>&1 | grep -q 'applied=false'
        {BIN} --cleanup
        if nft list tables | grep -q kube-proxy; then echo 'tables left'; exit 1; fi"
    );
    let out = run("unshare", &["-n", "sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
