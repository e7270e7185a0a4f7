//! Throwaway network namespaces wired into a small cluster, plus in-process
//! servers and clients that run inside them.
//!
//! Everything here lives in namespaces this process created: names carry the pid
//! and a counter, so parallel tests (and other processes) never collide, and
//! every namespace is deleted again in `Drop`, even when a test panics.
//!
//! The topology ([`Topology`]) every test gets:
//!
//! ```text
//!  client netns                node netns ("node-a")                 remote netns ("node-b")
//!  203.0.113.2, .3 (lo)        eth1 198.51.100.1   eth0 192.0.2.10 ── eth0 192.0.2.11
//!  eth0 198.51.100.2 ───────── eth1                cbr0 10.244.1.1    cbr0 10.244.2.1
//!                                                   │ (hairpin on)     │
//!                                              local pods          remote pods
//!                                              10.244.1.2, .3 ...  10.244.2.2, .3 ...
//! ```
//!
//! The same topology is dual-stack: every link and pod also has an IPv6
//! address ([`Family::V6`]), with the same shape:
//!
//! ```text
//!  client                      node                                  remote
//!  2001:db8:2::3 (lo)
//!  eth0 2001:db8:1::2 ──────── eth1 2001:db8:1::1  eth0 2001:db8::10 ── eth0 2001:db8::11
//!                                                  cbr0 fd00:10:244:1::1  cbr0 fd00:10:244:2::1
//!                                              local pods fd00:10:244:1::2, ::3 ...
//!                                              remote pods fd00:10:244:2::2, ::3 ...
//! ```
//!
//! IPv6 addresses are added with `nodad` and `accept_dad` is off in every
//! namespace: otherwise they stay tentative for a second or two, and binds to
//! them fail.
//!
//! Every pod runs an [`EchoServer`] on TCP and UDP port [`POD_PORT`] that
//! answers each request with its own name and the peer address it saw, so a
//! test can tell which endpoint answered and whether the source was NATed.

// Shared by several test crates; only the dataplane tests use all of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The kube-proxy node's name and primary (InternalIP) address.
pub const NODE_NAME: &str = "node-a";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The other node, which only hosts remote pods.
pub const REMOTE_NODE_NAME: &str = "node-b";
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// The node's address on the link to the external client.
pub const NODE_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT_LINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Source addresses of the external client; the first is its default.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const OTHER_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// Gateway (bridge) addresses of the two pod CIDRs.
pub const LOCAL_POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const REMOTE_POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
pub const LOCAL_POD_CIDR: &str = "10.244.1.0/24";
pub const REMOTE_POD_CIDR: &str = "10.244.2.0/24";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The port every pod's echo server listens on, TCP and UDP.
pub const POD_PORT: u16 = 8080;

/// The IPv6 twins of the addresses above.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const REMOTE_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11);
pub const NODE_UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The external client's IPv6 sources: its address on the link to the node
/// (its default), and one on its loopback.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const OTHER_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 3);
pub const LOCAL_POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
const REMOTE_POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 1);
pub const LOCAL_POD_CIDR6: &str = "fd00:10:244:1::/64";
pub const REMOTE_POD_CIDR6: &str = "fd00:10:244:2::/64";
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";

/// An IP family of the dual-stack topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The name Kubernetes uses (`ipFamilies`, `addressType`).
    pub fn kube_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// How long a probe waits for a connection or an answer. Paths here are veths
