//! The ctnetlink socket: requests out, entries, acknowledgements and errors in.

use kube_proxy_model::{IpFamily, Protocol};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::wire::{self, Entry, Request};
use crate::{Error, Flow};

/// Big enough for any datagram the kernel sends: it sizes dump datagrams to at most 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens a `NETLINK_NETFILTER` socket. It stays in the network namespace of the calling
    /// thread, wherever it is used later.
    pub fn new() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        Ok(Conntrack {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Lists the entries of `family` and `proto`. Entries that change while the kernel
    /// walks the table may be missed or seen twice (`NLM_F_DUMP_INTR`); like upstream, the
    /// caller works with that partial view, and the next sync sees the rest.
    pub fn dump(&mut self, family: IpFamily, proto: Protocol) -> Result<Vec<Flow>, Error> {
        let request = Request::dump(family);
        let name = request.name();
        let seq = self.send(request, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut flows = Vec::new();
        self.receive(seq, name, |Entry(flow)| {
            // The kernel filters by family only; the protocol is filtered here.
            flows.extend(flow.filter(|flow| flow.proto == proto));
        })?;
        Ok(flows)
    }

    /// Deletes the entry with `flow`'s original tuple. Returns `false` when there was none
    /// (it expired or was deleted since it was listed).
    pub fn delete(&mut self, flow: &Flow) -> Result<bool, Error> {
        let request = Request::delete(flow);
        let name = request.name();
        let seq = self.send(request, NLM_F_REQUEST | NLM_F_ACK)?;
        match self.receive(seq, name, |_| {}) {
            Ok(()) => Ok(true),
            Err(Error::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `request` with `flags` and returns its sequence number.
    fn send(&mut self, request: Request, flags: u16) -> Result<u32, Error> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = wire::encode(request, flags, self.seq);
        self.socket.send(&bytes, 0).map_err(Error::Socket)?;
        Ok(self.seq)
    }

    /// Reads the answer to request `seq` until it ends (`NLMSG_DONE`, an acknowledgement or
    /// an error), handing each entry to `on_entry`.
    fn receive(
        &mut self,
        seq: u32,
        request: &'static str,
        mut on_entry: impl FnMut(Entry),
    ) -> Result<(), Error> {
        loop {
            self.buf.clear();
            // MSG_TRUNC makes recv report the datagram's full length, so that a datagram
            // larger than the buffer is an error rather than a silently cut message.
            let len = self
                .socket
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(Error::Socket)?;
            if len > self.buf.len() {
                return Err(Error::Malformed(format!(
                    "datagram of {len} bytes exceeds the {RECV_BUFFER}-byte buffer"
                )));
            }
            if datagram_ends(&self.buf, seq, request, &mut on_entry)? {
                return Ok(());
            }
        }
    }
}

/// Hands the entries in one datagram to `on_entry`; true when it ends the answer to `seq`.
fn datagram_ends(
    mut bytes: &[u8],
    seq: u32,
    request: &'static str,
    on_entry: &mut impl FnMut(Entry),
) -> Result<bool, Error> {
    while !bytes.is_empty() {
        let message = NetlinkMessage::<Entry>::deserialize(bytes)
            .map_err(|e| Error::Malformed(e.to_string()))?;
        // Messages are 4-byte aligned; the last one of a datagram may lack its padding.
        let len = (message.header.length as usize + 3) & !3;
        bytes = bytes.get(len..).unwrap_or_default();
        // Answers to an earlier request that failed half-way are not ours to read.
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(entry) => on_entry(entry),
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(kernel_error(request, done.code))
            }
            NetlinkPayload::Error(error) if error.code.is_some() => {
                return Err(kernel_error(request, error.raw_code()))
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

fn kernel_error(request: &'static str, code: i32) -> Error {
    Error::Kernel {
        request,
        source: std::io::Error::from_raw_os_error(code.saturating_neg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::captured;

    /// Runs [`datagram_ends`] on `datagram` for request 7, with the entries it saw.
    fn read(datagram: &[u8]) -> (Result<bool, Error>, Vec<Option<Flow>>) {
        let mut entries = Vec::new();
        let result = datagram_ends(datagram, 7, "dump", &mut |Entry(flow)| entries.push(flow));
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
    fn a_dump_ends_with_nlmsg_done() {
        let entry = captured::bytes(captured::IPV4_ENTRY);
        let done = captured::bytes(captured::DONE);
        let (ends, entries) = read(&entry);
        assert!(!ends.unwrap(), "more to come");
        assert_eq!(entries.len(), 1);
        assert!(read(&done).0.unwrap());

        let (ends, entries) = read(&[entry, done].concat());
        assert!(ends.unwrap(), "both in one datagram");
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn answers_to_other_requests_are_skipped() {
        let mut entry = captured::bytes(captured::IPV4_ENTRY);
        entry[8] = 6; // sequence number
        let (ends, entries) = read(&entry);
        assert!(!ends.unwrap());
        assert_eq!(entries, []);
    }

    #[test]
    fn acknowledgements_end_and_errors_fail_a_request() {
        assert!(read(&nlmsg_error(0)).0.unwrap());
        match read(&nlmsg_error(-libc::ENOENT)).0 {
            Err(Error::Kernel { request, source }) => {
                assert_eq!(
                    (request, source.raw_os_error()),
                    ("dump", Some(libc::ENOENT))
                )
            }
            other => panic!("expected ENOENT, got {other:?}"),
        }
        let mut done = captured::bytes(captured::DONE);
        done[16..20].copy_from_slice(&(-libc::EINTR).to_le_bytes());
        assert!(matches!(read(&done).0, Err(Error::Kernel { .. })));
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert!(matches!(read(&[1, 2, 3]).0, Err(Error::Malformed(_))));
        let entry = captured::bytes(captured::IPV4_ENTRY);
        let (result, _) = read(&entry[..entry.len() - 8]);
        assert!(matches!(result, Err(Error::Malformed(_))), "{result:?}");
    }
}
