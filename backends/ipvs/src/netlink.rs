//! What generic netlink and rtnetlink share: a blocking socket that sends one request at
//! a time and reads its answer to the end, and attributes to send.

use netlink_packet_core::{
    Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, Nla, NlaBuffer, NlasIterator, NLA_HEADER_SIZE,
};
use netlink_sys::{Socket, SocketAddr};

use crate::Error;

/// Big enough for any datagram the kernel sends: it sizes dump datagrams to at most 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// A netlink socket of one protocol, in the network namespace of the thread that opened it.
pub(crate) struct Connection {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Connection {
    /// Opens a socket of netlink `protocol` (`NETLINK_GENERIC`, `NETLINK_ROUTE`).
    pub(crate) fn open(protocol: isize) -> Result<Self, Error> {
        let mut socket = Socket::new(protocol).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        Ok(Connection {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends `request` with `flags` and hands each message of the answer to `on_message`,
    /// until the answer ends: `NLMSG_DONE` for a dump, the acknowledgement otherwise (so
    /// send `NLM_F_ACK` with every request that is not a dump).
    pub(crate) fn request<I, O>(
        &mut self,
        name: &'static str,
        request: I,
        flags: u16,
        mut on_message: impl FnMut(O) -> Result<(), Error>,
    ) -> Result<(), Error>
    where
        I: NetlinkSerializable,
        O: NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode(request, flags, self.seq);
        self.socket.send(&bytes, 0).map_err(Error::Socket)?;
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
            if datagram_ends(&self.buf, self.seq, name, &mut on_message)? {
                return Ok(());
            }
        }
    }
}

/// The netlink message that sends `request` with `flags` and sequence number `seq`.
pub(crate) fn encode<I: NetlinkSerializable>(request: I, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Hands the messages in one datagram to `on_message`; true when it ends the answer to
/// request `seq`.
pub(crate) fn datagram_ends<O: NetlinkDeserializable>(
    mut bytes: &[u8],
    seq: u32,
    request: &'static str,
    on_message: &mut impl FnMut(O) -> Result<(), Error>,
) -> Result<bool, Error> {
    while !bytes.is_empty() {
        let message = NetlinkMessage::<O>::deserialize(bytes)
            .map_err(|e| Error::Malformed(format!("{e:#}")))?;
        // Messages are 4-byte aligned; the last one of a datagram may lack its padding.
        let len = (message.header.length as usize + 3) & !3;
        bytes = bytes.get(len..).unwrap_or_default();
        // Answers to an earlier request that failed half-way are not ours to read.
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => on_message(inner)?,
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(Error::kernel(request, done.code.saturating_neg()))
            }
            NetlinkPayload::Error(error) if error.code.is_some() => {
                return Err(Error::kernel(request, error.raw_code().saturating_neg()))
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

/// A netlink attribute to send: raw bytes, or a nest of attributes (sent with
/// `NLA_F_NESTED`, which the kernel's strict validation expects on nests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Attr>),
}

impl Attr {
    /// A native-endian `u16` attribute.
    pub(crate) fn u16(kind: u16, value: u16) -> Self {
        Attr::Leaf(kind, value.to_ne_bytes().to_vec())
    }

    /// A native-endian `u32` attribute.
    pub(crate) fn u32(kind: u16, value: u32) -> Self {
        Attr::Leaf(kind, value.to_ne_bytes().to_vec())
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn string(kind: u16, value: &str) -> Self {
        Attr::Leaf(kind, [value.as_bytes(), &[0]].concat())
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Leaf(_, value) => value.len(),
            Attr::Nest(_, attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Leaf(kind, _) | Attr::Nest(kind, _) => *kind,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Leaf(_, value) => buffer.copy_from_slice(value),
            Attr::Nest(_, attrs) => attrs.as_slice().emit(buffer),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, Attr::Nest(..))
    }
}

/// The attributes in `bytes`, by kind (flags masked off), as (kind, value) pairs.
pub(crate) fn attrs(bytes: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Error>> {
    NlasIterator::new(bytes).map(|nla| {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|e| Error::Malformed(format!("{e:#}")))?;
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        // The buffer's own `value()` borrows the buffer; the slice it wraps lives longer.
        nla.into_inner()
            .get(NLA_HEADER_SIZE..len)
            .map(|value| (kind, value))
            .ok_or_else(|| Error::Malformed(format!("attribute {kind} of length {len}")))
    })
}

/// Reads a fixed-size attribute value.
pub(crate) fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], Error> {
    value.try_into().map_err(|_| {
        Error::Malformed(format!(
            "{what}: {} bytes where {N} were expected",
            value.len()
        ))
    })
}

/// Reads a native-endian `u16` attribute value.
pub(crate) fn u16_value(value: &[u8], what: &str) -> Result<u16, Error> {
    fixed(value, what).map(u16::from_ne_bytes)
}

/// Reads a native-endian `u32` attribute value.
pub(crate) fn u32_value(value: &[u8], what: &str) -> Result<u32, Error> {
    fixed(value, what).map(u32::from_ne_bytes)
}

/// The value of an attribute the kernel always sends, or an error naming it.
pub(crate) fn required<T>(value: Option<T>, what: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::Malformed(format!("{what} missing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::wire::Answer;
    use crate::kernel_answers::{self as answers, bytes};

    /// Runs [`datagram_ends`] on `datagram` for request 7, with the commands it saw.
    fn read(datagram: &[u8]) -> (Result<bool, Error>, Vec<u8>) {
        let mut cmds = Vec::new();
        let result = datagram_ends(datagram, 7, "dump", &mut |a: Answer| {
            cmds.push(a.cmd);
            Ok(())
        });
        (result, cmds)
    }

    /// An `NLMSG_ERROR` answer to request 7 with `code` (0: an acknowledgement), quoting
    /// the request's header.
    fn nlmsg_error(code: i32) -> Vec<u8> {
        let header = [
            36u32.to_le_bytes(),
            [2, 0, 0, 1],
            7u32.to_le_bytes(),
            [0; 4],
        ];
        let request = [
            16u32.to_le_bytes(),
            [0x23, 0, 5, 0],
            7u32.to_le_bytes(),
            [0; 4],
        ];
        [
            header.concat(),
            code.to_le_bytes().to_vec(),
            request.concat(),
        ]
        .concat()
    }

    #[test]
    fn a_dump_ends_with_nlmsg_done() {
        let (v4, v6, done) = (
            bytes(answers::SERVICE_V4),
            bytes(answers::SERVICE_V6),
            bytes(answers::DONE),
        );
        let (ends, cmds) = read(&[v4.clone(), v6].concat());
        assert!(!ends.unwrap(), "more to come");
        assert_eq!(cmds, [1, 1]);
        let (ends, cmds) = read(&[v4, done].concat());
        assert!(ends.unwrap(), "both in one datagram");
        assert_eq!(cmds, [1]);
    }

    #[test]
    fn answers_to_other_requests_are_skipped() {
        let mut message = bytes(answers::SERVICE_V4);
        message[8] = 6; // sequence number
        let (ends, cmds) = read(&message);
        assert!(!ends.unwrap());
        assert_eq!(cmds, []);
    }

    #[test]
    fn acknowledgements_end_and_errors_fail_a_request() {
        let (ends, _) = read(&[bytes(answers::CONFIG), nlmsg_error(0)].concat());
        assert!(ends.unwrap());
        let error = read(&nlmsg_error(-libc::EEXIST)).0.unwrap_err();
        assert!(error.is_exists(), "{error}");
        assert!(!error.is_not_found());
        let error = read(&nlmsg_error(-libc::ESRCH)).0.unwrap_err();
        assert!(error.is_not_found(), "{error}");
        let mut done = bytes(answers::DONE);
        done[16..20].copy_from_slice(&(-libc::EINTR).to_le_bytes());
        assert_eq!(read(&done).0.unwrap_err().errno(), Some(libc::EINTR));
    }

    #[test]
    fn a_failing_handler_stops_the_answer() {
        let result = datagram_ends(&bytes(answers::SERVICE_V4), 7, "dump", &mut |_: Answer| {
            Err(Error::Malformed("no".into()))
        });
        assert!(matches!(result, Err(Error::Malformed(_))));
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert!(matches!(read(&[1, 2, 3]).0, Err(Error::Malformed(_))));
        let message = bytes(answers::SERVICE_V4);
        let (result, _) = read(&message[..message.len() - 8]);
        assert!(matches!(result, Err(Error::Malformed(_))), "{result:?}");
        // Shorter than its genlmsghdr.
        let mut short = bytes(answers::DONE)[..16].to_vec();
        short[..4].copy_from_slice(&18u32.to_le_bytes());
        short[4] = 0x23;
        short.extend([1, 1]);
        assert!(matches!(read(&short).0, Err(Error::Malformed(_))));
    }

    fn attrs_of(bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, Error> {
        attrs(bytes).collect()
    }

    #[test]
    fn attributes_are_read_with_their_lengths_checked() {
        let two = [6, 0, 1, 0, 0xaa, 0xbb, 0, 0, 4, 0, 2, 0x80];
        let read = attrs_of(&two).unwrap();
        assert_eq!(read, [(1, &[0xaa, 0xbb][..]), (2, &[][..])], "flags masked");
        assert!(
            attrs_of(&[9, 0, 1, 0, 0]).is_err(),
            "longer than the buffer"
        );
        assert!(attrs_of(&[2, 0, 1, 0]).is_err(), "shorter than its header");
        assert!(matches!(u32_value(&[1, 2], "x"), Err(Error::Malformed(_))));
    }
}