/// on one machine (answers take microseconds), so running out of it means the
/// packets were dropped.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Distinguishes namespaces created by this process.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// How long a tool (`ip`, `nft`, ...) may run before it counts as hung. Generous: in
/// the project's VM (TCG, no KVM) a plain `ip` takes up to half a second, and several
/// seconds while the machine is busy.
pub const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Runs `ip` (or any program, bounded by [`TOOL_LIMIT`]) and returns its stdout; panics
/// with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = output_bounded(cmd, TOOL_LIMIT).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created (and owned) by this process.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `kpdp-<pid>-<n>-<role>` with `lo` up.
    pub fn create(role: &str) -> Netns {
        Netns::create_all(&[role]).remove(0)
    }

    /// [`Netns::create`] for each of `roles`, with a single run of `ip`.
    pub fn create_all<S: AsRef<str>>(roles: &[S]) -> Vec<Netns> {
        let all: Vec<Netns> = roles
            .iter()
            .map(|role| {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let role = role.as_ref();
                let name = format!("kpdp-{}-{id}-{role}", std::process::id());
                Netns { name }
            })
            .collect();
        let adds: Vec<String> = all
            .iter()
            .map(|ns| format!("netns add {}", ns.name))
            .collect();
        ip_batch(None, &adds);
        for ns in &all {
            // Before any interface exists, so that every one inherits it: link-local
            // addresses are usable at once, too.
            for conf in ["all", "default"] {
                ns.sysctl(&format!("ipv6/conf/{conf}/accept_dad"), "0");
            }
            ns.enter(set_loopback_up)
                .unwrap_or_else(|e| panic!("{}: lo up: {e}", ns.name));
        }
        all
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS` (split at whitespace), panicking on failure.
    pub fn ip(&self, args: &str) -> String {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// Creates a veth pair: `dev` here, `peer_dev` inside `peer`.
    fn veth(&self, dev: &str, peer: &Netns, peer_dev: &str) {
        let peer = peer.name();
        self.ip(&format!(
            "link add {dev} type veth peer name {peer_dev} netns {peer}"
        ));
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Sets a `net.*` sysctl of this namespace, e.g. `("ipv4/ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/net/{key}");
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{}: writing {path}: {e}", self.name));
    }

    /// Runs `f` on a fresh thread that has joined this namespace; sockets it
    /// opens belong to the namespace and may be used from any thread afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.join_current_thread();
                f()
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::enter`], but the thread outlives the call.
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let file = self.open();
        thread::spawn(move || {
            setns(&file);
            f()
        })
    }

    fn join_current_thread(&self) {
        setns(&self.open());
    }

    fn open(&self) -> File {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"))
    }
}

/// Moves the calling thread (only) into the namespace behind `file`.
fn setns(file: &File) {
    // SAFETY: plain syscall on a valid, open fd; it changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
}

impl Drop for Netns {
    /// What `ip netns pids` + `kill -9` and `ip netns del` do, without running `ip`.
    fn drop(&mut self) {
        let path = format!("/run/netns/{}", self.name);
        // Processes left inside (a kube-proxy that hung, say) would keep the
        // namespace alive after the delete.
        for pid in pids_in(&path) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deleted = delete_netns_mount(&path);
        if let Err(e) = deleted {
            if !thread::panicking() {
                panic!("could not delete netns {}: {e}", self.name);
            }
        }
    }
}

/// The processes whose network namespace is the one bound at `path` (as `ip netns pids`
/// finds them: same device and inode).
fn pids_in(path: &str) -> Vec<libc::pid_t> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = proc_dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok());
    pids.filter(|pid: &libc::pid_t| {
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"));
        ns.is_ok_and(|ns| ns.dev() == target.dev() && ns.ino() == target.ino())
    })
    .collect()
}

/// `ip netns del`: detaches the bind mount that keeps the namespace and removes the file.
fn delete_netns_mount(path: &str) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path).expect("no NUL in a netns path");
    // SAFETY: umount2 on a valid, NUL-terminated path; no memory is shared with it.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::remove_file(path)
}

/// Brings `lo` of the calling thread's network namespace up (`ip link set lo up`).
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: a socket of our own, closed below, and ioctls that read and write only the
    // `ifreq` we pass, which names "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let result = if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}

/// Distinguishes batch files written by this process.
static NEXT_BATCH: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip [-n NS] -batch FILE` over `lines` (each what follows `ip` on a command line;
/// no `-6`, the addresses say the family): one exec instead of one per line, which
/// matters in the VM, where each exec of `ip` costs a fraction of a second.
fn ip_batch(ns: Option<&str>, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let n = NEXT_BATCH.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kpdp-{}-{n}.ip", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let mut ip = Command::new("ip");
    if let Some(ns) = ns {
        ip.args(["-n", ns]);
    }
    ip.arg("-batch").arg(&path);
    let out = output_bounded(&mut ip, TOOL_LIMIT);
    let _ = std::fs::remove_file(&path);
    let out = out.unwrap_or_else(|e| panic!("{ip:?}: {e}"));
    assert!(
        out.status.success(),
        "ip -batch in {ns:?} failed ({}): {}\n--- batch ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        lines.join("\n")
    );
}

/// `ip` commands for one namespace, run together by [`IpBatch::run`].
struct IpBatch<'a> {
    ns: &'a Netns,
    lines: Vec<String>,
}

