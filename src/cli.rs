//! The command line: upstream kube-proxy's flags with pflag's semantics, plus our
//! `render` and `apply` subcommands, resolved into one effective configuration.
//!
//! Operators' scripts and DaemonSets pass flags the way Go's pflag accepts them, so we
//! accept the same forms: `--flag=value` and `--flag value`; booleans as `--flag`,
//! `--flag=true` or `--flag=false` (never consuming the next argument); a repeated
//! flag's last value wins, while list flags (`--nodeport-addresses`) accumulate;
//! comma-separated lists; Go durations; Go integer syntax (`0x1f`).
//!
//! As upstream, when `--config` is given every flag that maps onto the configuration
//! is ignored, except `--hostname-override` and the logging flags; the ignored ones are
//! reported in [`Invocation::warnings`] so the caller can log them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kube_proxy_model::Scheduling;

use crate::config::{
    append_port_if_needed, ConfigError, Duration, KubeProxyConfiguration, ProxyMode, VModuleItem,
    ValidationErrors, HEALTHZ_PORT, METRICS_PORT,
};

/// What the process was asked to do, with the configuration to do it with.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The action.
    pub command: Command,
    /// The effective configuration: from `--config` or from flags, defaulted and
    /// validated, with `--hostname-override` and logging flags applied.
    pub config: KubeProxyConfiguration,
    /// `--config`, if given.
    pub config_file: Option<PathBuf>,
    /// `--master`: overrides the API server URL of the kubeconfig.
    pub master: Option<String>,
    /// The kubeconfig to use (`clientConnection.kubeconfig`); `None` means in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Log verbosity (`--v` / `logging.verbosity`).
    pub verbosity: u32,
    /// Log format (`--logging-format` / `logging.format`).
    pub log_format: LogFormat,
    /// Things worth logging once logging is up (flags ignored because of `--config`).
    pub warnings: Vec<String>,
    /// `--endpoint-selection` (a kube-proxy-rs extension, honoured with `--config` too,
    /// since upstream's file has no such field): how a new connection picks an endpoint.
    pub scheduling: Scheduling,
}

/// The action of an [`Invocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy (no subcommand).
    Daemon,
    /// `render -f PATH...`: print the rules for the manifests, touch nothing.
    Render { files: Vec<PathBuf> },
    /// `apply -f PATH...`: program the rules for the manifests once.
    Apply { files: Vec<PathBuf> },
    /// `--cleanup`: remove kube-proxy's rules and exit.
    Cleanup,
    /// `--init-only`: do the privileged setup and exit.
    InitOnly,
    /// `--write-config-to PATH`: write the effective configuration and exit.
    WriteConfig { path: PathBuf },
    /// `--version` (`raw` for `--version=raw`): print the version and exit.
    Version { raw: bool },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// klog-style text.
    Text,
    /// Structured JSON lines.
    Json,
}

/// Why the command line was not accepted. Help and version requests made through clap
/// also arrive here; [`CliError::exit`] prints each to the right stream.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Unknown flag, bad flag value, `--help`, ...
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The configuration (file or flags) was rejected.
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl CliError {
    /// Whether this is a help request rather than an error.
    pub fn is_help(&self) -> bool {
        matches!(self, CliError::Usage(e) if !e.use_stderr())
    }

    /// The process exit code: 0 for help, 1 for everything else (as upstream).
    pub fn exit_code(&self) -> i32 {
        if self.is_help() {
            0
        } else {
            1
        }
    }

    /// Prints the message (help to stdout, errors to stderr) and exits.
    pub fn exit(&self) -> ! {
        match self {
            CliError::Usage(e) => {
                // clap picks the stream; a closed stdout is no reason to panic.
                let _ = e.print();
            }
            CliError::Config(e) => eprintln!("Error: {e}"),
        }
        std::process::exit(self.exit_code())
    }
}

/// Parses the command line (including the program name, as `std::env::args_os()`),
/// loads `--config` if given, and returns the validated result.
pub fn parse<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = command();
    let args = split_empty_values(&cmd, args.into_iter().map(Into::into).collect());
    let matches = cmd.try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    // As upstream, an empty `--config=` or `--write-config-to=` means "not given".
    for path in [&mut cli.flags.config, &mut cli.flags.write_config_to] {
        path.take_if(|p| p.is_empty());
    }
    let flags = &cli.flags;
    if let Some(raw) = flags.version_request() {
        return Ok(finish(
            Command::Version { raw },
            KubeProxyConfiguration::defaulted(),
            flags,
            Vec::new(),
        ));
    }
    let (config, mut warnings) = match &flags.config {
        Some(path) => (from_file(path, flags)?, ignored_flags(&matches)),
        None => (from_flags(flags)?, Vec::new()),
    };
    warnings.extend(flags.deprecation_warnings());
    Ok(finish(cli.action(), config, flags, warnings))
}

/// The clap command, for `--help` and for callers that render completions or docs.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_args(|arg| arg.global(true))
        .mut_subcommands(|sub| sub.mut_args(pflag_style))
        .mut_args(pflag_style)
}

/// pflag accepts `--flag=` as an explicit empty value (`--metrics-bind-address=`
/// disables the metrics server); clap reads it as a missing value. Splitting it into
/// `--flag ""` gives clap the empty value explicitly.
fn split_empty_values(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let takes_value = |name: &str| {
        cmd.get_arguments().any(|arg| {
            arg.get_long() == Some(name)
                && arg.get_action().takes_values()
                && !arg.is_require_equals_set()
        })
    };
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    for arg in iter.by_ref() {
        if arg == "--" {
            out.push(arg);
            break;
        }
        let flag = arg
            .to_str()
            .and_then(|a| a.strip_prefix("--"))
            .and_then(|a| a.strip_suffix('='))
            .filter(|name| !name.contains('=') && takes_value(name))
            .map(|name| format!("--{name}"));
        match flag {
            Some(flag) => out.extend([OsString::from(flag), OsString::new()]),
            None => out.push(arg),
        }
    }
    out.extend(iter);
    out
}

/// pflag hands a value-taking flag the next argument even if it starts with `-`
/// (`--oom-score-adj -999`).
fn pflag_style(arg: clap::Arg) -> clap::Arg {
    if arg.get_action().takes_values() && !arg.is_require_equals_set() {
        arg.allow_hyphen_values(true)
    } else {
        arg
    }
}

/// The version line printed by `--version`.
pub fn version_text(raw: bool) -> String {
    let version = env!("CARGO_PKG_VERSION");
    if raw {
        format!(
            "kube-proxy-rs {version}\ncompatible: Kubernetes v1.33-v1.37 kube-proxy\nlicense: Apache-2.0"
        )
    } else {
        format!("kube-proxy-rs v{version} (Kubernetes kube-proxy v1.33-v1.37 compatible)")
    }
}

