//! The kernel's IPVS, over a generic netlink socket.

use kube_proxy_netlink::{Attr, Connection};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::protocols::NETLINK_GENERIC;

use super::wire::{self, Answer, Request};
use super::{Destination, IpvsClient, RealServer, ServiceKey, Timeouts, VirtualServer};
use crate::netlink::required;
use crate::Error;

const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;

/// A generic netlink socket bound to the IPVS family, in the network namespace of the
/// thread that opened it. IPVS state is per network namespace.
pub struct Ipvs {
    conn: Connection,
    family: u16,
}

impl Ipvs {
    /// Opens the socket and looks up the IPVS family. Fails with [`Error::Unavailable`]
    /// when the kernel has no IPVS (the lookup itself loads the `ip_vs` module where the
    /// kernel can).
    pub fn new() -> Result<Self, Error> {
        let mut conn = Connection::open(NETLINK_GENERIC)?;
        let family = match family_id(&mut conn) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Err(Error::Unavailable(
                "the kernel has no IPVS (generic netlink family \"IPVS\" not found); \
                 load it with `modprobe ip_vs`"
                    .into(),
            )),
            result => result,
        }?;
        Ok(Ipvs { conn, family })
    }

    /// Sends IPVS command `cmd` with `attrs` and waits for its acknowledgement.
    fn command(&mut self, name: &'static str, cmd: u8, attrs: Vec<Attr>) -> Result<(), Error> {
        let request = Request::ipvs(self.family, cmd, attrs);
        self.conn.request(name, request, ACK, |_: Answer| Ok(()))
    }

    /// Sends IPVS dump request `cmd` with `attrs`, collecting what `parse` makes of each
    /// answer.
    fn dump<T>(
        &mut self,
        name: &'static str,
        cmd: u8,
        attrs: Vec<Attr>,
        mut parse: impl FnMut(&Answer) -> Result<Option<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        let request = Request::ipvs(self.family, cmd, attrs);
        let mut items = Vec::new();
        self.conn.request(name, request, DUMP, |a: Answer| {
            items.extend(parse(&a)?);
            Ok::<(), Error>(())
        })?;
        Ok(items)
    }
}

/// Asks nlctrl for the IPVS family's id.
fn family_id(conn: &mut Connection) -> Result<u16, Error> {
    let mut family = None;
    let lookup = Request::family_id(wire::IPVS_GENL_NAME);
    conn.request("generic netlink family lookup", lookup, ACK, |a: Answer| {
        family = Some(a.family_id()?);
        Ok::<(), Error>(())
    })?;
    required(family, "the IPVS family id")
}

impl IpvsClient for Ipvs {
    fn services(&mut self) -> Result<Vec<VirtualServer>, Error> {
        self.dump(
            "IPVS service dump",
            wire::IPVS_CMD_GET_SERVICE,
            vec![],
            Answer::service,
        )
    }

    fn add_service(&mut self, svc: &VirtualServer) -> Result<(), Error> {
        let attrs = vec![wire::service(svc)?];
        self.command("IPVS add service", wire::IPVS_CMD_NEW_SERVICE, attrs)
    }

    fn update_service(&mut self, svc: &VirtualServer) -> Result<(), Error> {
        let attrs = vec![wire::service(svc)?];
        self.command("IPVS update service", wire::IPVS_CMD_SET_SERVICE, attrs)
    }

    fn delete_service(&mut self, svc: &ServiceKey) -> Result<(), Error> {
        let attrs = vec![wire::service_key(svc)];
        self.command("IPVS delete service", wire::IPVS_CMD_DEL_SERVICE, attrs)
    }

    fn destinations(&mut self, svc: &ServiceKey) -> Result<Vec<Destination>, Error> {
        let family = svc.family();
        let attrs = vec![wire::service_key(svc)];
        self.dump(
            "IPVS real server dump",
            wire::IPVS_CMD_GET_DEST,
            attrs,
            |a| a.destination(family).map(Some),
        )
    }

