//! What configured routes cost in memory.
//!
//! Builds a gateway of 10,000 routes with distinct paths sharing one
//! upstream, with the Prometheus recorder the host installs, and reports
//! the resident-memory growth per route (`/proc/self/status` VmRSS: the
//! crates forbid `unsafe`, so no counting allocator). Run alone to read the
//! figure:
//!
//! ```text
//! cargo nextest run -p jadugar-gateway --all-features --test route_memory --no-capture
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use jadugar_gateway::model::RouteSpec;
use jadugar_gateway::{Config, Gateway};

const ROUTES: usize = 10_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn routes(prefix: bool) -> Vec<RouteSpec> {
    (0..ROUTES)
        .map(|i| {
            let r = RouteSpec::new(
                format!("route-{i}"),
                format!("/svc/{i}/items"),
                ["http://127.0.0.1:9"],
            );
            if prefix { r.prefix() } else { r }
        })
        .collect()
}

/// RSS growth building a gateway of [`ROUTES`] routes (their specs made
/// before the first reading), in total and per route.
async fn per_route(prefix: bool) -> (u64, u64) {
    let specs = routes(prefix);
    let before = rss_bytes();
    let gw = Gateway::builder(Config {
        routes: specs,
        access_log: false,
        ..Config::default()
    })
    .build()
    .await
    .unwrap();
    let after = rss_bytes();
    assert_eq!(gw.route_count(), ROUTES);
    let grown = after.saturating_sub(before);
    (grown, grown / ROUTES as u64)
}

/// Set in the child process a test re-runs itself in.
const CHILD: &str = "JADUGAR_ROUTE_MEMORY_CHILD";

/// Re-runs test `name` alone in a child process of this test binary and
/// returns true, unless this is that child (then false: measure here).
/// `cargo test` runs tests as threads of one process, where another test's
/// allocations would mix with the RSS readings.
fn ran_in_own_process(name: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{stdout}"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
    true
}

/// Installs the recorder and warms allocator arenas and lazy statics with
/// a small gateway; each test measures in its own process
/// ([`ran_in_own_process`]), so the readings are not mixed with another
/// test's allocations or frees.
async fn prepare() -> Gateway {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .unwrap()
        .install_recorder();
    Gateway::builder(Config {
        routes: routes(true).into_iter().take(10).collect(),
        access_log: false,
        ..Config::default()
    })
    .build()
    .await
    .unwrap()
}

// Before: 13.5 KiB per prefix route and 9.6 KiB per exact route, when
// every route had its own upstream pool and registered ten metric series
// up front, and prefix routes were two patterns in two matchit trees. Most
// of what is left is matchit's nodes (a prefix route is `/p` and
// `/p/{*rest}`).
#[tokio::test]
async fn ten_thousand_prefix_routes_cost_little_memory() {
    if ran_in_own_process("ten_thousand_prefix_routes_cost_little_memory") {
        return;
    }
    let _warm = prepare().await;
    let (grown, per) = per_route(true).await;
    eprintln!(
        "{ROUTES} prefix routes (one unnamed upstream): RSS +{} KiB, {per} bytes/route",
        grown / 1024
    );
    assert!(per < 4 * 1024, "{per} bytes per route");
}

#[tokio::test]
async fn ten_thousand_exact_routes_cost_little_memory() {
    if ran_in_own_process("ten_thousand_exact_routes_cost_little_memory") {
        return;
    }
    let _warm = prepare().await;
    let (grown, per) = per_route(false).await;
    eprintln!(
        "{ROUTES} exact routes (one unnamed upstream): RSS +{} KiB, {per} bytes/route",
        grown / 1024
    );
    assert!(per < 2 * 1024, "{per} bytes per route");
}
