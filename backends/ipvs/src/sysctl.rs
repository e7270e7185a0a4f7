//! The kernel parameters IPVS mode needs, as upstream's proxier sets them.

use std::io;
use std::path::PathBuf;

/// Reading and writing integer sysctls, named as under `/proc/sys` (`net/ipv4/ip_forward`).
pub trait Sysctls {
    fn read(&mut self, name: &str) -> io::Result<i64>;
    fn write(&mut self, name: &str, value: i64) -> io::Result<()>;
}

/// The sysctls of this thread's network namespace, under `/proc/sys`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSysctls;

impl Sysctls for ProcSysctls {
    fn read(&mut self, name: &str) -> io::Result<i64> {
        let text = std::fs::read_to_string(PathBuf::from("/proc/sys").join(name))?;
        text.trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
    }

    fn write(&mut self, name: &str, value: i64) -> io::Result<()> {
        std::fs::write(PathBuf::from("/proc/sys").join(name), format!("{value}\n"))
    }
}

/// What IPVS mode sets, as upstream: IPVS flows through netfilter conntrack (so that the
/// companion table's masquerade sees them), connections to a deleted real server expire on
/// their next packet, persistence templates of a weight-0 real server expire,
/// `conn_reuse_mode=0` on the kernels (4.1 up to 5.9) where the default stalls reused
/// ports, forwarding, and with `strictARP` the ARP settings that keep the node from
/// answering for the VIPs on `kube-ipvs0`.
pub fn required(strict_arp: bool, kernel: Option<(u32, u32)>) -> Vec<(&'static str, i64)> {
    let mut v = vec![
        ("net/ipv4/vs/conntrack", 1),
        ("net/ipv4/vs/expire_nodest_conn", 1),
        ("net/ipv4/vs/expire_quiescent_template", 1),
        ("net/ipv4/ip_forward", 1),
    ];
    if kernel.is_some_and(|k| ((4, 1)..(5, 9)).contains(&k)) {
        v.push(("net/ipv4/vs/conn_reuse_mode", 0));
    }
    if strict_arp {
        v.push(("net/ipv4/conf/all/arp_ignore", 1));
        v.push(("net/ipv4/conf/all/arp_announce", 2));
    }
    v
}

/// Sets each sysctl that differs; the error names the sysctl.
pub fn apply(sysctls: &mut dyn Sysctls, wanted: &[(&str, i64)]) -> Result<(), String> {
    for &(name, value) in wanted {
        if sysctls.read(name).ok() == Some(value) {
            continue;
        }
        sysctls
            .write(name, value)
            .map_err(|e| format!("setting sysctl {name} to {value}: {e}"))?;
    }
    Ok(())
}

/// The running kernel's `(major, minor)`, from `uname`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_version(&release)
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake(BTreeMap<String, i64>, Vec<String>);

    impl Sysctls for Fake {
        fn read(&mut self, name: &str) -> io::Result<i64> {
            self.0
                .get(name)
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn write(&mut self, name: &str, value: i64) -> io::Result<()> {
            if name.contains("arp") {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            self.1.push(name.into());
            self.0.insert(name.into(), value);
            Ok(())
        }
    }

    #[test]
    fn sets_what_differs_and_names_the_failing_sysctl() {
        let mut fake = Fake::default();
        fake.0.insert("net/ipv4/ip_forward".into(), 1);
        apply(&mut fake, &required(false, Some((6, 1)))).unwrap();
        assert_eq!(
            fake.1,
            [
                "net/ipv4/vs/conntrack",
                "net/ipv4/vs/expire_nodest_conn",
                "net/ipv4/vs/expire_quiescent_template"
            ]
        );
        let e = apply(&mut fake, &required(true, Some((6, 1)))).unwrap_err();
        assert!(e.contains("net/ipv4/conf/all/arp_ignore"), "{e}");
        let old = required(false, Some((5, 4)));
        assert!(old.contains(&("net/ipv4/vs/conn_reuse_mode", 0)));
        assert!(!required(false, Some((5, 9)))
            .iter()
            .any(|s| s.0.contains("reuse")));
        assert_eq!(parse_version("6.1.0-37-amd64\n"), Some((6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }
}
