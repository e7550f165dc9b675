use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kube-scim",
    version,
    about = "SCIM 2.0 provisioning into Kubernetes RBAC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CRD YAML generated from the Rust types.
    Crdgen {
        /// Directory to write one file per CRD into; stdout when absent.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out } => {
            for crd in kube_scim::crd::all() {
                let yaml = kube_scim::crd::render(&crd)?;
                match &out {
                    Some(dir) => std::fs::write(dir.join(kube_scim::crd::file_name(&crd)), yaml)?,
                    None => print!("---\n{yaml}"),
                }
            }
        }
    }
    Ok(())
}
