//! The IPVS and dummy link clients against a real kernel, each test in a private network
//! namespace of its own thread (the host's is never touched).
//!
//! One scenario runs on both the kernel and [`FakeIpvs`], and their transcripts must be
//! equal: that is what "the fake behaves like the kernel" means. Kernels without IPVS or
//! the dummy link type (such as the development machines') skip the kernel part with a
//! message. `.ci/vm/run` boots one that has both (after `.ci/vm/prepare`):
//!
//! ```sh
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/run \
//!     cargo test -p kube-proxy-ipvs --test kernel
//! ```

use std::net::IpAddr;
use std::time::Duration;

use kube_proxy_ipvs::{
    DummyLink, DummyLinkClient, Error, FakeIpvs, Ipvs, IpvsClient, RealServer, RealServerStats,
    Scheduler, ServiceFlags, ServiceKey, Timeouts, VirtualServer, KUBE_IPVS0,
};
use kube_proxy_model::Protocol;

/// Runs `f` on a thread in a new network namespace; `None` (after saying why) where
/// namespaces cannot be made (not root).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces; no memory is involved.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let error = std::io::Error::last_os_error();
            skip(&format!(
                "unshare(CLONE_NEWNET) failed (run as root): {error}"
            ));
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Brings the namespace's loopback up. IPVS refuses (`EINVAL`) an IPv4 real server whose
/// address is neither local nor unicast, and a namespace without any address has no local
/// routing table yet, where every address counts as neither.
fn loopback_up() {
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("running ip (iproute2)");
    assert!(status.success(), "ip link set lo up: {status}");
}

/// Says that a test skips its kernel part, and why. It writes to the process's stderr
/// directly, which the test harness does not capture, so the message shows in every run.
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sched(name: &str) -> Scheduler {
    Scheduler::new(name).unwrap()
}

/// A service of each protocol and family, with every kind of option.
fn services() -> Vec<VirtualServer> {
    let mut all = Vec::new();
    for (v4, v6) in [("10.96.0.1", "fd00::1"), ("10.96.0.2", "fd00::2")] {
        for (addr, protocol) in [
            (v4, Protocol::Tcp),
            (v4, Protocol::Udp),
            (v4, Protocol::Sctp),
            (v6, Protocol::Tcp),
            (v6, Protocol::Udp),
            (v6, Protocol::Sctp),
        ] {
            all.push(VirtualServer::new(
                ip(addr),
                80,
                protocol,
                Scheduler::default(),
            ));
        }
    }
    // Session affinity as upstream sets it; a coarser netmask; the mh flags; wrr.
    all[0].flags = ServiceFlags::PERSISTENT;
    all[0].timeout = 10800;
    all[3].flags = ServiceFlags::PERSISTENT;
    all[3].timeout = 60;
    all[3].netmask = 64;
    all[4].scheduler = sched("mh");
    all[4].flags = ServiceFlags::SCHED_MH_FALLBACK | ServiceFlags::SCHED_MH_PORT;
    all[7].scheduler = sched("wrr");
    all[8].netmask = 24;
    all
}

/// Two real servers of the service's family.
fn pods(svc: &ServiceKey) -> [RealServer; 2] {
    let (a, b) = match svc.addr {
        IpAddr::V4(_) => ("10.244.1.2", "10.244.2.3"),
        IpAddr::V6(_) => ("fd00:244::2", "fd00:244::3"),
    };
    [
        RealServer::new(ip(a), 8080, 1),
        RealServer {
            upper_threshold: 100,
            lower_threshold: 10,
            ..RealServer::new(ip(b), 8081, 2)
        },
    ]
}

/// What a step did: its value, or the kernel's errno.
fn outcome<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(Error::Kernel { source, .. }) => format!("errno {:?}", source.raw_os_error()),
        Err(other) => panic!("not a kernel answer: {other}"),
    }
}

fn sorted_services(ipvs: &mut dyn IpvsClient) -> Result<Vec<VirtualServer>, Error> {
    let mut services = ipvs.services()?;
    services.sort_by_key(VirtualServer::key);
    Ok(services)
}

/// The real servers of `svc` in address order (the kernel lists the newest first).
fn sorted_destinations(
    ipvs: &mut dyn IpvsClient,
    svc: &ServiceKey,
) -> Result<Vec<(RealServer, RealServerStats)>, Error> {
    let mut dests: Vec<_> = ipvs
        .destinations(svc)?
        .into_iter()
        .map(|d| (d.server, d.stats))
        .collect();
    dests.sort_by_key(|(s, _)| (s.addr, s.port));
    Ok(dests)
}

