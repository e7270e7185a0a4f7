//! The conntrack settings the real `kube-proxy` daemon applies at start, read back from
//! the kernel.
//!
//! Each test runs the daemon in a private network namespace (see [`in_private_netns`]),
//! whose own `/proc/sys/net/netfilter` holds the per-namespace timeouts and `be_liberal`.
//! `nf_conntrack_max` and the hash size are global, so no test changes them: the host's
//! values are read before and after and must be equal. The hash-table logic runs against
//! a file bind-mounted over `/sys/module/nf_conntrack/parameters/hashsize` in a private
//! mount namespace, with `/sys` read-write or read-only, and `nf_conntrack_max` set to
//! exactly the host's value (so that the daemon has nothing to write there).

// Each test crate uses a part of the shared support code.
#[allow(dead_code)]
mod support;

use std::process::Command;
use std::time::Instant;

use kube_proxy::conntrack_sysctls::{
    HASHSIZE, READ_ONLY_SYSFS_ACTION, READ_ONLY_SYSFS_MESSAGE, READ_ONLY_SYSFS_REASON,
};
use support::daemon::*;
use support::netns::{output_bounded, run, TOOL_LIMIT};

const NF_CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The per-namespace sysctls, the value each test sets (none is a kernel default), and
/// the flag that asks for it.
const NAMESPACED: [(&str, u64, &str); 5] = [
    (
        "nf_conntrack_tcp_timeout_established",
        7200,
        "--conntrack-tcp-timeout-established=2h",
    ),
    (
        "nf_conntrack_tcp_timeout_close_wait",
        90,
        "--conntrack-tcp-timeout-close-wait=1m30s",
    ),
    (
        "nf_conntrack_tcp_be_liberal",
        1,
        "--conntrack-tcp-be-liberal",
    ),
    (
        "nf_conntrack_udp_timeout",
        45,
        "--conntrack-udp-timeout=45s",
    ),
    (
        "nf_conntrack_udp_timeout_stream",
        150,
        "--conntrack-udp-timeout-stream=150s",
    ),
];

/// The integer in `path`, as the calling thread's namespaces show it.
fn read(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.trim().parse().expect("an integer")
}

fn netfilter(name: &str) -> String {
    format!("/proc/sys/net/netfilter/{name}")
}

/// The host's values of everything a test could touch (read on the host's thread).
fn host_values() -> Vec<u64> {
    let namespaced = NAMESPACED.iter().map(|(name, _, _)| netfilter(name));
    let global = [NF_CONNTRACK_MAX.to_owned(), HASHSIZE.to_owned()];
    global
        .into_iter()
        .chain(namespaced)
        .map(|p| read(&p))
        .collect()
}

/// Runs `test` as [`in_private_netns`] does, and checks that the host's values did not move.
fn isolated(test: impl FnOnce(&support::fake_apiserver::FakeApiServer) + Send + 'static) {
    let before = host_values();
    in_private_netns(test);
    assert_eq!(host_values(), before, "a host value changed");
}

/// Waits (at most [`CONVERGE`]) until the daemon has finished its start-up, and with it
/// the conntrack setup, which comes first.
fn wait_started(daemon: &mut Daemon) {
    let deadline = Instant::now() + CONVERGE;
    while !daemon.log().contains("kube-proxy-rs started") {
        daemon.assert_alive();
        assert!(
            Instant::now() < deadline,
            "not started within {CONVERGE:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(POLL);
    }
}

/// The flags asking for every [`NAMESPACED`] value.
fn namespaced_flags() -> Vec<&'static str> {
    NAMESPACED.iter().map(|(_, _, flag)| *flag).collect()
}

#[test]
fn timeouts_and_be_liberal_are_set_in_the_proxys_namespace_once() {
    isolated(|server| {
        for (name, value, _) in NAMESPACED {
            assert_ne!(
                read(&netfilter(name)),
                value,
                "{name} already holds the value the test sets; it would prove nothing"
            );
        }
        create_node(server);
        let mut daemon = Daemon::start_with(server, &namespaced_flags());
        wait_started(&mut daemon);
        for (name, value, _) in NAMESPACED {
            assert_eq!(read(&netfilter(name)), value, "{name}\n{}", daemon.log());
            let logged = format!("Set sysctl entry=\"net/netfilter/{name}\" value={value}");
            assert!(daemon.log().contains(&logged), "{logged:?} not logged");
        }
        assert!(daemon.terminate().success(), "{}", daemon.log());

        // Everything is in place now: a restart writes nothing.
        let mut again = Daemon::start_with(server, &namespaced_flags());
        wait_started(&mut again);
        assert!(!again.log().contains("Set sysctl"), "{}", again.log());
        again.assert_alive();
    });
}

