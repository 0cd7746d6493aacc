use std::path::{Path, PathBuf};

use clap::Args;

use super::output;
use crate::{config::ServiceFile, control::Request};

/// Validate FILE, apply its difference to the running daemon, and make it
/// the service file (unless --runtime-only). An invalid file changes
/// nothing.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    file: PathBuf,
    /// Change only the running daemon, not the service file.
    #[arg(long)]
    runtime_only: bool,
    /// Print what changed as JSON.
    #[arg(long)]
    json: bool,
}

impl ApplyArgs {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let Self { file, runtime_only, json } = self;
        let text =
            std::fs::read_to_string(&file).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
        // Checked here first, so a bad file fails the same with or without a daemon.
        ServiceFile::parse(&file, &text)?;
        let path = std::path::absolute(&file)?;
        let request = Request::Apply { path, text, persist: output::persist(runtime_only) };
        let summary: crate::state::Summary = output::ask(run_dir, &request)?;
        if json {
            return output::print_json(&summary);
        }
        let list = |names: &[String]| if names.is_empty() { "-".to_owned() } else { names.join(", ") };
        println!(
            "{}: applied: added {}; changed {}; removed {}",
            file.display(),
            list(&summary.added),
            list(&summary.changed),
            list(&summary.removed)
        );
        Ok(())
    }
}