fn finish(
    command: Command,
    config: KubeProxyConfiguration,
    flags: &Flags,
    warnings: Vec<String>,
) -> Invocation {
    let kubeconfig = Some(&config.client_connection.kubeconfig)
        .filter(|k| !k.is_empty())
        .map(PathBuf::from);
    let log_format = match config.logging.format.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    Invocation {
        command,
        verbosity: config.logging.verbosity,
        log_format,
        kubeconfig,
        master: flags.master.clone().filter(|m| !m.is_empty()),
        config_file: flags.config.as_ref().map(PathBuf::from),
        config,
        warnings,
        scheduling: flags.endpoint_selection.unwrap_or_default(),
    }
}

/// `--config` given: the file, defaulted, with only hostname and logging flags applied.
fn from_file(path: &str, flags: &Flags) -> Result<KubeProxyConfiguration, CliError> {
    let mut config = KubeProxyConfiguration::read_file(std::path::Path::new(path))?;
    config.apply_defaults();
    flags.apply_logging(&mut config);
    complete(config, flags)
}

/// No `--config`: upstream's defaults with every given flag applied on top.
fn from_flags(flags: &Flags) -> Result<KubeProxyConfiguration, CliError> {
    let mut config = KubeProxyConfiguration::defaulted();
    flags.apply(&mut config);
    flags.apply_logging(&mut config);
    if flags.write_config_to.is_none() {
        apply_deprecated_ports(&mut config, flags);
    }
    complete(config, flags).map_err(|err| match err {
        CliError::Config(ConfigError::Invalid(errors)) => {
            CliError::Config(ConfigError::Invalid(name_flags(errors)))
        }
        other => other,
    })
}

/// Adds the flag that set each rejected field, so an operator who never wrote a
/// config file sees the flag they passed.
fn name_flags(mut errors: ValidationErrors) -> ValidationErrors {
    for error in &mut errors.0 {
        let field = error.field.split('[').next().unwrap_or_default();
        if let Some((_, flag)) = FIELD_FLAGS.iter().find(|(f, _)| *f == field) {
            error.field = format!("{} (--{flag})", error.field);
        }
    }
    errors
}

/// Configuration fields and the flags that set them.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("bindAddress", "bind-address"),
    ("clientConnection.burst", "kube-api-burst"),
    ("clusterCIDR", "cluster-cidr"),
    ("configSyncPeriod", "config-sync-period"),
    ("conntrack.maxPerCore", "conntrack-max-per-core"),
    ("conntrack.min", "conntrack-min"),
    (
        "conntrack.tcpCloseWaitTimeout",
        "conntrack-tcp-timeout-close-wait",
    ),
    (
        "conntrack.tcpEstablishedTimeout",
        "conntrack-tcp-timeout-established",
    ),
    ("conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream"),
    ("conntrack.udpTimeout", "conntrack-udp-timeout"),
    ("detectLocal.bridgeInterface", "pod-bridge-interface"),
    (
        "detectLocal.interfaceNamePrefix",
        "pod-interface-name-prefix",
    ),
    ("detectLocalMode", "detect-local-mode"),
    ("healthzBindAddress", "healthz-bind-address"),
    ("iptables.masqueradeBit", "iptables-masquerade-bit"),
    ("iptables.minSyncPeriod", "iptables-min-sync-period"),
    ("iptables.syncPeriod", "iptables-sync-period"),
    ("ipvs.excludeCIDRs", "ipvs-exclude-cidrs"),
    ("ipvs.minSyncPeriod", "ipvs-min-sync-period"),
    ("ipvs.scheduler", "ipvs-scheduler"),
    ("ipvs.syncPeriod", "ipvs-sync-period"),
    ("ipvs.tcpFinTimeout", "ipvs-tcpfin-timeout"),
    ("ipvs.tcpTimeout", "ipvs-tcp-timeout"),
    ("ipvs.udpTimeout", "ipvs-udp-timeout"),
    ("logging.format", "logging-format"),
    ("logging.vmodule", "vmodule"),
    ("metricsBindAddress", "metrics-bind-address"),
    ("mode", "proxy-mode"),
    ("nftables.minSyncPeriod", "iptables-min-sync-period"),
    ("nftables.syncPeriod", "iptables-sync-period"),
    ("nodePortAddresses", "nodeport-addresses"),
    ("oomScoreAdj", "oom-score-adj"),
    (
        "showHiddenMetricsForVersion",
        "show-hidden-metrics-for-version",
    ),
];

/// Platform defaults, `--hostname-override`, validation: the steps after either source.
fn complete(
    mut config: KubeProxyConfiguration,
    flags: &Flags,
) -> Result<KubeProxyConfiguration, CliError> {
    config.apply_platform_defaults();
    if let Some(name) = flags.hostname_override.as_deref().filter(|n| !n.is_empty()) {
        let name = name.trim();
        if name.is_empty() {
            return Err(usage_error(
                "--hostname-override",
                "empty hostname-override is invalid",
            ));
        }
        config.hostname_override = name.to_lowercase();
    }
    config.validate().map_err(ConfigError::from)?;
    // IPVS picks real servers with its own scheduler: a random choice asked for here
    // would be silently ignored.
    if flags.endpoint_selection == Some(Scheduling::Random)
        && config.effective_mode() == ProxyMode::Ipvs
    {
        return Err(usage_error(
            "--endpoint-selection",
            "\"random\" is not available in ipvs mode, where the IPVS scheduler picks \
             endpoints: set ipvs.scheduler (--ipvs-scheduler) instead",
        ));
    }
    Ok(config)
}

/// Upstream's `addressFromDeprecatedFlags`: port 0 disables a server, otherwise the
/// port is added to a bind address given without one.
fn apply_deprecated_ports(config: &mut KubeProxyConfiguration, flags: &Flags) {
    let healthz_port = flags.healthz_port.unwrap_or(i32::from(HEALTHZ_PORT));
    let metrics_port = flags.metrics_port.unwrap_or(i32::from(METRICS_PORT));
    for (addr, port) in [
        (&mut config.healthz_bind_address, healthz_port),
        (&mut config.metrics_bind_address, metrics_port),
    ] {
        *addr = match u16::try_from(port) {
            Ok(0) => String::new(),
            Ok(port) => append_port_if_needed(addr, port),
            // Out of u16 range: keep the address so the port error is not hidden.
            Err(_) => addr.clone(),
        };
    }
}

fn usage_error(flag: &str, message: &str) -> CliError {
    CliError::Usage(clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        format!("invalid value for '{flag}': {message}\n"),
    ))
}

/// Flags given on the command line that `--config` makes upstream ignore.
fn ignored_flags(matches: &ArgMatches) -> Vec<String> {
    const HONOURED_WITH_CONFIG: &[&str] = &[
        "config",
        "hostname-override",
        "endpoint-selection",
        "master",
        "cleanup",
        "init-only",
        "write-config-to",
        "version",
        "v",
        "vmodule",
        "logging-format",
        "log-flush-frequency",
        "log-text-split-stream",
        "log-text-info-buffer-size",
        "log-json-split-stream",
        "log-json-info-buffer-size",
    ];
    // Global flags given after a subcommand are recorded in the subcommand's matches.
    let all_matches: Vec<&ArgMatches> = std::iter::once(matches)
        .chain(matches.subcommand().map(|(_, m)| m))
        .collect();
    let mut ignored: Vec<String> = command()
        .get_arguments()
        .filter_map(|arg| Some((arg.get_id().as_str(), arg.get_long()?)))
        .filter(|(_, long)| !HONOURED_WITH_CONFIG.contains(long))
        .filter(|(id, _)| {
            all_matches
                .iter()
                .any(|m| m.value_source(id) == Some(ValueSource::CommandLine))
        })
        .map(|(_, long)| format!("flag --{long} is ignored because --config is given"))
        .collect();
    ignored.sort();
    ignored
}

