//! Real conntrack entries, made by real packets through a real DNAT rule in a private
//! network namespace, listed and deleted through ctnetlink. Needs root (unshare, nft).

use std::io;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use kube_proxy_conntrack::{cleanup_stale_flows, Conntrack, Flow};
use kube_proxy_model::{
    Endpoint, IpFamily, NodeInfo, Protocol, ProxyState, ServiceEntry, ServicePort, ServicePortName,
};

/// Packets to a VIP:53 go to a "pod" address on port 5353, in both families. Every
/// address lives on `lo`, so no packet leaves the namespace.
const SETUP: &[&str] = &[
    "ip link set lo up",
    "ip addr add 10.96.0.10/32 dev lo",
    "ip addr add 10.96.0.11/32 dev lo",
    "ip addr add 10.96.0.12/32 dev lo",
    "ip addr add 10.244.1.2/32 dev lo",
    "ip addr add 10.244.1.3/32 dev lo",
    "ip addr add fd00::10/128 dev lo nodad",
    "ip addr add fd00:244::2/128 dev lo nodad",
];
const RULES: &str = "
table inet conntrack-test {
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr 10.96.0.10 udp dport 53 dnat ip to 10.244.1.2:5353
        ip daddr 10.96.0.11 udp dport 53 dnat ip to 10.244.1.3:5353
        ip6 daddr fd00::10 udp dport 53 dnat ip6 to [fd00:244::2]:5353
    }
}
";

/// Runs `f` on a thread of its own in a new, empty network namespace set up with
/// [`SETUP`] and [`RULES`]. The host's namespace is never touched.
fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: unshare has no memory-safety preconditions; it moves only this
            // thread (and the processes it spawns) into the new namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            let err = io::Error::last_os_error();
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET), which needs root: {err}");
            for line in SETUP {
                run(line, "");
            }
            run("nft -f -", RULES);
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs the command `line` (split at whitespace) with `input` on its stdin.
fn run(line: &str, input: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{line}: {stderr}");
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Opens a UDP "connection" to `to` and sends one datagram, then waits (5 s at most) until
/// `server` has it: the entry is confirmed once the datagram is delivered.
fn udp_flow(server: &UdpSocket, to: &str) -> UdpSocket {
    let to = addr(to);
    let any = if to.is_ipv4() {
        addr("0.0.0.0:0")
    } else {
        addr("[::]:0")
    };
    let client = UdpSocket::bind(any).expect("bind client");
    client.connect(to).expect("connect");
    client.send(b"ping").expect("send");
    let me = client.local_addr().expect("local address");
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    loop {
        let (_, from) = server.recv_from(&mut buf).expect("datagram arrives");
        if from == me {
            return client;
        }
    }
}

/// The entries of `family` whose original source is one of `clients`, sorted.
fn flows_of(ct: &mut Conntrack, family: IpFamily, clients: &[&UdpSocket]) -> Vec<Flow> {
    let sources: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    let mut flows: Vec<Flow> = ct
        .dump(family, Protocol::Udp)
        .expect("dump")
        .into_iter()
        .filter(|f| sources.contains(&SocketAddr::new(f.orig_src, f.orig_sport)))
        .collect();
    flows.sort_by_key(|f| f.orig_sport);
    flows
}

/// The entry `client` made by sending to `to`, DNATed to `target`.
fn expected_flow(client: &UdpSocket, to: &str, target: &str) -> Flow {
    let (me, to, target) = (client.local_addr().unwrap(), addr(to), addr(target));
    Flow {
        family: IpFamily::of(&me.ip()),
        proto: Protocol::Udp,
        orig_src: me.ip(),
        orig_dst: to.ip(),
        orig_sport: me.port(),
        orig_dport: to.port(),
        reply_src: target.ip(),
        reply_sport: target.port(),
    }
}

#[test]
fn lists_and_deletes_real_entries_of_both_families() {
    in_private_netns(|| {
        let cases = [
            (IpFamily::V4, "10.96.0.10:53", "10.244.1.2:5353"),
            (IpFamily::V6, "[fd00::10]:53", "[fd00:244::2]:5353"),
        ];
        let mut ct = Conntrack::new().expect("ctnetlink socket");
        for (family, vip, pod) in cases {
            let server = UdpSocket::bind(pod).expect("bind server");
            let (a, b) = (udp_flow(&server, vip), udp_flow(&server, vip));
            let mut expected = [expected_flow(&a, vip, pod), expected_flow(&b, vip, pod)];
            expected.sort_by_key(|f| f.orig_sport);
            assert_eq!(flows_of(&mut ct, family, &[&a, &b]), expected, "{family}");

            let other = if family == IpFamily::V4 {
                IpFamily::V6
            } else {
                IpFamily::V4
            };
            assert_eq!(
                flows_of(&mut ct, other, &[&a, &b]),
                [],
                "dump filters by family"
            );
            let tcp = ct.dump(family, Protocol::Tcp).expect("dump");
            assert_eq!(tcp, [], "dump filters by protocol");

            assert!(ct.delete(&expected[0]).expect("delete"), "{family}");
            assert_eq!(
                flows_of(&mut ct, family, &[&a, &b]),
                expected[1..],
                "{family}"
            );
            let again = ct.delete(&expected[0]).expect("deleting a missing entry");
            assert!(!again, "{family}: the entry was already gone");
        }
    });
}

/// A UDP service port `vip` whose one serving endpoint is `endpoint`.
fn udp_service(name: &str, vip: &str, endpoint: &str) -> (ServicePortName, Arc<ServiceEntry>) {
    let (vip, endpoint) = (addr(vip), addr(endpoint));
    let name = ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port: String::new(),
        protocol: Protocol::Udp,
    };
    let port = ServicePort::new(name.clone(), vip.ip(), vip.port());
    let endpoints = vec![Endpoint::ready(endpoint.ip(), endpoint.port(), true)];
    let entry = ServiceEntry::new(port, endpoints, &NodeInfo::default());
    (name, Arc::new(entry))
}

