//! An in-memory [`IpvsClient`] that refuses what the kernel refuses, with its errnos.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube_proxy_model::IpFamily;

use super::types::{Destination, RealServer, RealServerStats, ServiceKey, Timeouts};
use super::{wire, IpvsClient, VirtualServer};
use crate::Error;

/// The schedulers of a stock kernel (`net/netfilter/ipvs/ip_vs_*.c`).
const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

/// The kernel's timeouts in a new network namespace.
const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp: Duration::from_secs(900),
    tcp_fin: Duration::from_secs(120),
    udp: Duration::from_secs(300),
};

#[derive(Debug)]
struct Inner {
    services: BTreeMap<ServiceKey, (VirtualServer, Vec<Destination>)>,
    timeouts: Timeouts,
    writes: usize,
    fail_next: Option<i32>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            services: BTreeMap::new(),
            timeouts: DEFAULT_TIMEOUTS,
            writes: 0,
            fail_next: None,
        }
    }
}

/// A fake kernel IPVS. Clones share state, so a test keeps one handle and gives another
/// to the backend. Services are listed in key order and real servers in the order they
/// were added; the kernel promises no order, so callers must not depend on one.
#[derive(Debug, Clone, Default)]
pub struct FakeIpvs {
    inner: Arc<Mutex<Inner>>,
}

impl FakeIpvs {
    /// An empty IPVS with the kernel's default timeouts.
    pub fn new() -> Self {
        FakeIpvs::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has failed already.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the connection counters of a real server, as traffic would; false when there
    /// is no such real server.
    pub fn set_stats(
        &self,
        svc: &ServiceKey,
        addr: IpAddr,
        port: u16,
        stats: RealServerStats,
    ) -> bool {
        let mut inner = self.lock();
        let dest = inner.services.get_mut(svc).and_then(|(_, dests)| {
            dests
                .iter_mut()
                .find(|d| (d.server.addr, d.server.port) == (addr, port))
        });
        dest.map(|d| d.stats = stats).is_some()
    }

    /// Number of successful changes (everything but reads) so far.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Makes the next change fail with `errno`, as a kernel refusal would.
    pub fn fail_next(&self, errno: i32) {
        self.lock().fail_next = Some(errno);
    }

    /// Runs change `name` on the state, counting it if it succeeds.
    fn change<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut Inner) -> Result<T, i32>,
    ) -> Result<T, Error> {
        let mut inner = self.lock();
        if let Some(errno) = inner.fail_next.take() {
            return Err(Error::kernel(name, errno));
        }
        let result = f(&mut inner).map_err(|errno| Error::kernel(name, errno))?;
        inner.writes += 1;
        Ok(result)
    }
}

/// What the kernel checks of a service beyond its encoding.
fn check_service(svc: &VirtualServer) -> Result<(), Error> {
    wire::service(svc)?;
    if !SCHEDULERS.contains(&svc.scheduler.as_str()) {
        return Err(Error::kernel("IPVS scheduler lookup", libc::ENOENT));
    }
    if IpFamily::of(&svc.addr) == IpFamily::V6 && svc.netmask == 0 {
        return Err(Error::kernel("IPVS service netmask", libc::EINVAL));
    }
    Ok(())
}

/// What the kernel checks of a real server beyond its encoding; errnos as the kernel's.
fn check_destination(svc: &ServiceKey, dest: &RealServer) -> Result<(), i32> {
    if IpFamily::of(&dest.addr) != svc.family() {
        return Err(libc::EINVAL);
    }
    if dest.lower_threshold > dest.upper_threshold {
        return Err(libc::ERANGE);
    }
    Ok(())
}

impl IpvsClient for FakeIpvs {
    fn services(&mut self) -> Result<Vec<VirtualServer>, Error> {
        Ok(self
            .lock()
            .services
            .values()
            .map(|(s, _)| s.clone())
            .collect())
    }

