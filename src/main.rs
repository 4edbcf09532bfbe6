//! The `tidegate` command: parses the command line, sets up logging and the
//! runtime, and calls the library. Errors become one sentence on stderr and a
//! non-zero exit status, never a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tidegate", version, about = "A reverse proxy and WebSocket-aware load balancer.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (logs to stderr).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from a running tidegate (set by `upgrade`).
        #[arg(long, value_name = "SOCKET", hide = true)]
        upgrade_from: Option<PathBuf>,
    },
    /// Validate a config and exit: 0 when valid, 2 with every problem listed.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// A self-contained demonstration on loopback: three chat backends behind the proxy.
    Demo {
        /// Port of the demo's web page (falls back to any free port when taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Ask a running tidegate to reload its config.
    Reload(Admin),
    /// Ask a running tidegate to hand its sockets to a new binary and drain.
    Upgrade(Admin),
    /// Show a running tidegate's pools, backends and tunnels.
    Status(Admin),
    /// Stop sending new connections to a backend and move its tunnels away.
    Drain {
        pool: String,
        backend: String,
        /// Follow the drain until the backend has no open connection.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Let a drained backend take new connections again.
    Undrain {
        pool: String,
        backend: String,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Where a running tidegate's admin endpoint is.
#[derive(clap::Args)]
struct Admin {
    /// The admin endpoint's address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: std::net::SocketAddr,
    /// Print the admin API's JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take the proxy down: tracing would report the
        // failed write with `eprintln!`, which panics when stderr is gone.
        .log_internal_errors(false)
        .init();
    match cli.command {
        Command::Check { config } => match tidegate::config::load(&config) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                eprintln!("{}: {} problem(s) found", config.display(), errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Run { config: path, upgrade_from } => {
            // The binary a later upgrade starts: this path, read now, before
            // a package manager replaces the file.
            let exe = std::env::current_exe().ok();
            let config = match tidegate::config::load(&path) {
                Ok(config) => config,
                Err(errors) => {
                    eprint!("{errors}");
                    eprintln!(
                        "tidegate: not starting: fix the config above (check it with `tidegate check --config {}`)",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            };
            let (inherited, parent) = match upgrade_from.as_deref().map(tidegate::handover::receive).transpose() {
                Ok(Some((sockets, parent))) => (sockets, Some(parent)),
                Ok(None) => Default::default(),
                Err(e) => return fail(&e.to_string()),
            };
            let runtime = match runtime(config.workers) {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(async {
                let opts = tidegate::server::StartOptions { config_path: Some(path), inherited, exe };
                let running = match tidegate::server::start_with(config, opts).await {
                    Ok(running) => running,
                    Err(e) => return fail(&e.to_string()),
                };
                if let Some(parent) = parent
                    && let Err(e) = tidegate::handover::ready(parent)
                {
                    return fail(&format!("binary upgrade: cannot tell the old process we are ready: {e}"));
                }
                serve_until_shutdown(&running).await;
                ExitCode::SUCCESS
            })
        }
        Command::Reload(a) => ctl(|| tidegate::ctl::reload(a.admin, a.json)),
        Command::Upgrade(a) => ctl(|| tidegate::ctl::upgrade(a.admin, a.json)),
        Command::Status(a) => ctl(|| tidegate::ctl::status(a.admin, a.json)),
        Command::Drain { pool, backend, wait, admin: a } => {
            ctl(|| tidegate::ctl::drain(a.admin, &pool, &backend, wait, a.json))
        }
        Command::Undrain { pool, backend, admin: a } => {
            ctl(|| tidegate::ctl::undrain(a.admin, &pool, &backend, a.json))
        }
        Command::Demo { port } => {
            let runtime = match runtime(None) {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(async {
                let demo = match tidegate::demo::start(port).await {
                    Ok(demo) => demo,
                    Err(e) => return fail(&e.to_string()),
                };
                println!("tidegate demo: open http://{}/ in two browsers (same room: same backend)", demo.url_host());
                println!("  backends: {}", demo.backends.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
                println!("  admin:    http://{}/  (metrics at /metrics)", demo.proxy.admin);
                println!("  stop with Ctrl-C");
                wait_for_signal().await;
                ExitCode::SUCCESS
            })
        }
    }
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// Runs an operator command on a small runtime of its own.
fn ctl<F: std::future::Future<Output = Result<(), tidegate::ctl::CtlError>>>(command: impl FnOnce() -> F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(command()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP and upgrading on
/// SIGUSR2; then drains, unless a second SIGTERM or SIGINT asks to exit at once.
async fn serve_until_shutdown(running: &tidegate::Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let shared = &running.shared;
    let (Ok(mut hup), Ok(mut usr2), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("tidegate: cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // A refused reload is logged by `reload`; the running config stays.
                let _ = tidegate::lifecycle::reload(shared);
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: binary upgrade");
                if let Err(e) = tidegate::lifecycle::upgrade(shared).await {
                    tracing::error!("{e}");
                }
            }
            () = shared.handed_over.notified() => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining tunnels (send the signal again to exit at once)");
    tokio::select! {
        () = tidegate::lifecycle::shutdown(shared) => {}
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    shared.stop_admin();
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("tidegate: {message}");
    ExitCode::FAILURE
}
