//! The `tidegate` command: parses the command line, sets up logging and the
//! runtime, and calls the library. Errors become one sentence on stderr and a
//! non-zero exit status, never a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
        Command::Run { config: path } => {
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
            let runtime = match runtime(config.workers) {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(async {
                let running = match tidegate::server::start_with(config, Some(path)).await {
                    Ok(running) => running,
                    Err(e) => return fail(&e.to_string()),
                };
                serve_until_shutdown(&running).await;
                ExitCode::SUCCESS
            })
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

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains, unless a
/// second SIGTERM or SIGINT asks to exit at once.
async fn serve_until_shutdown(running: &tidegate::Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("tidegate: cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // A refused reload is logged by `reload`; the running config stays.
                let _ = tidegate::lifecycle::reload(&running.shared);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining tunnels (send the signal again to exit at once)");
    tokio::select! {
        () = tidegate::lifecycle::shutdown(&running.shared) => {}
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    running.stop_admin();
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