#[test]
fn cleanup_deletes_only_stale_entries() {
    in_private_netns(|| {
        let pod = UdpSocket::bind("10.244.1.2:5353").expect("bind pod");
        let old_pod = UdpSocket::bind("10.244.1.3:5353").expect("bind old pod");
        let vip = UdpSocket::bind("10.96.0.12:53").expect("bind VIP");
        let kept = udp_flow(&pod, "10.96.0.10:53");
        let moved = udp_flow(&old_pod, "10.96.0.11:53");
        let never_dnated = udp_flow(&vip, "10.96.0.12:53");
        let unrelated = udp_flow(&pod, "10.244.1.2:5353");
        let state = ProxyState {
            v4: [
                udp_service("kept", "10.96.0.10:53", "10.244.1.2:5353"),
                udp_service("moved", "10.96.0.11:53", "10.244.1.2:5353"),
                udp_service("never-dnated", "10.96.0.12:53", "10.244.1.2:5353"),
            ]
            .into_iter()
            .collect(),
            ..ProxyState::default()
        };
        let all = [&kept, &moved, &never_dnated, &unrelated];
        let mut ct = Conntrack::new().expect("ctnetlink socket");
        assert_eq!(flows_of(&mut ct, IpFamily::V4, &all).len(), 4);

        assert_eq!(
            cleanup_stale_flows(&state, IpFamily::V4, &[Protocol::Udp]).expect("cleanup"),
            2
        );
        let mut left = [
            expected_flow(&kept, "10.96.0.10:53", "10.244.1.2:5353"),
            expected_flow(&unrelated, "10.244.1.2:5353", "10.244.1.2:5353"),
        ];
        left.sort_by_key(|f| f.orig_sport);
        assert_eq!(flows_of(&mut ct, IpFamily::V4, &all), left);
        assert_eq!(
            cleanup_stale_flows(&state, IpFamily::V4, &[Protocol::Udp]).expect("cleanup"),
            0,
            "nothing left"
        );
    });
}

/// An SCTP entry from `10.244.9.9:sport` to `10.96.0.40:3868`, DNATed to `target`, made
/// with the `conntrack` tool (no SCTP sockets needed).
fn insert_sctp_entry(sport: u16, target: &str) {
    let target = addr(target);
    run(
        &format!(
            "conntrack -I -p sctp -s 10.244.9.9 -d 10.96.0.40 --sport {sport} --dport 3868 \
             --reply-src {} --reply-dst 10.244.9.9 --reply-port-src {} --reply-port-dst {sport} \
             --state ESTABLISHED --orig-vtag 1 --reply-vtag 2 -t 300",
            target.ip(),
            target.port()
        ),
        "",
    );
}

/// SCTP entries are left to a backend that cleans UDP only, and judged by the same rule
/// for one that asks for SCTP too (IPVS mode).
#[test]
fn sctp_entries_are_cleaned_only_when_asked() {
    in_private_netns(|| {
        insert_sctp_entry(40000, "10.244.7.7:3868");
        insert_sctp_entry(40001, "10.244.1.2:3868");
        let name = ServicePortName {
            namespace: "default".into(),
            name: "diameter".into(),
            port: String::new(),
            protocol: Protocol::Sctp,
        };
        let port = ServicePort::new(name.clone(), "10.96.0.40".parse().expect("ip"), 3868);
        let endpoints = vec![Endpoint::ready(
            "10.244.1.2".parse().expect("ip"),
            3868,
            true,
        )];
        let entry = ServiceEntry::new(port, endpoints, &NodeInfo::default());
        let state = ProxyState {
            v4: [(name, Arc::new(entry))].into_iter().collect(),
            ..ProxyState::default()
        };
        let mut ct = Conntrack::new().expect("ctnetlink socket");
        let sctp_sports = |ct: &mut Conntrack| -> Vec<u16> {
            let flows = ct.dump(IpFamily::V4, Protocol::Sctp).expect("dump");
            let mut ports: Vec<u16> = flows.iter().map(|f| f.orig_sport).collect();
            ports.sort();
            ports
        };
        assert_eq!(sctp_sports(&mut ct), [40000, 40001]);

        let udp_only = cleanup_stale_flows(&state, IpFamily::V4, &[Protocol::Udp]);
        assert_eq!(udp_only.expect("cleanup"), 0);
        assert_eq!(sctp_sports(&mut ct), [40000, 40001]);

        let both = [Protocol::Udp, Protocol::Sctp];
        let deleted = cleanup_stale_flows(&state, IpFamily::V4, &both).expect("cleanup");
        assert_eq!(deleted, 1);
        assert_eq!(sctp_sports(&mut ct), [40001]);
    });
}
