//! The command line and config file as the daemon consumes them: from arguments to the
//! options a backend is built with, through the public API only.

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
