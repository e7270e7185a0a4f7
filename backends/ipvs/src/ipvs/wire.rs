//! The generic netlink wire format of IPVS (include/uapi/linux/ip_vs.h, family "IPVS",
//! version 1) and of the nlctrl lookup that finds the family's id.
//!
//! A generic netlink message is a `genlmsghdr` (command, version, reserved) followed by
//! attributes. IPVS nests a service's attributes in `IPVS_CMD_ATTR_SERVICE` and a real
//! server's in `IPVS_CMD_ATTR_DEST`. Numbers are native-endian except ports and IPv4
//! netmasks, which are big-endian. Encoding and parsing are pure functions of bytes, so
//! they are tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use kube_proxy_model::{IpFamily, Protocol};
use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};

use super::types::{
    max_prefix, Destination, FwdMethod, RealServer, RealServerStats, Scheduler, ServiceFlags,
    ServiceKey, Timeouts, VirtualServer,
};
use kube_proxy_netlink::Attr;

use crate::netlink::{attrs, fixed, required, u16_value, u32_value};
use crate::Error;

/// The generic netlink family name and version of IPVS.
pub(crate) const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;

/// nlctrl, the generic netlink family that names the others.
pub(crate) const GENL_ID_CTRL: u16 = 0x10;
const CTRL_VERSION: u8 = 2;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// `struct genlmsghdr`: command, version, two reserved bytes.
const GENL_HDRLEN: usize = 4;

pub(crate) const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub(crate) const IPVS_CMD_SET_SERVICE: u8 = 2;
pub(crate) const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub(crate) const IPVS_CMD_GET_SERVICE: u8 = 4;
pub(crate) const IPVS_CMD_NEW_DEST: u8 = 5;
pub(crate) const IPVS_CMD_SET_DEST: u8 = 6;
pub(crate) const IPVS_CMD_DEL_DEST: u8 = 7;
pub(crate) const IPVS_CMD_GET_DEST: u8 = 8;
pub(crate) const IPVS_CMD_SET_CONFIG: u8 = 12;
pub(crate) const IPVS_CMD_GET_CONFIG: u8 = 13;
pub(crate) const IPVS_CMD_FLUSH: u8 = 17;

const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const IPVS_CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// A generic netlink request to family `family` (a netlink message type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    family: u16,
    version: u8,
    cmd: u8,
    attrs: Vec<Attr>,
}

impl Request {
    /// Asks nlctrl for the id of family `name`.
    pub(crate) fn family_id(name: &str) -> Self {
        Request {
            family: GENL_ID_CTRL,
            version: CTRL_VERSION,
            cmd: CTRL_CMD_GETFAMILY,
            attrs: vec![Attr::string(CTRL_ATTR_FAMILY_NAME, name)],
        }
    }

    /// IPVS command `cmd` with `attrs`, to IPVS's family id `family`.
    pub(crate) fn ipvs(family: u16, cmd: u8, attrs: Vec<Attr>) -> Self {
        Request {
            family,
            version: IPVS_GENL_VERSION,
            cmd,
            attrs,
        }
    }
}

impl NetlinkSerializable for Request {
    fn message_type(&self) -> u16 {
        self.family
    }

    fn buffer_len(&self) -> usize {
        GENL_HDRLEN + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (header, attrs) = buffer.split_at_mut(GENL_HDRLEN);
        header.copy_from_slice(&[self.cmd, self.version, 0, 0]);
        self.attrs.as_slice().emit(attrs);
    }
}

/// One message of an answer: its command and its (not yet parsed) attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) cmd: u8,
    pub(crate) attrs: Vec<u8>,
}

impl NetlinkDeserializable for Answer {
    type Error = DecodeError;

    fn deserialize(_header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let [cmd, _version, _, _, attrs @ ..] = payload else {
            return Err("message shorter than its genlmsghdr".into());
        };
        Ok(Answer {
            cmd: *cmd,
            attrs: attrs.to_vec(),
        })
    }
}