    fn add_service(&mut self, svc: &VirtualServer) -> Result<(), Error> {
        check_service(svc)?;
        self.change("IPVS add service", |inner| {
            if inner.services.contains_key(&svc.key()) {
                return Err(libc::EEXIST);
            }
            inner.services.insert(svc.key(), (svc.clone(), Vec::new()));
            Ok(())
        })
    }

    fn update_service(&mut self, svc: &VirtualServer) -> Result<(), Error> {
        check_service(svc)?;
        self.change("IPVS update service", |inner| {
            let (old, _) = inner.services.get_mut(&svc.key()).ok_or(libc::ESRCH)?;
            *old = svc.clone();
            Ok(())
        })
    }

    fn delete_service(&mut self, svc: &ServiceKey) -> Result<(), Error> {
        self.change("IPVS delete service", |inner| {
            inner.services.remove(svc).map(drop).ok_or(libc::ESRCH)
        })
    }

    fn destinations(&mut self, svc: &ServiceKey) -> Result<Vec<Destination>, Error> {
        let inner = self.lock();
        Ok(inner
            .services
            .get(svc)
            .map(|(_, d)| d.clone())
            .unwrap_or_default())
    }

    fn add_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        wire::destination(dest, true)?;
        self.change("IPVS add real server", |inner| {
            let (_, dests) = inner.services.get_mut(svc).ok_or(libc::ESRCH)?;
            check_destination(svc, dest)?;
            if dests.iter().any(|d| same_server(&d.server, dest)) {
                return Err(libc::EEXIST);
            }
            dests.push(Destination {
                server: *dest,
                stats: RealServerStats::default(),
            });
            Ok(())
        })
    }

    fn update_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        wire::destination(dest, true)?;
        self.change("IPVS update real server", |inner| {
            let (_, dests) = inner.services.get_mut(svc).ok_or(libc::ESRCH)?;
            check_destination(svc, dest)?;
            let old = dests
                .iter_mut()
                .find(|d| same_server(&d.server, dest))
                .ok_or(libc::ENOENT)?;
            old.server = *dest;
            Ok(())
        })
    }

    fn delete_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        self.change("IPVS delete real server", |inner| {
            let (_, dests) = inner.services.get_mut(svc).ok_or(libc::ESRCH)?;
            let at = dests
                .iter()
                .position(|d| same_server(&d.server, dest))
                .ok_or(libc::ENOENT)?;
            dests.remove(at);
            Ok(())
        })
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.change("IPVS flush", |inner| {
            inner.services.clear();
            Ok(())
        })
    }

    fn config(&mut self) -> Result<Timeouts, Error> {
        Ok(self.lock().timeouts)
    }

    fn set_config(&mut self, timeouts: &Timeouts) -> Result<(), Error> {
        wire::timeouts(timeouts)?;
        self.change("IPVS set config", |inner| {
            let current = &mut inner.timeouts;
            for (new, old) in [
                (timeouts.tcp, &mut current.tcp),
                (timeouts.tcp_fin, &mut current.tcp_fin),
                (timeouts.udp, &mut current.udp),
            ] {
                if !new.is_zero() {
                    *old = new;
                }
            }
            Ok(())
        })
    }
}

