//! How restore input reaches the kernel: the [`IptablesExecutor`] trait, the two iptables
//! variants, and [`IptablesCommand`], which runs the real binaries.

use std::process::Output;

use kube_proxy_model::IpFamily;

use crate::restore::{Args, Table};

/// upstream's `-w 5 -W 100000`: wait up to 5 s for the xtables lock, polling every 100 ms,
/// instead of failing when another program (kubelet, a CNI plugin) holds it.
const WAIT_FLAGS: [&str; 4] = ["-w", "5", "-W", "100000"];

/// An executor failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The tool refused the input or command; for a restore, the table it failed in keeps
    /// its previous rules.
    #[error("{tool} refused: {message}")]
    Refused { tool: String, message: String },
    /// The tool could not run at all.
    #[error("running {tool}: {source}")]
    Io {
        tool: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    /// The tool is not installed: there is nothing of what it manages to clean up.
    pub fn is_missing_tool(&self) -> bool {
        matches!(self, ExecError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The two implementations of the iptables tools; a node uses one of them, and rules
/// written with the other are invisible to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
    /// `iptables-nft`: the same rules, stored as nf_tables.
    Nft,
}

impl Variant {
    /// Both variants.
    pub const ALL: [Variant; 2] = [Variant::Legacy, Variant::Nft];

    /// The name of `tool` (`iptables`, `iptables-restore`, `iptables-save`) of this
    /// variant for `family`: `ip6tables-nft-restore`, say.
    pub fn binary(&self, family: IpFamily, tool: Tool) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let variant = match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        };
        match tool {
            Tool::Iptables => format!("{base}-{variant}"),
            Tool::Restore => format!("{base}-{variant}-restore"),
            Tool::Save => format!("{base}-{variant}-save"),
        }
    }

    /// `legacy` or `nft`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }
}

/// One of the three iptables tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Iptables,
    Restore,
    Save,
}

/// Runs restores and the few single commands iptables mode needs. Implementations act on
/// one variant of the tools.
pub trait IptablesExecutor: Send {
    /// `iptables-restore --noflush --counters` of `input` for `family`. Each table is
    /// committed atomically: on error the table that failed keeps its previous rules.
    fn restore(&mut self, family: IpFamily, input: &str) -> Result<(), ExecError>;

    /// `iptables-save` of `table`, or of every table that exists when `None`.
    fn save(&mut self, family: IpFamily, table: Option<Table>) -> Result<String, ExecError>;

    /// The rules of `chain` (each as its words after `-A CHAIN`), or `None` when the chain
    /// does not exist.
    fn list_chain(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<Args>>, ExecError>;

    /// Makes `rule` the first rule of `chain` unless the chain has it already (`-C`, then
    /// `-I`). Returns whether it was inserted.
    fn ensure_rule(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
        rule: &[String],
    ) -> Result<bool, ExecError>;
}

/// The real executor: runs one variant's binaries.
#[derive(Debug, Clone)]
pub struct IptablesCommand {
    variant: Variant,
}

impl IptablesCommand {
    /// Runs the binaries of `variant`.
    pub fn new(variant: Variant) -> Self {
        IptablesCommand { variant }
    }

    /// The variant this executor runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    fn run(
        &self,
        family: IpFamily,
        tool: Tool,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(String, Output), ExecError> {
        let binary = self.variant.binary(family, tool);
        run(&binary, args, stdin).map(|out| (binary, out))
    }
}

/// Runs `binary args`, feeding `stdin`.
pub(crate) fn run(binary: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, ExecError> {
    kube_proxy_nftables::exec::run_tool(binary, args, stdin).map_err(|source| ExecError::Io {
        tool: binary.to_string(),
        source,
    })
}

/// The error of a tool that ran and failed, with its stderr.
pub(crate) fn refused(tool: String, out: &Output) -> ExecError {
    ExecError::Refused {
        tool,
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Exit status 1 of `-C`/`-S`: the rule or chain is not there (2 and more are errors).
const EXIT_NOT_FOUND: i32 = 1;

impl IptablesExecutor for IptablesCommand {
    fn restore(&mut self, family: IpFamily, input: &str) -> Result<(), ExecError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["--noflush", "--counters"]);
        let (tool, out) = self.run(family, Tool::Restore, &args, Some(input))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(refused(tool, &out))
        }
    }

    fn save(&mut self, family: IpFamily, table: Option<Table>) -> Result<String, ExecError> {
        let args: Vec<&str> = table.iter().flat_map(|t| ["-t", t.as_str()]).collect();
        let (tool, out) = self.run(family, Tool::Save, &args, None)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(refused(tool, &out))
        }
    }

    fn list_chain(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<Args>>, ExecError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["-t", table.as_str(), "-S", chain]);
        let (tool, out) = self.run(family, Tool::Iptables, &args, None)?;
        if out.status.code() == Some(EXIT_NOT_FOUND) {
            return Ok(None);
        }
        if !out.status.success() {
            return Err(refused(tool, &out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rules = Vec::new();
        for line in text.lines() {
            let words = crate::restore::split_words(line).map_err(|e| ExecError::Refused {
                tool: tool.clone(),
                message: e.to_string(),
            })?;
            if words.len() >= 2 && words[0] == "-A" {
                rules.push(words[2..].to_vec());
            }
        }
        Ok(Some(rules))
    }

    fn ensure_rule(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
        rule: &[String],
    ) -> Result<bool, ExecError> {
        let command = |verb: &'static str| {
            let mut args: Vec<&str> = WAIT_FLAGS.to_vec();
            args.extend(["-t", table.as_str(), verb, chain]);
            args.extend(rule.iter().map(String::as_str));
            self.run(family, Tool::Iptables, &args, None)
        };
        let (_, check) = command("-C")?;
        if check.status.success() {
            return Ok(false);
        }
        let (tool, insert) = command("-I")?;
        if insert.status.success() {
            Ok(true)
        } else {
            Err(refused(tool, &insert))
        }
    }
}
