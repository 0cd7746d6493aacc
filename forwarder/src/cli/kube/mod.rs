//! `forwarder kube`: LoadBalancer Services from a Kubernetes cluster.

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;

use crate::{
    config::kube::{ADDRESS_TYPES, check_class, parse_cidr},
    kube::settings::Overrides,
};

mod render;
mod run;

/// Give Kubernetes LoadBalancer Services a VIP and forward them to their
/// nodes' NodePorts, through the service file.
///
/// Services of `type: LoadBalancer` whose `spec.loadBalancerClass` is
/// unset or this controller's class get a VIP from the pools and one
/// service per port, named `kube.NAMESPACE.NAME.PORT`; services of the
/// file with other names are hand-written and kept as they are.
#[derive(Debug, Subcommand)]
pub enum KubeCommand {
    Run(run::RunArgs),
    Render(render::RenderArgs),
}

impl KubeCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            KubeCommand::Run(args) => args.execute(),
            KubeCommand::Render(args) => args.execute(),
        }
    }
}

/// The settings both verbs take over the service file's `[kube]` table.
#[derive(Debug, Args)]
struct SettingsArgs {
    /// An address pool for VIPs, as an IPv4 CIDR; repeatable. Replaces the
    /// pools of the service file's [kube] table.
    #[arg(long = "pool", value_name = "CIDR", value_parser = |text: &str| parse_cidr(text, "pool"))]
    pools: Vec<Ipv4Net>,
    /// The spec.loadBalancerClass served [default: the [kube] table's,
    /// else forwarder.dev/lb].
    #[arg(long, value_name = "CLASS", value_parser = |text: &str| check_class(text))]
    class: Option<String>,
    /// The node address used as backend [default: the [kube] table's,
    /// else InternalIP].
    #[arg(long, value_name = "TYPE", value_parser = clap::builder::PossibleValuesParser::new(ADDRESS_TYPES))]
    address_type: Option<String>,
}

impl SettingsArgs {
    fn overrides(self) -> Overrides {
        let Self { pools, class, address_type } = self;
        Overrides { pools, class, address_type }
    }
}
