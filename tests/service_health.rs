//! Health-check node ports: the real `kube-proxy` binary as a daemon against the fake API
//! server, in a private network namespace, probed over HTTP as a load balancer would.
//!
//! The daemon runs with nftables mode's default `nodePortAddresses` (`primary`), so it
//! listens on the node's IP, [`NODE_IP`], which each test puts on its namespace's `lo`.
//! Every wait is bounded by the harness's `wait_until`.

// Each test crate uses a part of the shared support code.
#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use support::daemon::*;
use support::fake_apiserver::FakeApiServer;
use support::netns::run;

/// Another node, where remote endpoints run.
const OTHER_NODE: &str = "node-b";

// ---------------------------------------------------------------------------
// The tests.

/// A local ready endpoint: 200 with upstream's body and weight header. Only remote
/// endpoints left: 503 with `localEndpoints: 0`, on the same listener. A moved
/// `healthCheckNodePort` moves the listener; `externalTrafficPolicy: Cluster` and
/// deleting the Service close it.
#[test]
fn follows_endpoints_port_changes_and_deletion() {
    in_private_netns(|server| {
        let mut daemon = start(server);
        server
            .create(&lb_service("lb", "10.96.0.10", 30100))
            .unwrap();
        let local = [("10.244.1.5", NODE), ("10.244.2.5", OTHER_NODE)];
        server.create(&slice_on("lb", &local)).unwrap();

        let answer = daemon.wait_until("200 from the health-check port", || {
            probe(30100).filter(|a| a.status == 200)
        });
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("x-load-balancing-endpoint-weight"), Some("1"));
        assert_eq!(
            answer.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );

        server
            .update(&slice_on("lb", &[("10.244.2.5", OTHER_NODE)]))
            .unwrap();
        let answer = daemon.wait_until("503 once no endpoint is local", || {
            probe(30100).filter(|a| a.status == 503)
        });
        assert_eq!(answer.json()["localEndpoints"], json!(0));
        assert_eq!(answer.json()["serviceProxyHealthy"], json!(true));
        assert_eq!(answer.header("x-load-balancing-endpoint-weight"), Some("0"));

        server.update(&slice_on("lb", &local)).unwrap();
        server
            .update(&lb_service("lb", "10.96.0.10", 30101))
            .unwrap();
        daemon.wait_until("the listener to move to 30101", || {
            probe(30101).filter(|a| a.status == 200)
        });
        assert_refused(&mut daemon, 30100, "the old port");

        let mut cluster = lb_service("lb", "10.96.0.10", 30101);
        let spec = cluster.spec.as_mut().unwrap();
        spec.external_traffic_policy = Some("Cluster".into());
        spec.health_check_node_port = None;
        server.update(&cluster).unwrap();
        assert_refused(&mut daemon, 30101, "externalTrafficPolicy: Cluster");

        server
            .update(&lb_service("lb", "10.96.0.10", 30102))
            .unwrap();
        daemon.wait_until("the listener back with policy Local", || {
            probe(30102).filter(|a| a.status == 200)
        });
        server.delete::<Service>(NAMESPACE, "lb").unwrap();
        assert_refused(&mut daemon, 30102, "the deleted Service");
    });
}

/// A health-check port someone else holds: a `FailedToStartServiceHealthcheck` Event
/// about the Service reaches the API server, while another Service's health-check port
/// and the rules keep working and the daemon keeps running. Once the port is free, a
/// later sync opens it (upstream retries at every sync).
#[test]
fn port_in_use_is_recorded_as_an_event_and_retried() {
    in_private_netns(|server| {
        let mut daemon = start(server);
        let squatter = std::net::TcpListener::bind((NODE_IP, 30200)).expect("bind 30200");
        server
            .create(&lb_service("blocked", "10.96.0.20", 30200))
            .unwrap();
        server
            .create(&slice_on("blocked", &[("10.244.1.20", NODE)]))
            .unwrap();
        server
            .create(&lb_service("fine", "10.96.0.21", 30201))
            .unwrap();
        server
            .create(&slice_on("fine", &[("10.244.1.21", NODE)]))
            .unwrap();

        let event = daemon.wait_until("a FailedToStartServiceHealthcheck Event", || {
            server
                .events()
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedToStartServiceHealthcheck"))
                .ok_or_else(|| format!("events: {:?}", server.events()))
        });
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.action.as_deref(), Some("Listen"));
        assert_eq!(event.reporting_controller.as_deref(), Some("kube-proxy"));
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("kube-proxy-node-a")
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some(NAMESPACE));
        let regarding = event.regarding.expect("the Event names its object");
        assert_eq!(regarding.kind.as_deref(), Some("Service"));
        assert_eq!(regarding.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(regarding.name.as_deref(), Some("blocked"));
        let note = event.note.expect("the Event has a note");
        let prefix = "node node-a failed to start healthcheck \"default/blocked\" on port 30200: ";
        assert!(note.starts_with(prefix), "{note}");
        assert!(note.contains("in use"), "{note}");

        daemon.wait_until("the other Service's health-check port", || {
            probe(30201).filter(|a| a.status == 200)
        });
        daemon.wait_until("the rules of both Services", || {
            let rules = nft_ruleset();
            ["10.96.0.20", "10.96.0.21"]
                .iter()
                .all(|ip| rules.contains(ip))
                .then_some(())
                .ok_or(rules)
        });
        daemon.assert_alive();

        drop(squatter);
        // Any change makes a sync, which retries the port.
        server.create(&service("nudge", "10.96.0.22")).unwrap();
        daemon.wait_until("the freed port to be opened", || {
            probe(30200).filter(|a| a.status == 200)
        });
    });
}

