//! `waypoint generate|apply|list|status|delete`: istioctl's `waypoint` command group.
//!
//! These commands sit before the data path: they write the Gateway API `Gateway` from which a
//! waypoint is provisioned (by istiod for class `istio-waypoint`, or by this project's
//! waypoint controller for its class), label namespaces to use it, and read back the Gateway
//! status the controller reports. They take istioctl's flags and print istioctl's messages and
//! tables byte for byte, so scripts written against `istioctl waypoint` keep working.
//!
//! - [`generate`]: the Gateway from the flags, and its YAML (pure).
//! - [`table`]: istioctl's tab-aligned tables (pure).
//! - [`client`]: the Kubernetes client from a kubeconfig, and API errors as istioctl words
//!   them.
//! - [`apply`], [`list`], [`delete`]: the commands that talk to the API server (`list` also
//!   holds `status`).
//!
//! One flag is not istioctl's: `--gateway-class` (default `istio-waypoint`) names the
//! GatewayClass a generated or applied Gateway uses, and which Gateways `list`, `status` and
//! `delete` treat as waypoints, so the commands also serve this project's controller (its
//! chart's class is `ambient-waypoint`).

pub mod apply;
pub mod client;
pub mod delete;
pub mod generate;
pub mod list;
pub mod table;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use generate::{GatewayError, GatewayParams, TrafficType};

/// The default waypoint name (istioctl's `--name` default, `constants.DefaultNamespaceWaypoint`).
pub const DEFAULT_NAME: &str = "waypoint";
/// The name `--name` refuses: `istio.io/use-waypoint: none` opts out of a namespace waypoint.
pub const RESERVED_NAME: &str = "none";
/// istiod's waypoint GatewayClass, the default of `--gateway-class`.
pub const ISTIO_WAYPOINT_CLASS: &str = "istio-waypoint";
/// The field manager of `apply`'s server-side apply (istioctl's).
pub const FIELD_MANAGER: &str = "istioctl";
/// How long `apply --wait` and `status` wait for `Programmed=True` by default (istioctl's 90s).
pub const DEFAULT_WAYPOINT_TIMEOUT: &str = "90s";
/// How often `apply --wait` and `status` read the Gateway again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The labels the commands read and write.
pub mod labels {
    /// On a Gateway: the traffic its waypoint handles (`--for`). On a namespace: `ambient`
    /// when its pods are captured by ztunnel. The same labels the controller reads.
    pub use crate::k8s::labels::{DATAPLANE_MODE, WAYPOINT_FOR};
    /// On a Gateway: the control-plane revision (`--revision`).
    pub const REVISION: &str = "istio.io/rev";
    /// On a namespace: the waypoint its services and workloads use (`--enroll-namespace`).
    pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
    /// The value of [`DATAPLANE_MODE`] that enrolls a namespace.
    pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
}

