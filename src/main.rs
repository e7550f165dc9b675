//! kube-scim: parse config, set up tracing, build shared state, run the SCIM server and
//! the controller under one shutdown signal. Everything else lives in the library.
//!
//! One image, two components: the chart runs `--enable-scim=true --enable-controller=false`
//! (the internet-facing SCIM endpoint) and `--enable-scim=false --enable-controller=true`
//! (controller and admission webhook) as two Deployments with two ServiceAccounts. The
//! components share nothing in memory that the other needs: the controller watches
//! ScimUsers, ScimGroups and their member shards itself (its revocation fast lane is fed
//! by those watches), and each process's /readyz covers only the components it runs.
//!
//! The same binary is the people's tool: `token`, and `access`, `who` and `plan`
//! (`kube_scim::cli`), also as the kubectl plugin `kubectl scim` when its file is named
//! `kubectl-scim`.
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kube_scim::config::RunConfig;
use kube_scim::telemetry::{self, Metrics, Readiness};

/// jemalloc returns freed memory to the system and stays fast with many threads (see
/// Cargo.toml); the library leaves the choice to the binary.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's defaults keep freed pages for 10 s before returning them. A controller
/// pass at a large tenant allocates and frees a few hundred MB every few seconds, so
/// RSS carried the last passes' garbage on top of the live heap. A background thread
/// returns them after 1 s instead. `_RJEM_MALLOC_CONF` in the environment still
/// overrides this. (The symbol is read by jemalloc at start-up; a thin pointer to a
/// NUL-terminated string, as C's `const char *malloc_conf`.)
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    /// Run the operator: the SCIM endpoint and (under leader election) the controller.
    Run {
        #[command(flatten)]
        config: Box<RunConfig>,
        /// Exit when standard input closes (lets a parent process, e.g. a test run, own us).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Create, list and revoke SCIM bearer tokens (stored hashed in Secrets).
    #[command(subcommand)]
    Token(kube_scim::auth::cli::TokenCommand),
    /// Explain a user's access through kube-scim, and why grants are missing.
    ///
    /// Every grant as the chain group → mapping → role → namespace or cluster, with the
    /// binding object that carries it and whether it is live; for every mapping that
    /// selects one of the user's groups, what stands in the way of a grant.
    Access(kube_scim::cli::AccessArgs),
    /// Who has access to a namespace through kube-scim, and by which mapping.
    ///
    /// Cluster-wide grants (ClusterRoleBindings) reach every namespace: they are listed
    /// too, marked cluster-wide.
    Who(kube_scim::cli::WhoArgs),
    /// Preview what applying mappings would change, writing nothing.
    ///
    /// Runs the controller's plan on the live cluster with and without the files'
    /// mappings and prints the bindings created, updated and deleted, the subjects gained
    /// and lost, and the refusals, held removals and Events that would follow.
    /// Exit code 0: no binding would change; 2: some would; 1: error.
    Plan(kube_scim::cli::PlanArgs),
    /// Write the CRD YAML generated from the Rust types.
    Crdgen {
        /// Directory to write one file per CRD into; repeat to write several identical
        /// copies (`--out crds --out charts/kube-scim/crds`); stdout when absent.
        #[arg(long)]
        out: Vec<std::path::PathBuf>,
    },
}

/// The command line; invoked as `kubectl-scim` (a kubectl plugin), help and errors
/// read `kubectl scim`.
fn parse_cli() -> Cli {
    let plugin = std::env::args_os()
        .next()
        .is_some_and(|argv0| kube_scim::cli::invoked_as_plugin(&argv0));
    if !plugin {
        return Cli::parse();
    }
    let matches = Cli::command()
        .name(kube_scim::cli::PLUGIN_NAME)
        .bin_name("kubectl scim")
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let cli = parse_cli();
    // access, who and plan print their errors themselves: plainly, exit code 1.
    let report = |r: Result<ExitCode, kube_scim::cli::CliError>| {
        r.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
    };
    match cli.command {
        Command::Access(args) => Ok(report(kube_scim::cli::access(args).await)),
        Command::Who(args) => Ok(report(kube_scim::cli::who(args).await)),
        Command::Plan(args) => Ok(report(kube_scim::cli::plan_files(args).await)),
        Command::Crdgen { out } => {
            for crd in kube_scim::crd::all() {
                let yaml = kube_scim::crd::render(&crd)?;
                if out.is_empty() {
                    print!("---\n{yaml}");
                }
                for dir in &out {
                    std::fs::write(dir.join(kube_scim::crd::file_name(&crd)), &yaml)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(cmd) => {
            let client = kube::Client::try_default().await?;
            kube_scim::auth::cli::run(client, cmd)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            exit_on_stdin_eof,
        } => run(*config, exit_on_stdin_eof)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

async fn run(config: RunConfig, exit_on_stdin_eof: bool) -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init_tracing(&config.log);
    // A wrong entry stops the start (instead of refusing every client's writes later).
    kube_scim::scim::extensions::install(&config.extension_attributes)?;
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    readiness
        .scim_enabled
        .store(config.enable_scim, Ordering::Relaxed);
    readiness
        .controller_enabled
        .store(config.enable_controller, Ordering::Relaxed);
    let shutdown = CancellationToken::new();

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(kube_scim::probes::serve(
        config.probe_listen,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    if config.enable_scim {
        tasks.spawn(kube_scim::scim::server::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
    }
    if let Some((cert, key)) = config.webhook.tls_files() {
        tasks.spawn(kube_scim::admission::server::run(
            client.clone(),
            config.webhook.clone(),
            cert,
            key,
            config.controller.protected_roles.clone(),
            shutdown.clone(),
        ));
    } else if config.enable_controller {
        // The webhook belongs with the controller (the chart serves it from the controller
        // Deployment); a SCIM-only process has nothing to warn about.
        tracing::warn!("admission webhook off (no --webhook-cert-file): mapping authors are not checked by kube-scim");
    }
    if config.enable_controller {
        tasks.spawn(kube_scim::controller::run(
            client.clone(),
            config.namespace.clone(),
            config.controller.clone(),
            config.listing(),
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
    }

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal(exit_on_stdin_eof).await;
        tracing::info!("shutting down");
        signal.cancel();
    });

    // The first part to stop (error or shutdown) stops the others.
    let mut result: Result<(), Box<dyn std::error::Error>> = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "component failed");
                if result.is_ok() {
                    result = Err(e.to_string().into());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "component panicked");
                if result.is_ok() {
                    result = Err(e.to_string().into());
                }
            }
        }
        shutdown.cancel();
    }
    result
}

async fn wait_for_signal(exit_on_stdin_eof: bool) {
    let stdin_closed = async {
        if exit_on_stdin_eof {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = stdin_closed => {}
    }
}