#[derive(Parser, Debug)]
#[command(
    name = "kube-proxy",
    about = "kube-proxy-rs: a drop-in replacement for the Kubernetes network proxy",
    long_about = "The Kubernetes network proxy runs on each node. This reflects services as defined in \
the Kubernetes API on each node and can do simple TCP, UDP, and SCTP stream forwarding or round robin \
TCP, UDP, and SCTP forwarding across a set of backends. Service cluster IPs and ports are currently \
found through Docker-links-compatible environment variables specifying ports opened by the service proxy.",
    args_override_self = true,
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    flags: Flags,
}

impl Cli {
    /// The action, in upstream's order: `--write-config-to`, then `--cleanup`, then
    /// `--init-only`; our subcommands come first since they are explicit.
    fn action(&self) -> Command {
        let flags = &self.flags;
        match &self.command {
            Some(Sub::Render(m)) => Command::Render {
                files: m.files.clone(),
            },
            Some(Sub::Apply(m)) => Command::Apply {
                files: m.files.clone(),
            },
            None => match &flags.write_config_to {
                Some(path) => Command::WriteConfig { path: path.into() },
                None if flags.cleanup == Some(true) => Command::Cleanup,
                None if flags.init_only == Some(true) => Command::InitOnly,
                None => Command::Daemon,
            },
        }
    }
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print the dataplane rules for the Services and EndpointSlices in the manifests,
    /// without touching the kernel.
    Render(Manifests),
    /// Program the dataplane once from the Services and EndpointSlices in the
    /// manifests, then exit.
    Apply(Manifests),
}

#[derive(Args, Debug)]
struct Manifests {
    /// A manifest file or a directory of them (repeatable, or comma-separated as
    /// kubectl accepts).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required = true,
        value_delimiter = ','
    )]
    files: Vec<PathBuf>,
}