/// Whether two real servers are the same one to the kernel (same address and port).
fn same_server(a: &RealServer, b: &RealServer) -> bool {
    (a.addr, a.port) == (b.addr, b.port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::{Scheduler, ServiceFlags};
    use kube_proxy_model::Protocol;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc() -> VirtualServer {
        VirtualServer::new(ip("10.96.0.10"), 53, Protocol::Udp, Scheduler::default())
    }

    #[test]
    fn services_are_added_updated_and_deleted_once() {
        let mut ipvs = FakeIpvs::new();
        ipvs.add_service(&svc()).unwrap();
        assert!(ipvs.add_service(&svc()).unwrap_err().is_exists());
        let mut changed = svc();
        changed.scheduler = Scheduler::new("mh").unwrap();
        changed.flags = ServiceFlags::SCHED_MH_FALLBACK;
        ipvs.update_service(&changed).unwrap();
        assert_eq!(ipvs.clone().services().unwrap(), [changed]);
        ipvs.delete_service(&svc().key()).unwrap();
        let error = ipvs.delete_service(&svc().key()).unwrap_err();
        assert_eq!(error.errno(), Some(libc::ESRCH));
        assert!(ipvs.update_service(&svc()).unwrap_err().is_not_found());
        assert_eq!(ipvs.writes(), 3);
    }

    #[test]
    fn the_kernel_checks_are_made() {
        let mut ipvs = FakeIpvs::new();
        let mut bad = svc();
        bad.scheduler = Scheduler::new("nosuch").unwrap();
        assert_eq!(
            ipvs.add_service(&bad).unwrap_err().errno(),
            Some(libc::ENOENT)
        );
        bad = VirtualServer::new(ip("fd00::10"), 53, Protocol::Udp, Scheduler::default());
        bad.netmask = 0;
        assert_eq!(
            ipvs.add_service(&bad).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
        bad.netmask = 129;
        assert!(matches!(ipvs.add_service(&bad), Err(Error::Invalid(_))));
        assert_eq!(ipvs.writes(), 0);
    }

    #[test]
    fn real_servers_need_their_service_and_family() {
        let mut ipvs = FakeIpvs::new();
        let key = svc().key();
        let pod = RealServer::new(ip("10.244.1.2"), 5353, 1);
        assert_eq!(
            ipvs.add_destination(&key, &pod).unwrap_err().errno(),
            Some(libc::ESRCH)
        );
        assert_eq!(
            ipvs.destinations(&key).unwrap(),
            [],
            "none for an unknown service"
        );
        ipvs.add_service(&svc()).unwrap();
        ipvs.add_destination(&key, &pod).unwrap();
        assert!(ipvs.add_destination(&key, &pod).unwrap_err().is_exists());
        let v6 = RealServer::new(ip("fd00:244::2"), 5353, 1);
        assert_eq!(
            ipvs.add_destination(&key, &v6).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
        let bad_thresholds = RealServer {
            lower_threshold: 5,
            ..RealServer::new(ip("10.244.1.3"), 5353, 1)
        };
        let error = ipvs.add_destination(&key, &bad_thresholds).unwrap_err();
        assert_eq!(error.errno(), Some(libc::ERANGE));

        let drained = RealServer { weight: 0, ..pod };
        ipvs.update_destination(&key, &drained).unwrap();
        let stats = RealServerStats {
            active_conns: 2,
            inactive_conns: 1,
            persistent_conns: 0,
        };
        assert!(ipvs.set_stats(&key, pod.addr, pod.port, stats));
        let expected = Destination {
            server: drained,
            stats,
        };
        assert_eq!(ipvs.destinations(&key).unwrap(), [expected]);

        ipvs.delete_destination(&key, &pod).unwrap();
        assert!(ipvs
            .delete_destination(&key, &pod)
            .unwrap_err()
            .is_not_found());
        assert!(ipvs
            .update_destination(&key, &pod)
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn flush_and_config_behave_as_the_kernel() {
        let mut ipvs = FakeIpvs::new();
        ipvs.add_service(&svc()).unwrap();
        ipvs.flush().unwrap();
        assert_eq!(ipvs.services().unwrap(), []);
        assert_eq!(ipvs.config().unwrap(), DEFAULT_TIMEOUTS);
        let udp_only = Timeouts {
            udp: Duration::from_secs(30),
            ..Timeouts::default()
        };
        ipvs.set_config(&udp_only).unwrap();
        let expected = Timeouts {
            udp: Duration::from_secs(30),
            ..DEFAULT_TIMEOUTS
        };
        assert_eq!(ipvs.config().unwrap(), expected);
    }

    #[test]
    fn an_injected_failure_fails_the_next_change_only() {
        let mut ipvs = FakeIpvs::new();
        ipvs.fail_next(libc::ENOMEM);
        assert_eq!(
            ipvs.add_service(&svc()).unwrap_err().errno(),
            Some(libc::ENOMEM)
        );
        ipvs.add_service(&svc()).unwrap();
    }
}
