//! Checker CPU for 10,000 instances with HTTP checks every 10 s against a
//! local server. Not a criterion bench (it measures a rate, not a call):
//! it prints the checker's CPU time as a share of one core.
//!
//! `cargo bench -p jadugar-registry --bench checker_cpu`
//! (`CHECKER_INSTANCES`, `CHECKER_MEASURE_SECS` override 10000 and 20.)
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use jadugar_core::{MasterKey, Sealer, SystemClock};
use jadugar_registry::model::{Address, CheckSpec, Registration, Status};
use jadugar_registry::{Config, Registry};
use tokio_util::sync::CancellationToken;

/// utime + stime of every thread of this process except `skip`, in clock
/// ticks (Linux /proc).
fn cpu_ticks(skip: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        if task.file_name().to_string_lossy() == skip {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
        total += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    total
}

fn main() {
    let instances: usize = std::env::var("CHECKER_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let measure: u64 = std::env::var("CHECKER_MEASURE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }

    // The probed server runs on its own thread, excluded from the count.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tid = std::fs::read_to_string("/proc/thread-self/stat")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((tid, listener.local_addr().unwrap())).unwrap();
            let app = Router::new().route("/health", get(|| async { "ok" }));
            axum::serve(listener, app).await.unwrap();
        });
    });
    let (server_tid, addr) = rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = Config {
            allow_loopback_checks: true,
            max_concurrent_checks: 256,
            ..Config::default()
        };
        let registry = Registry::in_memory(config, SystemClock::shared(), Sealer::new(MasterKey::generate("b"), []))
            .await
            .unwrap();
        for i in 0..instances {
            let check = CheckSpec::http("/health").with_timing(10_000, 2_000);
            let reg = Registration::new(Address::new("http", "127.0.0.1", addr.port())).with_check(check);
            registry.register(&format!("svc-{}", i % 100), &format!("i-{i}"), reg).await.unwrap();
        }
        let cancel = CancellationToken::new();
        let _tasks = registry.start(cancel.clone());
        // First round: every instance goes passing (status writes).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let passing: usize = registry.services().iter().map(|s| s.passing).sum();
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        let before = cpu_ticks(&server_tid);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(measure)).await;
        let used = (cpu_ticks(&server_tid) - before) as f64 / ticks_per_sec;
        let wall = started.elapsed().as_secs_f64();
        println!(
            "checker_cpu: {instances} instances, 10 s interval, {passing} passing after the first round; \
             steady state over {wall:.1} s: {used:.2} s CPU = {:.1}% of one core (~{:.0} probes/s)",
            100.0 * used / wall,
            instances as f64 / 10.0
        );
        let critical = registry
            .services()
            .iter()
            .map(|s| s.critical)
            .sum::<usize>();
        assert_eq!(critical, 0, "probes failed: {critical} critical");
        let _ = Status::Passing;
        cancel.cancel();
    });
}
