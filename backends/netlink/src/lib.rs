//! The netlink plumbing that kube-proxy-rs' kernel clients share: a blocking socket that
//! sends one request at a time and reads its answer to the end, and attributes to send.
//!
//! The conntrack clean-up (ctnetlink, `NETLINK_NETFILTER`) and IPVS mode (generic netlink
//! and rtnetlink) talk to the kernel the same way: send a request with a sequence number,
//! read datagrams until the answer ends (`NLMSG_DONE` for a dump, an acknowledgement or an
//! error otherwise) and hand each message to the caller. This crate holds that loop and
//! the attribute type both send, so that they are written, fixed and tested once. What a
//! message means (ctnetlink's `nfgenmsg`, generic netlink families, rtnetlink links) stays
//! with each client, and so does each client's error type: the loop reports failures
//! through [`ClientError`], which [`impl_client_error!`] implements for it.
//!
//! Every socket is blocking and stays in the network namespace of the thread that opened
//! it, wherever it is used later.

use netlink_packet_core::{
    Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, Nla,
};
use netlink_sys::{Socket, SocketAddr};

/// Big enough for any datagram the kernel sends: it sizes dump datagrams to at most 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// A client's error type, as the request loop reports its failures in it. The clients keep
/// their own types, with their own messages, and their callers keep matching on them.
pub trait ClientError {
    /// Opening the socket, sending or receiving failed.
    fn socket(error: std::io::Error) -> Self;
    /// The kernel refused the request that the caller called `request`, with `errno`.
    fn kernel(request: &'static str, errno: i32) -> Self;
    /// A message did not parse, or a datagram did not fit the buffer.
    fn malformed(what: String) -> Self;
}

/// Implements [`ClientError`] for a client's error type that has the variants
/// `Socket(std::io::Error)`, `Kernel { request: &'static str, source: std::io::Error }`
/// (the errno as an `io::Error`) and `Malformed(String)`.
#[macro_export]
macro_rules! impl_client_error {
    ($error:ty) => {
        impl $crate::ClientError for $error {
            fn socket(error: ::std::io::Error) -> Self {
                Self::Socket(error)
            }

            fn kernel(request: &'static str, errno: i32) -> Self {
                let source = ::std::io::Error::from_raw_os_error(errno);
                Self::Kernel { request, source }
            }

            fn malformed(what: ::std::string::String) -> Self {
                Self::Malformed(what)
            }
        }
    };
}

/// A netlink socket of one protocol, in the network namespace of the thread that opened it.
pub struct Connection {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Connection {
    /// Opens a socket of netlink `protocol` (`NETLINK_NETFILTER`, `NETLINK_GENERIC`,
    /// `NETLINK_ROUTE`, ...), connected to the kernel.
    pub fn open<E: ClientError>(protocol: isize) -> Result<Self, E> {
        let mut socket = Socket::new(protocol).map_err(E::socket)?;
        socket.bind_auto().map_err(E::socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(E::socket)?;
        Ok(Connection {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends `request` (called `name` in errors) with `flags` and hands each message of the
    /// answer to `on_message`, until the answer ends: `NLMSG_DONE` for a dump, the
    /// acknowledgement otherwise (so send `NLM_F_ACK` with every request that is not a
    /// dump). The first error, the kernel's or `on_message`'s, ends the request.
    pub fn request<I, O, E>(
        &mut self,
        name: &'static str,
        request: I,
        flags: u16,
        mut on_message: impl FnMut(O) -> Result<(), E>,
    ) -> Result<(), E>
    where
        I: NetlinkSerializable,
        O: NetlinkDeserializable,
        E: ClientError,
    {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode(request, flags, self.seq);
        self.socket.send(&bytes, 0).map_err(E::socket)?;
        loop {
            self.buf.clear();
            // MSG_TRUNC makes recv report the datagram's full length, so that a datagram
            // larger than the buffer is an error rather than a silently cut message.
            let len = self
                .socket
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(E::socket)?;
            if len > self.buf.len() {
                return Err(E::malformed(format!(
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
pub fn encode<I: NetlinkSerializable>(request: I, flags: u16, seq: u32) -> Vec<u8> {
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
/// request `seq` (called `request` in errors). Messages of other sequence numbers are
/// skipped. What [`Connection::request`] does with each datagram, public so that clients
/// can test their message types on captured answers without a kernel.
pub fn datagram_ends<O, E>(
    mut bytes: &[u8],
    seq: u32,
    request: &'static str,
    on_message: &mut impl FnMut(O) -> Result<(), E>,
) -> Result<bool, E>
where
    O: NetlinkDeserializable,
    E: ClientError,
{
    while !bytes.is_empty() {
        let message =
            NetlinkMessage::<O>::deserialize(bytes).map_err(|e| E::malformed(e.to_string()))?;
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
                return Err(E::kernel(request, done.code.saturating_neg()))
            }
            NetlinkPayload::Error(error) if error.code.is_some() => {
                return Err(E::kernel(request, error.raw_code().saturating_neg()))
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
pub enum Attr {
    /// An attribute of kind `.0` whose value is the bytes `.1`, as they are.
    Leaf(u16, Vec<u8>),
    /// An attribute of kind `.0` whose value is the attributes `.1`.
    Nest(u16, Vec<Attr>),
}

impl Attr {
    /// A native-endian `u16` attribute.
    pub fn u16(kind: u16, value: u16) -> Self {
        Attr::Leaf(kind, value.to_ne_bytes().to_vec())
    }

    /// A native-endian `u32` attribute.
    pub fn u32(kind: u16, value: u32) -> Self {
        Attr::Leaf(kind, value.to_ne_bytes().to_vec())
    }

    /// A NUL-terminated string attribute.
    pub fn string(kind: u16, value: &str) -> Self {
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

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

    use super::*;

    /// A message of any type other than netlink's own, kept as its type and payload.
    #[derive(Debug, PartialEq, Eq)]
    struct Raw(u16, Vec<u8>);

    impl NetlinkDeserializable for Raw {
        type Error = DecodeError;

        fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
            // Like a family's header: a message needs at least 4 bytes of payload.
            if payload.len() < 4 {
                return Err("payload shorter than 4 bytes".into());
            }
            Ok(Raw(header.message_type, payload.to_vec()))
        }
    }

    impl NetlinkSerializable for Raw {
        fn message_type(&self) -> u16 {
            self.0
        }

        fn buffer_len(&self) -> usize {
            self.1.len()
        }

        fn serialize(&self, buffer: &mut [u8]) {
            buffer.copy_from_slice(&self.1);
        }
    }

    /// A message of `kind` with sequence number `seq`, `flags` and `payload`, as the kernel
    /// sends it (the length counts the payload, not its padding).
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len() as u32;
        let mut bytes = [
            &len.to_le_bytes()[..],
            &kind.to_le_bytes(),
            &flags.to_le_bytes(),
            &seq.to_le_bytes(),
            &[0; 4],
            payload,
        ]
        .concat();
        bytes.resize((bytes.len() + 3) & !3, 0);
        bytes
    }

    /// An entry of type 0x0101 of request `seq`, with a 6-byte payload (so 2 of padding).
    fn entry(seq: u32, id: u8) -> Vec<u8> {
        message(0x0101, 2, seq, &[id, 0, 0, 0, 0xaa, 0xbb])
    }

    /// `NLMSG_DONE` of request 7 with `code`.
    fn done(code: i32) -> Vec<u8> {
        message(3, 2, 7, &code.to_le_bytes())
    }

    /// An `NLMSG_ERROR` answer to request 7 with `code` (0: an acknowledgement), quoting
    /// the request's header.
    fn nlmsg_error(code: i32) -> Vec<u8> {
        let request = message(0x0102, 5, 7, &[]);
        message(2, 0x100, 7, &[&code.to_le_bytes()[..], &request].concat())
    }

    /// A test client's error type.
    #[derive(Debug, PartialEq, Eq)]
    enum Failure {
        Socket(Option<i32>),
        Kernel(&'static str, i32),
        Malformed(String),
        Handler,
    }

    impl ClientError for Failure {
        fn socket(error: std::io::Error) -> Self {
            Failure::Socket(error.raw_os_error())
        }

        fn kernel(request: &'static str, errno: i32) -> Self {
            Failure::Kernel(request, errno)
        }

        fn malformed(what: String) -> Self {
            Failure::Malformed(what)
        }
    }

    /// Runs [`datagram_ends`] on `datagram` for request 7, with the first payload byte of
    /// each entry it saw.
    fn read(datagram: &[u8]) -> (Result<bool, Failure>, Vec<u8>) {
        let mut ids = Vec::new();
        let result = datagram_ends(datagram, 7, "dump", &mut |Raw(_, payload)| {
            ids.push(payload[0]);
            Ok(())
        });
        (result, ids)
    }

    #[test]
    fn a_dump_ends_with_nlmsg_done() {
        let (ends, ids) = read(&[entry(7, 1), entry(7, 2)].concat());
        assert_eq!(ends, Ok(false), "more to come");
        assert_eq!(ids, [1, 2]);
        assert_eq!(read(&done(0)).0, Ok(true));

        let (ends, ids) = read(&[entry(7, 1), done(0)].concat());
        assert_eq!(ends, Ok(true), "both in one datagram");
        assert_eq!(ids, [1]);

        // Zero-sized NLMSG_DONE, which the kernel allows.
        assert_eq!(read(&message(3, 2, 7, &[])).0, Ok(true));
    }

    #[test]
    fn the_last_message_may_lack_its_padding() {
        let unpadded = [entry(7, 1), entry(7, 2)].concat();
        let (ends, ids) = read(&unpadded[..unpadded.len() - 2]);
        assert_eq!(ends, Ok(false));
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn answers_to_other_requests_are_skipped() {
        let (ends, ids) = read(&[entry(6, 1), entry(7, 2)].concat());
        assert_eq!(ends, Ok(false));
        assert_eq!(ids, [2]);
        let mut other_done = done(-libc::EINTR);
        other_done[8] = 6;
        assert_eq!(read(&other_done).0, Ok(false), "another request's end");
    }

    #[test]
    fn acknowledgements_end_and_errors_fail_a_request() {
        let (ends, ids) = read(&[entry(7, 1), nlmsg_error(0)].concat());
        assert_eq!(ends, Ok(true));
        assert_eq!(ids, [1]);
        let refused = read(&nlmsg_error(-libc::ENOENT)).0;
        assert_eq!(refused, Err(Failure::Kernel("dump", libc::ENOENT)));
        let interrupted = read(&done(-libc::EINTR)).0;
        assert_eq!(interrupted, Err(Failure::Kernel("dump", libc::EINTR)));
    }

    #[test]
    fn a_failing_handler_stops_the_answer() {
        let mut seen = 0;
        let datagram = [entry(7, 1), entry(7, 2), done(0)].concat();
        let result = datagram_ends(&datagram, 7, "dump", &mut |_: Raw| {
            seen += 1;
            Err(Failure::Handler)
        });
        assert_eq!((result, seen), (Err(Failure::Handler), 1));
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        let malformed = |result| matches!(result, Err(Failure::Malformed(_)));
        assert!(malformed(read(&[1, 2, 3]).0));
        let whole = entry(7, 1);
        assert!(malformed(read(&whole[..whole.len() - 8]).0), "truncated");
        // The message type's own parser refuses it, and says why.
        let (result, ids) = read(&message(0x0101, 2, 7, &[1, 1]));
        assert!(matches!(&result, Err(Failure::Malformed(m)) if m.contains("4 bytes")));
        assert_eq!(ids, []);
        // An NLMSG_ERROR too short for its code.
        assert!(malformed(read(&message(2, 0, 7, &[0, 0])).0));
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let datagram = [entry(7, 1), nlmsg_error(0)].concat();
        for at in 0..datagram.len() {
            for value in [0x00, 0x03, 0xff] {
                let mut corrupt = datagram.clone();
                corrupt[at] = value;
                // Any result but a panic will do.
                let _ = read(&corrupt);
            }
        }
        assert_eq!(read(&[]).0, Ok(false), "nothing in it");
    }

    #[test]
    fn requests_are_encoded_with_their_flags_and_sequence_number() {
        let request = Raw(0x0102, vec![2, 0, 0, 9]);
        let bytes = encode(request, NLM_F_REQUEST | NLM_F_ACK, 9);
        #[rustfmt::skip]
        let expected: [u8; 20] = [
            20, 0, 0, 0, // length
            0x02, 0x01, // type
            0x05, 0x00, // NLM_F_REQUEST | NLM_F_ACK
            9, 0, 0, 0, // sequence number
            0, 0, 0, 0, // port id: the kernel fills it in
            2, 0, 0, 9, // payload
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn attributes_are_emitted_padded_and_nests_flagged() {
        let attrs = vec![
            Attr::u16(1, 0x0102),
            Attr::Nest(
                2,
                vec![Attr::string(3, "wrr"), Attr::Leaf(4, vec![10, 0, 0, 1])],
            ),
            Attr::u32(5, 7),
        ];
        let mut bytes = vec![0xff; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut bytes);
        let (one, two) = (0x0102u16.to_ne_bytes(), 7u32.to_ne_bytes());
        #[rustfmt::skip]
        let expected = [
            &[6, 0, 1, 0, one[0], one[1], 0, 0][..], // u16, padding zeroed
            &[4 + 8 + 8, 0, 2, 0x80], // nest: NLA_F_NESTED
            &[8, 0, 3, 0, b'w', b'r', b'r', 0], // NUL-terminated
            &[8, 0, 4, 0, 10, 0, 0, 1],
            &[8, 0, 5, 0, two[0], two[1], two[2], two[3]],
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(attrs[1].kind(), 2);
        assert!(attrs[1].is_nested() && !attrs[0].is_nested());
    }

    #[test]
    fn requests_go_to_the_kernel_and_answers_come_back() {
        // An unprivileged rtnetlink dump of this namespace's links: at least `lo`, whose
        // index is 1, then NLMSG_DONE.
        const RTM_GETLINK: u16 = 18;
        const RTM_NEWLINK: u16 = 16;
        let mut conn = Connection::open::<Failure>(netlink_sys::protocols::NETLINK_ROUTE).unwrap();
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let request = Raw(RTM_GETLINK, vec![0; 16]);
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut links = Vec::new();
        conn.request("link dump", request, flags, |Raw(kind, payload)| {
            assert_eq!(kind, RTM_NEWLINK);
            links.push(i32::from_ne_bytes(payload[4..8].try_into().unwrap()));
            Ok::<(), Failure>(())
        })
        .unwrap();
        assert!(links.contains(&1), "{links:?}");

        // A second request on the same socket, one the kernel refuses: a link with index
        // -1 does not exist.
        let mut missing = vec![0; 16];
        missing[4..8].copy_from_slice(&(-1i32).to_ne_bytes());
        let request = Raw(RTM_GETLINK, missing);
        let result = conn.request("link get", request, NLM_F_REQUEST | NLM_F_ACK, |_: Raw| {
            Ok(())
        });
        assert!(
            matches!(result, Err(Failure::Kernel("link get", _))),
            "{result:?}"
        );
    }
}
