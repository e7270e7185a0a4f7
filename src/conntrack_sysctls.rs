//! The conntrack sysctls the daemon (and `--init-only`) sets at start, as upstream's
//! `setupConntrack` (cmd/kube-proxy/app/server_linux.go, conntrack.go).
//!
//! * `nf_conntrack_max`: `conntrack.maxPerCore` × the CPUs, at least `conntrack.min`;
//!   `maxPerCore: 0` leaves it alone. The conntrack hash table is then grown to a quarter
//!   of it (`/sys/module/nf_conntrack/parameters/hashsize`) when smaller. Both are global:
//!   the kernel lets only the initial network namespace write them, which is why every
//!   value is compared before it is written (a proxy in another namespace whose limits are
//!   already right starts fine).
//! * `nf_conntrack_tcp_timeout_established`, `…_close_wait`, `nf_conntrack_tcp_be_liberal`,
//!   `nf_conntrack_udp_timeout` and `…_udp_timeout_stream`, when configured (non-zero,
//!   true). These belong to the proxy's network namespace.
//!
//! A read-only `/sys` (a container runtime bug, docker#24000) is not an error: upstream
//! leaves the hash table as it is, warns, and posts a Warning Event on the Node. Any other
//! failure stops the daemon, naming the sysctl.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::config::KubeProxyConfiguration;
use crate::events::{node_ref, Events};

/// Where the conntrack hash table size is set. Not a sysctl: a module parameter in sysfs.
pub const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// The Event reason upstream posts when `/sys` is read-only (its error's text).
pub const READ_ONLY_SYSFS_REASON: &str = "readOnlySysFS";

/// The Event action upstream posts with it.
pub const READ_ONLY_SYSFS_ACTION: &str = "StartKubeProxy";

/// The Event note (and our warning) for a read-only `/sys`, word for word upstream's.
pub const READ_ONLY_SYSFS_MESSAGE: &str = "CRI error: /sys is read-only: cannot modify \
     conntrack limits, problems may arise later (If running Docker, see docker issue #24000)";

/// Reading and writing integer kernel parameters: `/proc/sys` and sysfs on a real node, a
/// map in unit tests.
trait Kernel {
    /// The integer in the file at `path` (a `/proc/sys` or `/sys` path).
    fn read(&self, path: &Path) -> io::Result<u64>;
    /// Writes `value` to the file at `path`.
    fn write(&mut self, path: &Path, value: u64) -> io::Result<()>;
    /// The mount table, as `/proc/self/mounts` lists it.
    fn mounts(&self) -> io::Result<String>;
}

/// The running kernel, as this process sees it (its network and mount namespaces).
struct RealKernel;

impl Kernel for RealKernel {
    fn read(&self, path: &Path) -> io::Result<u64> {
        let text = std::fs::read_to_string(path)?;
        text.trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
    }

    fn write(&mut self, path: &Path, value: u64) -> io::Result<()> {
        std::fs::write(path, value.to_string())
    }

    fn mounts(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mounts")
    }
}