impl<'a> IpBatch<'a> {
    fn new(ns: &'a Netns) -> IpBatch<'a> {
        IpBatch {
            ns,
            lines: Vec::new(),
        }
    }

    fn add(&mut self, line: String) {
        self.lines.push(line);
    }

    /// A veth pair: `dev` in this batch's namespace, `peer_dev` inside `peer`.
    fn veth(&mut self, dev: &str, peer: &Netns, peer_dev: &str) {
        let peer = peer.name();
        self.add(format!(
            "link add {dev} type veth peer name {peer_dev} netns {peer}"
        ));
    }

    fn run(self) {
        ip_batch(Some(self.ns.name()), &self.lines);
    }
}

/// A pod: its own namespace, an address, the node it runs on, and an echo server.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub node: &'static str,
    // Declared before `netns` so the server stops before its namespace goes.
    server: EchoServer,
    pub netns: Netns,
}

/// The whole cluster of one test. Field order is drop order: pods first, then
/// the nodes they hang off.
pub struct Topology {
    pods: BTreeMap<String, Pod>,
    pub client: Netns,
    pub remote: Netns,
    pub node: Netns,
}

impl Topology {
    /// Builds the cluster with the given pods on the node under test and on the
    /// remote node; pod addresses are handed out in order from `.2`.
    ///
    /// Each namespace is configured by one `ip -batch` (the node's routes by a second
    /// one, once every link is up): a handful of execs rather than dozens.
    pub fn build(local_pods: &[&str], remote_pods: &[&str]) -> Topology {
        let pods = local_pods.iter().map(|name| (*name, NODE_NAME));
        let pods: Vec<(&str, &'static str)> = pods
            .chain(remote_pods.iter().map(|name| (*name, REMOTE_NODE_NAME)))
            .collect();
        let mut roles = vec!["node".to_owned(), "remote".to_owned(), "client".to_owned()];
        roles.extend(pods.iter().map(|(name, _)| format!("pod-{name}")));
        let mut namespaces = Netns::create_all(&roles).into_iter();
        let (node, remote, client) = (
            namespaces.next().unwrap(),
            namespaces.next().unwrap(),
            namespaces.next().unwrap(),
        );
        let pod_namespaces: Vec<Netns> = namespaces.collect();
        // Pod index on its node, from which its addresses and veth name follow.
        let index_on_node = |i: usize| match pods[i].1 {
            NODE_NAME => i,
            _ => i - local_pods.len(),
        };

        let mut node_links = IpBatch::new(&node);
        wire_bridge(
            &node,
            &mut node_links,
            LOCAL_POD_GATEWAY,
            LOCAL_POD_GATEWAY6,
        );
        // Scenarios reject many probes from one client within a second; the kernel's
        // per-peer ICMP rate limit (one a second after a burst of six) would swallow
        // some of the port-unreachable errors that REJECT and closed ports send.
        node.sysctl("ipv4/icmp_ratelimit", "0");
        node.sysctl("ipv6/icmp/ratelimit", "0");
        let mut remote_links = IpBatch::new(&remote);
        wire_bridge(
            &remote,
            &mut remote_links,
            REMOTE_POD_GATEWAY,
            REMOTE_POD_GATEWAY6,
        );
        let mut client_links = IpBatch::new(&client);
        let mut node_routes = IpBatch::new(&node);
        wire_remote(&mut node_links, &mut node_routes, &mut remote_links);
        wire_client(&mut node_links, &mut node_routes, &mut client_links);
        for (i, netns) in pod_namespaces.iter().enumerate() {
            let host = match pods[i].1 {
                NODE_NAME => &mut node_links,
                _ => &mut remote_links,
            };
            let port = format!("veth{}", index_on_node(i));
            host.veth(&port, netns, "eth0");
            // Hairpin lets a pod reach itself through a service.
            host.add(format!("link set {port} master cbr0 up"));
            host.add(format!("link set {port} type bridge_slave hairpin on"));
        }
        // Peers first: their links come up in their own batches.
        node_links.run();
        enable_bridge_netfilter(&node);
        remote_links.run();
        client_links.run();
        node_routes.run();
        let mut topology = Topology {
            pods: BTreeMap::new(),
            client,
            remote,
            node,
        };
        for (i, netns) in pod_namespaces.into_iter().enumerate() {
            let (name, node) = pods[i];
            let gateways = match node {
                NODE_NAME => (LOCAL_POD_GATEWAY, LOCAL_POD_GATEWAY6),
                _ => (REMOTE_POD_GATEWAY, REMOTE_POD_GATEWAY6),
            };
            topology.add_pod(name, netns, gateways, index_on_node(i), node);
        }
        topology
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    /// The source address a packet from the node to `pod` leaves with, i.e.
    /// what masquerading towards that pod rewrites the source to.
    pub fn node_address_towards(&self, pod: &str) -> Ipv4Addr {
        match self.pod(pod).node {
            NODE_NAME => LOCAL_POD_GATEWAY,
            _ => NODE_IP,
        }
    }

    /// [`Topology::node_address_towards`] in either family.
    pub fn node_address_towards_in(&self, pod: &str, family: Family) -> IpAddr {
        match (family, self.pod(pod).node) {
            (Family::V4, _) => self.node_address_towards(pod).into(),
            (Family::V6, NODE_NAME) => LOCAL_POD_GATEWAY6.into(),
            (Family::V6, _) => NODE_IP6.into(),
        }
    }

    /// The pod `name` in `netns`, whose `eth0` [`Topology::build`] plugged into its
    /// node's bridge: addresses, routes and its echo server.
    fn add_pod(
        &mut self,
        name: &str,
        netns: Netns,
        (gateway, gateway6): (Ipv4Addr, Ipv6Addr),
        index: usize,
        node: &'static str,
    ) {
        let host = 2 + u8::try_from(index).expect("too many pods");
        let [a, b, c, _] = gateway.octets();
        let ip = Ipv4Addr::new(a, b, c, host);
        let [a, b, c, d, ..] = gateway6.segments();
        let ip6 = Ipv6Addr::new(a, b, c, d, 0, 0, 0, host.into());
        let mut batch = IpBatch::new(&netns);
        add_ip6(&mut batch, "eth0", ip6, 64);
        link_up(&mut batch, "eth0", ip, 24);
        batch.add(format!("route add default via {gateway}"));
        batch.add(format!("route add ::/0 via {gateway6}"));
        batch.run();
        let server = EchoServer::start(&netns, name, POD_PORT);
        let pod = Pod {
            name: name.to_owned(),
            ip,
            ip6,
            node,
            server,
            netns,
        };
        self.pods.insert(name.to_owned(), pod);
    }
}

impl Pod {
    /// Pod address and echo port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.server.port))
    }

    /// The pod's address of `family`.
    pub fn ip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }

