//! The command line: argument parsing, logging set-up, and the process's life cycle.
//!
//! `main.rs` only calls [`main`]. The configuration is loaded and validated before any port is
//! bound, so a bad file costs one clear message and exit code 2, never a half-started proxy.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server::{Server, ServerHandle, Shutdown};

mod healthcheck;

/// A reverse proxy that coalesces identical in-flight requests into one upstream fetch.
#[derive(Debug, Parser)]
#[command(
    name = "coalesce-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid, 2 when not.
    #[arg(long, requires = "config")]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// GET a health URL (the admin listener's /healthz): exit 0 on a 2xx answer, 1 otherwise.
    /// For Docker's HEALTHCHECK, since the runtime image has no shell and no curl.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["url", "config"])))]
    Healthcheck {
        /// e.g. http://127.0.0.1:9901/healthz
        #[arg(long, conflicts_with = "config")]
        url: Option<http::Uri>,
        /// Check the proxy this configuration describes: its admin /healthz, or without an
        /// admin listener a connection to its first listen address.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Exit code for a configuration that cannot be used.
const EXIT_BAD_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Healthcheck {
            url,
            config,
            timeout,
        }) => {
            return run_with_runtime(|| async move {
                match (url, config) {
                    (Some(url), _) => healthcheck::check(url, timeout).await,
                    (None, Some(path)) => healthcheck::check_config(&path, timeout).await,
                    (None, None) => anyhow::bail!("healthcheck needs --url or --config"),
                }
            })
        }
        None => {}
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config PATH is required (or try the demo: `coalesce-demo`)");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check {
        println!(
            "config {} is valid: {} listener(s), {} upstream(s), {} route(s)",
            path.display(),
            config.server.listen.len(),
            config.upstreams.len(),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    crate::observe::logging::init_logging(&config.log);
    run_with_runtime(|| serve(config, path))
}

/// Runs `body` on a multi-threaded runtime (the server starts its own workers beside it),
/// with the open-file limit raised; its error is printed with its whole cause chain.
pub fn run_with_runtime<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let server = Server::bind(config).await?;
    let reloads = tokio::spawn(reload_on_sighup(path, server.handle()));
    let outcome = server.run(shutdown).await;
    reloads.abort();
    match outcome {
        Shutdown::Drained => Ok(()),
        // Exit 1: connections were cut, so some clients lost responses; a supervisor (systemd,
        // a CI job) should see that this stop was not clean. Kubernetes ignores the status of
        // a pod being deleted, so this costs nothing there.
        Shutdown::GraceRanOut => Err(anyhow::anyhow!(
            "shutdown_grace ran out: connections still open were closed"
        )),
    }
}

/// Re-reads the configuration on every SIGHUP. A configuration that does not validate is
/// logged and ignored: the old one keeps serving.
async fn reload_on_sighup(path: PathBuf, server: ServerHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match Config::load(&path) {
                Ok(config) => {
                    server.reload(config);
                }
                Err(err) => {
                    tracing::error!(error = %err, "reload rejected; still serving the previous config")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, server);
    }
}

/// Resolves on SIGTERM (Kubernetes and Docker send it to start a graceful shutdown) or SIGINT.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // Registered now, before the listeners are announced: a SIGTERM sent the moment
    // "listening" is logged must start a drain, not hit the default action and kill.
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        match terminate {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT will stop the proxy");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every client connection and every upstream connection is a file descriptor; the common
/// soft limit of 1024 would cap a herd far below what the proxy can serve. Raise the soft
/// limit to the hard one, as nginx's `worker_rlimit_nofile` does.
fn raise_open_file_limit() {
    #[cfg(unix)]
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
}
