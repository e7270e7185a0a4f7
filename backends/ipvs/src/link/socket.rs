//! The dummy link over a blocking rtnetlink socket.

use std::net::IpAddr;

use kube_proxy_netlink::Connection;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::DummyLinkClient;
use crate::Error;

const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// The dummy link of one name, in the network namespace of the thread that opened it.
pub struct DummyLink {
    conn: Connection,
    name: String,
}

/// A link as found by name.
struct Found {
    index: u32,
    is_dummy: bool,
}

impl DummyLink {
    /// A client for the link named `name` (which need not exist yet).
    pub fn new(name: &str) -> Result<Self, Error> {
        // IFNAMSIZ is 16 with the NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(Error::Invalid(format!("link name {name:?}")));
        }
        Ok(DummyLink {
            conn: Connection::open(NETLINK_ROUTE)?,
            name: name.to_owned(),
        })
    }

    /// Looks the link up by name; `None` when there is none.
    fn find(&mut self) -> Result<Option<Found>, Error> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(self.name.clone()));
        let mut found = None;
        let result: Result<(), Error> = self.conn.request(
            "link lookup",
            RouteNetlinkMessage::GetLink(message),
            ACK,
            |answer| {
                if let RouteNetlinkMessage::NewLink(link) = answer {
                    found = Some(Found {
                        index: link.header.index,
                        is_dummy: is_dummy(&link),
                    });
                }
                Ok(())
            },
        );
        match result {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            result => result.map(|()| found),
        }
    }

    /// The index of the link, which must exist.
    fn index(&mut self) -> Result<u32, Error> {
        match self.find()? {
            Some(found) => Ok(found.index),
            None => Err(Error::kernel("link lookup", libc::ENODEV)),
        }
    }

    /// Sends a request that is answered by an acknowledgement only.
    fn command(
        &mut self,
        name: &'static str,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        self.conn
            .request(name, request, flags, |_: RouteNetlinkMessage| Ok(()))
    }

    /// The message that names `addr` on link `index` as a host address.
    fn address_message(index: u32, addr: IpAddr) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.prefix_len = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        // IPv4 identifies an address by IFA_LOCAL, IPv6 by IFA_ADDRESS; iproute2 sends
        // both for IPv4.
        if addr.is_ipv4() {
            message.attributes.push(AddressAttribute::Local(addr));
        }
        message.attributes.push(AddressAttribute::Address(addr));
        message
    }
}

fn is_dummy(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Dummy))),
        _ => false,
    })
}

/// The address of one message of an address dump, if it is on link `index`. An IPv4
/// address is its IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point links).
fn address_on(message: &AddressMessage, index: u32) -> Option<IpAddr> {
    if message.header.index != index {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for attr in &message.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    local.or(address)
}

impl DummyLinkClient for DummyLink {
    fn ensure(&mut self) -> Result<bool, Error> {
        if self.find()?.is_some() {
            return Ok(true);
        }
        let mut message = LinkMessage::default();
        message.attributes.extend([
            LinkAttribute::IfName(self.name.clone()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]),
        ]);
        let flags = ACK | NLM_F_CREATE | NLM_F_EXCL;
        let request = RouteNetlinkMessage::NewLink(message);
        match self.command("create dummy link", request, flags) {
            Ok(()) => Ok(false),
            // Created by someone else since the lookup.
            Err(e) if e.is_exists() => Ok(true),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Err(Error::Unavailable(format!(
                "the kernel has no dummy link type to create {} (CONFIG_DUMMY); \
                 load it with `modprobe dummy`",
                self.name
            ))),
            Err(e) => Err(e),
        }
    }

    fn addresses(&mut self) -> Result<Vec<IpAddr>, Error> {
        let index = self.index()?;
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let mut addrs = Vec::new();
        self.conn.request(
            "address dump",
            request,
            NLM_F_REQUEST | NLM_F_DUMP,
            |answer| {
                if let RouteNetlinkMessage::NewAddress(message) = answer {
                    addrs.extend(address_on(&message, index));
                }
                Ok::<(), Error>(())
            },
        )?;
        Ok(addrs)
    }

    fn add_address(&mut self, addr: IpAddr) -> Result<bool, Error> {
        let message = Self::address_message(self.index()?, addr);
        let flags = ACK | NLM_F_CREATE | NLM_F_EXCL;
        let request = RouteNetlinkMessage::NewAddress(message);
        match self.command("add address", request, flags) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn delete_address(&mut self, addr: IpAddr) -> Result<bool, Error> {
        let message = Self::address_message(self.index()?, addr);
        let request = RouteNetlinkMessage::DelAddress(message);
        match self.command("delete address", request, ACK) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn delete(&mut self) -> Result<bool, Error> {
        let Some(found) = self.find()? else {
            return Ok(false);
        };
        if !found.is_dummy {
            return Err(Error::Invalid(format!(
                "link {} is not a dummy link; not deleting it",
                self.name
            )));
        }
        let mut message = LinkMessage::default();
        message.header.index = found.index;
        let request = RouteNetlinkMessage::DelLink(message);
        self.command("delete link", request, ACK)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn address_messages_name_host_addresses() {
        let v4 = DummyLink::address_message(7, "10.96.0.1".parse().unwrap());
        assert_eq!(v4.header.prefix_len, 32);
        assert_eq!(v4.header.family, AddressFamily::Inet);
        assert_eq!(v4.header.index, 7);
        assert_eq!(v4.attributes.len(), 2);
        let v6 = DummyLink::address_message(7, "fd00::1".parse().unwrap());
        assert_eq!(v6.header.prefix_len, 128);
        assert_eq!(v6.header.family, AddressFamily::Inet6);
        assert_eq!(v6.attributes.len(), 1);
    }

    #[test]
    fn dumped_addresses_of_other_links_are_skipped() {
        let v4: IpAddr = "10.96.0.1".parse().unwrap();
        let message = DummyLink::address_message(7, v4);
        assert_eq!(address_on(&message, 7), Some(v4));
        assert_eq!(address_on(&message, 8), None);
        // A point-to-point peer in IFA_ADDRESS is not the link's address.
        let mut ptp = message.clone();
        ptp.attributes[1] = AddressAttribute::Address("10.0.0.9".parse().unwrap());
        assert_eq!(address_on(&ptp, 7), Some(v4));
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        assert_eq!(&bytes[..8], &[libc::AF_INET as u8, 32, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn dummy_links_are_told_apart() {
        let mut link = LinkMessage::default();
        assert!(!is_dummy(&link));
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        assert!(!is_dummy(&link));
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        assert!(is_dummy(&link));
    }

    #[test]
    fn bad_link_names_are_refused() {
        for name in ["", "a-name-too-long-x", "a/b"] {
            assert!(
                matches!(DummyLink::new(name), Err(Error::Invalid(_))),
                "{name:?}"
            );
        }
    }
}
