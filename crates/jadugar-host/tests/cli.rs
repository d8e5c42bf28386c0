//! The `jadugar` binary: bad configuration ends in one clear line and a
//! non-zero exit, never a panic; `serve` with no configuration works.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jadugar_core::MasterKey;
use jadugar_core::test_support::TestPostgres;

/// The binary, run in `dir` with no `JADUGAR_*` variable but `env`.
fn jadugar(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jadugar"));
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("JADUGAR_") || name == "RUST_LOG" || name == "RUST_BACKTRACE" {
            command.env_remove(name);
        }
    }
    command.env("RUST_BACKTRACE", "1");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    jadugar(dir, args, env).output().unwrap()
}

/// Exactly one line on stderr, starting with `error: `, no panic.
fn one_clear_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn unknown_key_exits_2_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jadugar.toml"),
        "listen = \"127.0.0.1:0\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["--config", "jadugar.toml", "serve"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let line = one_clear_line(&output);
    assert_eq!(
        line,
        "error: invalid configuration: jadugar.toml:2: colour: unknown key"
    );
    assert!(
        !dir.path().join("jadugar-data").exists(),
        "nothing was created"
    );
}

#[test]
fn malformed_url_and_bad_port_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        &["serve"],
        &[("JADUGAR_DATABASE_URL", "postgres://[::1/db")],
    );
    assert_eq!(output.status.code(), Some(2));
    let line = one_clear_line(&output);
    assert!(
        line.contains("JADUGAR_DATABASE_URL: database_url: malformed postgres URL"),
        "{line}"
    );

    let output = run(
        dir.path(),
        &["serve"],
        &[("JADUGAR_LISTEN", "127.0.0.1:80800")],
    );
    assert_eq!(output.status.code(), Some(2));
    let line = one_clear_line(&output);
    assert!(line.contains("JADUGAR_LISTEN: listen:"), "{line}");
}

#[test]
fn port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(dir.path(), &["serve"], &[("JADUGAR_LISTEN", &addr)]);
    assert_eq!(output.status.code(), Some(1));
    let line = one_clear_line(&output);
    assert!(
        line.starts_with(&format!("error: cannot listen on {addr}:")),
        "{line}"
    );
}

#[test]
fn unusable_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let output = run(
        dir.path(),
        &["serve"],
        &[
            ("JADUGAR_LISTEN", "127.0.0.1:0"),
            ("JADUGAR_DATA_DIR", "a-file/data"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let line = one_clear_line(&output);
    assert!(
        line.starts_with("error: data directory a-file/data:"),
        "{line}"
    );
}

#[test]
fn unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/jadugar");
    let key = MasterKey::generate("k").to_text();
    let output = run(
        dir.path(),
        &["serve"],
        &[
            ("JADUGAR_LISTEN", "127.0.0.1:0"),
            ("JADUGAR_DATABASE_URL", &url),
            ("JADUGAR_MASTER_KEY", &key),
            ("JADUGAR_DATABASE_TIMEOUT_SECS", "1"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let line = one_clear_line(&output);
    assert!(
        line.starts_with("error: cannot use the database postgres://app:***@127.0.0.1"),
        "{line}"
    );
    assert!(!line.contains("hunter2"), "{line}");
}

#[test]
fn config_check_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "database_url = \"mysql://x\"\n\nshutdown_grace_secs = -1\ncolour = 1\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check", "bad.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("bad.toml:1: database_url:"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("bad.toml:3: shutdown_grace_secs:"),
        "{stdout}"
    );
    assert_eq!(lines[2], "bad.toml:4: colour: unknown key");

    std::fs::write(
        dir.path().join("good.toml"),
        "listen = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check", "good.toml"], &[]);
    assert!(output.status.success());
}

#[test]
fn config_print_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate("k1").to_text();
    let output = run(
        dir.path(),
        &["config", "print"],
        &[
            ("JADUGAR_DATABASE_URL", "postgres://app:hunter2@db/jadugar"),
            ("JADUGAR_MASTER_KEY", &key),
        ],
    );
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains(&key), "{stdout}");
    assert!(stdout.contains("postgres://app:***@db/jadugar"), "{stdout}");
}

#[test]
fn migrate_against_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestPostgres::new()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        &["migrate"],
        &[
            ("JADUGAR_DATABASE_URL", pg.url()),
            ("JADUGAR_DATABASE_SCHEMA", pg.schema()),
            ("JADUGAR_DATABASE_MAX_CONNECTIONS", "2"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(pg);
}

/// The README's run command in miniature: no configuration at all, then
/// SIGTERM.
#[test]
fn serve_with_zero_configuration_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let child = jadugar(
        dir.path(),
        &["--log-format", "json", "serve"],
        &[("JADUGAR_LISTEN", &listen)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = runtime.block_on(async {
        while Instant::now() < deadline {
            if let Ok(res) = reqwest::get(format!("http://{listen}/readyz")).await {
                return Some(res.status());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    let healthz = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{listen}/healthz"))
            .header("x-request-id", "smoke-1")
            .send()
            .await
            .map(|r| r.status())
    });

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(ready.map(|s| s.as_u16()), Some(200), "{stderr}");
    assert_eq!(healthz.unwrap().as_u16(), 200);
    assert!(output.status.success(), "exit after SIGTERM: {stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");

    // JSON logs, one access line per request with its request id.
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "jadugar::access" && line["request_id"] == "smoke-1")
        .collect();
    assert_eq!(access.len(), 1, "{stderr}");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], "/healthz");
    assert_eq!(access[0]["status"], 200);
    assert!(access[0]["latency_ms"].as_f64().is_some(), "{stderr}");

    let data = dir.path().join("jadugar-data");
    assert!(data.join("jadugar.db").is_file());
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}
