//! An in-memory [`DummyLinkClient`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::DummyLinkClient;
use crate::Error;

/// A fake dummy link: absent until [`DummyLinkClient::ensure`]. Clones share state, so a
/// test keeps one handle and gives another to the backend.
#[derive(Debug, Clone, Default)]
pub struct FakeDummyLink {
    /// The link's addresses, `None` while there is no link.
    link: Arc<Mutex<Option<BTreeSet<IpAddr>>>>,
}

impl FakeDummyLink {
    /// No link yet.
    pub fn new() -> Self {
        FakeDummyLink::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<BTreeSet<IpAddr>>> {
        // A test that panicked while holding the lock has failed already.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the link exists.
    pub fn exists(&self) -> bool {
        self.lock().is_some()
    }

    /// The addresses of an existing link, as the kernel would refuse them without one.
    fn with_addresses<T>(&self, f: impl FnOnce(&mut BTreeSet<IpAddr>) -> T) -> Result<T, Error> {
        match self.lock().as_mut() {
            Some(addrs) => Ok(f(addrs)),
            None => Err(Error::kernel("link lookup", libc::ENODEV)),
        }
    }
}

impl DummyLinkClient for FakeDummyLink {
    fn ensure(&mut self) -> Result<bool, Error> {
        let mut link = self.lock();
        let existed = link.is_some();
        link.get_or_insert_with(BTreeSet::new);
        Ok(existed)
    }

    fn addresses(&mut self) -> Result<Vec<IpAddr>, Error> {
        self.with_addresses(|addrs| addrs.iter().copied().collect())
    }

    fn add_address(&mut self, addr: IpAddr) -> Result<bool, Error> {
        self.with_addresses(|addrs| addrs.insert(addr))
    }

    fn delete_address(&mut self, addr: IpAddr) -> Result<bool, Error> {
        self.with_addresses(|addrs| addrs.remove(&addr))
    }

    fn delete(&mut self) -> Result<bool, Error> {
        Ok(self.lock().take().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_the_link() {
        let mut link = FakeDummyLink::new();
        let vip: IpAddr = "10.96.0.1".parse().unwrap();
        assert_eq!(
            link.add_address(vip).unwrap_err().errno(),
            Some(libc::ENODEV)
        );
        assert!(!link.ensure().unwrap());
        assert!(link.ensure().unwrap());
        assert!(link.add_address(vip).unwrap());
        assert!(!link.add_address(vip).unwrap());
        assert_eq!(link.clone().addresses().unwrap(), [vip]);
        assert!(link.delete_address(vip).unwrap());
        assert!(!link.delete_address(vip).unwrap());
        assert!(link.delete().unwrap());
        assert!(!link.delete().unwrap());
        assert!(!link.exists());
    }
}