/// Why a command failed. The messages are istioctl's (printed after `Error: `).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Gateway could not be built from the flags.
    #[error("failed to create gateway: {0}")]
    Gateway(#[from] GatewayError),
    /// No usable kubeconfig (or in-cluster configuration).
    #[error("failed to create Kubernetes client: {0}")]
    Client(String),
    /// The namespace does not exist.
    #[error("namespace: {0} not found")]
    NamespaceNotFound(String),
    /// Reading the namespace failed otherwise.
    #[error("failed to get namespace {namespace}: {message}")]
    NamespaceGet {
        /// The namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// Reading the namespace for its `istio.io/dataplane-mode` failed.
    #[error("failed to check if namespace is labeled ambient: {0}")]
    AmbientCheck(Box<Error>),
    /// Writing `istio.io/use-waypoint` on the namespace failed.
    #[error("failed to label namespace with waypoint: {0}")]
    LabelNamespace(Box<Error>),
    /// The namespace update was refused.
    #[error("failed to update namespace {namespace}: {message}")]
    NamespaceUpdate {
        /// The namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// The apply was answered 404: the Gateway API CRDs are not installed.
    #[error("missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: {0}")]
    MissingCrds(String),
    /// `apply --wait` gave up. The Gateway is named as last read (empty when that read failed,
    /// whose error follows).
    #[error("timed out while waiting for waypoint\t{namespace}/{name}{}", suffix(.cause))]
    WaitTimeout {
        /// The Gateway's namespace, as last read.
        namespace: String,
        /// The Gateway's name, as last read.
        name: String,
        /// The error of the last read, if it failed.
        cause: Option<String>,
    },
    /// `status` gave up waiting for `Programmed=True`.
    #[error(
        "failed to print waypoint status: timed out while retrieving status for waypoint\t{namespace}/{name}{}",
        suffix(.cause)
    )]
    StatusTimeout {
        /// The Gateway's namespace, as last read.
        namespace: String,
        /// The Gateway's name, as last read.
        name: String,
        /// The error of the last read, if it failed.
        cause: Option<String>,
    },
    /// `delete` with names and `--all` or `--revision`.
    #[error("cannot specify waypoint names when deleting all waypoints")]
    DeleteNamesAndAll,
    /// `delete` with neither names nor `--all`/`--revision`.
    #[error(
        "must specify a waypoint name or delete all using --all or delete specific revision using --revision"
    )]
    DeleteNothing,
    /// Deletes that failed other than with 404, in the format of Go's `multierror`.
    #[error("{}", multierror(.0))]
    Delete(Vec<String>),
    /// A positional argument where the command takes none.
    #[error("unknown subcommand {0:?}")]
    UnknownSubcommand(String),
    /// Any other API error, as the API server words it.
    #[error("{0}")]
    Api(String),
    /// Writing the output failed.
    #[error("{0}")]
    Output(#[from] std::io::Error),
}

fn suffix(cause: &Option<String>) -> String {
    cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
}

/// Several errors as Go's `hashicorp/go-multierror` lists them.
fn multierror(errors: &[String]) -> String {
    let points: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
    match errors.len() {
        1 => format!("1 error occurred:\n\t{}\n\n", points[0]),
        n => format!("{n} errors occurred:\n\t{}\n\n", points.join("\n\t")),
    }
}

/// Flags every command takes: istioctl's persistent `--name`, its global `-n`, `--kubeconfig`
/// and `--context`, and `--gateway-class`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CommonArgs {
    /// Name of the waypoint. Empty means `waypoint`; `none` is reserved.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// The namespace. Default: the kubeconfig context's namespace, else `default`; `generate`
    /// writes no namespace unless this is given.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubernetes configuration file. Default: KUBECONFIG, else ~/.kube/config, else the
    /// in-cluster service account.
    #[arg(short = 'c', long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use. Default: the current context.
    #[arg(long)]
    pub context: Option<String>,
    /// The GatewayClass of waypoints (not an istioctl flag): the class a generated or applied
    /// Gateway names, and the class `list`, `status` and `delete` look for. Use
    /// `ambient-waypoint` (the waypoint-controller chart's default class) for this project's
    /// controller.
    #[arg(long, default_value = ISTIO_WAYPOINT_CLASS)]
    pub gateway_class: String,
}

impl CommonArgs {
    /// The `-n` value, when one was given and is not empty.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|ns| !ns.is_empty())
    }
}

/// The flags of `generate`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct GenerateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The traffic type the waypoint handles: [all none service workload]. Default: the label
    /// is left off and the GatewayClass (else istiod: service) decides.
    #[arg(long = "for", value_name = "TYPE")]
    pub traffic_type: Option<String>,
    /// The revision to label the waypoint with (`istio.io/rev`).
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
}

impl GenerateArgs {
    /// The Gateway parameters for `namespace`.
    pub fn params<'a>(&'a self, namespace: Option<&'a str>) -> GatewayParams<'a> {
        GatewayParams {
            name: &self.common.name,
            namespace,
            traffic_type: self.traffic_type.as_deref(),
            revision: self.revision.as_deref(),
            gateway_class: &self.common.gateway_class,
        }
    }
}