impl Answer {
    /// The attributes of this answer, checking it is command `cmd`.
    fn expect(&self, cmd: u8) -> Result<&[u8], Error> {
        if self.cmd != cmd {
            return Err(Error::Malformed(format!(
                "generic netlink command {} where {cmd} was expected",
                self.cmd
            )));
        }
        Ok(&self.attrs)
    }

    /// The family id in nlctrl's answer to [`Request::family_id`].
    pub(crate) fn family_id(&self) -> Result<u16, Error> {
        let mut id = None;
        for attr in attrs(self.expect(CTRL_CMD_NEWFAMILY)?) {
            if let (CTRL_ATTR_FAMILY_ID, value) = attr? {
                id = Some(u16_value(value, "CTRL_ATTR_FAMILY_ID")?);
            }
        }
        required(id, "CTRL_ATTR_FAMILY_ID")
    }

    /// The virtual service in one message of a service dump, or `None` for a service we
    /// do not model (a firewall-mark service, which kube-proxy never creates).
    pub(crate) fn service(&self) -> Result<Option<VirtualServer>, Error> {
        let nest = self.nest(IPVS_CMD_NEW_SERVICE, IPVS_CMD_ATTR_SERVICE, "service")?;
        parse_service(nest)
    }

    /// The real server in one message of a destination dump of a service of `family`.
    pub(crate) fn destination(&self, family: IpFamily) -> Result<Destination, Error> {
        let nest = self.nest(IPVS_CMD_NEW_DEST, IPVS_CMD_ATTR_DEST, "destination")?;
        parse_destination(nest, family)
    }

    /// The timeouts in the answer to `IPVS_CMD_GET_CONFIG`.
    pub(crate) fn timeouts(&self) -> Result<Timeouts, Error> {
        let (mut tcp, mut tcp_fin, mut udp) = (None, None, None);
        for attr in attrs(self.expect(IPVS_CMD_SET_CONFIG)?) {
            let (kind, value) = attr?;
            let slot = match kind {
                IPVS_CMD_ATTR_TIMEOUT_TCP => &mut tcp,
                IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => &mut tcp_fin,
                IPVS_CMD_ATTR_TIMEOUT_UDP => &mut udp,
                _ => continue,
            };
            *slot = Some(Duration::from_secs(u32_value(value, "timeout")?.into()));
        }
        Ok(Timeouts {
            tcp: required(tcp, "IPVS_CMD_ATTR_TIMEOUT_TCP")?,
            tcp_fin: required(tcp_fin, "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN")?,
            udp: required(udp, "IPVS_CMD_ATTR_TIMEOUT_UDP")?,
        })
    }

    /// The value of the one `kind` nest of an answer with command `cmd`.
    fn nest(&self, cmd: u8, kind: u16, what: &str) -> Result<&[u8], Error> {
        let mut nest = None;
        for attr in attrs(self.expect(cmd)?) {
            let (k, value) = attr?;
            if k == kind {
                nest = Some(value);
            }
        }
        required(nest, what)
    }
}

/// The nest that names a service (`IPVS_CMD_ATTR_SERVICE` without options): enough to
/// delete it or to address its real servers.
pub(crate) fn service_key(key: &ServiceKey) -> Attr {
    Attr::Nest(IPVS_CMD_ATTR_SERVICE, key_attrs(key))
}

