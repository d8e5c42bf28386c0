//! The Jadugar reference host: the `jadugar` binary as a library.
//!
//! The binary only parses arguments and configuration; everything else is
//! here, so that tests (and anyone embedding the whole host) start the very
//! same server with [`run`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = jadugar_host::Config::load(None)?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! jadugar_host::run(listener, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! - [`config`]: `jadugar.toml`, `JADUGAR_*` variables, defaults.
//! - [`Backends`]: database, Redis, clock and sealer, from the config.
//! - [`App`] / [`AppBuilder`]: the wiring each component plugs into.
//! - [`commands`]: `migrate` and `backup`.
//! - [`telemetry`]: logs, access log, metrics.

pub mod app;
pub mod backends;
pub mod commands;
pub mod components;
pub mod config;
pub mod error;
pub mod server;
pub mod telemetry;

use std::future::Future;

use tokio::net::TcpListener;

pub use app::{App, AppBuilder};
pub use backends::Backends;
pub use config::Config;
pub use error::HostError;

/// Opens the backends `config` names, mounts every component and serves on
/// `listener` until `shutdown` completes (then shuts down gracefully).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HostError> {
    let app = build(config).await?;
    app.serve(listener, shutdown).await
}

/// Opens the backends and mounts every component, without serving.
pub async fn build(config: Config) -> Result<App, HostError> {
    let backends = Backends::open(&config).await?;
    let builder = App::builder(config, backends.clone());
    match components::mount_all(builder).await {
        Ok(builder) => Ok(builder.build()),
        Err(e) => {
            backends.close().await;
            Err(e)
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
