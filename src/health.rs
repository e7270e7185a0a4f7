//! The proxy health server (`healthzBindAddress`, default `0.0.0.0:10256`), as upstream's
//! `ProxyHealthServer`: `/healthz` and `/livez`, JSON bodies, 200 or 503.
//!
//! * Once a sync has succeeded, the proxy is unhealthy when an update has been queued and
//!   no successful sync followed within the health timeout (2 × `syncPeriod`). Before the
//!   first successful sync it is healthy: it is starting up.
//! * `/healthz` is also unhealthy while our Node is being deleted (deletionTimestamp or the
//!   cluster autoscaler's taint), so that load balancers drain the node; `/livez` ignores
//!   that, so that the kubelet does not restart a proxy that is fine.
//!
//! Both IP families are programmed by one sync here, so they share one state; the JSON
//! still reports each under `status`, as upstream's dual-stack proxy does. (On a kernel
//! without IPv6 nf_tables the backend programs IPv4 only, and `status` still lists IPv6:
//! the backend does not tell the daemon which families it programs.)

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::metrics::{Metrics, Probe};

/// Go's zero `time.Time`, which upstream reports as `lastUpdated` before any sync.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The clock-driven health state; every method takes the current time.
#[derive(Debug, Clone)]
pub struct HealthState {
    timeout: Duration,
    last_updated: Option<SystemTime>,
    /// When the oldest update not yet synced was queued.
    oldest_queued: Option<SystemTime>,
    node_eligible: bool,
}

/// One family's part of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxierHealth {
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
    pub healthy: bool,
}

/// The JSON body of `/healthz` and `/livez`, field for field upstream's `ProxyHealth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyHealth {
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
    #[serde(rename = "currentTime")]
    pub current_time: String,
    /// Only in `/healthz` answers.
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    pub node_eligible: Option<bool>,
    pub healthy: bool,
    /// By family (`IPv4`, `IPv6`); absent before the first successful sync.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<&'static str, ProxierHealth>,
}

/// RFC 3339 with only the fractional digits needed, as Go's `time.Time` marshals.
fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| ZERO_TIME.to_owned(), |ts| ts.to_string())
}

impl HealthState {
    /// A starting proxy: healthy, its node eligible, unhealthy once an update stays
    /// unsynced for `timeout`.
    pub fn new(timeout: Duration) -> Self {
        HealthState {
            timeout,
            last_updated: None,
            oldest_queued: None,
            node_eligible: true,
        }
    }

    /// Changes arrived that need a sync; the oldest such instant counts.
    pub fn queued_update(&mut self, now: SystemTime) {
        self.oldest_queued.get_or_insert(now);
    }

    /// A sync succeeded: every queued update is programmed.
    pub fn synced(&mut self, now: SystemTime) {
        self.oldest_queued = None;
        self.last_updated = Some(now);
    }

    /// Whether our Node may receive load-balancer traffic (see [`crate::builder::ModelBuilder::node_eligible`]).
    pub fn set_node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
    }

    /// The proxy's own health at `now`, ignoring the Node: upstream's `Health().Healthy`,
    /// which health-check node ports report as `serviceProxyHealthy`.
    pub fn proxier_healthy(&self, now: SystemTime) -> bool {
        // Upstream judges only proxiers that synced once: a starting proxy is healthy.
        let (Some(_), Some(queued)) = (self.last_updated, self.oldest_queued) else {
            return true;
        };
        now.duration_since(queued).unwrap_or_default() < self.timeout
    }

    /// The answer to `probe` at `now`: its status code and body.
    pub fn answer(&self, probe: Probe, now: SystemTime) -> (u16, ProxyHealth) {
        let proxier_healthy = self.proxier_healthy(now);
        let node_eligible = (probe == Probe::Healthz).then_some(self.node_eligible);
        let healthy = proxier_healthy && node_eligible != Some(false);
        let last_updated = self
            .last_updated
            .map_or_else(|| ZERO_TIME.to_owned(), rfc3339);
        let status = self
            .last_updated
            .map(|_| {
                let family = ProxierHealth {
                    last_updated: last_updated.clone(),
                    healthy: proxier_healthy,
                };
                [("IPv4", family.clone()), ("IPv6", family)].into()
            })
            .unwrap_or_default();
        let current_time = rfc3339(now);
        let body = ProxyHealth {
            // As upstream, for compatibility with older releases: "recent" when healthy.
            last_updated: if healthy {
                current_time.clone()
            } else {
                last_updated
            },
            current_time,
            node_eligible,
            healthy: proxier_healthy,
            status,
        };
        (if healthy { 200 } else { 503 }, body)
    }
}