/// The nest of a whole service, to add or change it.
pub(crate) fn service(svc: &VirtualServer) -> Result<Attr, Error> {
    let family = IpFamily::of(&svc.addr);
    if svc.netmask > max_prefix(family) {
        return Err(Error::Invalid(format!(
            "netmask /{} for {}",
            svc.netmask,
            svc.key()
        )));
    }
    // ServiceFlags cannot hold the hashed bit, so it is never sent.
    let flags = svc.flags.bits();
    let mut attrs = key_attrs(&svc.key());
    attrs.extend([
        Attr::string(IPVS_SVC_ATTR_SCHED_NAME, svc.scheduler.as_str()),
        // struct ip_vs_flags: the flags, then the mask of those to set (all of them).
        Attr::Leaf(
            IPVS_SVC_ATTR_FLAGS,
            [flags.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
        ),
        Attr::u32(IPVS_SVC_ATTR_TIMEOUT, svc.timeout),
        Attr::Leaf(IPVS_SVC_ATTR_NETMASK, netmask_bytes(family, svc.netmask)),
    ]);
    Ok(Attr::Nest(IPVS_CMD_ATTR_SERVICE, attrs))
}

fn key_attrs(key: &ServiceKey) -> Vec<Attr> {
    vec![
        Attr::u16(IPVS_SVC_ATTR_AF, address_family(key.family())),
        Attr::u16(IPVS_SVC_ATTR_PROTOCOL, protocol_number(key.protocol)),
        Attr::Leaf(IPVS_SVC_ATTR_ADDR, ip_bytes(key.addr)),
        Attr::Leaf(IPVS_SVC_ATTR_PORT, key.port.to_be_bytes().to_vec()),
    ]
}

/// The kernel keeps an IPv4 netmask as a big-endian mask, but reads an IPv6 one as a
/// native-endian prefix length (and refuses 0 or more than 128 even without persistence).
fn netmask_bytes(family: IpFamily, prefix: u8) -> Vec<u8> {
    match family {
        IpFamily::V4 => u32::MAX
            .checked_shl(32 - u32::from(prefix))
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec(),
        IpFamily::V6 => u32::from(prefix).to_ne_bytes().to_vec(),
    }
}

fn netmask_prefix(family: IpFamily, bytes: [u8; 4]) -> Result<u8, Error> {
    let prefix = match family {
        IpFamily::V4 => {
            let mask = u32::from_be_bytes(bytes);
            if mask.leading_ones() + mask.trailing_zeros() < 32 {
                return Err(Error::Malformed(format!(
                    "non-contiguous netmask {}",
                    Ipv4Addr::from(mask)
                )));
            }
            mask.leading_ones()
        }
        IpFamily::V6 => u32::from_ne_bytes(bytes),
    };
    u8::try_from(prefix)
        .ok()
        .filter(|p| *p <= max_prefix(family))
        .ok_or_else(|| Error::Malformed(format!("netmask /{prefix}")))
}

/// The nest of a real server: its address and port only, to delete it, or with its
/// options, to add or change it.
pub(crate) fn destination(dest: &RealServer, with_options: bool) -> Result<Attr, Error> {
    let mut attrs = vec![
        Attr::Leaf(IPVS_DEST_ATTR_ADDR, ip_bytes(dest.addr)),
        Attr::Leaf(IPVS_DEST_ATTR_PORT, dest.port.to_be_bytes().to_vec()),
        Attr::u16(
            IPVS_DEST_ATTR_ADDR_FAMILY,
            address_family(IpFamily::of(&dest.addr)),
        ),
    ];
    if with_options {
        // The kernel takes the weight as a C int.
        if i32::try_from(dest.weight).is_err() {
            return Err(Error::Invalid(format!(
                "real server weight {}",
                dest.weight
            )));
        }
        attrs.extend([
            Attr::u32(IPVS_DEST_ATTR_FWD_METHOD, dest.fwd_method.bits()),
            Attr::u32(IPVS_DEST_ATTR_WEIGHT, dest.weight),
            Attr::u32(IPVS_DEST_ATTR_U_THRESH, dest.upper_threshold),
            Attr::u32(IPVS_DEST_ATTR_L_THRESH, dest.lower_threshold),
        ]);
    }
    Ok(Attr::Nest(IPVS_CMD_ATTR_DEST, attrs))
}

/// The attributes of `IPVS_CMD_SET_CONFIG`: only the non-zero timeouts, since the kernel
/// leaves those that are absent as they are.
pub(crate) fn timeouts(timeouts: &Timeouts) -> Result<Vec<Attr>, Error> {
    let all = [
        (IPVS_CMD_ATTR_TIMEOUT_TCP, timeouts.tcp),
        (IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, timeouts.tcp_fin),
        (IPVS_CMD_ATTR_TIMEOUT_UDP, timeouts.udp),
    ];
    let mut attrs = Vec::new();
    for (kind, timeout) in all.into_iter().filter(|(_, t)| !t.is_zero()) {
        // Whole seconds that fit the kernel's int; a sub-second one would read as "unchanged".
        let secs = u32::try_from(timeout.as_secs())
            .ok()
            .filter(|s| *s > 0 && i32::try_from(*s).is_ok() && timeout.subsec_nanos() == 0)
            .ok_or_else(|| Error::Invalid(format!("IPVS timeout {timeout:?}")))?;
        attrs.push(Attr::u32(kind, secs));
    }
    Ok(attrs)
}

/// What a service nest says, field by field.
#[derive(Default)]
struct ServiceAttrs<'a> {
    af: Option<u16>,
    protocol: Option<u16>,
    addr: Option<&'a [u8]>,
    port: Option<u16>,
    fwmark: u32,
    sched: Option<&'a [u8]>,
    flags: Option<u32>,
    timeout: Option<u32>,
    netmask: Option<[u8; 4]>,
}

