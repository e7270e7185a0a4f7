//! The `KubeProxyConfiguration` file (`kubeproxy.config.k8s.io/v1alpha1`): its types,
//! upstream's defaults and validation, strict loading, and its resolution into what the
//! proxy runs with (mode, sync periods, node name, [`kube_proxy_model::ProxyOptions`]).
//!
//! Flags are mapped onto the same type by [`crate::cli`], so the rest of the program
//! sees one effective configuration whichever way it was given.

mod defaults;
mod duration;
mod load;
mod resolve;
mod types;
mod validation;

use std::path::{Path, PathBuf};

pub(crate) use defaults::append_port_if_needed;
pub use defaults::{HEALTHZ_PORT, MASQUERADE_BIT, METRICS_PORT, OOM_SCORE_ADJ};
pub use duration::{Duration, DurationError};
pub use resolve::{LocalMode, ProxyMode};
pub use types::{
    ClientConnectionConfiguration, ConntrackConfiguration, DetectLocalConfiguration, FormatOptions,
    IpTablesConfiguration, IpvsConfiguration, KubeProxyConfiguration, LoggingConfiguration,
    LoggingOptions, NfTablesConfiguration, VModuleItem, WinkernelConfiguration, API_VERSION, KIND,
};
pub use validation::{FieldError, ValidationErrors};

/// Why a configuration could not be loaded, resolved or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a well-formed `KubeProxyConfiguration` (message names the field).
    #[error("{0}")]
    Decode(String),
    /// A decode error in a named file.
    #[error("failed to decode config file {}: {message}", path.display())]
    DecodeFile { path: PathBuf, message: String },
    /// Fields hold values upstream rejects.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ValidationErrors),
    /// The node name could not be determined.
    #[error("{0}")]
    Hostname(String),
    /// `--write-config-to` failed.
    #[error("failed to write config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Attaches the file name to a decode error.
    fn in_file(self, path: &Path) -> Self {
        match self {
            ConfigError::Decode(message) => ConfigError::DecodeFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }
}
