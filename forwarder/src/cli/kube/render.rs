use std::{io::Read as _, path::PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::{
    config::ServiceFile,
    kube::{document, input::Cluster, translate},
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
    /// The current service file: its hand-written services and comments
    /// are kept, its [kube] table gives pools, class and address type.
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,
    #[command(flatten)]
    settings: super::SettingsArgs,
}

impl RenderArgs {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { from, settings, services } = self;
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
        let settings = settings.overrides().apply(current.kube.as_ref())?;
        let translation = translate::translate(&cluster, &settings, &current.services);
        for problem in &translation.problems {
            eprintln!("warning: {problem}");
        }
        let (text, _) = document::render(&base, Some(&settings), &translation.services)?;
        print!("{text}");
        Ok(())
    }
}