    /// Pod address of `family` and echo port.
    pub fn addr_of(&self, family: Family) -> SocketAddr {
        SocketAddr::new(self.ip_of(family), self.server.port)
    }
}

/// A node's bridge for its pods plus forwarding; shared by both nodes.
fn wire_bridge(ns: &Netns, batch: &mut IpBatch, gateway: Ipv4Addr, gateway6: Ipv6Addr) {
    batch.add("link add cbr0 type bridge".into());
    add_ip6(batch, "cbr0", gateway6, 64);
    link_up(batch, "cbr0", gateway, 24);
    ns.sysctl("ipv4/ip_forward", "1");
    ns.sysctl("ipv6/conf/all/forwarding", "1");
}

/// Pod-to-pod traffic on one bridge must pass the node's netfilter hooks, or
/// replies from a service's endpoint on the same bridge skip conntrack's
/// un-NAT. The switch is per namespace and exists only with br_netfilter.
fn enable_bridge_netfilter(node: &Netns) {
    let switch = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let present = node.enter(|| std::path::Path::new(switch).exists());
    assert!(present, "{switch} missing: modprobe br_netfilter");
    node.sysctl("bridge/bridge-nf-call-iptables", "1");
    node.sysctl("bridge/bridge-nf-call-ip6tables", "1");
}