/// The health state shared by the sync loop and the server.
pub type SharedHealth = Arc<Mutex<HealthState>>;

/// Locks `health`; a panic elsewhere while holding it must not stop health reporting.
pub fn lock(health: &SharedHealth) -> std::sync::MutexGuard<'_, HealthState> {
    health.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `/healthz` and `/livez` on `addr` in the background, counting answers in
/// `kubeproxy_proxy_{healthz,livez}_total`. An address that cannot be bound is handled
/// as [`spawn_http_on`] says.
pub fn serve(
    addr: SocketAddr,
    health: SharedHealth,
    metrics: Arc<Metrics>,
    hard_fail: Option<FatalErrors>,
) {
    // Upstream's words: the server's error, wrapped as `serveHealthz` wraps it.
    let context = format!("healthz server failed: failed to start proxy healthz on {addr}");
    spawn_http_on(addr, context, hard_fail, move |path| {
        let probe = match path {
            "/healthz" => Probe::Healthz,
            "/livez" => Probe::Livez,
            _ => return Reply::not_found(),
        };
        let (code, body) = lock(&health).answer(probe, SystemTime::now());
        metrics.probed(probe, code);
        let json = serde_json::to_string(&body).expect("health bodies serialize");
        Reply {
            code,
            content_type: "application/json",
            headers: Vec::new(),
            body: json,
        }
    });
}

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    /// Headers besides `Content-Type` and `X-Content-Type-Options`, which every reply has.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Reply {
            code: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// 404, as Go's mux for an unknown path.
    pub fn not_found() -> Self {
        Reply {
            code: 404,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: "404 page not found\n".to_owned(),
        }
    }

    fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = http::StatusCode::from_u16(self.code)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(self.content_type),
        );
        headers.insert(
            "x-content-type-options",
            http::HeaderValue::from_static("nosniff"),
        );
        headers.extend(extra_headers(self.headers));
        response
    }
}

/// [`Reply::headers`] as HTTP headers. Routes build them from static names and numbers, so
/// a malformed one is a bug, dropped rather than failing the reply.
fn extra_headers(
    headers: Vec<(&'static str, String)>,
) -> impl Iterator<Item = (http::HeaderName, http::HeaderValue)> {
    headers.into_iter().filter_map(|(name, value)| {
        let name = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        Some((name, http::HeaderValue::try_from(value).ok()?))
    })
}

/// Where a server that cannot bind sends its error when `bindAddressHardFail` is set: the
/// daemon exits with the first error it receives.
pub type FatalErrors = tokio::sync::mpsc::Sender<anyhow::Error>;

/// How long upstream waits before trying to bind a server's address again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds `addr` (as [`bind_like_go`] does) and serves HTTP on it as [`spawn_http`] does,
/// all in the background. As upstream: a bind that fails (the address in use, say) is
/// logged with `context` (which names the address) and retried every 5 s, because a proxy
/// without its health server still proxies; with `hard_fail` (`bindAddressHardFail`), the
/// first failure goes there instead, to stop the daemon.
pub fn spawn_http_on(
    addr: SocketAddr,
    context: String,
    hard_fail: Option<FatalErrors>,
    route: impl Fn(&str) -> Reply + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        let listener = loop {
            match bind_like_go(addr) {
                Ok(listener) => break listener,
                Err(e) => {
                    let error = anyhow::Error::new(e).context(context.clone());
                    if let Some(fatal) = &hard_fail {
                        // The receiver is gone only when the daemon is stopping anyway.
                        let _ = fatal.send(error).await;
                        return;
                    }
                    tracing::error!(error = format!("{error:#}"), "retrying in {BIND_RETRY:?}");
                    tokio::time::sleep(BIND_RETRY).await;
                }
            }
        };
        tracing::info!(address = %addr, "serving HTTP");
        spawn_http(listener, route);
    });
}