/// `--init-only` sets the same values and exits, as upstream's init container does.
#[test]
fn init_only_sets_them_and_exits() {
    isolated(|_| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-proxy"));
        cmd.args(["--init-only", "--conntrack-max-per-core=0"]);
        let output = output_bounded(cmd.args(namespaced_flags()), TOOL_LIMIT).expect("run");
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}\n{log}", output.status);
        for (name, value, _) in NAMESPACED {
            assert_eq!(read(&netfilter(name)), value, "{name}\n{log}");
        }
    });
}

/// Moves the calling thread (only) into a new mount namespace in which no mount event
/// propagates to the host's.
fn enter_private_mount_ns() {
    // SAFETY: plain syscall; CLONE_NEWNS affects only the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNS): {}",
        std::io::Error::last_os_error()
    );
    let ns = |path| std::fs::read_link(path).expect("read a mntns link");
    assert_ne!(
        ns("/proc/thread-self/ns/mnt"),
        ns("/proc/self/ns/mnt"),
        "still in the host's mount namespace"
    );
    run(Command::new("mount").args(["--make-rprivate", "/"]));
}

/// In a private mount namespace, puts a file holding `1` over the hash size (so that any
/// `nf_conntrack_max` needs a bigger table), and makes `/sys` read-only if `read_only`.
/// Returns the file.
fn fake_small_hashsize(read_only: bool) -> tempfile::NamedTempFile {
    enter_private_mount_ns();
    let fake = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(fake.path(), "1\n").expect("write the fake hashsize");
    let source = fake.path().to_str().expect("a UTF-8 path");
    run(Command::new("mount").args(["--bind", source, HASHSIZE]));
    if read_only {
        run(Command::new("mount").args(["-o", "remount,bind,ro", "/sys"]));
    }
    assert_eq!(read(HASHSIZE), 1, "the fake hashsize is not in place");
    fake
}

/// Flags that make `nf_conntrack_max` exactly the host's current value, which the daemon
/// therefore leaves as it is, and then looks at the hash size.
fn max_flags() -> [String; 2] {
    let max = read(NF_CONNTRACK_MAX);
    assert!(
        max >= 4 * 1024,
        "nf_conntrack_max {max} is too small for the test"
    );
    [
        "--conntrack-max-per-core=1".to_owned(),
        format!("--conntrack-min={max}"),
    ]
}

#[test]
fn a_small_hash_table_is_grown_to_a_quarter_of_nf_conntrack_max() {
    isolated(|server| {
        let fake = fake_small_hashsize(false);
        let flags = max_flags();
        let max = read(NF_CONNTRACK_MAX);
        create_node(server);
        let mut daemon = Daemon::start_with(server, &[&flags[0], &flags[1]]);
        wait_started(&mut daemon);
        assert_eq!(
            read(fake.path().to_str().unwrap()),
            max / 4,
            "{}",
            daemon.log()
        );
        let log = daemon.log();
        assert!(log.contains(&format!("Setting nf_conntrack_max nf_conntrack_max={max}")));
        let written = "Set sysctl entry=\"net/netfilter/nf_conntrack_max\"";
        assert!(
            !log.contains(written),
            "nf_conntrack_max was written:\n{log}"
        );
        daemon.assert_alive();
    });
}

#[test]
fn a_read_only_sys_is_a_warning_and_a_node_event() {
    isolated(|server| {
        let fake = fake_small_hashsize(true);
        let flags = max_flags();
        create_node(server);
        let mut args: Vec<&str> = vec![&flags[0], &flags[1]];
        args.extend(namespaced_flags());
        let mut daemon = Daemon::start_with(server, &args);
        wait_started(&mut daemon);
        assert!(
            daemon.log().contains(READ_ONLY_SYSFS_MESSAGE),
            "no warning\n{}",
            daemon.log()
        );
        assert_eq!(read(fake.path().to_str().unwrap()), 1, "hashsize written");
        // The rest of the settings still apply.
        for (name, value, _) in NAMESPACED {
            assert_eq!(read(&netfilter(name)), value, "{name}\n{}", daemon.log());
        }
        let event = daemon.wait_until("the read-only /sys Event", || {
            let events = server.events();
            let found = events
                .iter()
                .find(|e| e.reason.as_deref() == Some(READ_ONLY_SYSFS_REASON));
            found.cloned().ok_or(format!("Events so far: {events:?}"))
        });
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.action.as_deref(), Some(READ_ONLY_SYSFS_ACTION));
        assert_eq!(event.note.as_deref(), Some(READ_ONLY_SYSFS_MESSAGE));
        let regarding = event.regarding.expect("regarding");
        assert_eq!(regarding.kind.as_deref(), Some("Node"));
        assert_eq!(regarding.name.as_deref(), Some(NODE));
        daemon.assert_alive();
    });
}
