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
/// to the backend. Services are listed in key order, real servers in the order they were
/// added (the kernel's orders are its hash table's and the same).
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
