use clap::Args;
use clap_complete::Shell;

/// Print a shell completion script, e.g.
/// `forwarder completions bash > /etc/bash_completion.d/forwarder`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionsArgs {
    pub fn execute(self, command: &mut clap::Command) -> anyhow::Result<()> {
        let Self { shell } = self;
        clap_complete::generate(shell, command, "forwarder", &mut std::io::stdout());
        Ok(())
    }
}
