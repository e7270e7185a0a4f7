//! IPVS mode against a real kernel, in a private network namespace of a test thread.
//!
//! The IPVS part needs a kernel with IPVS and the dummy link type; elsewhere (the
//! development machines) it skips with a message. Run it in the VM (after
//! `.ci/vm/prepare`):
//!
//! ```sh
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/run \
//!     cargo test -p kube-proxy-ipvs --target-dir target-ipvs --test backend_kernel
//! ```
//!
//! The companion table part needs only nftables and runs everywhere as root.

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;

use kube_proxy_ipvs::{FakeDummyLink, FakeIpvs, IpvsBackend, IpvsSettings};
use kube_proxy_model::{
    Backend, Changes, Endpoint, IpFamily, LocalDetector, NodeInfo, Protocol, ProxyOptions,
    ProxyState, ServiceEntry, ServicePort, ServicePortName, SessionAffinity,
};
use kube_proxy_nftables::{NftCommand, StaticAddresses};

fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            skip(&format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        run("ip", &["link", "set", "lo", "up"]);
        Some(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn state() -> ProxyState {
    let node = NodeInfo {
        name: "node-a".into(),
        ips: vec![ip("192.168.0.10")],
        ..NodeInfo::default()
    };
    let name = |n: &str, protocol| ServicePortName {
        namespace: "ns".into(),
        name: n.into(),
        port: String::new(),
        protocol,
    };
    let web = ServicePort {
        node_port: 30080,
        load_balancer_ips: vec![ip("198.51.100.1")],
        load_balancer_source_ranges: vec!["192.0.2.0/24".parse().unwrap()],
        ..ServicePort::new(name("web", Protocol::Tcp), ip("10.96.0.10"), 80)
    };
    let dns = ServicePort {
        session_affinity: Some(SessionAffinity {
            timeout_seconds: 600,
        }),
        ..ServicePort::new(name("dns", Protocol::Udp), ip("10.96.0.53"), 53)
    };
    let empty = ServicePort::new(name("empty", Protocol::Tcp), ip("10.96.0.99"), 80);
    let eps = |a: &str, b: &str, port| {
        vec![
            Endpoint::ready(ip(a), port, true),
            Endpoint::ready(ip(b), port, false),
        ]
    };
    let mut v4 = kube_proxy_model::ServiceMap::default();
    for (port, endpoints) in [
        (web, eps("10.244.1.5", "10.244.2.5", 8080)),
        (dns, eps("10.244.1.6", "10.244.2.6", 53)),
        (empty, vec![]),
    ] {
        let entry = ServiceEntry::new(port.clone(), endpoints, &node);
        v4.insert(port.name.clone(), Arc::new(entry));
    }
    assert_eq!(IpFamily::of(&ip("10.96.0.10")), IpFamily::V4);
    ProxyState {
        node,
        v4,
        ..ProxyState::default()
    }
}

fn options() -> ProxyOptions {
    ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..ProxyOptions::default()
    }
}

/// The companion table as nft lists it compares equal to what the backend meant: a second
/// full sync (which reads the table back) sends nothing.
#[test]
fn companion_table_reads_back_equal() {
    if Command::new("nft").arg("--version").output().is_err() {
        return skip("no nft here");
    }
    in_new_netns(|| {
        let mut backend = IpvsBackend::with_clients(
            options(),
            IpvsSettings::default(),
            FakeIpvs::new(),
            FakeDummyLink::new(),
            NftCommand::new(),
        )
        .with_address_source(StaticAddresses(vec![ip("192.168.0.10")]));
        let first = backend.sync(&state(), &Changes::full()).unwrap();
        assert!(first.applied);
        let listing = run("nft", &["list", "table", "ip", "kube-proxy-ipvs"]);
        let second = backend.sync(&state(), &Changes::full()).unwrap();
        assert!(!second.applied, "read-back differs:\n{listing}");
        backend.cleanup().unwrap();
        let out = Command::new("nft")
            .args(["list", "table", "ip", "kube-proxy-ipvs"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "table deleted");
    });
}

/// A model synced into the kernel's IPVS: `ipvsadm -Ln` shows what the plan meant, and a
/// second full sync sends nothing.
#[test]
fn sync_into_the_kernel() {
    in_new_netns(|| {
        let mut backend = match IpvsBackend::new(options(), IpvsSettings::default()) {
            Ok(b) => b,
            Err(e) => return skip(&format!("no IPVS here: {e}")),
        };
        // The node's address, so that the NodePort gets a virtual server.
        run("ip", &["link", "add", "eth0", "type", "dummy"]);
        run("ip", &["addr", "add", "192.168.0.10/24", "dev", "eth0"]);
        run("ip", &["link", "set", "eth0", "up"]);
        let first = backend.sync(&state(), &Changes::full()).unwrap();
        assert!(first.applied && first.full);
        let listing = run("ipvsadm", &["-Ln"]);
        let expected = [
            "TCP  10.96.0.10:80 rr",
            "  -> 10.244.1.5:8080               Masq    1      0          0",
            "  -> 10.244.2.5:8080               Masq    1      0          0",
            "TCP  10.96.0.99:80 rr",
            "TCP  192.168.0.10:30080 rr",
            "TCP  198.51.100.1:80 rr",
            "UDP  10.96.0.53:53 rr persistent 600",
            "  -> 10.244.1.6:53                 Masq    1      0          0",
        ];
        for line in expected {
            let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                listing.lines().any(|l| words(l) == words(line)),
                "{line:?} in\n{listing}"
            );
        }
        let addrs = run("ip", &["-o", "addr", "show", "dev", "kube-ipvs0"]);
        for vip in [
            "10.96.0.10/32",
            "10.96.0.53/32",
            "10.96.0.99/32",
            "198.51.100.1/32",
        ] {
            assert!(addrs.contains(vip), "{vip} in {addrs}");
        }
        assert!(!addrs.contains("192.168.0.10"), "{addrs}");
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/vs/conntrack")
                .unwrap()
                .trim(),
            "1"
        );
        let second = backend.sync(&state(), &Changes::full()).unwrap();
        assert!(!second.applied, "second sync changed something");
        assert_eq!(run("ipvsadm", &["-Ln"]), listing);
        backend.cleanup().unwrap();
        assert!(!run("ipvsadm", &["-Ln"]).contains("TCP "));
    });
}