/// Everything the backend will do, with checks of what reads back; returns the
/// transcript of every step's outcome.
fn scenario(ipvs: &mut dyn IpvsClient) -> Vec<String> {
    let mut log = Vec::new();
    let mut step = |what: &str, outcome: String| log.push(format!("{what}: {outcome}"));
    let all = services();

    step("empty", outcome(ipvs.services()));
    step("default timeouts", outcome(ipvs.config()));
    for svc in &all {
        ipvs.add_service(svc)
            .unwrap_or_else(|e| panic!("add {}: {e}", svc.key()));
    }
    assert_eq!(sorted_services(ipvs).unwrap(), sorted(all.clone()));
    step("add twice", outcome(ipvs.add_service(&all[0])));

    let mut changed = all[1].clone();
    changed.scheduler = sched("sh");
    changed.flags = ServiceFlags::SCHED_SH_FALLBACK | ServiceFlags::ONE_PACKET;
    ipvs.update_service(&changed).unwrap();
    let mut unpersisted = all[0].clone();
    unpersisted.flags = ServiceFlags::NONE;
    unpersisted.timeout = 0;
    ipvs.update_service(&unpersisted).unwrap();
    let mut expected = all.clone();
    expected[0] = unpersisted;
    expected[1] = changed;
    assert_eq!(sorted_services(ipvs).unwrap(), sorted(expected));

    for svc in &all {
        for pod in pods(&svc.key()) {
            ipvs.add_destination(&svc.key(), &pod).unwrap();
        }
    }
    let key = all[3].key();
    let [first, second] = pods(&key);
    let dests = sorted_destinations(ipvs, &key).unwrap();
    assert_eq!(
        dests,
        [first, second].map(|p| (p, RealServerStats::default()))
    );
    step(
        "add real server twice",
        outcome(ipvs.add_destination(&key, &first)),
    );
    let v4_pod = pods(&all[0].key())[0];
    step("other family", outcome(ipvs.add_destination(&key, &v4_pod)));
    let upside_down = RealServer {
        upper_threshold: 1,
        lower_threshold: 2,
        ..first
    };
    step(
        "thresholds",
        outcome(ipvs.update_destination(&key, &upside_down)),
    );

    let drained = RealServer {
        weight: 0,
        upper_threshold: 7,
        ..first
    };
    ipvs.update_destination(&key, &drained).unwrap();
    ipvs.delete_destination(&key, &second).unwrap();
    let dests = sorted_destinations(ipvs, &key).unwrap();
    assert_eq!(dests, [(drained, RealServerStats::default())]);
    step(
        "delete real server twice",
        outcome(ipvs.delete_destination(&key, &second)),
    );
    step(
        "update gone real server",
        outcome(ipvs.update_destination(&key, &second)),
    );

    let gone = ServiceKey { port: 81, ..key };
    step(
        "real servers of no service",
        outcome(ipvs.destinations(&gone)),
    );
    step(
        "add to no service",
        outcome(ipvs.add_destination(&gone, &first)),
    );
    step(
        "delete from no service",
        outcome(ipvs.delete_destination(&gone, &first)),
    );
    step(
        "update no service",
        outcome(ipvs.update_service(&VirtualServer {
            port: 81,
            ..all[3].clone()
        })),
    );
    let mut unknown = all[2].clone();
    unknown.port = 82;
    unknown.scheduler = sched("nosuch");
    step("unknown scheduler", outcome(ipvs.add_service(&unknown)));

    ipvs.delete_service(&key).unwrap();
    step("delete service twice", outcome(ipvs.delete_service(&key)));
    assert_eq!(ipvs.services().unwrap().len(), all.len() - 1);

    let set = Timeouts {
        tcp: Duration::from_secs(7200),
        tcp_fin: Duration::ZERO,
        udp: Duration::from_secs(30),
    };
    ipvs.set_config(&set).unwrap();
    step("timeouts after set", outcome(ipvs.config()));

    ipvs.flush().unwrap();
    step("flushed", outcome(ipvs.services()));
    log
}

fn sorted(mut services: Vec<VirtualServer>) -> Vec<VirtualServer> {
    services.sort_by_key(VirtualServer::key);
    services
}