/// The node-to-node link carrying `NODE_IP`, and routes to each other's pods.
fn wire_remote(node: &mut IpBatch, node_routes: &mut IpBatch, remote: &mut IpBatch) {
    node.veth("eth0", remote.ns, "eth0");
    add_ip6(node, "eth0", NODE_IP6, 64);
    add_ip6(remote, "eth0", REMOTE_NODE_IP6, 64);
    link_up(node, "eth0", NODE_IP, 24);
    link_up(remote, "eth0", REMOTE_NODE_IP, 24);
    node_routes.add(format!("route add {REMOTE_POD_CIDR} via {REMOTE_NODE_IP}"));
    node_routes.add(format!(
        "route add {REMOTE_POD_CIDR6} via {REMOTE_NODE_IP6}"
    ));
    // Replies to pods, NodePort clients and masqueraded traffic all go back
    // through the node under test.
    remote.add(format!("route add default via {NODE_IP}"));
    remote.add(format!("route add ::/0 via {NODE_IP6}"));
}

/// The external client: a link network plus two "public" source addresses.
fn wire_client(node: &mut IpBatch, node_routes: &mut IpBatch, client: &mut IpBatch) {
    node.veth("eth1", client.ns, "eth0");
    add_ip6(node, "eth1", NODE_UPLINK_IP6, 64);
    add_ip6(client, "eth0", CLIENT_IP6, 64);
    link_up(node, "eth1", NODE_UPLINK_IP, 24);
    link_up(client, "eth0", CLIENT_LINK_IP, 24);
    for ip in [CLIENT_IP, OTHER_CLIENT_IP] {
        client.add(format!("addr add {ip}/32 dev lo"));
    }
    client.add(format!(
        "route add default via {NODE_UPLINK_IP} src {CLIENT_IP}"
    ));
    let node = node_routes;
    node.add(format!("route add 203.0.113.0/24 via {CLIENT_LINK_IP}"));
    // Node-local connect() to a ClusterIP needs some route before the nat
    // output hook ever sees the packet; upstream nodes have a default route.
    // So does a packet that is not DNATed (a load-balancer IP's denied source
    // in iptables mode) to reach the filter FORWARD hook that drops it. The
    // client does not forward: what it gets for others vanishes there.
    node.add(format!("route add {SERVICE_CIDR} via {CLIENT_LINK_IP}"));
    node.add(format!("route add default via {CLIENT_LINK_IP}"));
    add_ip6(client, "lo", OTHER_CLIENT_IP6, 128);
    client.add(format!("route add ::/0 via {NODE_UPLINK_IP6}"));
    node.add(format!("route add 2001:db8:2::/64 via {CLIENT_IP6}"));
    node.add(format!("route add {SERVICE_CIDR6} via {CLIENT_IP6}"));
    node.add(format!("route add ::/0 via {CLIENT_IP6}"));
}

fn link_up(batch: &mut IpBatch, dev: &str, ip: Ipv4Addr, prefix: u8) {
    batch.add(format!("addr add {ip}/{prefix} dev {dev}"));
    batch.add(format!("link set {dev} up"));
}

/// Adds an IPv6 address that is usable at once (no duplicate address
/// detection); the link is brought up by [`link_up`].
fn add_ip6(batch: &mut IpBatch, dev: &str, ip: Ipv6Addr, prefix: u8) {
    batch.add(format!("addr add {ip}/{prefix} dev {dev} nodad"));
}

/// What an echo server reported: who it is and the peer it saw.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    pub identity: String,
    pub peer: IpAddr,
}

/// The result of one request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Answered(Answer),
    /// ECONNREFUSED: a TCP RST or ICMP port unreachable, i.e. REJECT.
    Refused,
    /// Nothing came back within [`PROBE_TIMEOUT`], i.e. DROP.
    TimedOut,
    /// Any other error, e.g. EHOSTUNREACH.
    Failed(String),
}

impl Outcome {
    fn from_error(e: &io::Error) -> Outcome {
        match e.kind() {
            ErrorKind::ConnectionRefused => Outcome::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
            _ => Outcome::Failed(e.to_string()),
        }
    }

    /// The answer, or a panic naming what happened instead.
    pub fn answer(&self, what: &str) -> &Answer {
        match self {
            Outcome::Answered(answer) => answer,
            other => panic!("{what}: expected an answer, got {other:?}"),
        }
    }
}