/// Every upstream flag, `None` when not given (so defaults stay upstream's).
#[derive(Args, Debug)]
struct Flags {
    #[arg(
        long,
        value_name = "string",
        help = "The path to the configuration file."
    )]
    config: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "If set, write the default configuration values to this file and exit."
    )]
    write_config_to: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "If true cleanup iptables and ipvs rules and exit.")]
    cleanup: Option<bool>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "If true, perform any initialization steps that must be done with full root privileges, and then exit. After doing this, you can run kube-proxy again with only the CAP_NET_ADMIN capability.")]
    init_only: Option<bool>,
    #[arg(long, value_name = "mapStringBool", value_parser = parse_feature_gates,
          help = "A set of key=value pairs that describe feature gates for alpha/experimental features. This parameter is ignored if a config file is specified by --config.")]
    feature_gates: Vec<FeatureGates>,
    #[arg(
        long,
        value_name = "string",
        help = "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag)."
    )]
    kubeconfig: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "The address of the Kubernetes API server (overrides any value in kubeconfig)"
    )]
    master: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "Content type of requests sent to apiserver. (default \"application/vnd.kubernetes.protobuf\")"
    )]
    kube_api_content_type: Option<String>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "Burst to use while talking with kubernetes apiserver (default 10)")]
    kube_api_burst: Option<i32>,
    #[arg(long, value_name = "float32", value_parser = parse_float32,
          help = "QPS to use while talking with kubernetes apiserver (default 5)")]
    kube_api_qps: Option<f32>,
    #[arg(
        long,
        value_name = "string",
        help = "If non-empty, will be used as the name of the Node that kube-proxy is running on. If unset, the node name is assumed to be the same as the node's hostname."
    )]
    hostname_override: Option<String>,
    #[arg(long, value_name = "string", value_parser = parse_endpoint_selection,
          help = "kube-proxy-rs extension: how a new connection picks one of a Service's endpoints in the nftables and iptables modes, 'round-robin' (numgen inc, statistic nth) or 'random' (upstream's choice). IPVS mode uses --ipvs-scheduler and refuses 'random'. Honoured even when --config is given. (default \"round-robin\")")]
    endpoint_selection: Option<Scheduling>,
    #[arg(long, value_name = "ip", value_parser = parse_ip,
          help = "Overrides kube-proxy's idea of what its node's primary IP is. Note that the name is a historical artifact, and kube-proxy does not actually bind any sockets to this IP. This parameter is ignored if a config file is specified by --config. (default 0.0.0.0)")]
    bind_address: Option<String>,
    #[arg(long, value_name = "ipport", value_parser = parse_ip_port,
          help = "The IP address and port for the health check server to serve on, defaulting to \"0.0.0.0:10256\". This parameter is ignored if a config file is specified by --config.")]
    healthz_bind_address: Option<String>,
    #[arg(long, value_name = "ipport", value_parser = parse_ip_port,
          help = "The IP address and port for the metrics server to serve on, defaulting to \"127.0.0.1:10249\". (Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces.) Set empty to disable. This parameter is ignored if a config file is specified by --config.")]
    metrics_bind_address: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "If true kube-proxy will treat failure to bind to a port as fatal and exit")]
    bind_address_hard_fail: Option<bool>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "If true enables profiling via web interface on /debug/pprof handler. This parameter is ignored if a config file is specified by --config.")]
    profiling: Option<bool>,
    #[arg(
        long,
        value_name = "string",
        help = "The previous version for which you want to show hidden metrics. Only the previous minor version is meaningful, other values will not be allowed. The format is <major>.<minor>, e.g.: '1.16'. This parameter is ignored if a config file is specified by --config."
    )]
    show_hidden_metrics_for_version: Option<String>,
    #[arg(
        long,
        value_name = "ProxyMode",
        help = "Which proxy mode to use: on Linux this can be 'iptables' (default), 'ipvs', or 'nftables'. This parameter is ignored if a config file is specified by --config."
    )]
    proxy_mode: Option<String>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "If using the iptables or ipvs proxy mode, the bit of the fwmark space to mark packets requiring SNAT with.  Must be within the range [0, 31]. (default 14)")]
    iptables_masquerade_bit: Option<i32>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins. Only supported on Linux.")]
    masquerade_all: Option<bool>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "If false, kube-proxy will disable the legacy behavior of allowing NodePort services to be accessed via localhost. (Applies only to iptables mode and IPv4; localhost NodePorts are never allowed with other proxy modes or with IPv6.) (default true)")]
    iptables_localhost_nodeports: Option<bool>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0. (default 30s)")]
    iptables_sync_period: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "The minimum period between iptables rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate iptables resync. (default 1s)")]
    iptables_min_sync_period: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0. (default 30s)")]
    ipvs_sync_period: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "The minimum period between IPVS rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate IPVS resync. (default 1s)")]
    ipvs_min_sync_period: Option<Duration>,
    #[arg(
        long,
        value_name = "string",
        help = "The ipvs scheduler type when proxy mode is ipvs"
    )]
    ipvs_scheduler: Option<String>,
    #[arg(
        long,
        value_name = "strings",
        help = "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules."
    )]
    ipvs_exclude_cidrs: Vec<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2")]
    ipvs_strict_arp: Option<bool>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")]
    ipvs_tcp_timeout: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")]
    ipvs_tcpfin_timeout: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")]
    ipvs_udp_timeout: Option<Duration>,
    #[arg(
        long,
        value_name = "LocalMode",
        help = "Mode to use to detect local traffic. This parameter is ignored if a config file is specified by --config."
    )]
    detect_local_mode: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "A bridge interface name. When --detect-local-mode is set to BridgeInterface, kube-proxy will consider traffic to be local if it originates from this bridge."
    )]
    pod_bridge_interface: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "An interface name prefix. When --detect-local-mode is set to InterfaceNamePrefix, kube-proxy will consider traffic to be local if it originates from any interface whose name begins with this prefix."
    )]
    pod_interface_name_prefix: Option<String>,
    #[arg(
        long,
        value_name = "string",
        help = "The CIDR range of the pods in the cluster. (For dual-stack clusters, this can be a comma-separated dual-stack pair of CIDR ranges.). When --detect-local-mode is set to ClusterCIDR, kube-proxy will consider traffic to be local if its source IP is in this range. (Otherwise it is not used.) This parameter is ignored if a config file is specified by --config."
    )]
    cluster_cidr: Option<String>,
    #[arg(
        long,
        value_name = "strings",
        help = "A list of CIDR ranges that contain valid node IPs, or alternatively, the single string 'primary'. If set to a list of CIDRs, connections to NodePort services will only be accepted on node IPs in one of the indicated ranges. If set to 'primary', NodePort services will only be accepted on the node's primary IP(s) according to the Node object. If unset, NodePort connections will be accepted on all local IPs. This parameter is ignored if a config file is specified by --config."
    )]
    nodeport_addresses: Vec<String>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "The oom-score-adj value for kube-proxy process. Values must be within the range [-1000, 1000]. This parameter is ignored if a config file is specified by --config. (default -999)")]
    oom_score_adj: Option<i32>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min). (default 32768)")]
    conntrack_max_per_core: Option<i32>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is). (default 131072)")]
    conntrack_min: Option<i32>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "Idle timeout for established TCP connections (0 to leave as-is) (default 24h0m0s)")]
    conntrack_tcp_timeout_established: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "NAT timeout for TCP connections in the CLOSE_WAIT state (default 1h0m0s)")]
    conntrack_tcp_timeout_close_wait: Option<Duration>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")]
    conntrack_tcp_be_liberal: Option<bool>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")]
    conntrack_udp_timeout: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "Idle timeout for ASSURED UDP connections (0 to leave as-is)")]
    conntrack_udp_timeout_stream: Option<Duration>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "How often configuration from the apiserver is refreshed.  Must be greater than 0. (default 15m0s)")]
    config_sync_period: Option<Duration>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "The port to bind the health check server. Use 0 to disable. (DEPRECATED: use --healthz-bind-address instead.) (default 10256)")]
    healthz_port: Option<i32>,
    #[arg(long, value_name = "int32", value_parser = parse_int32,
          help = "The port to bind the metrics server. Use 0 to disable. (DEPRECATED: use --metrics-bind-address instead.) (default 10249)")]
    metrics_port: Option<i32>,
    #[arg(short = 'v', long = "v", value_name = "Level", value_parser = parse_level,
          help = "number for the log level verbosity")]
    v: Option<u32>,
    #[arg(long, value_name = "pattern=N,...", value_parser = parse_vmodule,
          help = "comma-separated list of pattern=N settings for file-filtered logging (only works for text log format)")]
    vmodule: Vec<VModule>,
    #[arg(
        long,
        value_name = "string",
        help = "Sets the log format. Permitted formats: \"json\", \"text\". (default \"text\")"
    )]
    logging_format: Option<String>,
    #[arg(long, value_name = "duration", value_parser = parse_duration,
          help = "Maximum number of seconds between log flushes (default 5s)")]
    log_flush_frequency: Option<Duration>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "[Alpha] In text format, write error messages to stderr and info messages to stdout. The default is to write a single stream to stdout.")]
    log_text_split_stream: Option<bool>,
    #[arg(long, value_name = "quantity", value_parser = parse_quantity,
          help = "[Alpha] In text format with split output streams, the info messages can be buffered for a while to increase performance. The default value of zero bytes disables buffering. The size can be specified as number of bytes (512), multiples of 1000 (1K), multiples of 1024 (2Ki), or powers of those (3M, 4G, 5Mi, 6Gi).")]
    log_text_info_buffer_size: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_bool, value_name = "bool",
          help = "[Beta] In JSON format, write error messages to stderr and info messages to stdout. The default is to write a single stream to stdout.")]
    log_json_split_stream: Option<bool>,
    #[arg(long, value_name = "quantity", value_parser = parse_quantity,
          help = "[Beta] In JSON format with split output streams, the info messages can be buffered for a while to increase performance. The default value of zero bytes disables buffering. The size can be specified as number of bytes (512), multiples of 1000 (1K), multiples of 1024 (2Ki), or powers of those (3M, 4G, 5Mi, 6Gi).")]
    log_json_info_buffer_size: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "version[=true|raw]",
          help = "--version, --version=raw prints version information and quits")]
    version: Option<String>,
}

impl Flags {
    /// `--version` (and `--version=true|raw`) asks for the version; `--version=false`
    /// does not. Returns whether the raw form was asked for.
    fn version_request(&self) -> Option<bool> {
        match self.version.as_deref() {
            None => None,
            Some("raw") => Some(true),
            Some(v) => parse_bool(v).ok().filter(|b| *b).map(|_| false),
        }
    }

    /// pflag's notices for deprecated flags that were used.
    fn deprecation_warnings(&self) -> Vec<String> {
        let deprecated = [
            (
                self.healthz_port.is_some(),
                "healthz-port",
                "healthz-bind-address",
            ),
            (
                self.metrics_port.is_some(),
                "metrics-port",
                "metrics-bind-address",
            ),
        ];
        deprecated
            .into_iter()
            .filter(|(used, _, _)| *used)
            .map(|(_, flag, instead)| {
                format!("flag --{flag} has been deprecated, This flag is deprecated and will be removed in a future release. Please use --{instead} instead.")
            })
            .collect()
    }