/// The value of `result`, or `None` after saying that `test` skips because the kernel
/// lacks what it needs; any other error fails the test.
fn available<T>(test: &str, result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Unavailable(why)) => {
            skip(&format!("{test}: {why}"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

#[test]
fn ipvs_kernel_and_fake_agree() {
    let fake = scenario(&mut FakeIpvs::new());
    let kernel = in_new_netns(|| {
        let mut ipvs = available("the IPVS kernel test", Ipvs::new())?;
        loopback_up();
        Some(scenario(&mut ipvs))
    });
    if let Some(Some(kernel)) = kernel {
        assert_eq!(kernel, fake);
    }
}

#[test]
fn dummy_link_lifecycle() {
    in_new_netns(|| {
        let mut link = DummyLink::new(KUBE_IPVS0).unwrap();
        assert!(!link.delete().unwrap(), "no link yet");
        let error = link.addresses().unwrap_err();
        assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
        let result = link.ensure();
        if let Err(Error::Unavailable(why)) = &result {
            assert!(why.contains("modprobe dummy"), "{why}");
        }
        let Some(existed) = available("the dummy link kernel test", result) else {
            return;
        };
        assert!(!existed);
        assert!(link.ensure().unwrap(), "exists now");

        let (v4, v6) = (ip("10.96.0.10"), ip("fd00::10"));
        for addr in [v4, v6] {
            assert!(link.add_address(addr).unwrap(), "{addr} added");
            assert!(!link.add_address(addr).unwrap(), "{addr} was there");
        }
        let mut addrs = link.addresses().unwrap();
        addrs.sort();
        assert_eq!(addrs, [v4, v6]);
        // Another link's addresses are not ours.
        let mut lo = DummyLink::new("lo").unwrap();
        assert!(lo.addresses().unwrap().iter().all(|a| a.is_loopback()));
        let error = lo.delete().unwrap_err();
        assert!(matches!(error, Error::Invalid(_)), "{error}");

        assert!(link.delete_address(v4).unwrap());
        assert!(!link.delete_address(v4).unwrap(), "gone already");
        assert_eq!(link.addresses().unwrap(), [v6]);
        assert!(link.delete().unwrap());
        assert!(!link.delete().unwrap());
    });
}

/// The counters of real servers follow real connections: a TCP connection through a
/// service address bound to the dummy link counts as active while it is established and
/// as inactive once the client has closed it (what graceful termination waits for).
#[test]
fn real_server_counters_follow_connections() {
    in_new_netns(|| {
        const TEST: &str = "the IPVS counters test";
        let Some(mut ipvs) = available(TEST, Ipvs::new()) else {
            return;
        };
        let mut link = DummyLink::new(KUBE_IPVS0).unwrap();
        if available(TEST, link.ensure()).is_none() {
            return;
        }
        loopback_up();
        for (vip, this_host) in [("10.96.0.1", "127.0.0.1"), ("fd00::1", "::1")] {
            count_one_connection(&mut ipvs, &mut link, ip(vip), ip(this_host));
        }
    });
}

/// Connects to `vip` (bound to `link`) through a service whose one real server is
/// `this_host`, checking the counters while the connection is open and after it closed.
fn count_one_connection(ipvs: &mut Ipvs, link: &mut DummyLink, vip: IpAddr, this_host: IpAddr) {
    link.add_address(vip).unwrap();
    // Packets reach the listener with the VIP as their destination: it must listen on
    // every address.
    let any: IpAddr = match vip {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let listener = std::net::TcpListener::bind((any, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = VirtualServer::new(vip, port, Protocol::Tcp, Scheduler::default());
    ipvs.add_service(&svc).unwrap();
    // This host as the real server: IPVS hands the packets to the local stack unchanged.
    let local = RealServer {
        fwd_method: kube_proxy_ipvs::FwdMethod::Local,
        ..RealServer::new(this_host, port, 1)
    };
    ipvs.add_destination(&svc.key(), &local).unwrap();

    let client = std::net::TcpStream::connect((vip, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut stats = || ipvs.destinations(&svc.key()).unwrap()[0].stats;
    let open = stats();
    assert_eq!(
        (open.active_conns, open.inactive_conns),
        (1, 0),
        "{vip}: {open:?}"
    );

    drop(client);
    drop(server);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        let now = stats();
        if now.active_conns == 0 || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let counts = (closed.active_conns, closed.inactive_conns);
    assert_eq!(counts, (0, 1), "{vip}: {closed:?}");
}