    fn add_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        let attrs = vec![wire::service_key(svc), wire::destination(dest, true)?];
        self.command("IPVS add real server", wire::IPVS_CMD_NEW_DEST, attrs)
    }

    fn update_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        let attrs = vec![wire::service_key(svc), wire::destination(dest, true)?];
        self.command("IPVS update real server", wire::IPVS_CMD_SET_DEST, attrs)
    }

    fn delete_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error> {
        let attrs = vec![wire::service_key(svc), wire::destination(dest, false)?];
        self.command("IPVS delete real server", wire::IPVS_CMD_DEL_DEST, attrs)
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.command("IPVS flush", wire::IPVS_CMD_FLUSH, vec![])
    }

    fn config(&mut self) -> Result<Timeouts, Error> {
        let request = Request::ipvs(self.family, wire::IPVS_CMD_GET_CONFIG, vec![]);
        let mut timeouts = None;
        self.conn
            .request("IPVS get config", request, ACK, |a: Answer| {
                timeouts = Some(a.timeouts()?);
                Ok::<(), Error>(())
            })?;
        required(timeouts, "IPVS config answer")
    }

    fn set_config(&mut self, timeouts: &Timeouts) -> Result<(), Error> {
        let attrs = wire::timeouts(timeouts)?;
        self.command("IPVS set config", wire::IPVS_CMD_SET_CONFIG, attrs)
    }
}

#[cfg(test)]
mod tests {
    //! How IPVS answers go through the shared request loop (tested on its own in
    //! kube-proxy-netlink): captured answers, and the kernel's errors as this crate's.

    use kube_proxy_netlink::datagram_ends;

    use super::*;
    use crate::kernel_answers::{self as answers, bytes};

    /// Whether `datagram` ends the answer to request 7, or the error it ends it with.
    fn ends(datagram: &[u8]) -> Result<bool, Error> {
        datagram_ends(datagram, 7, "IPVS request", &mut |_: Answer| Ok(()))
    }

    /// The captured `NLMSG_DONE`, ending the answer with error `code` instead.
    fn done_with(code: i32) -> Vec<u8> {
        let mut done = bytes(answers::DONE);
        done[16..20].copy_from_slice(&code.to_le_bytes());
        done
    }

    #[test]
    fn captured_answers_are_read_until_nlmsg_done() {
        let (v4, v6, done) = (
            bytes(answers::SERVICE_V4),
            bytes(answers::SERVICE_V6),
            bytes(answers::DONE),
        );
        let mut services = Vec::new();
        let mut collect = |a: Answer| a.service().map(|s| services.extend(s));
        assert!(!datagram_ends(&[v4.clone(), v6].concat(), 7, "dump", &mut collect).unwrap());
        assert!(datagram_ends(&[v4, done].concat(), 7, "dump", &mut collect).unwrap());
        assert_eq!(services.len(), 3, "{services:?}");
    }

    #[test]
    fn kernel_errors_are_this_crates_own() {
        assert!(ends(&[bytes(answers::CONFIG), done_with(0)].concat()).unwrap());
        let error = ends(&done_with(-libc::EEXIST)).unwrap_err();
        assert!(error.is_exists(), "{error}");
        assert!(!error.is_not_found());
        let error = ends(&done_with(-libc::ESRCH)).unwrap_err();
        assert!(error.is_not_found(), "{error}");
        assert_eq!(
            ends(&done_with(-libc::EINTR)).unwrap_err().errno(),
            Some(libc::EINTR)
        );
    }

    #[test]
    fn truncated_or_short_answers_are_malformed() {
        let message = bytes(answers::SERVICE_V4);
        let result = ends(&message[..message.len() - 8]);
        assert!(matches!(result, Err(Error::Malformed(_))), "{result:?}");
        // Shorter than its genlmsghdr.
        let mut short = bytes(answers::DONE)[..16].to_vec();
        short[..4].copy_from_slice(&18u32.to_le_bytes());
        short[4] = 0x23;
        short.extend([1, 1]);
        let result = ends(&short);
        assert!(matches!(&result, Err(Error::Malformed(m)) if m.contains("genlmsghdr")));
    }
}