/// What the configuration asks to set; `None` and `false` leave the kernel's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ConntrackSettings {
    /// `nf_conntrack_max`.
    max: Option<u64>,
    /// `nf_conntrack_tcp_timeout_established`, in seconds.
    tcp_established: Option<u64>,
    /// `nf_conntrack_tcp_timeout_close_wait`, in seconds.
    tcp_close_wait: Option<u64>,
    /// `nf_conntrack_tcp_be_liberal` = 1.
    tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`, in seconds.
    udp_timeout: Option<u64>,
    /// `nf_conntrack_udp_timeout_stream`, in seconds.
    udp_stream_timeout: Option<u64>,
}

impl ConntrackSettings {
    /// The settings of `config` on a machine with `cpus` CPUs.
    fn of(config: &KubeProxyConfiguration, cpus: usize) -> Self {
        let ct = &config.conntrack;
        ConntrackSettings {
            max: config.conntrack_max(cpus),
            tcp_established: ct.tcp_established_timeout.and_then(whole_seconds),
            tcp_close_wait: ct.tcp_close_wait_timeout.and_then(whole_seconds),
            tcp_be_liberal: ct.tcp_be_liberal,
            udp_timeout: whole_seconds(ct.udp_timeout),
            udp_stream_timeout: whole_seconds(ct.udp_stream_timeout),
        }
    }

    /// The per-namespace sysctls to set, by name under `net/netfilter`, in upstream's order.
    fn namespaced(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("nf_conntrack_tcp_timeout_established", self.tcp_established),
            ("nf_conntrack_tcp_timeout_close_wait", self.tcp_close_wait),
            (
                "nf_conntrack_tcp_be_liberal",
                self.tcp_be_liberal.then_some(1),
            ),
            ("nf_conntrack_udp_timeout", self.udp_timeout),
            ("nf_conntrack_udp_timeout_stream", self.udp_stream_timeout),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// A configured timeout in the kernel's unit, truncated as upstream's `d / time.Second`;
/// `None` unless positive.
fn whole_seconds(d: crate::config::Duration) -> Option<u64> {
    u64::try_from(d.as_nanos())
        .ok()
        .filter(|nanos| *nanos > 0)
        .map(|nanos| nanos / 1_000_000_000)
}

/// How applying the settings went, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Everything asked for is in place.
    Applied,
    /// The hash table needed growing but `/sys` is read-only; the rest is in place.
    ReadOnlySysfs,
}

/// Applies `config`'s conntrack settings to the running kernel, as upstream does before it
/// starts proxying. A read-only `/sys` is warned about and reported with upstream's Warning
/// Event on Node `node_name`.
pub fn setup(config: &KubeProxyConfiguration, events: &Events, node_name: &str) -> Result<()> {
    if apply_config(config)? == Outcome::ReadOnlySysfs {
        events.warning(
            node_ref(node_name),
            READ_ONLY_SYSFS_REASON,
            READ_ONLY_SYSFS_ACTION,
            READ_ONLY_SYSFS_MESSAGE.to_owned(),
        );
    }
    Ok(())
}

/// The conntrack part of `--init-only`, which upstream runs through the same setup. Its
/// Event for a read-only `/sys` never leaves the process there (the recorder only starts
/// sending with the proxy), so the warning is all.
pub fn init_only(config: &KubeProxyConfiguration) -> Result<()> {
    apply_config(config).map(drop)
}

/// Applies `config`'s settings to the running kernel, warning about a read-only `/sys`.
fn apply_config(config: &KubeProxyConfiguration) -> Result<Outcome> {
    let settings = ConntrackSettings::of(config, machine_cpus());
    let outcome = apply(&mut RealKernel, &settings)?;
    if outcome == Outcome::ReadOnlySysfs {
        tracing::warn!("{READ_ONLY_SYSFS_MESSAGE}");
    }
    Ok(outcome)
}

/// Sets what `settings` asks for, writing only values that differ from the kernel's.
fn apply(kernel: &mut dyn Kernel, settings: &ConntrackSettings) -> Result<Outcome> {
    let outcome = match settings.max {
        Some(max) => set_max(kernel, max)?,
        None => Outcome::Applied,
    };
    for (name, value) in settings.namespaced() {
        set_sysctl(kernel, name, value)?;
    }
    Ok(outcome)
}

/// Sets `nf_conntrack_max` and grows the hash table to a quarter of it.
fn set_max(kernel: &mut dyn Kernel, max: u64) -> Result<Outcome> {
    set_sysctl(kernel, "nf_conntrack_max", max)?;
    tracing::info!(nf_conntrack_max = max, "Setting nf_conntrack_max");
    // Only the initial network namespace may write the hash size, so a proxy elsewhere
    // must not even try when the table is already big enough.
    let hashsize = kernel
        .read(Path::new(HASHSIZE))
        .with_context(|| format!("reading the conntrack hashsize ({HASHSIZE})"))?;
    let wanted = max / 4;
    if hashsize >= wanted {
        return Ok(Outcome::Applied);
    }
    let mounts = kernel.mounts().context("listing mount points")?;
    if !sysfs_writable(&mounts)? {
        return Ok(Outcome::ReadOnlySysfs);
    }
    tracing::info!(conntrack_hashsize = wanted, "Setting conntrack hashsize");
    kernel
        .write(Path::new(HASHSIZE), wanted)
        .with_context(|| format!("setting the conntrack hashsize ({HASHSIZE}) to {wanted}"))
        .map(|()| Outcome::Applied)
}

/// Sets `net/netfilter/<name>` to `value` unless it already is. An unreadable value counts
/// as different, as upstream (the write then reports the real problem).
fn set_sysctl(kernel: &mut dyn Kernel, name: &str, value: u64) -> Result<()> {
    let entry = format!("net/netfilter/{name}");
    let path = PathBuf::from("/proc/sys").join(&entry);
    if kernel.read(&path).ok() == Some(value) {
        return Ok(());
    }
    tracing::info!(entry, value, "Set sysctl");
    kernel
        .write(&path, value)
        .with_context(|| format!("setting sysctl {entry} to {value}"))
}

/// Whether sysfs is mounted read-write, judged as upstream's `isSysFSWritable`: by the
/// first `sysfs` mount in `mounts` (the `/proc/self/mounts` text), whose first option must
/// be `rw`. No sysfs mount at all is an error.
fn sysfs_writable(mounts: &str) -> Result<bool> {
    let sysfs = mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"sysfs"))
        .context("no sysfs mounted")?;
    let options = sysfs.get(3).copied().unwrap_or_default();
    let writable = options.split(',').next() == Some("rw");
    if !writable {
        tracing::error!(
            mount_point = sysfs.get(1).copied().unwrap_or_default(),
            options,
            "Sysfs is not writable"
        );
    }
    Ok(writable)
}

/// The machine's CPUs, for `maxPerCore`: every online CPU, as upstream counts them from
/// sysfs (not the CPUs this process may run on, which a cpuset narrows:
/// kubernetes#99225), falling back to those when sysfs says nothing.
fn machine_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_cpu_list(&list))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The number of CPUs in a kernel CPU list such as `0-3,6,8-9`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.trim().split(',').try_fold(0, |total, range| {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        Some(total + last.checked_sub(first)? + 1)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Duration;

    const RW_SYSFS: &str = "proc /proc proc rw,nosuid 0 0\nsysfs /sys sysfs rw,nosuid,nodev 0 0\n";
    const RO_SYSFS: &str = "sysfs /sys sysfs ro,nosuid,nodev 0 0\nsysfs /x sysfs rw 0 0\n";

    /// A kernel of a few values; writes to paths in `read_only` fail as in a non-initial
    /// network namespace.
    #[derive(Default)]
    struct FakeKernel {
        values: BTreeMap<PathBuf, u64>,
        read_only: Vec<PathBuf>,
        mounts: String,
        writes: Vec<(PathBuf, u64)>,
    }

    impl FakeKernel {
        fn new(max: u64, hashsize: u64, mounts: &str) -> Self {
            let mut kernel = FakeKernel {
                mounts: mounts.to_owned(),
                ..FakeKernel::default()
            };
            kernel.values.insert(sysctl("nf_conntrack_max"), max);
            kernel.values.insert(PathBuf::from(HASHSIZE), hashsize);
            kernel
        }

        fn written(&self) -> Vec<(String, u64)> {
            let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
            self.writes.iter().map(|(p, v)| (name(p), *v)).collect()
        }
    }

    impl Kernel for FakeKernel {
        fn read(&self, path: &Path) -> io::Result<u64> {
            self.values
                .get(path)
                .copied()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }

        fn write(&mut self, path: &Path, value: u64) -> io::Result<()> {
            if self.read_only.iter().any(|p| p == path) {
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            self.values.insert(path.to_owned(), value);
            self.writes.push((path.to_owned(), value));
            Ok(())
        }

        fn mounts(&self) -> io::Result<String> {
            Ok(self.mounts.clone())
        }
    }

    fn sysctl(name: &str) -> PathBuf {
        PathBuf::from("/proc/sys/net/netfilter").join(name)
    }

    fn max_only(max: u64) -> ConntrackSettings {
        ConntrackSettings {
            max: Some(max),
            ..ConntrackSettings::default()
        }
    }

    fn config() -> KubeProxyConfiguration {
        KubeProxyConfiguration::defaulted()
    }

    #[test]
    fn settings_scale_max_per_core_with_min_as_floor() {
        let mut c = config();
        // Upstream's defaults: 32768 per core, at least 131072.
        assert_eq!(ConntrackSettings::of(&c, 2).max, Some(131072));
        assert_eq!(ConntrackSettings::of(&c, 4).max, Some(131072));
        assert_eq!(ConntrackSettings::of(&c, 16).max, Some(524288));
        c.conntrack.min = Some(0);
        assert_eq!(ConntrackSettings::of(&c, 1).max, Some(32768));
        c.conntrack.max_per_core = Some(0);
        assert_eq!(ConntrackSettings::of(&c, 16).max, None, "0 leaves it alone");
    }

    #[test]
    fn settings_take_positive_timeouts_in_whole_seconds() {
        let mut c = config();
        let ct = &mut c.conntrack;
        ct.tcp_established_timeout = Some(Duration::from_millis(86_400_900));
        ct.tcp_close_wait_timeout = Some(Duration::ZERO);
        ct.udp_timeout = Duration::from_secs(-5);
        ct.udp_stream_timeout = Duration::from_secs(120);
        ct.tcp_be_liberal = true;
        let s = ConntrackSettings::of(&c, 1);
        assert_eq!(s.tcp_established, Some(86_400));
        assert_eq!((s.tcp_close_wait, s.udp_timeout), (None, None));
        assert_eq!(s.udp_stream_timeout, Some(120));
        assert!(s.tcp_be_liberal);
    }

    #[test]
    fn writes_only_values_that_differ() {
        let mut kernel = FakeKernel::new(131072, 65536, RW_SYSFS);
        kernel.values.insert(sysctl("nf_conntrack_udp_timeout"), 30);
        kernel
            .values
            .insert(sysctl("nf_conntrack_tcp_be_liberal"), 0);
        let settings = ConntrackSettings {
            udp_timeout: Some(30),
            tcp_be_liberal: true,
            tcp_established: Some(86400),
            ..max_only(131072)
        };
        assert_eq!(apply(&mut kernel, &settings).unwrap(), Outcome::Applied);
        assert_eq!(
            kernel.written(),
            [
                ("nf_conntrack_tcp_timeout_established".to_owned(), 86400),
                ("nf_conntrack_tcp_be_liberal".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn max_is_lowered_too_and_the_hash_table_only_grows() {
        let mut kernel = FakeKernel::new(262144, 262144, RW_SYSFS);
        apply(&mut kernel, &max_only(131072)).unwrap();
        assert_eq!(kernel.written(), [("nf_conntrack_max".to_owned(), 131072)]);

        let mut kernel = FakeKernel::new(65536, 16384, RW_SYSFS);
        apply(&mut kernel, &max_only(524288)).unwrap();
        assert_eq!(
            kernel.written(),
            [
                ("nf_conntrack_max".to_owned(), 524288),
                ("hashsize".to_owned(), 131072)
            ]
        );
    }

    #[test]
    fn a_big_enough_hash_table_is_not_written_outside_the_initial_namespace() {
        // As in a network namespace of its own: both globals are read-only there.
        let mut kernel = FakeKernel::new(131072, 32768, "");
        kernel.read_only = vec![sysctl("nf_conntrack_max"), PathBuf::from(HASHSIZE)];
        assert_eq!(
            apply(&mut kernel, &max_only(131072)).unwrap(),
            Outcome::Applied,
            "nothing to write, and the mount table is not even looked at"
        );
        let err = apply(&mut kernel, &max_only(262144)).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "setting sysctl net/netfilter/nf_conntrack_max to 262144: permission denied"
        );
    }

    #[test]
    fn a_read_only_sysfs_leaves_the_hash_table_and_sets_the_rest() {
        let mut kernel = FakeKernel::new(131072, 16384, RO_SYSFS);
        let settings = ConntrackSettings {
            udp_stream_timeout: Some(120),
            ..max_only(131072)
        };
        assert_eq!(
            apply(&mut kernel, &settings).unwrap(),
            Outcome::ReadOnlySysfs
        );
        assert_eq!(
            kernel.written(),
            [("nf_conntrack_udp_timeout_stream".to_owned(), 120)]
        );
    }

    #[test]
    fn failures_name_what_failed() {
        let mut kernel = FakeKernel::new(131072, 16384, "proc /proc proc rw 0 0\n");
        let err = apply(&mut kernel, &max_only(131072)).unwrap_err();
        assert_eq!(format!("{err:#}"), "no sysfs mounted");

        kernel.values.remove(Path::new(HASHSIZE));
        let err = apply(&mut kernel, &max_only(131072)).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("reading the conntrack hashsize ({HASHSIZE})")),
            "{err:#}"
        );

        let mut kernel = FakeKernel::new(0, 0, RW_SYSFS);
        kernel.read_only = vec![sysctl("nf_conntrack_udp_timeout")];
        let settings = ConntrackSettings {
            udp_timeout: Some(10),
            ..ConntrackSettings::default()
        };
        let err = apply(&mut kernel, &settings).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "setting sysctl net/netfilter/nf_conntrack_udp_timeout to 10: permission denied"
        );
    }

    #[test]
    fn sysfs_is_judged_by_its_first_mount() {
        assert!(sysfs_writable(RW_SYSFS).unwrap());
        assert!(!sysfs_writable(RO_SYSFS).unwrap());
        // `rw` must be the first option, as upstream reads it.
        assert!(!sysfs_writable("sysfs /sys sysfs nosuid,rw 0 0").unwrap());
        assert!(sysfs_writable("").is_err());
    }

    #[test]
    fn cpu_lists_count_every_cpu() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
        assert!(machine_cpus() >= 1);
    }
}
