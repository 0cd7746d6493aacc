use std::{io::Read as _, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use ipnet::Ipv4Net;

use crate::{
    config::{ServiceFile, kube::parse_cidr},
    kube::{document, input::Cluster, settings::Overrides, translate},
};

/// Print the service file the controller would write, from
/// `kubectl get services,nodes -A -o json` output, without cluster
/// credentials: to see or diff what it would do, or to run from a timer.
///
/// The file goes to stdout (exit 0, accepted by `forwarder check`);
/// problems of single Services or Nodes go to stderr, one line each, and
/// leave those out. Unreadable input: one line and exit 1.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// kubectl's JSON output (a List of Services and Nodes), or `-` for stdin.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// An address pool for VIPs, as an IPv4 CIDR; repeatable. Replaces the
    /// pools of the --services file's [kube] table.
    #[arg(long = "pool", value_name = "CIDR", value_parser = |text: &str| parse_cidr(text, "pool"))]
    pools: Vec<Ipv4Net>,
    /// The current service file: its hand-written services and comments
    /// are kept, its [kube] table gives pools, class and address type.
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,
    /// The spec.loadBalancerClass served [default: the [kube] table's,
    /// else forwarder.dev/lb].
    #[arg(long, value_name = "CLASS", value_parser = |text: &str| crate::config::kube::check_class(text))]
    class: Option<String>,
    /// The node address used as backend: InternalIP, ExternalIP, ...
    /// [default: the [kube] table's, else InternalIP].
    #[arg(long, value_name = "TYPE", value_parser = clap::builder::PossibleValuesParser::new(crate::config::kube::ADDRESS_TYPES))]
    address_type: Option<String>,
}

impl RenderArgs {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { from, pools, services, class, address_type } = self;
        let json = if from.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("stdin")?;
            text
        } else {
            std::fs::read_to_string(&from).with_context(|| from.display().to_string())?
        };
        let cluster = Cluster::from_json(&json).with_context(|| from.display().to_string())?;
        let base = match &services {
            Some(path) => std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
            None => String::new(),
        };
        let label = services.unwrap_or_else(|| PathBuf::from("<no service file>"));
        let current = ServiceFile::parse(&label, &base)?;
        let settings = Overrides { pools, class, address_type }.apply(current.kube.as_ref())?;
        let translation = translate::translate(&cluster, &settings, &current.services);
        for problem in &translation.problems {
            eprintln!("warning: {problem}");
        }
        let (text, _) = document::render(&base, Some(&settings), &translation.services)?;
        print!("{text}");
        Ok(())
    }
}