    /// Applies the flags that map onto the configuration (only without `--config`).
    fn apply(&self, c: &mut KubeProxyConfiguration) {
        // The mode first: where --masquerade-all and the sync periods land depends on it.
        set(&mut c.mode, &self.proxy_mode);
        self.apply_sync_periods(c);
        if let Some(all) = self.masquerade_all {
            c.set_masquerade_all(all);
        }
        set(&mut c.client_connection.kubeconfig, &self.kubeconfig);
        set(
            &mut c.client_connection.content_type,
            &self.kube_api_content_type,
        );
        set(&mut c.client_connection.burst, &self.kube_api_burst);
        set(&mut c.client_connection.qps, &self.kube_api_qps);
        set(&mut c.bind_address, &self.bind_address);
        set(&mut c.healthz_bind_address, &self.healthz_bind_address);
        set(&mut c.metrics_bind_address, &self.metrics_bind_address);
        set(&mut c.bind_address_hard_fail, &self.bind_address_hard_fail);
        set(&mut c.enable_profiling, &self.profiling);
        set(
            &mut c.show_hidden_metrics_for_version,
            &self.show_hidden_metrics_for_version,
        );
        set_some(&mut c.iptables.masquerade_bit, self.iptables_masquerade_bit);
        set_some(
            &mut c.iptables.localhost_node_ports,
            self.iptables_localhost_nodeports,
        );
        self.apply_ipvs(c);
        set(&mut c.detect_local_mode, &self.detect_local_mode);
        set(
            &mut c.detect_local.bridge_interface,
            &self.pod_bridge_interface,
        );
        set(
            &mut c.detect_local.interface_name_prefix,
            &self.pod_interface_name_prefix,
        );
        set(&mut c.cluster_cidr, &self.cluster_cidr);
        if !self.nodeport_addresses.is_empty() {
            c.node_port_addresses = split_list(&self.nodeport_addresses);
        }
        set_some(&mut c.oom_score_adj, self.oom_score_adj);
        self.apply_conntrack(c);
        set(&mut c.config_sync_period, &self.config_sync_period);
        for (gate, enabled) in self.feature_gates.iter().flat_map(|g| &g.0) {
            c.feature_gates.insert(gate.clone(), *enabled);
        }
    }

    /// Upstream keeps one sync period pair internally, seeded from the iptables
    /// defaults, and `--iptables-*` set it unless the mode is ipvs, `--ipvs-*` only if
    /// it is. (So flag-configured ipvs mode has minSyncPeriod 1s, as upstream.)
    fn apply_sync_periods(&self, c: &mut KubeProxyConfiguration) {
        let seeded = (c.iptables.sync_period, c.iptables.min_sync_period);
        let (sync, min_sync, given) = match c.effective_mode() {
            ProxyMode::IpTables => (
                &mut c.iptables.sync_period,
                &mut c.iptables.min_sync_period,
                (self.iptables_sync_period, self.iptables_min_sync_period),
            ),
            ProxyMode::NfTables => (
                &mut c.nftables.sync_period,
                &mut c.nftables.min_sync_period,
                (self.iptables_sync_period, self.iptables_min_sync_period),
            ),
            ProxyMode::Ipvs => (
                &mut c.ipvs.sync_period,
                &mut c.ipvs.min_sync_period,
                (self.ipvs_sync_period, self.ipvs_min_sync_period),
            ),
        };
        *sync = given.0.unwrap_or(seeded.0);
        *min_sync = given.1.unwrap_or(seeded.1);
    }

    fn apply_ipvs(&self, c: &mut KubeProxyConfiguration) {
        set(&mut c.ipvs.scheduler, &self.ipvs_scheduler);
        if !self.ipvs_exclude_cidrs.is_empty() {
            c.ipvs.exclude_cidrs = split_list(&self.ipvs_exclude_cidrs);
        }
        set(&mut c.ipvs.strict_arp, &self.ipvs_strict_arp);
        set(&mut c.ipvs.tcp_timeout, &self.ipvs_tcp_timeout);
        set(&mut c.ipvs.tcp_fin_timeout, &self.ipvs_tcpfin_timeout);
        set(&mut c.ipvs.udp_timeout, &self.ipvs_udp_timeout);
    }

    fn apply_conntrack(&self, c: &mut KubeProxyConfiguration) {
        let ct = &mut c.conntrack;
        set_some(&mut ct.max_per_core, self.conntrack_max_per_core);
        set_some(&mut ct.min, self.conntrack_min);
        set_some(
            &mut ct.tcp_established_timeout,
            self.conntrack_tcp_timeout_established,
        );
        set_some(
            &mut ct.tcp_close_wait_timeout,
            self.conntrack_tcp_timeout_close_wait,
        );
        set(&mut ct.tcp_be_liberal, &self.conntrack_tcp_be_liberal);
        set(&mut ct.udp_timeout, &self.conntrack_udp_timeout);
        set(
            &mut ct.udp_stream_timeout,
            &self.conntrack_udp_timeout_stream,
        );
    }

    /// Logging flags win over the file too (upstream's `copyLogsFromFlags`); vmodule
    /// entries from flags come before the file's.
    fn apply_logging(&self, c: &mut KubeProxyConfiguration) {
        let logging = &mut c.logging;
        set(&mut logging.verbosity, &self.v);
        set(&mut logging.format, &self.logging_format);
        set(&mut logging.flush_frequency, &self.log_flush_frequency);
        let from_flags = self.vmodule.iter().flat_map(|v| v.0.iter().cloned());
        logging.vmodule.splice(0..0, from_flags);
        let text = &mut logging.options.text;
        set(&mut text.split_stream, &self.log_text_split_stream);
        set(&mut text.info_buffer_size, &self.log_text_info_buffer_size);
        let json = &mut logging.options.json;
        set(&mut json.split_stream, &self.log_json_split_stream);
        set(&mut json.info_buffer_size, &self.log_json_info_buffer_size);
    }
}

fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        *field = value.clone();
    }
}

fn set_some<T>(field: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *field = flag;
    }
}

/// pflag's string slices: every occurrence is a comma-separated list, occurrences
/// accumulate, and an empty occurrence adds nothing.
fn split_list(occurrences: &[String]) -> Vec<String> {
    occurrences
        .iter()
        .filter(|o| !o.is_empty())
        .flat_map(|o| o.split(','))
        .map(|s| s.trim().to_string())
        .collect()
}

/// `--endpoint-selection`: `round-robin` or `random`.
fn parse_endpoint_selection(s: &str) -> Result<Scheduling, String> {
    match s {
        "round-robin" => Ok(Scheduling::RoundRobin),
        "random" => Ok(Scheduling::Random),
        _ => Err(format!("{s:?}: must be \"round-robin\" or \"random\"")),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("parsing {s:?}: expected true or false")),
    }
}

/// Go's `strconv.ParseInt(s, 0, 32)`: decimal, or `0x`/`0o`/`0b`/leading-`0` prefixes.
fn parse_int32(s: &str) -> Result<i32, String> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (8, oct)
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (2, bin)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return Err(format!("parsing {s:?}: invalid syntax"));
    }
    let magnitude = i64::from_str_radix(body, radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => format!("parsing {s:?}: value out of range"),
        _ => format!("parsing {s:?}: invalid syntax"),
    })?;
    let value = if negative { -magnitude } else { magnitude };
    i32::try_from(value).map_err(|_| format!("parsing {s:?}: value out of range"))
}