/// Binds `addr` as Go's `net.Listen("tcp", addr)` does, which upstream's servers use: an
/// unspecified address of either family (`0.0.0.0`, the default `healthzBindAddress`, or
/// `[::]`) listens on every address of both families, through one IPv6 socket that also
/// accepts IPv4 (std leaves `IPV6_V6ONLY` at the kernel's default, `bindv6only` 0), so
/// that an IPv6 or dual-stack node answers on its IPv6 addresses too. Without IPv6 in the
/// kernel, `0.0.0.0` falls back to IPv4 alone.
pub fn bind_like_go(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = if addr.ip().is_unspecified() {
        let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), addr.port());
        std::net::TcpListener::bind(any).or_else(|e| {
            let no_ipv6 = e.kind() != std::io::ErrorKind::AddrInUse
                && e.kind() != std::io::ErrorKind::PermissionDenied;
            if addr.is_ipv4() && no_ipv6 {
                std::net::TcpListener::bind(addr)
            } else {
                Err(e)
            }
        })?
    } else {
        std::net::TcpListener::bind(addr)?
    };
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Serves HTTP/1 on `listener` until the process exits or the returned task is aborted
/// (which closes the listener), answering every request by its path through `route`. A
/// failing connection or accept is logged, never fatal.
pub fn spawn_http(
    listener: tokio::net::TcpListener,
    route: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let route = Arc::new(route);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let route = route.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let reply = route(req.uri().path());
                    async move { Ok::<_, Infallible>(reply.into_response()) }
                });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection failed");
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn starting_proxy_is_healthy_even_with_an_old_queued_update() {
        let mut h = HealthState::new(TIMEOUT);
        h.queued_update(at(0));
        let (code, body) = h.answer(Probe::Healthz, at(600));
        assert_eq!(code, 200);
        assert!(body.healthy);
        assert_eq!(body.node_eligible, Some(true));
        assert!(body.status.is_empty(), "no family has synced yet");
        assert_eq!(
            body.last_updated, body.current_time,
            "healthy: lastUpdated is now"
        );
    }

    #[test]
    fn unhealthy_once_a_queued_update_waits_for_the_timeout() {
        let mut h = HealthState::new(TIMEOUT);
        h.synced(at(0));
        h.queued_update(at(10));
        h.queued_update(at(50)); // the oldest one counts
        assert_eq!(h.answer(Probe::Livez, at(69)).0, 200);
        let (code, body) = h.answer(Probe::Livez, at(70));
        assert_eq!(code, 503);
        assert!(!body.healthy);
        assert_eq!(body.last_updated, "2023-11-14T22:13:20Z", "the last sync");
        assert!(body.status.values().all(|s| !s.healthy));
        assert_eq!(h.answer(Probe::Healthz, at(70)).0, 503);

        h.synced(at(71));
        assert_eq!(h.answer(Probe::Livez, at(71)).0, 200);
        assert_eq!(
            h.answer(Probe::Livez, at(1000)).0,
            200,
            "nothing queued: never late"
        );
    }

    #[test]
    fn node_being_deleted_fails_healthz_but_not_livez() {
        let mut h = HealthState::new(TIMEOUT);
        h.synced(at(0));
        h.set_node_eligible(false);
        let (code, body) = h.answer(Probe::Healthz, at(1));
        assert_eq!(code, 503);
        assert_eq!(body.node_eligible, Some(false));
        assert!(body.healthy, "the proxy itself is fine");
        let (code, body) = h.answer(Probe::Livez, at(1));
        assert_eq!(code, 200);
        assert_eq!(body.node_eligible, None);
    }

    #[test]
    fn json_has_upstreams_fields() {
        let mut h = HealthState::new(TIMEOUT);
        h.synced(at(0));
        let now = at(5) + Duration::from_millis(250);
        let (_, body) = h.answer(Probe::Healthz, now);
        let json: serde_json::Value = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "lastUpdated": "2023-11-14T22:13:25.25Z",
                "currentTime": "2023-11-14T22:13:25.25Z",
                "nodeEligible": true,
                "healthy": true,
                "status": {
                    "IPv4": {"lastUpdated": "2023-11-14T22:13:20Z", "healthy": true},
                    "IPv6": {"lastUpdated": "2023-11-14T22:13:20Z", "healthy": true},
                },
            })
        );
        let (_, fresh) = HealthState::new(TIMEOUT).answer(Probe::Livez, now);
        let json = serde_json::to_value(&fresh).unwrap();
        assert!(json.get("status").is_none() && json.get("nodeEligible").is_none());
    }
}