fn parse_service(nest: &[u8]) -> Result<Option<VirtualServer>, Error> {
    let mut a = ServiceAttrs::default();
    for attr in attrs(nest) {
        let (kind, value) = attr?;
        match kind {
            IPVS_SVC_ATTR_AF => a.af = Some(u16_value(value, "service family")?),
            IPVS_SVC_ATTR_PROTOCOL => a.protocol = Some(u16_value(value, "service protocol")?),
            IPVS_SVC_ATTR_ADDR => a.addr = Some(value),
            IPVS_SVC_ATTR_PORT => a.port = Some(u16::from_be_bytes(fixed(value, "port")?)),
            IPVS_SVC_ATTR_FWMARK => a.fwmark = u32_value(value, "fwmark")?,
            IPVS_SVC_ATTR_SCHED_NAME => a.sched = Some(value),
            // struct ip_vs_flags: the flags come first, then the mask.
            IPVS_SVC_ATTR_FLAGS => {
                let bytes: [u8; 8] = fixed(value, "service flags")?;
                a.flags = Some(u32_value(&bytes[..4], "service flags")?);
            }
            IPVS_SVC_ATTR_TIMEOUT => a.timeout = Some(u32_value(value, "timeout")?),
            IPVS_SVC_ATTR_NETMASK => a.netmask = Some(fixed(value, "netmask")?),
            // Statistics and the persistence engine: not needed to program services.
            _ => {}
        }
    }
    if a.fwmark != 0 {
        return Ok(None);
    }
    let family = ip_family(required(a.af, "IPVS_SVC_ATTR_AF")?)?;
    let protocol = required(a.protocol, "IPVS_SVC_ATTR_PROTOCOL")?;
    let protocol = protocol_of(protocol)
        .ok_or_else(|| Error::Malformed(format!("service protocol {protocol}")))?;
    let sched = required(a.sched, "IPVS_SVC_ATTR_SCHED_NAME")?;
    let sched = std::str::from_utf8(sched.strip_suffix(&[0]).unwrap_or(sched))
        .map_err(|_| Error::Malformed("scheduler name is not UTF-8".into()))?;
    Ok(Some(VirtualServer {
        addr: parse_ip(family, required(a.addr, "IPVS_SVC_ATTR_ADDR")?)?,
        port: required(a.port, "IPVS_SVC_ATTR_PORT")?,
        protocol,
        scheduler: Scheduler::new(sched).map_err(|e| Error::Malformed(e.to_string()))?,
        flags: ServiceFlags::from_bits(required(a.flags, "IPVS_SVC_ATTR_FLAGS")?),
        timeout: required(a.timeout, "IPVS_SVC_ATTR_TIMEOUT")?,
        netmask: netmask_prefix(family, required(a.netmask, "IPVS_SVC_ATTR_NETMASK")?)?,
    }))
}

