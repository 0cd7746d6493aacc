//! `forwarder kube`: LoadBalancer Services from a Kubernetes cluster.

use clap::Subcommand;

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