fn parse_float32(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("parsing {s:?}: invalid syntax"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<Duration>().map_err(|e| e.to_string())
}

/// klog's `-v`: a non-negative decimal level.
fn parse_level(s: &str) -> Result<u32, String> {
    let level: i32 = s
        .parse()
        .map_err(|_| format!("parsing {s:?}: invalid syntax"))?;
    u32::try_from(level).map_err(|_| format!("{s:?}: the verbosity level must not be negative"))
}

/// A byte quantity as Kubernetes writes it: `512`, `1K`, `2Ki`, `1.5M`, `6Gi`.
fn parse_quantity(s: &str) -> Result<String, String> {
    const SUFFIXES: &[&str] = &[
        "", "k", "K", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_len = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    if number.parse::<f64>().is_ok() && SUFFIXES.contains(&suffix) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a valid quantity (e.g. 512, 1K, 2Ki, 5Mi)"
        ))
    }
}

/// `--bind-address`: an IP (empty clears it, for validation to report).
fn parse_ip(s: &str) -> Result<String, String> {
    if s.is_empty() || s.parse::<std::net::IpAddr>().is_ok() {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a valid IP address"))
    }
}

/// `--healthz-bind-address`/`--metrics-bind-address`: `IP` or `IP:port`; empty
/// disables the server.
fn parse_ip_port(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    if s.parse::<std::net::IpAddr>().is_ok() || s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    Err(format!("{s:?} is not in a valid format (ip or ip:port)"))
}

/// One `--feature-gates` occurrence; occurrences merge, later ones win per gate.
#[derive(Debug, Clone)]
struct FeatureGates(Vec<(String, bool)>);

/// One `--vmodule` occurrence; occurrences accumulate.
#[derive(Debug, Clone)]
struct VModule(Vec<VModuleItem>);

/// `--feature-gates=A=true,B=false`.
fn parse_feature_gates(s: &str) -> Result<FeatureGates, String> {
    s.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("missing bool value for {pair}"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("missing feature gate name in {pair:?}"));
            }
            let enabled = parse_bool(value.trim())
                .map_err(|e| format!("invalid value of {key}={value}: {e}"))?;
            Ok((key.to_string(), enabled))
        })
        .collect::<Result<_, _>>()
        .map(FeatureGates)
}

