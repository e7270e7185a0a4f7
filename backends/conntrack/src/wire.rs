//! The ctnetlink wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
//!
//! A ctnetlink message is an `nfgenmsg` (family, version, resource id) followed by netlink
//! attributes. Tuples are nests of nests; addresses and ports are big-endian. Encoding and
//! parsing are pure functions of bytes, so they are tested without a kernel.

use std::net::IpAddr;

use kube_proxy_model::{IpFamily, Protocol};
use netlink_packet_core::{
    parse_u16_be, parse_u8, DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader,
    NetlinkSerializable, Nla, NlasIterator,
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

/// A netlink attribute to send: raw bytes, or a nest of attributes (sent with
/// `NLA_F_NESTED`, which the kernel's strict validation expects on nests).
#[derive(Debug)]
enum Attr {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Attr>),
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
