//! The real `kube-proxy` binary as a daemon in a private network namespace, against the
//! fake API server, and the API objects the daemon tests feed it.
//!
//! Each test runs on a thread of its own that first moves into a fresh, private network
//! namespace ([`in_private_netns`]). Everything the test starts from that thread lives
//! there too: the fake API server (bound to `127.0.0.1` of that namespace by the tokio
//! runtime built on the thread), the `kube-proxy` child process, and every tool it runs.
//! The namespace disappears with the thread and its children; the host's own namespace is
//! never touched.

// Shared by several test crates; each uses a part.
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::fake_apiserver::FakeApiServer;
use super::netns::run;

/// Our node, its address and its pods' range.
pub const NODE: &str = "node-a";
pub const NODE_IP: &str = "192.0.2.10";
pub const POD_CIDR: &str = "10.244.1.0/24";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const NAMESPACE: &str = "default";
/// Every test Service listens on TCP port 80 (named `http`), its endpoints on 8080.
pub const SERVICE_PORT: i32 = 80;
pub const TARGET_PORT: i32 = 8080;
pub const PORT_NAME: &str = "http";

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// `--iptables-min-sync-period` (which is also nftables mode's): short, so that waits
/// are dominated by the daemon's reaction to events rather than by rate limiting.
pub const MIN_SYNC_PERIOD: &str = "100ms";
/// Upper bound for the kernel to reflect a change: generous enough for a relist after
/// the watcher's first backoff step (~0.8 s) with a debug build on a loaded machine.
pub const CONVERGE: Duration = Duration::from_secs(15);
/// How long a SIGTERMed daemon may take to exit.
pub const EXIT: Duration = Duration::from_secs(5);
/// Pause between two looks at the kernel.
pub const POLL: Duration = Duration::from_millis(50);

/// An unused TCP port on `127.0.0.1` of this namespace (nothing else runs in it).
pub fn free_local_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// `GET path` from `127.0.0.1:port`: the status and body, or `None` while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at((std::net::Ipv4Addr::LOCALHOST, port).into(), path)
}

/// `GET path` from `addr`: the status and body, or `None` while nothing answers.
pub fn http_get_at(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
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
pub fn in_private_netns(test: impl FnOnce(&FakeApiServer) + Send + 'static) {
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
pub fn enter_new_netns() {
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

/// Established TCP connections from this namespace to the fake API server.
pub fn connections_to(server: &FakeApiServer) -> usize {
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
pub struct Daemon {
    child: Child,
    /// Its stdout and stderr, shown when a test fails.
    log: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `kube-proxy` in nftables mode, as node [`NODE`], against `server`.
    pub fn start(server: &FakeApiServer) -> Daemon {
        Daemon::start_with(server, &[])
    }

    /// As [`Daemon::start`], with `extra` flags.
    pub fn start_with(server: &FakeApiServer, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(server, extra, &[])
    }

    /// `kube-proxy` with exactly `args` and nothing else, as a DaemonSet runs it.
    pub fn start_exactly(args: &[&str]) -> Daemon {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let output = || log.as_file().try_clone().expect("dup the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-proxy"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("spawn kube-proxy");
        Daemon { child, log }
    }

    /// As [`Daemon::start_with`], with the environment variables `env` set (e.g. a `PATH`
    /// that puts a wrapper before a tool the daemon runs).
    pub fn start_with_env(server: &FakeApiServer, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let output = || log.as_file().try_clone().expect("dup the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-proxy"))
            .args(["--proxy-mode", "nftables", "--hostname-override", NODE])
            .args(["--master", &server.url()])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .args(["--iptables-min-sync-period", MIN_SYNC_PERIOD])
            // nf_conntrack_max is global and read-only outside the host's namespace, and
            // upstream's default (131072) may not be what the host has: leave it, as kind
            // does. A test that wants it passes its own value (the last flag wins).
            .args(["--conntrack-max-per-core", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("spawn kube-proxy");
        Daemon { child, log }
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        // Opened anew, so that reading never moves the offset the child writes at.
        let text = std::fs::read_to_string(self.log.path()).expect("read the log");
        format!("--- kube-proxy output ---\n{text}")
    }

    /// Panics, with its output, if the daemon is no longer running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for kube-proxy") {
            panic!("kube-proxy exited with {status}\n{}", self.log());
        }
    }

    /// Polls `probe` until it returns `Ok`, for at most [`CONVERGE`]. Fails with `what`,
    /// the last `Err` and the daemon's output on timeout, or as soon as the daemon dies.
    pub fn wait_until<T>(&mut self, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
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

    /// Waits (at most [`CONVERGE`]) until the daemon's output contains `text`.
    pub fn wait_for_log(&mut self, text: &str) {
        let path = self.log.path().to_owned();
        self.wait_until(&format!("kube-proxy to log {text:?}"), || {
            let log = std::fs::read_to_string(&path).expect("read the log");
            log.contains(text)
                .then_some(())
                .ok_or_else(|| "not logged yet".to_owned())
        });
    }

    /// Checks for `window` that the daemon keeps running.
    pub fn assert_alive_for(&mut self, window: Duration) {
        let end = Instant::now() + window;
        while Instant::now() < end {
            self.assert_alive();
            thread::sleep(POLL);
        }
        self.assert_alive();
    }

    /// Waits until the daemon has its watchers' requests open on `server` (which, when
    /// paused, holds them unanswered).
    pub fn wait_connected(&mut self, server: &FakeApiServer) {
        // One connection per concurrent request: the Service, EndpointSlice and Node
        // lists (and ServiceCIDR discovery) are all sent at start.
        self.wait_until("kube-proxy to connect to the API server", || {
            let open = connections_to(server);
            (open >= 3)
                .then_some(())
                .ok_or(format!("{open} connections open"))
        });
    }

    /// Sends SIGTERM and waits (at most [`EXIT`]) for the daemon to exit.
    pub fn terminate(&mut self) -> ExitStatus {
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
    pub fn wait_exit(&mut self) -> ExitStatus {
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

pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        ..ObjectMeta::default()
    }
}

/// `default/<name>` at `cluster_ip`, TCP port 80 (`http`) to target port 8080.
pub fn service(name: &str, cluster_ip: &str) -> Service {
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
pub fn slice(service: &str, addresses: &[&str]) -> EndpointSlice {
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
pub fn labelled<K: kube::Resource>(mut obj: K, labels: &[(&str, &str)]) -> K {
    let all = obj.meta_mut().labels.get_or_insert_with(Default::default);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    obj
}

/// `svc` with its port's protocol replaced.
pub fn with_protocol(mut svc: Service, protocol: &str) -> Service {
    let spec = svc.spec.as_mut().expect("test services have a spec");
    for port in spec.ports.iter_mut().flatten() {
        port.protocol = Some(protocol.to_owned());
    }
    svc
}

/// Creates Service `name` and its EndpointSlice.
pub fn create_backed(server: &FakeApiServer, name: &str, cluster_ip: &str, endpoints: &[&str]) {
    server.create(&service(name, cluster_ip)).unwrap();
    server.create(&slice(name, endpoints)).unwrap();
}

/// Our Node, with its podCIDR and InternalIP.
pub fn create_node(server: &FakeApiServer) {
    server.create(&our_node()).unwrap();
}

/// Our Node as [`create_node`] creates it.
pub fn our_node() -> Node {
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
pub fn service_lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
        .count()
}
