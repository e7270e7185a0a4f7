//! Smoke tests of the project's VM runner (`.ci/vm`, see its README.md): inside the VM they
//! check what the IPVS dataplane tests rely on (Debian's stock kernel with `ip_vs` loaded,
//! `dummy` links, module autoloading, `nft`), each in a private network namespace created
//! on its own thread, so that the guest's initial namespace stays as the runner left it.
//!
//! On the host they skip, saying so: run them in the VM with
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/cargo-runner cargo test --test vm`
//! (`.ci/test` does).

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Set by `.ci/vm/guest` for the command it runs; `.ci/vm/init` writes the file.
const MARKER_ENV: &str = "KUBE_PROXY_RS_VM";
const MARKER_FILE: &str = "/run/kube-proxy-rs-vm";

/// How long one `ip` or `nft` may take (TCG is slow, but not that slow).
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// True inside the project's VM; otherwise prints why the calling test skips.
fn in_vm(test: &str) -> bool {
    if std::env::var_os(MARKER_ENV).is_some_and(|v| v == "1") && Path::new(MARKER_FILE).exists() {
        return true;
    }
    // Straight to stderr: libtest captures print!/eprintln! of passing tests.
    let _ = writeln!(
        io::stderr(),
        "{test}: skipped: not inside the project's VM ({MARKER_ENV} unset); \
         run with CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/cargo-runner \
         (see .ci/vm/README.md)"
    );
    false
}

/// Runs `f` on a new thread inside a new network namespace of its own; the namespace
/// goes away with the thread. Processes spawned by `f` inherit it.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = thread::spawn(move || {
        // SAFETY: unshare() only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
        }
        f()
    });
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs a command to completion within [`TOOL_LIMIT`].
fn output(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > TOOL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {TOOL_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("wait_with_output")
}

/// Runs a command, panicking with its stderr unless it succeeds; returns its stdout.
fn run(program: &str, args: &str) -> String {
    let out = output(Command::new(program).args(args.split_whitespace()));
    assert!(
        out.status.success(),
        "{program} {args} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the interfaces in the calling thread's network namespace.
fn links_here() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}

fn loaded_modules() -> Vec<String> {
    let modules = std::fs::read_to_string("/proc/modules").expect("/proc/modules");
    modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn guest_runs_debian_stock_kernel_with_ipvs_loaded() {
    if !in_vm("guest_runs_debian_stock_kernel_with_ipvs_loaded") {
        return;
    }
    let release = run("uname", "-r");
    assert!(
        release.trim().starts_with("6.1.") && release.trim().ends_with("-amd64"),
        "not Debian's 6.1 kernel: {release}"
    );
    assert!(
        Path::new("/proc/net/ip_vs").exists(),
        "/proc/net/ip_vs missing: ip_vs not loaded"
    );
    let modules = loaded_modules();
    for m in [
        "ip_vs",
        "ip_vs_rr",
        "ip_vs_wrr",
        "ip_vs_sh",
        "nf_conntrack",
        "br_netfilter",
    ] {
        assert!(
            modules.iter().any(|l| l == m),
            "{m} not loaded: {modules:?}"
        );
    }
    // IPVS state is per network namespace: a fresh one has its own, empty table.
    let table = in_private_netns(|| std::fs::read_to_string("/proc/thread-self/net/ip_vs"))
        .expect("ip_vs in a private netns");
    assert!(table.starts_with("IP Virtual Server"), "{table}");
}

#[test]
fn dummy_link_in_private_netns() {
    if !in_vm("dummy_link_in_private_netns") {
        return;
    }
    let (links, addrs) = in_private_netns(|| {
        run("ip", "link add kube-ipvs0 type dummy");
        run("ip", "addr add 10.96.0.10/32 dev kube-ipvs0");
        run("ip", "link set kube-ipvs0 up");
        (links_here(), run("ip", "-o addr show dev kube-ipvs0"))
    });
    assert!(links.iter().any(|l| l == "kube-ipvs0"), "{links:?}");
    assert!(addrs.contains("10.96.0.10/32"), "{addrs}");
    // The guest's initial namespace never saw it.
    let initial = thread::spawn(links_here).join().unwrap();
    assert!(!initial.iter().any(|l| l == "kube-ipvs0"), "{initial:?}");
}

#[test]
fn kernel_autoloads_modules_from_the_cache() {
    if !in_vm("kernel_autoloads_modules_from_the_cache") {
        return;
    }
    // ifb is not loaded up front: creating a link of its type makes the kernel run
    // modprobe, which must find the guest kernel's modules (PID 1's root).
    let links = in_private_netns(|| {
        run("ip", "link add kprs-ifb0 type ifb");
        links_here()
    });
    assert!(links.iter().any(|l| l == "kprs-ifb0"), "{links:?}");
    assert!(loaded_modules().iter().any(|m| m == "ifb"));
}

#[test]
fn nft_works_in_private_netns() {
    if !in_vm("nft_works_in_private_netns") {
        return;
    }
    let ruleset = in_private_netns(|| {
        let rules = "table ip kprs_vm_smoke {\n\
                     \tchain out { type nat hook output priority -100; policy accept;\n\
                     \t\tip daddr 10.96.0.10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.244.1.2, 1 : 10.244.1.3 }\n\
                     \t}\n\
                     }\n";
        let path = std::env::temp_dir().join(format!("kprs-vm-smoke-{}.nft", std::process::id()));
        std::fs::write(&path, rules).unwrap();
        let loaded = output(Command::new("nft").arg("-f").arg(&path));
        let _ = std::fs::remove_file(&path);
        assert!(
            loaded.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
        run("nft", "list ruleset")
    });
    assert!(ruleset.contains("table ip kprs_vm_smoke"), "{ruleset}");
    assert!(ruleset.contains("numgen inc mod 2"), "{ruleset}");
    let initial = thread::spawn(|| run("nft", "list tables")).join().unwrap();
    assert!(!initial.contains("kprs_vm_smoke"), "{initial}");
}

#[test]
fn runner_keeps_directory_and_environment() {
    if !in_vm("runner_keeps_directory_and_environment") {
        return;
    }
    // cargo runs test binaries in the package's directory and sets CARGO_MANIFEST_DIR
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    assert_eq!(
        std::env::current_dir().unwrap(),
        Path::new(manifest_dir).canonicalize().unwrap()
    );
    assert_eq!(
        std::env::var("CARGO_MANIFEST_DIR").as_deref(),
        Ok(manifest_dir)
    );
    // the work directory is shared read-write, at the same path
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let probe = dir.join(format!("vm-probe-{}", std::process::id()));
    std::fs::write(&probe, b"written in the VM").expect("target dir not writable in the VM");
    std::fs::remove_file(&probe).unwrap();
}