/// Parses `"<identity> <peer ip>:<port>"`.
fn parse_answer(line: &str) -> Outcome {
    let parsed = line.trim().split_once(' ').and_then(|(identity, peer)| {
        let peer: SocketAddr = peer.parse().ok()?;
        Some(Answer {
            identity: identity.to_owned(),
            peer: peer.ip(),
        })
    });
    parsed.map_or_else(
        || Outcome::Failed(format!("garbled answer {line:?}")),
        Outcome::Answered,
    )
}

/// The transport a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Sends one request over a new connection (TCP) or a new socket (UDP), so
/// each probe is a new conntrack flow. `source` picks the local address.
pub fn probe(proto: Proto, source: Option<IpAddr>, target: SocketAddr) -> Outcome {
    let opened = match proto {
        Proto::Tcp => TcpConversation::open(source, target).map(|mut c| c.exchange()),
        Proto::Udp => UdpFlow::open(source, target).map(|flow| flow.exchange()),
    };
    opened.unwrap_or_else(|e| Outcome::from_error(&e))
}

/// Source ports for UDP clients, below the kernel's ephemeral range so they
/// never clash with its own choices.
static NEXT_UDP_PORT: AtomicUsize = AtomicUsize::new(0);

/// A UDP source port not handed out before (until 20 000 have been). The
/// kernel picks ephemeral UDP ports at random, so two probes in one batch
/// could share a 5-tuple, and the second would follow the first's conntrack
/// entry instead of making a new load-balancing decision.
fn fresh_udp_port() -> u16 {
    let n = NEXT_UDP_PORT.fetch_add(1, Ordering::Relaxed) % 20_000;
    10_000 + u16::try_from(n).expect("below 20 000")
}

/// A connected UDP socket: every exchange uses the same 5-tuple, i.e. the
/// same conntrack entry.
pub struct UdpFlow {
    socket: UdpSocket,
}

impl UdpFlow {
    /// Binds a port never used before by this process (on `source`, if
    /// given) and connects it.
    pub fn open(source: Option<IpAddr>, target: SocketAddr) -> io::Result<UdpFlow> {
        let local = source.unwrap_or(Family::of(target.ip()).unspecified());
        let socket = UdpSocket::bind((local, fresh_udp_port()))?;
        // A connected socket reports ICMP port unreachable as ECONNREFUSED.
        socket.connect(target)?;
        socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
        Ok(UdpFlow { socket })
    }

