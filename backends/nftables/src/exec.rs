//! How transactions reach the kernel: the [`NftExecutor`] trait and its implementation
//! over the `nft` binary.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::ir::Family;
use crate::parse::{parse_table, ParseError};
use crate::table::TableState;
use crate::transaction::{Transaction, TABLE};

/// An executor failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The kernel (or nft) refused the transaction; nothing was applied.
    #[error("nft refused the transaction: {0}")]
    Refused(String),
    /// The executor could not run at all.
    #[error("running {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A read-back could not be understood.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Applies transactions and reads back kube-proxy's own tables. Implementations must never
/// list or touch any other table.
pub trait NftExecutor: Send {
    /// Applies `tx` atomically: all of it or, on error, nothing.
    fn apply(&mut self, tx: &Transaction) -> Result<(), ExecError>;

    /// The current content of `table <family> kube-proxy`, or `None` when it does not exist.
    fn read_table(&mut self, family: Family) -> Result<Option<TableState>, ExecError>;

    /// The current content of `table <family> <name>` (another component's own table,
    /// such as IPVS mode's), or `None` when it does not exist. Executors that only know
    /// [`TABLE`] refuse other names.
    fn read_named_table(
        &mut self,
        family: Family,
        name: &str,
    ) -> Result<Option<TableState>, ExecError> {
        if name == TABLE {
            return self.read_table(family);
        }
        Err(ExecError::Refused(format!(
            "this executor cannot read table {family} {name}"
        )))
    }
}

/// The real executor: runs `nft -f -` with the script on stdin, and `nft list table`.
#[derive(Debug, Clone)]
pub struct NftCommand {
    binary: PathBuf,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand {
            binary: PathBuf::from("nft"),
        }
    }
}

impl NftCommand {
    /// Uses the `nft` found on `PATH`.
    pub fn new() -> Self {
        NftCommand::default()
    }

    /// Uses a specific `nft` binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        NftCommand {
            binary: binary.into(),
        }
    }

    /// Asks the kernel whether it would accept `tx` (`nft -c`), changing nothing.
    pub fn check(&self, tx: &Transaction) -> Result<(), ExecError> {
        let out = self.run(&["-c", "-f", "-"], Some(&tx.render()))?;
        refused_unless_success(&out)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, ExecError> {
        run_tool(&self.binary, args, stdin).map_err(|source| ExecError::Io {
            what: format!("{} {}", self.binary.display(), args.join(" ")),
            source,
        })
    }
}

/// Runs `binary args`, feeding it `stdin` (or nothing: `/dev/null`), and captures its exit
/// status, stdout and stderr. Public because the iptables backend runs its tools the same
/// way; each caller wraps the error (the tool could not be started or waited for) in its
/// own error type.
pub fn run_tool(
    binary: impl AsRef<OsStr>,
    args: &[&str],
    stdin: Option<&str>,
) -> std::io::Result<Output> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write means the tool exited early; its stderr tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    child.wait_with_output()
}

impl NftExecutor for NftCommand {
    fn apply(&mut self, tx: &Transaction) -> Result<(), ExecError> {
        let out = self.run(&["-f", "-"], Some(&tx.render()))?;
        refused_unless_success(&out)
    }

    fn read_table(&mut self, family: Family) -> Result<Option<TableState>, ExecError> {
        self.read_named_table(family, TABLE)
    }

    fn read_named_table(
        &mut self,
        family: Family,
        name: &str,
    ) -> Result<Option<TableState>, ExecError> {
        let out = self.run(&["list", "table", family.as_str(), name], None)?;
        if out.status.success() {
            return Ok(Some(parse_table(&String::from_utf8_lossy(&out.stdout))?));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(ExecError::Refused(stderr.trim().to_string()))
        }
    }
}

fn refused_unless_success(out: &std::process::Output) -> Result<(), ExecError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(ExecError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
