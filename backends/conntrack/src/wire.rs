//! The ctnetlink wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
//!
//! A ctnetlink message is an `nfgenmsg` (family, version, resource id) followed by netlink
//! attributes. Tuples are nests of nests; addresses and ports are big-endian. Encoding and
//! parsing are pure functions of bytes, so they are tested without a kernel.

use std::net::IpAddr;

use kube_proxy_model::{IpFamily, Protocol};
use kube_proxy_netlink::Attr;
use netlink_packet_core::{
    parse_u16_be, parse_u8, DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader,
    NetlinkSerializable, NlasIterator,
};

use crate::Flow;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;
/// `struct nfgenmsg`: family, version and a big-endian resource id.
const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// The netlink message type of ctnetlink message `msg`.
const fn message_type(msg: u16) -> u16 {
    NFNL_SUBSYS_CTNETLINK << 8 | msg
}

/// A ctnetlink request: what to do, in which address family, with which attributes.
#[derive(Debug)]
pub(crate) struct Request {
    msg: u16,
    family: IpFamily,
    attrs: Vec<Attr>,
}

impl Request {
    /// Lists the entries of `family` (sent with `NLM_F_DUMP`; the kernel filters by the
    /// nfgenmsg family).
    pub(crate) fn dump(family: IpFamily) -> Self {
        Request {
            msg: IPCTNL_MSG_CT_GET,
            family,
            attrs: Vec::new(),
        }
    }

    /// Deletes the entry whose original tuple is `flow`'s.
    pub(crate) fn delete(flow: &Flow) -> Self {
        Request {
            msg: IPCTNL_MSG_CT_DELETE,
            family: flow.family,
            attrs: vec![orig_tuple(flow)],
        }
    }

    /// What the request is called in errors.
    pub(crate) fn name(&self) -> &'static str {
        match self.msg {
            IPCTNL_MSG_CT_DELETE => "delete",
            _ => "dump",
        }
    }
}

impl NetlinkSerializable for Request {
    fn message_type(&self) -> u16 {
        message_type(self.msg)
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (header, attrs) = buffer.split_at_mut(NFGENMSG_LEN);
        // Resource id 0, big-endian like every nfnetlink field.
        header.copy_from_slice(&[address_family(self.family), NFNETLINK_V0, 0, 0]);
        self.attrs.as_slice().emit(attrs);
    }
}

fn address_family(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => libc::AF_INET as u8,
        IpFamily::V6 => libc::AF_INET6 as u8,
    }
}

fn ip_family(af: u8) -> Result<IpFamily, DecodeError> {
    match i32::from(af) {
        libc::AF_INET => Ok(IpFamily::V4),
        libc::AF_INET6 => Ok(IpFamily::V6),
        _ => Err(format!("unexpected address family {af}").into()),
    }
}

fn protocol_number(proto: Protocol) -> u8 {
    (match proto {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
        Protocol::Sctp => libc::IPPROTO_SCTP,
    }) as u8
}