    /// One datagram and its answer.
    pub fn exchange(&self) -> Outcome {
        match self.socket.send(b"ping\n") {
            // The sender's own OUTPUT hook dropped the datagram: both DROP and
            // REJECT do that, but only REJECT also sends the ICMP port
            // unreachable that recv() below reports as ECONNREFUSED.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
            Err(e) => return Outcome::from_error(&e),
            Ok(_) => {}
        }
        let mut buf = [0u8; 256];
        match self.socket.recv(&mut buf) {
            Ok(n) => parse_answer(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => Outcome::from_error(&e),
        }
    }
}

/// An open TCP connection that can carry several request/answer exchanges.
pub struct TcpConversation {
    reader: BufReader<TcpStream>,
}

impl TcpConversation {
    /// Connects (from `source`, if given) with bounded connect and read timeouts.
    pub fn open(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpConversation> {
        let domain = socket2::Domain::for_address(target);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Some(ip) = source {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.connect_timeout(&target.into(), PROBE_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
        Ok(TcpConversation {
            reader: BufReader::new(stream),
        })
    }

    /// One request and its answer over the open connection.
    pub fn exchange(&mut self) -> Outcome {
        let mut line = String::new();
        let result = self
            .reader
            .get_mut()
            .write_all(b"ping\n")
            .and_then(|()| self.reader.read_line(&mut line));
        match result {
            Ok(0) => Outcome::Failed("connection closed".into()),
            Ok(_) => parse_answer(&line),
            Err(e) => Outcome::from_error(&e),
        }
    }

    /// Closes the connection with a RST (`SO_LINGER` 0) rather than a FIN, so that
    /// nothing along the path keeps it in TIME_WAIT.
    pub fn reset(self) {
        let stream = self.reader.into_inner();
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
    }
}

/// TCP and UDP echo servers on one port of a namespace, in both families,
/// answering each request line/datagram with `"<identity> <peer>"`.
pub struct EchoServer {
    port: u16,
    // Shared with the serving threads so the fds stay valid for Drop's
    // shutdown(). One socket per family (the IPv6 ones `IPV6_V6ONLY`), so IPv4
    // peers show as plain IPv4 addresses.
    listeners: Vec<Arc<TcpListener>>,
    udp: Vec<Arc<UdpSocket>>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds the sockets inside `ns` and serves them on background threads.
    pub fn start(ns: &Netns, identity: &str, port: u16) -> EchoServer {
        let (listeners, udp) = ns
            .enter(|| -> io::Result<_> {
                Ok((
                    vec![
                        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?,
                        ipv6_only_listener(port)?,
                    ],
                    vec![
                        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?,
                        ipv6_only_udp(port)?,
                    ],
                ))
            })
            .unwrap_or_else(|e| panic!("{identity}: bind port {port}: {e}"));
        let listeners: Vec<_> = listeners.into_iter().map(Arc::new).collect();
        let udp: Vec<_> = udp.into_iter().map(Arc::new).collect();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for listener in &listeners {
            let (listener, connections) = (Arc::clone(listener), Arc::clone(&connections));
            let identity = identity.to_owned();
            threads.push(ns.spawn(move || serve_tcp(&listener, &identity, &connections)));
        }
        for socket in &udp {
            let (socket, identity) = (Arc::clone(socket), identity.to_owned());
            threads.push(ns.spawn(move || serve_udp(&socket, &identity)));
        }
        EchoServer {
            port,
            listeners,
            udp,
            connections,
            threads,
        }
    }
}

/// A TCP listener on `[::]:port` for IPv6 only (the IPv4 one has the port).
fn ipv6_only_listener(port: u16) -> io::Result<TcpListener> {
    let socket = ipv6_only_socket(socket2::Type::STREAM, port)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A UDP socket on `[::]:port` for IPv6 only.
fn ipv6_only_udp(port: u16) -> io::Result<UdpSocket> {
    Ok(ipv6_only_socket(socket2::Type::DGRAM, port)?.into())
}

fn ipv6_only_socket(kind: socket2::Type, port: u16) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, kind, None)?;
    socket.set_only_v6(true)?;
    // As std's TcpListener::bind does.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket)
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // shutdown() wakes a thread blocked in accept()/recv() on Linux.
        let listeners = self.listeners.iter().map(|l| l.as_raw_fd());
        for fd in listeners.chain(self.udp.iter().map(|u| u.as_raw_fd())) {
            // SAFETY: `self` keeps the sockets open; shutdown() only changes
            // their state.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for stream in self.connections.lock().unwrap().iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, identity: &str, connections: &Mutex<Vec<TcpStream>>) {
    let mut handlers = Vec::new();
    // accept() fails once Drop shuts the listener down.
    while let Ok((stream, peer)) = listener.accept() {
        let Ok(tracked) = stream.try_clone() else {
            continue;
        };
        connections.lock().unwrap().push(tracked);
        let identity = identity.to_owned();
        handlers.push(thread::spawn(move || answer_lines(stream, &identity, peer)));
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

/// Answers each line until the peer (or Drop) closes the connection.
fn answer_lines(stream: TcpStream, identity: &str, peer: SocketAddr) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writeln!(writer, "{identity} {peer}").is_err() {
            return;
        }
    }
}

fn serve_udp(socket: &UdpSocket, identity: &str) {
    let mut buf = [0u8; 256];
    // After shutdown() recv_from returns Ok(0) from an empty queue, with an
    // unspecified peer; a real request always carries data.
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        if n == 0 {
            return;
        }
        let _ = socket.send_to(format!("{identity} {peer}\n").as_bytes(), peer);
    }
}

/// Runs `cmd` to completion, collecting its output, but kills it once
/// `limit` has passed.
pub fn output_bounded(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = finished.recv_timeout(limit).unwrap_or_else(|_| {
        // SAFETY: signalling our own child, which the waiter has not reaped
        // (it would have sent its output by now).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        Err(io::Error::new(
            ErrorKind::TimedOut,
            format!("{cmd:?} killed after {limit:?}"),
        ))
    });
    let _ = waiter.join();
    output
}