/// The daemon's Event recorder counts a repeat in the first Event's series (a PATCH),
/// rather than creating one Event per failed sync.
#[test]
fn a_repeated_failure_patches_one_event() {
    in_private_netns(|server| {
        let mut daemon = start(server);
        let _squatter = std::net::TcpListener::bind((NODE_IP, 30300)).expect("bind 30300");
        server
            .create(&lb_service("blocked", "10.96.0.30", 30300))
            .unwrap();
        server
            .create(&slice_on("blocked", &[("10.244.1.30", NODE)]))
            .unwrap();
        daemon.wait_until("the first Event", || one_event(server).map(|_| ()));
        // Each change makes a sync, and each sync tries (and fails) again.
        server.create(&service("nudge", "10.96.0.31")).unwrap();
        let repeated = daemon.wait_until("the Event's series to count the repeat", || {
            let event = one_event(server)?;
            event
                .series
                .as_ref()
                .filter(|s| s.count >= 2)
                .map(|_| event.clone())
                .ok_or_else(|| format!("{event:?}"))
        });
        assert!(
            server
                .requests()
                .iter()
                .any(|r| r.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/default/events/")),
            "the repeat should be a PATCH"
        );
        assert_eq!(
            repeated.reason.as_deref(),
            Some("FailedToStartServiceHealthcheck")
        );
    });
}

// ---------------------------------------------------------------------------
// Helpers.

/// The daemon, started after [`NODE_IP`] is put on `lo` and our Node exists.
fn start(server: &FakeApiServer) -> Daemon {
    let address = format!("{NODE_IP}/32");
    run(Command::new("ip").args(["addr", "add", &address, "dev", "lo"]));
    create_node(server);
    Daemon::start(server)
}

/// `default/<name>`: a LoadBalancer Service with `externalTrafficPolicy: Local` and
/// health-check node port `hc_port` (its NodePort is `hc_port - 1000`).
fn lb_service(name: &str, cluster_ip: &str, hc_port: i32) -> Service {
    let mut svc = service(name, cluster_ip);
    let spec = svc.spec.as_mut().expect("test services have a spec");
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(hc_port);
    for port in spec.ports.iter_mut().flatten() {
        port.node_port = Some(hc_port - 1000);
    }
    svc
}

/// The EndpointSlice of `service`: one ready endpoint per `(address, node)`.
fn slice_on(service: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
    let addresses: Vec<&str> = endpoints.iter().map(|(address, _)| *address).collect();
    let mut slice = slice(service, &addresses);
    for (endpoint, (_, node)) in slice.endpoints.iter_mut().zip(endpoints) {
        endpoint.node_name = Some(node.to_string());
    }
    slice
}

/// The only `FailedToStartServiceHealthcheck` Event the server holds.
fn one_event(server: &FakeApiServer) -> Result<k8s_openapi::api::events::v1::Event, String> {
    let events = server.events();
    match events.as_slice() {
        [event] if event.reason.as_deref() == Some("FailedToStartServiceHealthcheck") => {
            Ok(event.clone())
        }
        _ => Err(format!("expected one Event: {events:?}")),
    }
}

/// Waits until nothing listens on `NODE_IP:port` any more.
fn assert_refused(daemon: &mut Daemon, port: u16, what: &str) {
    daemon.wait_until(
        &format!("{what}: port {port} closed"),
        || match TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect: {other:?}")),
        },
    );
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(NODE_IP.parse().expect("NODE_IP is an IP"), port)
}

/// An HTTP answer: its status, headers (names lower-cased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

trait AnswerFilter {
    /// `Ok` with the answer when `want` holds, else why not.
    fn filter(self, want: impl Fn(&Answer) -> bool) -> Result<Answer, String>;
}

impl AnswerFilter for Result<Answer, String> {
    fn filter(self, want: impl Fn(&Answer) -> bool) -> Result<Answer, String> {
        let answer = self?;
        if want(&answer) {
            Ok(answer)
        } else {
            Err(format!("{answer:?}"))
        }
    }
}

/// `GET /healthz` from `NODE_IP:port`, as a load balancer's probe.
fn probe(port: u16) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&addr(port), Duration::from_secs(2))
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {NODE_IP}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {response:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The whole nftables ruleset of this namespace.
fn nft_ruleset() -> String {
    run(Command::new("nft").args(["list", "ruleset"]))
}
