//! The gateway on its own: `jadugar-gateway --config gateway.toml`.
//!
//! The file holds a `[gateway]` section (the same as in `jadugar.toml`),
//! optionally `listen` and `threads`, and `[[api_keys]]` for a minimal
//! static API-key authentication (SHA-256 lookup of `x-api-key` or
//! `Authorization: Bearer`), so the standalone gateway can enforce
//! authenticated routes without the rest of the platform.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use jadugar_core::{Principal, PrincipalKind};
use jadugar_gateway::Gateway;
use jadugar_gateway::model::{PathMatch, RouteSpec};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(name = "jadugar-gateway", about = "Run the Jadugar gateway alone")]
struct Args {
    /// The TOML configuration file.
    #[arg(long, short)]
    config: std::path::PathBuf,
    /// Listen address (overrides `listen` in the file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Worker threads (overrides `threads`; 1 = a single-threaded runtime).
    #[arg(long)]
    threads: Option<usize>,
    /// Add this many extra prefix routes `/synthetic-N` to the first route's
    /// upstream (for measuring matching with many routes).
    #[arg(long, default_value_t = 0)]
    synthetic_routes: usize,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    gateway: jadugar_gateway::Config,
    #[serde(default)]
    api_keys: Vec<ApiKey>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ApiKey {
    key: String,
    subject: String,
    #[serde(default)]
    permissions: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)?;
    let mut file: File = toml::from_str(&text)?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let threads = args
        .threads
        .or(file.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    if args.synthetic_routes > 0 {
        let Some(first) = file.gateway.routes.first().cloned() else {
            return Err(
                "--synthetic-routes needs at least one route to copy the upstream from".into(),
            );
        };
        for i in 0..args.synthetic_routes {
            let mut r = RouteSpec::new(
                format!("synthetic-{i}"),
                format!("/synthetic-{i}"),
                Vec::<String>::new(),
            );
            r.path_match = PathMatch::Prefix;
            r.upstream = first.upstream.clone();
            file.gateway.routes.push(r);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let access = if file.gateway.access_log {
            "info"
        } else {
            "off"
        };
        tracing_subscriber::EnvFilter::new(format!("warn,jadugar_gateway::access={access}"))
    });
    // Colours only for a terminal: not in log files or collectors.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false)
        .init();
    let keys: Arc<HashMap<[u8; 32], Principal>> = Arc::new(
        file.api_keys
            .iter()
            .map(|k| {
                let digest: [u8; 32] = Sha256::digest(k.key.as_bytes()).into();
                let p = Principal::new(k.subject.clone(), PrincipalKind::ApiKey)
                    .with_permissions(k.permissions.clone());
                (digest, p)
            })
            .collect(),
    );
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(file.gateway, listen, keys))
}

async fn run(
    config: jadugar_gateway::Config,
    listen: SocketAddr,
    keys: Arc<HashMap<[u8; 32], Principal>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = Gateway::builder(config)
        .build()
        .await
        .map_err(|e| match e {
            jadugar_gateway::Error::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("\n")
                .into(),
            other => Box::<dyn std::error::Error>::from(other.to_string()),
        })?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let _tasks = gateway.spawn_background(cancel.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "jadugar-gateway listening on {listen} with {} routes",
        gateway.route_count()
    );
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
        }
    };
    if keys.is_empty() {
        jadugar_gateway::serve(listener, gateway, shutdown).await?;
    } else {
        serve_with_keys(listener, gateway, keys, shutdown).await?;
    }
    Ok(())
}

fn authenticate(
    keys: &HashMap<[u8; 32], Principal>,
    headers: &http::HeaderMap,
) -> Option<Principal> {
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    keys.get(&digest).cloned()
}

async fn serve_with_keys(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    keys: Arc<HashMap<[u8; 32], Principal>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let service = tower::service_fn(
        move |mut req: http::Request<jadugar_gateway::RequestBody>| {
            if let Some(p) = authenticate(&keys, req.headers()) {
                req.extensions_mut().insert(p);
            }
            let fut = gateway.handle(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        },
    );
    jadugar_gateway::serve_service(listener, service, shutdown).await
}