/// The flags of `apply`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ApplyArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub gateway: GenerateArgs,
    /// Label the namespace `istio.io/use-waypoint=<name>` once the waypoint is applied.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// With --enroll-namespace: replace the waypoint the namespace already uses.
    #[arg(long)]
    pub overwrite: bool,
    /// Wait until the Gateway is `Programmed`.
    #[arg(short = 'w', long, num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub wait: bool,
    /// How long --wait waits (Go duration).
    #[arg(long, default_value = DEFAULT_WAYPOINT_TIMEOUT, value_parser = go_duration)]
    pub waypoint_timeout: Duration,
}

/// The flags of `list`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// List the waypoints of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// The flags of `status`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Show the waypoints of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Wait for each waypoint to be `Programmed` (`--wait=false` shows one reading).
    #[arg(short = 'w', long, num_args = 0..=1, require_equals = true,
          default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub wait: bool,
    /// How long the status may take to become `Programmed` (Go duration).
    #[arg(long, default_value = DEFAULT_WAYPOINT_TIMEOUT, value_parser = go_duration)]
    pub waypoint_timeout: Duration,
    /// Refused, as by istioctl: `status` takes no arguments.
    #[arg(hide = true)]
    pub args: Vec<String>,
}

/// The flags of `delete`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct DeleteArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The waypoints (Gateways) to delete.
    pub names: Vec<String>,
    /// Delete every waypoint of the namespace.
    #[arg(long)]
    pub all: bool,
    /// Delete the waypoints labelled with this revision.
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
}

impl DeleteArgs {
    /// `-r`, when given and not empty.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref().filter(|r| !r.is_empty())
    }
}

/// The commands, as subcommands of the `waypoint` binary.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Generate a waypoint configuration as YAML (istioctl waypoint generate).
    Generate(GenerateArgs),
    /// Apply a waypoint configuration to the cluster (server-side apply, field manager
    /// istioctl).
    Apply(ApplyArgs),
    /// List managed waypoint configurations in the cluster.
    List(ListArgs),
    /// Show the status of waypoints in the cluster.
    Status(StatusArgs),
    /// Delete a waypoint configuration from the cluster.
    Delete(DeleteArgs),
}

/// Runs `command`, writing what it prints to `out`. The Kubernetes client is built only for
/// the commands that need one, after their arguments are checked.
pub async fn run(command: &Command, out: &mut dyn Write) -> Result<(), Error> {
    match command {
        Command::Generate(args) => {
            let yaml = generate::generate(&args.params(args.common.namespace()))?;
            out.write_all(yaml.as_bytes())?;
        }
        Command::Apply(args) => {
            let cluster = client::connect(&args.gateway.common).await?;
            apply::apply(&cluster, args, out).await?;
        }
        Command::List(args) => {
            let cluster = client::connect(&args.common).await?;
            list::list(&cluster, args, out).await?;
        }
        Command::Status(args) => {
            if let Some(first) = args.args.first() {
                return Err(Error::UnknownSubcommand(first.clone()));
            }
            let cluster = client::connect(&args.common).await?;
            list::status(&cluster, args, out).await?;
        }
        Command::Delete(args) => {
            delete::check(args)?;
            let cluster = client::connect(&args.common).await?;
            delete::delete(&cluster, args, out).await?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Parses a Go duration flag (`90s`, `1m30s`).
fn go_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multierror_format() {
        assert_eq!(
            Error::Delete(vec!["boom".into()]).to_string(),
            "1 error occurred:\n\t* boom\n\n"
        );
        assert_eq!(
            Error::Delete(vec!["a".into(), "b".into()]).to_string(),
            "2 errors occurred:\n\t* a\n\t* b\n\n"
        );
    }

    #[test]
    fn timeouts_name_the_gateway_and_the_last_error() {
        let e = Error::WaitTimeout {
            namespace: "default".into(),
            name: "waypoint".into(),
            cause: None,
        };
        assert_eq!(
            e.to_string(),
            "timed out while waiting for waypoint\tdefault/waypoint"
        );
        let e = Error::StatusTimeout {
            namespace: String::new(),
            name: String::new(),
            cause: Some("boom".into()),
        };
        assert_eq!(
            e.to_string(),
            "failed to print waypoint status: timed out while retrieving status for waypoint\t/: boom"
        );
    }
}
