//! PLACEHOLDER — replaced by the auth work.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// List tokens.
    List,
}

pub async fn run(
    _client: kube::Client,
    _cmd: TokenCommand,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("not implemented yet".into())
}
