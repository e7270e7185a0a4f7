//! `kube-proxy`: parse the command line, set up logging, run the command.

use std::io::IsTerminal;
use std::process::ExitCode;

use kube_proxy::app;
use kube_proxy::cli::{self, Command, Invocation, LogFormat};

fn main() -> ExitCode {
    let inv = match cli::parse(std::env::args_os()) {
        Ok(inv) => inv,
        Err(e) => e.exit(),
    };
    init_logging(&inv);
    for warning in &inv.warnings {
        tracing::warn!("{warning}");
    }
    match run(&inv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(inv: &Invocation) -> anyhow::Result<()> {
    match &inv.command {
        Command::Render { files } => app::render(inv, files),
        Command::Apply { files } => app::apply(inv, files),
        Command::Cleanup => app::cleanup(),
        Command::WriteConfig { path } => {
            inv.config.write_file(path)?;
            tracing::info!(path = %path.display(), "wrote the effective configuration");
            Ok(())
        }
        Command::Version { raw } => {
            let version = env!("CARGO_PKG_VERSION");
            if *raw {
                println!("kube-proxy-rs v{version} (compatible with Kubernetes v1.33 to v1.37)");
            } else {
                println!("kube-proxy-rs v{version}");
            }
            Ok(())
        }
        // Upstream prepares the kernel as for the proxy, then exits.
        Command::InitOnly => kube_proxy::conntrack_sysctls::init_only(&inv.config),
        Command::Daemon => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(app::daemon(inv)),
    }
}

/// klog's `-v` levels mapped onto tracing levels: 0–1 info, 2–4 debug, 5+ trace.
/// `RUST_LOG`, when set, wins.
fn init_logging(inv: &Invocation) {
    let level = match inv.verbosity {
        0..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match inv.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