/// What a destination nest says, field by field.
#[derive(Default)]
struct DestAttrs<'a> {
    addr: Option<&'a [u8]>,
    af: Option<u16>,
    port: Option<u16>,
    fwd: Option<u32>,
    weight: Option<u32>,
    upper: Option<u32>,
    lower: Option<u32>,
    stats: RealServerStats,
}

/// Parses a destination nest; `family` is the service's, for kernels older than
/// `IPVS_DEST_ATTR_ADDR_FAMILY` (3.18).
fn parse_destination(nest: &[u8], family: IpFamily) -> Result<Destination, Error> {
    let mut a = DestAttrs::default();
    for attr in attrs(nest) {
        let (kind, value) = attr?;
        match kind {
            IPVS_DEST_ATTR_ADDR => a.addr = Some(value),
            IPVS_DEST_ATTR_ADDR_FAMILY => a.af = Some(u16_value(value, "real server family")?),
            IPVS_DEST_ATTR_PORT => a.port = Some(u16::from_be_bytes(fixed(value, "port")?)),
            IPVS_DEST_ATTR_FWD_METHOD => a.fwd = Some(u32_value(value, "forwarding method")?),
            IPVS_DEST_ATTR_WEIGHT => a.weight = Some(u32_value(value, "weight")?),
            IPVS_DEST_ATTR_U_THRESH => a.upper = Some(u32_value(value, "upper threshold")?),
            IPVS_DEST_ATTR_L_THRESH => a.lower = Some(u32_value(value, "lower threshold")?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => a.stats.active_conns = u32_value(value, "conns")?,
            IPVS_DEST_ATTR_INACT_CONNS => a.stats.inactive_conns = u32_value(value, "conns")?,
            IPVS_DEST_ATTR_PERSIST_CONNS => a.stats.persistent_conns = u32_value(value, "conns")?,
            // Traffic statistics and tunnel options: not needed to program real servers.
            _ => {}
        }
    }
    let family = a.af.map(ip_family).transpose()?.unwrap_or(family);
    Ok(Destination {
        server: RealServer {
            addr: parse_ip(family, required(a.addr, "IPVS_DEST_ATTR_ADDR")?)?,
            port: required(a.port, "IPVS_DEST_ATTR_PORT")?,
            weight: required(a.weight, "IPVS_DEST_ATTR_WEIGHT")?,
            fwd_method: FwdMethod::from_bits(required(a.fwd, "IPVS_DEST_ATTR_FWD_METHOD")?)?,
            upper_threshold: required(a.upper, "IPVS_DEST_ATTR_U_THRESH")?,
            lower_threshold: required(a.lower, "IPVS_DEST_ATTR_L_THRESH")?,
        },
        stats: a.stats,
    })
}

/// An address as IPVS sends it: `union nf_inet_addr`, 16 bytes of which an IPv4 address
/// uses the first 4. The kernel zero-fills shorter values, so an IPv4 address is sent as 4.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn parse_ip(family: IpFamily, bytes: &[u8]) -> Result<IpAddr, Error> {
    Ok(match family {
        IpFamily::V4 => {
            let octets = bytes
                .get(..4)
                .ok_or_else(|| Error::Malformed(format!("address of {} bytes", bytes.len())))?;
            Ipv4Addr::from(fixed::<4>(octets, "IPv4 address")?).into()
        }
        IpFamily::V6 => Ipv6Addr::from(fixed::<16>(bytes, "IPv6 address")?).into(),
    })
}