/// The protocol of IP protocol number `num`, if it is one with ports that we model.
fn protocol(num: u8) -> Option<Protocol> {
    match i32::from(num) {
        libc::IPPROTO_TCP => Some(Protocol::Tcp),
        libc::IPPROTO_UDP => Some(Protocol::Udp),
        libc::IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// `CTA_TUPLE_ORIG` of `flow`: what identifies an entry to the kernel.
fn orig_tuple(flow: &Flow) -> Attr {
    let ips = vec![
        ip_attr(CTA_IP_V4_SRC, CTA_IP_V6_SRC, flow.orig_src),
        ip_attr(CTA_IP_V4_DST, CTA_IP_V6_DST, flow.orig_dst),
    ];
    let proto = vec![
        Attr::Leaf(CTA_PROTO_NUM, vec![protocol_number(flow.proto)]),
        Attr::Leaf(CTA_PROTO_SRC_PORT, flow.orig_sport.to_be_bytes().to_vec()),
        Attr::Leaf(CTA_PROTO_DST_PORT, flow.orig_dport.to_be_bytes().to_vec()),
    ];
    Attr::Nest(
        CTA_TUPLE_ORIG,
        vec![
            Attr::Nest(CTA_TUPLE_IP, ips),
            Attr::Nest(CTA_TUPLE_PROTO, proto),
        ],
    )
}

fn ip_attr(v4_kind: u16, v6_kind: u16, ip: IpAddr) -> Attr {
    match ip {
        IpAddr::V4(ip) => Attr::Leaf(v4_kind, ip.octets().to_vec()),
        IpAddr::V6(ip) => Attr::Leaf(v6_kind, ip.octets().to_vec()),
    }
}

/// One entry of a dump: a flow, or `None` for protocols without ports (ICMP, GRE, ...).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry(pub(crate) Option<Flow>);

impl NetlinkDeserializable for Entry {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        // Dumps answer with IPCTNL_MSG_CT_NEW messages, one per entry.
        if header.message_type != message_type(IPCTNL_MSG_CT_NEW) {
            return Err(format!("unexpected message type {:#06x}", header.message_type).into());
        }
        parse_entry(payload).map(Entry)
    }
}

/// Parses the payload (nfgenmsg and attributes) of one conntrack entry.
fn parse_entry(payload: &[u8]) -> Result<Option<Flow>, DecodeError> {
    let [af, _version, _, _, attrs @ ..] = payload else {
        return Err("message shorter than its nfgenmsg".into());
    };
    let family = ip_family(*af)?;
    let (mut orig, mut reply) = (None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        match nla.kind() {
            CTA_TUPLE_ORIG => orig = Some(Tuple::parse(nla.value())?),
            CTA_TUPLE_REPLY => reply = Some(Tuple::parse(nla.value())?),
            // Status, timeout, counters, id, ...: not needed to judge or delete an entry.
            _ => {}
        }
    }
    let orig = required(orig, "CTA_TUPLE_ORIG")?;
    let reply = required(reply, "CTA_TUPLE_REPLY")?;
    let Some(proto) = protocol(required(orig.proto, "CTA_PROTO_NUM")?) else {
        return Ok(None);
    };
    Ok(Some(Flow {
        family,
        proto,
        orig_src: required(orig.src, "original source")?,
        orig_dst: required(orig.dst, "original destination")?,
        orig_sport: required(orig.sport, "original source port")?,
        orig_dport: required(orig.dport, "original destination port")?,
        reply_src: required(reply.src, "reply source")?,
        reply_sport: required(reply.sport, "reply source port")?,
    }))
}

fn required<T>(value: Option<T>, what: &str) -> Result<T, DecodeError> {
    value.ok_or_else(|| format!("conntrack entry without {what}").into())
}

/// The fields of a `CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY` nest that the kernel sent.
#[derive(Debug, Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

impl Tuple {
    fn parse(nest: &[u8]) -> Result<Self, DecodeError> {
        let mut tuple = Tuple::default();
        for nla in NlasIterator::new(nest) {
            let nla = nla?;
            match nla.kind() {
                CTA_TUPLE_IP => tuple.parse_ips(nla.value())?,
                CTA_TUPLE_PROTO => tuple.parse_proto(nla.value())?,
                // CTA_TUPLE_ZONE: deletes without a zone address zone 0, as the tool's do.
                _ => {}
            }
        }
        Ok(tuple)
    }

    fn parse_ips(&mut self, nest: &[u8]) -> Result<(), DecodeError> {
        for nla in NlasIterator::new(nest) {
            let nla = nla?;
            let value = nla.value();
            match nla.kind() {
                CTA_IP_V4_SRC => self.src = Some(ipv4(value)?),
                CTA_IP_V4_DST => self.dst = Some(ipv4(value)?),
                CTA_IP_V6_SRC => self.src = Some(ipv6(value)?),
                CTA_IP_V6_DST => self.dst = Some(ipv6(value)?),
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_proto(&mut self, nest: &[u8]) -> Result<(), DecodeError> {
        for nla in NlasIterator::new(nest) {
            let nla = nla?;
            let value = nla.value();
            match nla.kind() {
                CTA_PROTO_NUM => self.proto = Some(parse_u8(value)?),
                CTA_PROTO_SRC_PORT => self.sport = Some(parse_u16_be(value)?),
                CTA_PROTO_DST_PORT => self.dport = Some(parse_u16_be(value)?),
                // ICMP ids, types and codes.
                _ => {}
            }
        }
        Ok(())
    }
}

fn ipv4(value: &[u8]) -> Result<IpAddr, DecodeError> {
    <[u8; 4]>::try_from(value)
        .map(IpAddr::from)
        .map_err(|_| DecodeError::invalid_ip_address(value.len()))
}

fn ipv6(value: &[u8]) -> Result<IpAddr, DecodeError> {
    <[u8; 16]>::try_from(value)
        .map(IpAddr::from)
        .map_err(|_| DecodeError::invalid_ip_address(value.len()))
}

#[cfg(test)]
mod tests {
    use kube_proxy_netlink::encode;
    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    };

    use super::*;
    use crate::captured;

    const HEADER_LEN: usize = 16;
    /// Where the captured IPv4 entry's original tuple starts and ends, and where its reply
    /// tuple ends, in its payload.
    const ORIG_V4: std::ops::Range<usize> = 4..56;
    const REPLY_V4_END: usize = 108;
    const ORIG_V6: std::ops::Range<usize> = 4..80;

    fn payload(hex: &str) -> Vec<u8> {
        captured::bytes(hex)[HEADER_LEN..].to_vec()
    }

    fn flow(family: IpFamily, vip: &str, sport: u16, pod: &str) -> Flow {
        let (vip, pod): (IpAddr, IpAddr) = (vip.parse().unwrap(), pod.parse().unwrap());
        Flow {
            family,
            proto: Protocol::Udp,
            orig_src: vip,
            orig_dst: vip,
            orig_sport: sport,
            orig_dport: 53,
            reply_src: pod,
            reply_sport: 5353,
        }
    }

    fn captured_v4() -> Flow {
        flow(IpFamily::V4, "10.96.0.10", 40000, "10.244.1.2")
    }

    fn captured_v6() -> Flow {
        flow(IpFamily::V6, "fd00::10", 40001, "fd00:244::2")
    }

    fn parse(datagram: &[u8]) -> Result<Option<Flow>, DecodeError> {
        match NetlinkMessage::<Entry>::deserialize(datagram)?.payload {
            NetlinkPayload::InnerMessage(Entry(flow)) => Ok(flow),
            other => panic!("not an entry: {other:?}"),
        }
    }

    #[test]
    fn dump_request_is_a_bare_nfgenmsg_of_the_family() {
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        #[rustfmt::skip]
        let expected: [u8; 20] = [
            20, 0, 0, 0, // length
            0x01, 0x01, // IPCTNL_MSG_CT_GET of NFNL_SUBSYS_CTNETLINK
            0x01, 0x03, // NLM_F_REQUEST | NLM_F_DUMP
            7, 0, 0, 0, // sequence number
            0, 0, 0, 0, // port id: the kernel fills it in
            2, 0, 0, 0, // nfgenmsg: AF_INET, NFNETLINK_V0, resource id 0
        ];
        assert_eq!(encode(Request::dump(IpFamily::V4), flags, 7), expected);
        let v6 = encode(Request::dump(IpFamily::V6), flags, 7);
        assert_eq!(v6[HEADER_LEN..], [10, 0, 0, 0], "AF_INET6");
    }

    #[test]
    fn delete_request_carries_the_original_tuple_as_the_kernel_sends_it() {
        for (flow, hex, orig) in [
            (captured_v4(), captured::IPV4_ENTRY, ORIG_V4),
            (captured_v6(), captured::IPV6_ENTRY, ORIG_V6),
        ] {
            let bytes = encode(Request::delete(&flow), NLM_F_REQUEST | NLM_F_ACK, 9);
            let family = address_family(flow.family);
            #[rustfmt::skip]
            let header = [
                bytes.len() as u8, 0, 0, 0,
                0x02, 0x01, // IPCTNL_MSG_CT_DELETE of NFNL_SUBSYS_CTNETLINK
                0x05, 0x00, // NLM_F_REQUEST | NLM_F_ACK
                9, 0, 0, 0,
                0, 0, 0, 0,
                family, 0, 0, 0,
            ];
            assert_eq!(bytes[..HEADER_LEN + 4], header, "{flow:?}");
            // Byte for byte what the kernel itself sends for that entry: nests flagged
            // NLA_F_NESTED, big-endian addresses and ports, padding zeroed.
            assert_eq!(bytes[HEADER_LEN + 4..], payload(hex)[orig], "{flow:?}");
        }
    }

    #[test]
    fn delete_request_of_a_sctp_flow_uses_protocol_132() {
        let mut flow = captured_v4();
        flow.proto = Protocol::Sctp;
        let bytes = encode(Request::delete(&flow), NLM_F_REQUEST | NLM_F_ACK, 1);
        // nfgenmsg, CTA_TUPLE_ORIG and CTA_TUPLE_IP headers, two addresses, CTA_TUPLE_PROTO
        // header, then CTA_PROTO_NUM.
        let num = HEADER_LEN + 4 + 4 + 4 + 2 * 8 + 4;
        assert_eq!(bytes[num..num + 5], [5, 0, 1, 0, 132]);
    }

    #[test]
    fn parses_captured_entries_of_both_families() {
        let v4 = parse(&captured::bytes(captured::IPV4_ENTRY)).unwrap();
        assert_eq!(v4, Some(captured_v4()));
        let v6 = parse(&captured::bytes(captured::IPV6_ENTRY)).unwrap();
        assert_eq!(v6, Some(captured_v6()));
    }

    #[test]
    fn entries_of_protocols_without_ports_are_skipped() {
        let mut icmp = payload(captured::IPV4_ENTRY);
        // CTA_PROTO_NUM of both tuples: UDP (17) becomes ICMP (1).
        for at in [ORIG_V4.start + 32, REPLY_V4_END - 20] {
            assert_eq!(icmp[at], 17);
            icmp[at] = 1;
        }
        assert_eq!(parse_entry(&icmp).unwrap(), None);
    }

    #[test]
    fn truncated_entries_are_errors() {
        let payload = payload(captured::IPV4_ENTRY);
        for len in 0..REPLY_V4_END {
            let result = parse_entry(&payload[..len]);
            assert!(result.is_err(), "{len} bytes parsed as {result:?}");
        }
        // The attributes after the tuples are not needed.
        let tuples_only = parse_entry(&payload[..REPLY_V4_END]).unwrap();
        assert_eq!(tuples_only, Some(captured_v4()));
    }

    #[test]
    fn missing_or_malformed_fields_are_errors_naming_them() {
        let payload = payload(captured::IPV4_ENTRY);
        let orig_only = [&payload[..ORIG_V4.end], &payload[REPLY_V4_END..]].concat();
        let err = parse_entry(&orig_only).unwrap_err().to_string();
        assert!(err.contains("CTA_TUPLE_REPLY"), "{err}");

        // A 5-byte IPv4 source: the length of CTA_IP_V4_SRC grows into its neighbour.
        let mut long_address = payload.clone();
        assert_eq!(long_address[ORIG_V4.start + 8], 8);
        long_address[ORIG_V4.start + 8] = 9;
        assert!(parse_entry(&long_address).is_err());

        let mut unknown_family = payload;
        unknown_family[0] = 7;
        let err = parse_entry(&unknown_family).unwrap_err().to_string();
        assert!(err.contains("address family 7"), "{err}");
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let datagram = captured::bytes(captured::IPV4_ENTRY);
        for at in 0..datagram.len() {
            for value in [0x00, 0x03, 0xff] {
                let mut corrupt = datagram.clone();
                corrupt[at] = value;
                // Any result but a panic will do; most are errors.
                let _ = NetlinkMessage::<Entry>::deserialize(&corrupt);
            }
        }
        let err = parse(&datagram[..40]).unwrap_err().to_string();
        assert!(err.contains("length"), "{err}");
    }

    #[test]
    fn other_message_types_are_errors() {
        let mut datagram = captured::bytes(captured::IPV4_ENTRY);
        datagram[4] = 0x02; // IPCTNL_MSG_CT_DELETE
        let err = parse(&datagram).unwrap_err().to_string();
        assert!(err.contains("0x0102"), "{err}");
    }
}
