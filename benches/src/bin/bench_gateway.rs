//! The gateway under load: `jadugar-gateway` (and, in `full` mode,
//! `jadugar-auth`'s `AuthLayer`) composed as libraries, as a user embedding
//! them would, on a single-threaded tokio runtime so it uses one core like
//! the one-worker nginx, HAProxy and Caddy it is compared with.
//!
//! Modes (all proxy `/api/...` to `--upstream`):
//! - `plain`: one prefix route, nothing else;
//! - `full`: the same route requiring an API key with permission
//!   `bench:proxy` (the key lives in a memory store of `jadugar-auth`; its
//!   secret is written to `--key-file`), a per-API-key rate limit high enough
//!   never to trigger, and a header transform (sets `x-user-id` from the
//!   principal upstream, adds `x-gateway` to the response);
//! - `many-routes`: the plain route among 10,000 routes (`/svc{i}/items/{id}`
//!   prefix routes with a parameter).
//!
//! `--access-log` turns the gateway's access log on (one line per request on
//! stdout, through `tracing`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use jadugar_auth::service::{NewApiKey, NewUser};
use jadugar_auth::{AuthLayer, AuthService};
use jadugar_gateway::Gateway;
use jadugar_gateway::model::{AuthPolicy, NameValue, PathMatch, RateKey, RateLimitSpec, RouteSpec};
use tokio::net::TcpListener;
use tower::Layer;

/// mimalloc, as the `jadugar` binary uses: the proxy allocates a few small blocks per request, and glibc's
/// allocator costs more per block.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Routes configured in `many-routes` mode (the measured one included).
const MANY_ROUTES: usize = 10_000;
/// The permission the `full` route requires and the API key holds.
const PERMISSION: &str = "bench:proxy";

/// What the gateway is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One plain prefix route.
    Plain,
    /// API-key auth, a rate limit that never triggers, a header transform.
    Full,
    /// The plain route among 10,000 routes.
    ManyRoutes,
}

/// Command line of the benchmark gateway.
#[derive(Debug, Parser)]
#[command(about = "The Jadugar gateway, as a library, for the load benchmark")]
struct Args {
    /// How the gateway is configured.
    #[arg(long, value_enum, default_value = "plain")]
    mode: Mode,
    /// Address to listen on (HTTP/1.1 and h2c with prior knowledge).
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// The upstream, `host:port`.
    #[arg(long, default_value = "127.0.0.1:18080")]
    upstream: String,
    /// Write one access-log line per request to stdout.
    #[arg(long)]
    access_log: bool,
    /// Where `full` mode writes the API key's secret.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Speak HTTP/2 (h2c, prior knowledge) to the upstream.
    #[arg(long)]
    upstream_h2: bool,
}

/// The `/api` route to the upstream.
fn api_route(upstream: &str) -> RouteSpec {
    RouteSpec::new("api", "/api", [format!("http://{upstream}")]).prefix()
}

/// The gateway configuration of `mode`.
fn config(args: &Args) -> jadugar_gateway::Config {
    let mut config = jadugar_gateway::Config {
        access_log: args.access_log,
        ..jadugar_gateway::Config::default()
    };
    let mut route = api_route(&args.upstream);
    route.upstream.http2 = args.upstream_h2;
    match args.mode {
        Mode::Plain => {}
        Mode::Full => {
            route.auth = AuthPolicy::Require(PERMISSION.into());
            route.rate_limit = Some(RateLimitSpec {
                key: RateKey::ApiKey,
                requests: 1_000_000_000,
                per_secs: 1,
                burst: None,
                shared: false,
                fail_open: true,
            });
            route.transform.request_headers.set.push(NameValue {
                name: "x-user-id".into(),
                value: "{principal.subject}".into(),
            });
            route.transform.response_headers.add.push(NameValue {
                name: "x-gateway".into(),
                value: "jadugar".into(),
            });
        }
        Mode::ManyRoutes => {
            for i in 0..MANY_ROUTES - 1 {
                let mut other = RouteSpec::new(
                    format!("svc-{i}"),
                    format!("/svc{i}/items/{{id}}"),
                    [format!("http://{}", args.upstream)],
                );
                other.path_match = PathMatch::Prefix;
                config.routes.push(other);
            }
        }
    }
    config.routes.push(route);
    config
}

/// An API key holding [`PERMISSION`], in a memory store.
async fn api_key(auth: &AuthService) -> Result<String, Box<dyn std::error::Error>> {
    let owner = auth
        .create_user(
            None,
            NewUser {
                email: "bench@example.com".into(),
                display_name: "bench".into(),
                password: None,
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        )
        .await?;
    let key = auth
        .create_api_key(
            None,
            NewApiKey {
                name: "load benchmark".into(),
                scopes: vec![PERMISSION.into()],
                expires_in_secs: None,
                owner: Some(owner.id),
            },
        )
        .await?;
    Ok(key.secret)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = Gateway::builder(config(&args)).build().await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let _tasks = gateway.spawn_background(cancel.clone());
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "bench_gateway ({:?}) listening on {} with {} routes",
        args.mode,
        listener.local_addr()?,
        gateway.route_count()
    );
    if args.mode == Mode::Full {
        let auth = AuthService::memory(jadugar_auth::Config::default()).await?;
        let secret = api_key(&auth).await?;
        if let Some(path) = &args.key_file {
            std::fs::write(path, &secret)?;
        }
        let service = AuthLayer::new(auth).layer(gateway);
        jadugar_gateway::serve_service(listener, service, std::future::pending()).await?;
    } else {
        jadugar_gateway::serve(listener, gateway, std::future::pending()).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let access = if args.access_log { "info" } else { "off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,jadugar_gateway::access={access}"
        )))
        // Colours only for a terminal: the access-log pass writes to a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench_gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_gateway: {error}");
            ExitCode::FAILURE
        }
    }
}