/// `--vmodule=pattern=N,...`.
fn parse_vmodule(s: &str) -> Result<VModule, String> {
    s.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (pattern, level) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected pattern=N"))?;
            if pattern.is_empty() {
                return Err(format!("{item:?}: empty file pattern"));
            }
            Ok(VModuleItem {
                file_pattern: pattern.to_string(),
                verbosity: parse_level(level)?,
            })
        })
        .collect::<Result<_, _>>()
        .map(VModule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn run(args: &str) -> Result<Invocation, CliError> {
        parse(std::iter::once("kube-proxy").chain(args.split_whitespace()))
    }

    fn secs(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n)
    }

    fn run_args(args: &[&str]) -> Result<Invocation, CliError> {
        parse(std::iter::once("kube-proxy").chain(args.iter().copied()))
    }

    fn ok(args: &str) -> Invocation {
        run(args).unwrap_or_else(|e| panic!("{args}: {e}"))
    }

    fn err(args: &str) -> String {
        match run(args) {
            Ok(inv) => panic!("{args}: expected an error, got {inv:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn config_file(body: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(
            file,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
        )
        .unwrap();
        file
    }

    #[test]
    fn no_flags_gives_upstream_defaults() {
        let inv = ok("");
        let mut expected = KubeProxyConfiguration::defaulted();
        expected.apply_platform_defaults();
        assert_eq!(inv.config, expected);
        assert_eq!(inv.command, Command::Daemon);
        assert_eq!(inv.config.effective_mode(), ProxyMode::IpTables);
        assert_eq!(inv.verbosity, 0);
        assert_eq!(inv.log_format, LogFormat::Text);
        assert_eq!(
            (inv.kubeconfig, inv.master, inv.config_file),
            (None, None, None)
        );
    }

    #[test]
    fn value_flags_take_equals_or_next_argument() {
        for args in ["--proxy-mode=nftables", "--proxy-mode nftables"] {
            assert_eq!(
                ok(args).config.effective_mode(),
                ProxyMode::NfTables,
                "{args}"
            );
        }
        assert_eq!(ok("--oom-score-adj -500").config.oom_score_adj, Some(-500));
        assert_eq!(ok("--oom-score-adj=0x10").config.oom_score_adj, Some(16));
        assert_eq!(
            ok("--hostname-override Node1").config.hostname_override,
            "node1"
        );
    }

    #[test]
    fn repeated_flag_last_value_wins() {
        let inv = ok("--proxy-mode=ipvs --proxy-mode=nftables --iptables-masquerade-bit=3 --iptables-masquerade-bit 5");
        assert_eq!(inv.config.mode, "nftables");
        assert_eq!(inv.config.iptables.masquerade_bit, Some(5));
        assert!(!ok("--masquerade-all --masquerade-all=false")
            .config
            .masquerade_all());
    }

    #[test]
    fn booleans_follow_pflag() {
        assert!(ok("--masquerade-all").config.iptables.masquerade_all);
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert!(
                ok(&format!("--masquerade-all={t}")).config.masquerade_all(),
                "{t}"
            );
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert!(
                !ok(&format!("--masquerade-all={f}")).config.masquerade_all(),
                "{f}"
            );
        }
        let inv =
            ok("--iptables-localhost-nodeports=false --ipvs-strict-arp --conntrack-tcp-be-liberal");
        assert_eq!(inv.config.iptables.localhost_node_ports, Some(false));
        assert!(inv.config.ipvs.strict_arp && inv.config.conntrack.tcp_be_liberal);
        let e = err("--masquerade-all=yes");
        assert!(e.contains("--masquerade-all") && e.contains("yes"), "{e}");
    }

    #[test]
    fn boolean_never_consumes_the_next_argument() {
        // pflag leaves `false` as a stray argument, which kube-proxy rejects.
        let e = err("--masquerade-all false");
        assert!(e.contains("'false'"), "{e}");
        let inv = ok("--masquerade-all --proxy-mode nftables");
        assert!(inv.config.nftables.masquerade_all && !inv.config.iptables.masquerade_all);
    }

    #[test]
    fn verbosity_forms() {
        for args in ["-v=4", "-v 4", "-v4", "--v=4", "--v 4", "-v=2 --v=4"] {
            assert_eq!(ok(args).verbosity, 4, "{args}");
        }
        let e = err("-v=high");
        assert!(e.contains("high"), "{e}");
        assert!(!err("--v=-1").is_empty());
    }

    #[test]
    fn lists_split_on_commas_and_accumulate() {
        let inv = ok("--nodeport-addresses=10.0.0.0/8,primary --nodeport-addresses 192.168.0.0/16");
        assert_eq!(
            inv.config.node_port_addresses,
            ["10.0.0.0/8", "primary", "192.168.0.0/16"]
        );
        let inv = ok("--proxy-mode=ipvs --ipvs-exclude-cidrs=10.1.0.0/16,10.2.0.0/16");
        assert_eq!(
            inv.config.ipvs.exclude_cidrs,
            ["10.1.0.0/16", "10.2.0.0/16"]
        );
        assert!(ok("--nodeport-addresses=")
            .config
            .node_port_addresses
            .is_empty());
        let inv = ok("--feature-gates=A=true,B=false --feature-gates B=true");
        assert_eq!(inv.config.feature_gates.get("A"), Some(&true));
        assert_eq!(inv.config.feature_gates.get("B"), Some(&true));
        assert!(err("--feature-gates=A").contains("--feature-gates"));
    }

    #[test]
    fn durations_in_go_syntax() {
        let inv = ok("--iptables-sync-period=15m --iptables-min-sync-period 500ms --config-sync-period=1h30m");
        assert_eq!(inv.config.sync_period(), secs(15 * 60));
        assert_eq!(
            inv.config.min_sync_period(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(inv.config.config_sync_period, Duration::from_mins(90));
        let inv = ok("--conntrack-tcp-timeout-established=0s --conntrack-udp-timeout=30s");
        assert_eq!(
            inv.config.conntrack.tcp_established_timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(inv.config.conntrack.udp_timeout, Duration::from_secs(30));
        let e = err("--iptables-sync-period=10");
        assert!(
            e.contains("--iptables-sync-period") && e.contains("10"),
            "{e}"
        );
    }

    #[test]
    fn sync_period_flags_follow_the_mode_like_upstream() {
        // --ipvs-* is ignored outside ipvs mode, --iptables-* inside it.
        let inv = ok("--ipvs-sync-period=5s --iptables-sync-period=7s");
        assert_eq!(inv.config.sync_period(), secs(7));
        let inv = ok("--proxy-mode=ipvs --ipvs-sync-period=5s --iptables-sync-period=7s");
        assert_eq!(inv.config.sync_period(), secs(5));
        // Upstream seeds its single internal pair from the iptables defaults.
        assert_eq!(inv.config.min_sync_period(), secs(1));
        let inv = ok("--proxy-mode=nftables --iptables-sync-period=7s");
        assert_eq!(inv.config.nftables.sync_period, Duration::from_secs(7));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = err("--iptables-masquerade-bit=abc");
        assert!(
            e.contains("--iptables-masquerade-bit") && e.contains("abc"),
            "{e}"
        );
        let e = err("--iptables-masquerade-bit=32");
        assert!(
            e.contains("iptables.masqueradeBit (--iptables-masquerade-bit)")
                && e.contains("[0, 31]"),
            "{e}"
        );
        let e = err("--proxy-mode=userspace");
        assert!(e.contains("--proxy-mode") && e.contains("userspace"), "{e}");
        let e = err("--bind-address=1.2.3");
        assert!(e.contains("--bind-address") && e.contains("1.2.3"), "{e}");
        let e = err("--cluster-cidr=10.0.0.0/8,10.1.0.0/16");
        assert!(e.contains("--cluster-cidr"), "{e}");
        let e = run_args(&["--hostname-override", " \t"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostname-override"), "{e}");
        assert!(err("--no-such-flag").contains("--no-such-flag"));
    }

    #[test]
    fn deprecated_port_flags() {
        let inv = ok("--healthz-port=0 --metrics-bind-address=10.0.0.1 --metrics-port=9999");
        assert_eq!(inv.config.healthz_bind_address, "");
        assert_eq!(inv.config.metrics_bind_address, "10.0.0.1:9999");
        // A port already in the address wins, as upstream's AppendPortIfNeeded.
        let inv = ok("--metrics-bind-address=0.0.0.0:10249 --metrics-port=1234");
        assert_eq!(inv.config.metrics_bind_address, "0.0.0.0:10249");
    }

    #[test]
    fn deprecated_flags_warn() {
        let inv = ok("--healthz-port=10256");
        assert_eq!(inv.warnings.len(), 1);
        assert!(
            inv.warnings[0].contains("--healthz-bind-address"),
            "{:?}",
            inv.warnings
        );
    }

    #[test]
    fn logging_flags() {
        let inv = ok("--logging-format=json --log-json-split-stream --log-json-info-buffer-size=1Mi --log-flush-frequency=2s");
        assert_eq!(inv.log_format, LogFormat::Json);
        let logging = &inv.config.logging;
        assert!(logging.options.json.split_stream);
        assert_eq!(logging.options.json.info_buffer_size, "1Mi");
        assert_eq!(logging.flush_frequency, Duration::from_secs(2));
        let inv = ok("--vmodule=proxier=5,sync*=3 --vmodule=x=1");
        let patterns: Vec<_> = inv
            .config
            .logging
            .vmodule
            .iter()
            .map(|v| (v.file_pattern.as_str(), v.verbosity))
            .collect();
        assert_eq!(patterns, [("proxier", 5), ("sync*", 3), ("x", 1)]);
        // vmodule only works with text: upstream rejects the combination.
        assert!(err("--logging-format=json --vmodule=a=1").contains("vmodule"));
        assert!(err("--logging-format=xml").contains("--logging-format"));
        assert!(err("--log-text-info-buffer-size=lots").contains("lots"));
    }

    #[test]
    fn commands() {
        assert_eq!(ok("--cleanup").command, Command::Cleanup);
        assert_eq!(ok("--cleanup=false").command, Command::Daemon);
        assert_eq!(ok("--init-only").command, Command::InitOnly);
        assert_eq!(
            ok("--cleanup --write-config-to /tmp/x.yaml").command,
            Command::WriteConfig {
                path: "/tmp/x.yaml".into()
            }
        );
        assert_eq!(ok("--version").command, Command::Version { raw: false });
        assert_eq!(ok("--version=raw").command, Command::Version { raw: true });
        assert_eq!(ok("--version=false").command, Command::Daemon);
        let inv = ok("render -f a.yaml --filename dir/ --proxy-mode nftables");
        assert_eq!(
            inv.command,
            Command::Render {
                files: vec!["a.yaml".into(), "dir/".into()]
            }
        );
        assert_eq!(inv.config.effective_mode(), ProxyMode::NfTables);
        let inv = ok("apply -f a.yaml,b.yaml --filename=c/");
        assert_eq!(
            inv.command,
            Command::Apply {
                files: vec!["a.yaml".into(), "b.yaml".into(), "c/".into()]
            }
        );
        let inv = ok("--masquerade-all apply -f x.yaml");
        assert_eq!(
            inv.command,
            Command::Apply {
                files: vec!["x.yaml".into()]
            }
        );
        assert!(inv.config.masquerade_all());
        assert!(err("render").contains("--filename"));
        let inv = ok("--proxy-mode=ipvs render -f x --proxy-mode=nftables");
        assert_eq!(inv.config.effective_mode(), ProxyMode::NfTables);
    }

    #[test]
    fn help_lists_upstream_flags() {
        let e = run("--help").unwrap_err();
        assert!(e.is_help());
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        for flag in [
            "--proxy-mode",
            "--masquerade-all",
            "--conntrack-tcp-timeout-close-wait",
            "--write-config-to",
            "-v, --v",
        ] {
            assert!(help.contains(flag), "{flag} missing from help:\n{help}");
        }
        assert!(!run("--bogus").unwrap_err().is_help());
    }

    #[test]
    fn config_file_wins_over_flags_except_hostname_and_logging() {
        let file = config_file(
            "mode: nftables\nhostnameOverride: from-file\nclusterCIDR: 10.244.0.0/16\n",
        );
        let path = file.path().display();
        let inv = ok(&format!(
            "--config={path} --proxy-mode=ipvs --masquerade-all --cluster-cidr=10.0.0.0/8 --hostname-override=From-Flag -v=5 --master=https://api:6443"
        ));
        assert_eq!(inv.config.effective_mode(), ProxyMode::NfTables);
        assert!(!inv.config.masquerade_all());
        assert_eq!(inv.config.cluster_cidr, "10.244.0.0/16");
        assert_eq!(inv.config.hostname_override, "from-flag");
        assert_eq!(inv.verbosity, 5);
        assert_eq!(inv.master.as_deref(), Some("https://api:6443"));
        assert_eq!(inv.config_file.as_deref(), Some(file.path()));
        assert_eq!(
            inv.warnings,
            [
                "flag --cluster-cidr is ignored because --config is given",
                "flag --masquerade-all is ignored because --config is given",
                "flag --proxy-mode is ignored because --config is given",
            ]
        );
        let inv = ok(&format!(
            "--config={path} render -f m.yaml --proxy-mode=ipvs"
        ));
        assert_eq!(inv.config.effective_mode(), ProxyMode::NfTables);
        assert_eq!(
            inv.warnings,
            ["flag --proxy-mode is ignored because --config is given"]
        );
        // Without the override flag the file's name is used as written.
        let inv = ok(&format!("--config {path}"));
        assert_eq!(inv.config.hostname_override, "from-file");
        assert!(inv.warnings.is_empty());
    }

    #[test]
    fn endpoint_selection_defaults_to_round_robin_and_survives_config() {
        assert_eq!(ok("").scheduling, Scheduling::RoundRobin);
        assert_eq!(
            ok("--endpoint-selection=random").scheduling,
            Scheduling::Random
        );
        assert_eq!(
            ok("--endpoint-selection random --endpoint-selection round-robin").scheduling,
            Scheduling::RoundRobin
        );
        assert!(err("--endpoint-selection=lc").contains("--endpoint-selection"));
        let file = config_file("mode: nftables\n");
        let path = file.path().display();
        let inv = ok(&format!("--config={path} --endpoint-selection=random"));
        assert_eq!(inv.scheduling, Scheduling::Random);
        assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    }

    #[test]
    fn random_endpoint_selection_is_refused_in_ipvs_mode() {
        let e = err("--proxy-mode=ipvs --endpoint-selection=random");
        assert!(
            e.contains("--endpoint-selection") && e.contains("--ipvs-scheduler"),
            "{e}"
        );
        let file = config_file("mode: ipvs\n");
        let path = file.path().display();
        assert!(err(&format!("--config={path} --endpoint-selection=random"))
            .contains("not available in ipvs mode"));
        let inv = ok("--proxy-mode=ipvs --endpoint-selection=round-robin");
        assert_eq!(inv.scheduling, Scheduling::RoundRobin);
    }

    #[test]
    fn config_file_is_defaulted_and_resolved() {
        let file =
            config_file("mode: nftables\nnftables:\n  masqueradeAll: true\n  syncPeriod: 45s\n");
        let inv = ok(&format!("--config {}", file.path().display()));
        assert!(inv.config.masquerade_all());
        assert_eq!(inv.config.sync_period(), secs(45));
        assert_eq!(inv.config.min_sync_period(), secs(1));
        assert_eq!(inv.config.node_port_addresses, ["primary"]);
        assert_eq!(inv.config.detect_local_mode, "ClusterCIDR");
    }

    #[test]
    fn config_file_typo_names_field_and_file() {
        let file = config_file("iptables:\n  masqueradeBitt: 14\n");
        let e = err(&format!("--config {}", file.path().display()));
        assert!(
            e.contains("unknown field \"iptables.masqueradeBitt\""),
            "{e}"
        );
        assert!(e.contains(&file.path().display().to_string()), "{e}");
    }

    #[test]
    fn config_file_validation_names_field() {
        let file = config_file("iptables:\n  masqueradeBit: 40\n");
        let e = err(&format!("--config {}", file.path().display()));
        assert!(
            e.contains("iptables.masqueradeBit: Invalid value: 40"),
            "{e}"
        );
        assert!(
            !e.contains("(--"),
            "file errors name fields, not flags: {e}"
        );
        let e = err("--config /nonexistent/kube-proxy.yaml");
        assert!(e.contains("/nonexistent/kube-proxy.yaml"), "{e}");
    }

    #[test]
    fn empty_values_are_explicit() {
        assert_eq!(ok("--config= --proxy-mode=ipvs").config.mode, "ipvs");
        let inv = ok("--metrics-bind-address= --healthz-bind-address=");
        assert_eq!(inv.config.metrics_bind_address, "");
        assert_eq!(inv.config.healthz_bind_address, "");
        let inv = run_args(&["--metrics-bind-address", ""]).unwrap();
        assert_eq!(inv.config.metrics_bind_address, "");
        // Everything after `--` is left alone (and rejected: no positional arguments).
        assert!(run_args(&["--", "--config="]).is_err());
    }

    #[test]
    fn write_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("written.yaml");
        let inv = ok(&format!(
            "--write-config-to={} --proxy-mode=nftables --masquerade-all --cluster-cidr=10.244.0.0/16,fd00::/48 --nodeport-addresses=10.0.0.0/8 --iptables-sync-period=1m -v=3 --feature-gates=Foo=true",
            out.display()
        ));
        assert_eq!(inv.command, Command::WriteConfig { path: out.clone() });
        inv.config.write_file(&out).unwrap();
        let reread = ok(&format!("--config={}", out.display()));
        assert_eq!(reread.config, inv.config);
        assert_eq!(reread.verbosity, 3);
    }

    #[test]
    fn upstream_written_config_loads() {
        // The shape `kube-proxy --write-config-to` of upstream v1.33 produces.
        let file = config_file(UPSTREAM_WRITTEN);
        let inv = ok(&format!("--config {}", file.path().display()));
        let mut expected = KubeProxyConfiguration::defaulted();
        expected.apply_platform_defaults();
        expected.logging.flush_frequency = Duration::from_secs(5);
        assert_eq!(inv.config, expected);
    }

    const UPSTREAM_WRITTEN: &str = r#"bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: ""
  qps: 5
clusterCIDR: ""
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ClusterCIDR
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 30s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;
}
