//! The ctnetlink socket: requests out, entries, acknowledgements and errors in.

use kube_proxy_model::{IpFamily, Protocol};
use kube_proxy_netlink::Connection;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::wire::{Entry, Request};
use crate::{Error, Flow};

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct Conntrack {
    conn: Connection,
}

impl Conntrack {
    /// Opens a `NETLINK_NETFILTER` socket. It stays in the network namespace of the calling
    /// thread, wherever it is used later.
    pub fn new() -> Result<Self, Error> {
        Ok(Conntrack {
            conn: Connection::open(NETLINK_NETFILTER)?,
        })
    }

    /// Lists the entries of `family` and `proto`. Entries that change while the kernel
    /// walks the table may be missed or seen twice (`NLM_F_DUMP_INTR`); like upstream, the
    /// caller works with that partial view, and the next sync sees the rest.
    pub fn dump(&mut self, family: IpFamily, proto: Protocol) -> Result<Vec<Flow>, Error> {
        let request = Request::dump(family);
        let name = request.name();
        let mut flows = Vec::new();
        self.conn
            .request(name, request, NLM_F_REQUEST | NLM_F_DUMP, |Entry(flow)| {
                // The kernel filters by family only; the protocol is filtered here.
                flows.extend(flow.filter(|flow| flow.proto == proto));
                Ok::<(), Error>(())
            })?;
        Ok(flows)
    }

    /// Deletes the entry with `flow`'s original tuple. Returns `false` when there was none
    /// (it expired or was deleted since it was listed).
    pub fn delete(&mut self, flow: &Flow) -> Result<bool, Error> {
        let request = Request::delete(flow);
        let name = request.name();
        match self
            .conn
            .request(name, request, NLM_F_REQUEST | NLM_F_ACK, |_: Entry| Ok(()))
        {
            Ok(()) => Ok(true),
            Err(Error::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    //! How ctnetlink answers go through the shared request loop (tested on its own in
    //! kube-proxy-netlink): captured entries, and the kernel's errors as conntrack's.

    use kube_proxy_netlink::datagram_ends;

    use super::*;
    use crate::captured;

    /// Runs the shared loop on `datagram` for request 7, with the entries it saw.
    fn read(datagram: &[u8]) -> (Result<bool, Error>, Vec<Option<Flow>>) {
        let mut entries = Vec::new();
        let result = datagram_ends(datagram, 7, "dump", &mut |Entry(flow)| {
            entries.push(flow);
            Ok(())
        });
        (result, entries)
    }

    /// An `NLMSG_ERROR` answer to request 7 with `code` (0: an acknowledgement).
    fn nlmsg_error(code: i32) -> Vec<u8> {
        let request = &captured::bytes(captured::DONE)[..16];
        let header = [
            36u32.to_le_bytes(),
            [2, 0, 0, 1],
            7u32.to_le_bytes(),
            [0; 4],
        ];
        [
            header.concat(),
            code.to_le_bytes().to_vec(),
            request.to_vec(),
        ]
        .concat()
    }

    #[test]
    fn captured_entries_are_read_until_nlmsg_done() {
        let entry = captured::bytes(captured::IPV4_ENTRY);
        let done = captured::bytes(captured::DONE);
        let (ends, entries) = read(&entry);
        assert!(!ends.unwrap(), "more to come");
        assert!(matches!(entries[..], [Some(_)]), "{entries:?}");
        let (ends, entries) = read(&[entry, done].concat());
        assert!(ends.unwrap(), "both in one datagram");
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn kernel_errors_are_conntracks_own() {
        assert!(read(&nlmsg_error(0)).0.unwrap(), "an acknowledgement");
        // What `delete` takes for an entry that is gone already.
        let Err(Error::Kernel { request, source }) = read(&nlmsg_error(-libc::ENOENT)).0 else {
            panic!("expected a kernel error");
        };
        assert_eq!(
            (request, source.raw_os_error()),
            ("dump", Some(libc::ENOENT))
        );
        let mut done = captured::bytes(captured::DONE);
        done[16..20].copy_from_slice(&(-libc::EINTR).to_le_bytes());
        assert!(matches!(read(&done).0, Err(Error::Kernel { .. })));
    }

    #[test]
    fn truncated_or_garbled_datagrams_are_malformed() {
        assert!(matches!(read(&[1, 2, 3]).0, Err(Error::Malformed(_))));
        let entry = captured::bytes(captured::IPV4_ENTRY);
        let (result, _) = read(&entry[..entry.len() - 8]);
        assert!(matches!(result, Err(Error::Malformed(_))), "{result:?}");
    }
}
