use std::path::PathBuf;

use clap::Args;

use crate::config::ServiceFile;

/// Validate a service file without applying it: exit 0 when valid, else
/// print `FILE:LINE:COLUMN: problem` and exit 1.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The service file to check.
    file: PathBuf,
}

impl CheckArgs {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { file } = self;
        let parsed = ServiceFile::load(&file)?;
        let backends: usize = parsed.services.iter().map(|s| s.backends.len()).sum();
        println!("{}: ok: {} services, {backends} backends", file.display(), parsed.services.len());
        Ok(())
    }
}