fn address_family(family: IpFamily) -> u16 {
    (match family {
        IpFamily::V4 => libc::AF_INET,
        IpFamily::V6 => libc::AF_INET6,
    }) as u16
}

fn ip_family(af: u16) -> Result<IpFamily, Error> {
    match i32::from(af) {
        libc::AF_INET => Ok(IpFamily::V4),
        libc::AF_INET6 => Ok(IpFamily::V6),
        _ => Err(Error::Malformed(format!("address family {af}"))),
    }
}

fn protocol_number(proto: Protocol) -> u16 {
    (match proto {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
        Protocol::Sctp => libc::IPPROTO_SCTP,
    }) as u16
}

fn protocol_of(num: u16) -> Option<Protocol> {
    match i32::from(num) {
        libc::IPPROTO_TCP => Some(Protocol::Tcp),
        libc::IPPROTO_UDP => Some(Protocol::Udp),
        libc::IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_answers::{self as answers, bytes};
    use kube_proxy_netlink::encode;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};

    // Requests with sequence number 1 and NLM_F_REQUEST | NLM_F_ACK to IPVS family 0x23,
    // built byte by byte from the uapi layout (nests flagged NLA_F_NESTED).
    const FAMILY_REQUEST: &str = "\
2000000010000500010000000000000003020000090002004950565300000000";
    const ADD_SERVICE_V4: &str = "\
5c00000023000500010000000000000001010000480001800600010002000000060002000600000008000300\
0a6000010600040001bb000007000600727200000c00070001000000ffffffff08000800302a000008000900\
ffffff00";
    const DELETE_DEST_V6: &str = "\
6c0000002300050001000000000000000701000030000180060001000a000000060002008400000014000300\
fd000000000000000000000000000010060004000f1c00002800028014000100fd0002440000000000000000\
00000002060002000f1c000006000b000a000000";
    const ADD_DEST_V6: &str = "\
8c0000002300050001000000000000000501000030000180060001000a000000060002008400000014000300\
fd000000000000000000000000000010060004000f1c00004800028014000100fd0002440000000000000000\
00000002060002000f1c000006000b000a000000080003000000000008000400030000000800050064000000\
080006000a000000";
    const SET_CONFIG: &str = "\
240000002300050001000000000000000c01000008000400201c0000080006001e000000";

    const FAMILY: u16 = 0x23;

    fn sent(request: Request) -> Vec<u8> {
        encode(request, NLM_F_REQUEST | NLM_F_ACK, 1)
    }

    /// The one message in `hex`, as the socket would hand it over.
    fn answer(hex: &str) -> Answer {
        match NetlinkMessage::<Answer>::deserialize(&bytes(hex))
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(answer) => answer,
            other => panic!("not an answer: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sctp_v6() -> ServiceKey {
        ServiceKey {
            addr: ip("fd00::10"),
            port: 3868,
            protocol: Protocol::Sctp,
        }
    }

    fn dest_v6() -> RealServer {
        RealServer {
            upper_threshold: 100,
            lower_threshold: 10,
            ..RealServer::new(ip("fd00:244::2"), 3868, 3)
        }
    }

    #[test]
    fn the_family_lookup_names_ipvs_and_reads_its_id() {
        assert_eq!(
            sent(Request::family_id(IPVS_GENL_NAME)),
            bytes(FAMILY_REQUEST)
        );
        assert_eq!(answer(answers::FAMILY).family_id().unwrap(), 0x23);
    }

    #[test]
    fn services_are_encoded_as_the_uapi_says() {
        let svc = VirtualServer {
            flags: ServiceFlags::PERSISTENT,
            timeout: 10800,
            netmask: 24,
            ..VirtualServer::new(ip("10.96.0.1"), 443, Protocol::Tcp, Scheduler::default())
        };
        let request = Request::ipvs(FAMILY, IPVS_CMD_NEW_SERVICE, vec![service(&svc).unwrap()]);
        assert_eq!(sent(request), bytes(ADD_SERVICE_V4));
    }

    #[test]
    fn the_hashed_flag_is_dropped_from_kernel_values() {
        let flags = ServiceFlags::from_bits(ServiceFlags::HASHED | 1);
        assert_eq!(flags, ServiceFlags::PERSISTENT);
        assert_eq!(flags.bits(), 1);
    }

    #[test]
    fn netmasks_beyond_the_address_length_are_refused() {
        let mut svc = VirtualServer::new(ip("10.0.0.1"), 80, Protocol::Udp, Scheduler::default());
        svc.netmask = 33;
        assert!(matches!(service(&svc), Err(Error::Invalid(_))));
        svc.addr = ip("fd00::1");
        assert!(service(&svc).is_ok());
    }

    #[test]
    fn real_servers_are_encoded_as_the_uapi_says() {
        let attrs = vec![
            service_key(&sctp_v6()),
            destination(&dest_v6(), true).unwrap(),
        ];
        let add = Request::ipvs(FAMILY, IPVS_CMD_NEW_DEST, attrs);
        assert_eq!(sent(add), bytes(ADD_DEST_V6));
        let attrs = vec![
            service_key(&sctp_v6()),
            destination(&dest_v6(), false).unwrap(),
        ];
        let delete = Request::ipvs(FAMILY, IPVS_CMD_DEL_DEST, attrs);
        assert_eq!(sent(delete), bytes(DELETE_DEST_V6));
    }

    #[test]
    fn weights_beyond_a_c_int_are_refused() {
        let dest = RealServer::new(ip("10.0.0.1"), 80, 1 << 31);
        assert!(matches!(destination(&dest, true), Err(Error::Invalid(_))));
        assert!(
            destination(&dest, false).is_ok(),
            "a delete ignores the weight"
        );
    }

    #[test]
    fn timeouts_send_only_the_nonzero_ones_in_whole_seconds() {
        let set = Timeouts {
            tcp: Duration::from_secs(7200),
            tcp_fin: Duration::ZERO,
            udp: Duration::from_secs(30),
        };
        let request = Request::ipvs(FAMILY, IPVS_CMD_SET_CONFIG, timeouts(&set).unwrap());
        assert_eq!(sent(request), bytes(SET_CONFIG));
        for bad in [
            Duration::from_millis(1500),
            Duration::from_millis(1),
            Duration::from_secs(1 << 31),
        ] {
            let set = Timeouts { udp: bad, ..set };
            assert!(matches!(timeouts(&set), Err(Error::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn dumped_services_parse() {
        let v4 = answer(answers::SERVICE_V4).service().unwrap().unwrap();
        let expected =
            VirtualServer::new(ip("10.96.0.1"), 443, Protocol::Tcp, Scheduler::default());
        assert_eq!(v4, expected, "hashed flag cleared, /32 netmask");

        let v6 = answer(answers::SERVICE_V6).service().unwrap().unwrap();
        let flags = ServiceFlags::PERSISTENT
            | ServiceFlags::SCHED_MH_FALLBACK
            | ServiceFlags::SCHED_MH_PORT;
        let expected = VirtualServer {
            flags,
            timeout: 10800,
            ..VirtualServer::new(
                ip("fd00::10"),
                53,
                Protocol::Udp,
                Scheduler::new("mh").unwrap(),
            )
        };
        assert_eq!(v6, expected);
        assert!(v6.flags.contains(ServiceFlags::PERSISTENT));
        assert!(!v6.flags.contains(ServiceFlags::ONE_PACKET));
    }

    #[test]
    fn firewall_mark_services_are_skipped() {
        assert_eq!(answer(answers::SERVICE_FWMARK).service().unwrap(), None);
    }

    #[test]
    fn services_read_back_as_they_were_written() {
        let mut svc = VirtualServer::new(
            ip("fd00::1"),
            8080,
            Protocol::Sctp,
            Scheduler::new("wrr").unwrap(),
        );
        svc.flags = ServiceFlags::PERSISTENT | ServiceFlags::ONE_PACKET;
        svc.timeout = 60;
        svc.netmask = 64;
        let Attr::Nest(_, attrs) = service(&svc).unwrap() else {
            panic!("not a nest")
        };
        let nest = Attr::Nest(IPVS_CMD_ATTR_SERVICE, attrs);
        let mut payload = vec![0; nest.buffer_len()];
        [nest].as_slice().emit(&mut payload);
        let dumped = Answer {
            cmd: IPVS_CMD_NEW_SERVICE,
            attrs: payload,
        };
        assert_eq!(dumped.service().unwrap(), Some(svc));
    }

    #[test]
    fn dumped_real_servers_parse_with_their_counters() {
        let v4 = answer(answers::DEST_V4).destination(IpFamily::V4).unwrap();
        let expected = Destination {
            server: RealServer {
                upper_threshold: 100,
                lower_threshold: 50,
                ..RealServer::new(ip("10.244.1.2"), 8443, 1)
            },
            stats: RealServerStats {
                active_conns: 3,
                inactive_conns: 2,
                persistent_conns: 1,
            },
        };
        assert_eq!(v4, expected);

        let v6 = answer(answers::DEST_V6).destination(IpFamily::V6).unwrap();
        assert_eq!(v6.server, RealServer::new(ip("fd00:244::2"), 5353, 0));
        assert_eq!(v6.stats.inactive_conns, 4);
    }

    #[test]
    fn the_config_answer_parses() {
        let expected = Timeouts {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(120),
            udp: Duration::from_secs(300),
        };
        assert_eq!(answer(answers::CONFIG).timeouts().unwrap(), expected);
    }

    #[test]
    fn an_answer_of_another_command_is_malformed() {
        assert!(matches!(
            answer(answers::CONFIG).service(),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            answer(answers::SERVICE_V4).timeouts(),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            answer(answers::DEST_V4).family_id(),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn missing_attributes_are_malformed() {
        // The IPv6 service without its netmask (the nest's last attribute but statistics).
        let mut svc = answer(answers::SERVICE_V6);
        svc.attrs.truncate(4 + 72);
        svc.attrs[..2].copy_from_slice(&76u16.to_ne_bytes());
        match svc.service() {
            Err(Error::Malformed(m)) => assert!(m.contains("NETMASK"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_answers_are_errors_never_panics() {
        let all = [
            answers::FAMILY,
            answers::SERVICE_V4,
            answers::SERVICE_V6,
            answers::SERVICE_FWMARK,
            answers::DEST_V4,
            answers::DEST_V6,
            answers::CONFIG,
        ];
        for hex in all {
            let good = answer(hex);
            // Every truncation and every single-byte change of the attributes.
            for len in 0..good.attrs.len() {
                let cut = Answer {
                    attrs: good.attrs[..len].to_vec(),
                    ..good.clone()
                };
                parse_all(&cut);
            }
            for at in 0..good.attrs.len() {
                for value in [0, 1, 3, 0x7f, 0xff] {
                    let mut bad = good.clone();
                    bad.attrs[at] = value;
                    parse_all(&bad);
                }
            }
        }
    }

    /// Runs every parser on `answer`; only panics matter.
    fn parse_all(answer: &Answer) {
        let _ = answer.family_id();
        let _ = answer.service();
        let _ = answer.destination(IpFamily::V4);
        let _ = answer.destination(IpFamily::V6);
        let _ = answer.timeouts();
    }

    #[test]
    fn scheduler_names_are_checked() {
        for good in ["rr", "wrr", "mh", "lblcr", "twos"] {
            assert_eq!(Scheduler::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "RR",
            "r r",
            "rr\0",
            "sixteen-letters!",
            "abcdefghijklmnop",
        ] {
            assert!(Scheduler::new(bad).is_err(), "{bad:?}");
        }
    }
}
