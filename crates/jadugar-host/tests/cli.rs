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

/// Every `[[gateway.routes]]` element is checked as `serve` would, each
/// problem at its own line with the route's index; `serve` refuses the same
/// file before it creates anything.
#[test]
fn route_problems_name_their_route_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[[gateway.routes]]\nid = \"ok\"\npath = \"/ok\"\ncolour = 1\n\
         upstream = { targets = [\"http://127.0.0.1:9\"] }\n\n\
         [[gateway.routes]]\nid = \"BAD ID\"\npath = \"nopath\"\nwrong = 1\n\
         upstream = { targets = [\"ftp://x\"] }\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check", "routes.toml"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "routes.toml:4: gateway.routes[0].colour: unknown key",
            "routes.toml:8: gateway.routes[1].id: must be 1 to 64 of a-z, 0-9, '-', '_', '.'",
            "routes.toml:9: gateway.routes[1].path: must start with '/'",
            "routes.toml:10: gateway.routes[1].wrong: unknown key",
            "routes.toml:11: gateway.routes[1].upstream.targets[0]: must be a base URL like http://host:port or https://host:port",
        ],
        "{stdout}"
    );

    std::fs::write(
        dir.path().join("reserved.toml"),
        "[[gateway.routes]]\nid = \"api\"\npath = \"/v1/things\"\n\
         upstream = { targets = [\"http://127.0.0.1:9\"] }\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check", "reserved.toml"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("reserved.toml:3: gateway.routes[0].path: is served by the host itself"),
        "{stdout}"
    );

    let output = run(dir.path(), &["--config", "routes.toml", "serve"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("routes.toml:9: gateway.routes[1].path"),
        "{stderr}"
    );
    assert!(!dir.path().join("jadugar-data").exists(), "{stderr}");

    // How the routes fit together too, before anything is created: serve
    // used to create the master key and the first admin, then fail with
    // "invalid route configuration" naming no route.
    std::fs::write(
        dir.path().join("twice.toml"),
        "[[gateway.routes]]\nid = \"a\"\npath = \"/a\"\n\
         upstream = { targets = [\"http://127.0.0.1:9\"] }\n\
         [[gateway.routes]]\nid = \"a\"\npath = \"/b\"\n\
         upstream = { targets = [\"http://127.0.0.1:9\"] }\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check", "twice.toml"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "twice.toml:6: gateway.routes[1].id: duplicates routes[0]\n"
    );
    let output = run(dir.path(), &["--config", "twice.toml", "serve"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        one_clear_line(&output),
        "error: invalid configuration: twice.toml:6: gateway.routes[1].id: duplicates routes[0]"
    );
    assert!(!dir.path().join("jadugar-data").exists());
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

    let output = stop(child);
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

/// Runs the binary with `stdin` piped in.
fn run_with_stdin(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = jadugar(dir, args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_line(output: &Output) -> String {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one stdout line expected: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    lines[0].to_owned()
}

/// `jadugar serve` on `dir` and a free port, once `/readyz` answers (or
/// after 20 s): the child and its address.
fn serve_ready(dir: &Path) -> (std::process::Child, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let child = jadugar(dir, &["serve"], &[("JADUGAR_LISTEN", &listen)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && std::net::TcpStream::connect(&listen)
            .and_then(|mut stream| {
                use std::io::{Read, Write};
                stream
                    .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer.starts_with("HTTP/1.1 200"))
            })
            .map_or(true, |ready| !ready)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, listen)
}

/// Stops `serve` with SIGTERM; its output.
fn stop(child: std::process::Child) -> Output {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait_with_output().unwrap()
}

/// `user create` then `apikey create`, then the key authenticates against
/// the served API; the one-time passwords are printed once.
#[test]
fn user_and_api_key_from_the_cli_authenticate_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--role",
            "admin",
            "--password-stdin",
        ],
        &[],
        "correct horse battery staple\n",
    );
    assert!(output.status.success(), "{output:?}");
    let user_id = stdout_line(&output);
    assert_eq!(user_id.len(), 36, "{user_id}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The store was empty: the first admin exists too, as `serve` would do.
    assert!(
        stderr.contains("created the first admin, admin@localhost"),
        "{stderr}"
    );
    assert!(stderr.contains("created user ada@example.com"), "{stderr}");
    assert!(!stderr.contains("correct horse"), "{stderr}");

    // A generated password is printed once, on stderr.
    let output = run(
        dir.path(),
        &["user", "create", "--email", "bob@example.com"],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let bob_id = stdout_line(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("one-time password "), "{stderr}");
    assert!(!stderr.contains("first admin"), "{stderr}");
    assert_ne!(bob_id, user_id);

    // The environment variable is the other way to pass a password.
    let output = run(
        dir.path(),
        &["user", "create", "--email", "cy@example.com"],
        &[("JADUGAR_NEW_USER_PASSWORD", "another long passphrase")],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("one-time"));

    let output = run(
        dir.path(),
        &[
            "apikey",
            "create",
            "--owner",
            "ada@example.com",
            "--name",
            "ci",
            "--scope",
            "tracking:read",
            "--expires-in-secs",
            "3600",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let secret = stdout_line(&output);
    assert!(secret.starts_with("jdg_"), "{secret}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&user_id), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");

    // Serve the same data directory and call an authenticated endpoint.
    let (child, listen) = serve_ready(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (me, anonymous) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let me = client
            .get(format!("http://{listen}/v1/auth/me"))
            .header("x-api-key", &secret)
            .send()
            .await;
        let me = match me {
            Ok(r) => Some((
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.ok(),
            )),
            Err(_) => None,
        };
        let anonymous = client
            .get(format!("http://{listen}/v1/auth/me"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        (me, anonymous)
    });
    let output = stop(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (status, body) = me.unwrap_or_else(|| panic!("no answer: {stderr}"));
    assert_eq!(status, 200, "{body:?} {stderr}");
    let body = body.unwrap();
    assert_eq!(body["principal"]["kind"], "api_key", "{body}");
    assert_eq!(body["principal"]["owner"], user_id.as_str(), "{body}");
    assert_eq!(
        body["principal"]["permissions"],
        serde_json::json!(["tracking:read"]),
        "{body}"
    );
    assert_eq!(anonymous, Some(401));
    // Users existed: serve did not create another admin.
    assert!(!stderr.contains("Created the first admin"), "{stderr}");
}

/// A refused `user create` on an empty store still created the first
/// admin: its one-time password is printed with the refusal, never lost.
#[test]
fn a_refused_first_user_still_shows_the_first_admins_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = [("JADUGAR_NEW_USER_PASSWORD", "a long enough password")];
    let output = run(dir.path(), &["user", "create", "--email", "bad-email"], &pw);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Besides the log line of the master key's creation.
    let mut lines = stderr.lines().filter(|l| !l.contains(" INFO "));
    let error = lines.next().unwrap_or_default();
    assert!(error.starts_with("error: email: "), "{stderr}");
    let password = lines
        .next()
        .unwrap_or_default()
        .split_once("with the one-time password ")
        .and_then(|(head, rest)| {
            head.contains("the first admin, admin@localhost")
                .then(|| rest.split_whitespace().next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no admin password in: {stderr}"));
    assert!(password.len() >= 12, "{password}");
    assert_eq!(lines.next(), None, "{stderr}");

    // The admin exists now: the next refusal is one line again.
    let output = run(dir.path(), &["user", "create", "--email", "still-bad"], &pw);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    one_clear_line(&output);

    // The printed password is the admin's: it logs in against serve, which
    // creates no other admin.
    let (child, listen) = serve_ready(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (good, wrong) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for password in [password, "not the password"] {
            let status = client
                .post(format!("http://{listen}/v1/auth/login"))
                .json(&serde_json::json!({"email": "admin@localhost", "password": password}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok();
            statuses.push(status);
        }
        (statuses[0], statuses[1])
    });
    let output = stop(child);
    let serve_stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(good, Some(200), "{serve_stderr}");
    assert_eq!(wrong, Some(401), "{serve_stderr}");
    assert!(
        !serve_stderr.contains("Created the first admin"),
        "{serve_stderr}"
    );
}

/// Every refusal is one `error:` line and exit 1, never a panic.
#[test]
fn user_and_api_key_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let pw = [("JADUGAR_NEW_USER_PASSWORD", "a long enough password")];
    let output = run(
        dir.path(),
        &["user", "create", "--email", "dora@example.com"],
        &pw,
    );
    assert!(output.status.success(), "{output:?}");

    /// Arguments, environment, expected start of the error line.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["user", "create", "--email", "not-an-email"],
            pw.to_vec(),
            "error: email: ",
        ),
        (
            vec!["user", "create", "--email", "eve@example.com"],
            vec![("JADUGAR_NEW_USER_PASSWORD", "short")],
            "error: password: must be at least 12 characters",
        ),
        (
            vec!["user", "create", "--email", "DORA@example.com"],
            pw.to_vec(),
            "error: email: a user with this email already exists",
        ),
        (
            vec![
                "user",
                "create",
                "--email",
                "fay@example.com",
                "--role",
                "wizard",
            ],
            pw.to_vec(),
            "error: roles: no role \"wizard\"",
        ),
        (
            vec![
                "apikey",
                "create",
                "--owner",
                "nobody@example.com",
                "--name",
                "k",
            ],
            vec![],
            "error: owner: no user with email nobody@example.com",
        ),
        (
            vec![
                "apikey",
                "create",
                "--owner",
                "dora@example.com",
                "--name",
                "k",
                "--scope",
                "tracking:read",
            ],
            vec![],
            "error: scopes: tracking:read is not held by the owner",
        ),
        (
            vec![
                "apikey",
                "create",
                "--owner",
                "dora@example.com",
                "--name",
                "k",
                "--scope",
                "not a permission",
            ],
            vec![],
            "error: scopes: ",
        ),
    ];
    // A lifetime of 0 would be a key expired when made: clap refuses it,
    // naming the flag, before anything is opened (exit 2, usage error).
    let output = run(
        dir.path(),
        &[
            "apikey",
            "create",
            "--owner",
            "dora@example.com",
            "--name",
            "k",
            "--expires-in-secs",
            "0",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: invalid value '0' for '--expires-in-secs <N>'"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    for (args, env, expected) in cases {
        let output = run(dir.path(), &args, &env);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].starts_with(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    }

    // --password-stdin with an empty line is refused too.
    let output = run_with_stdin(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            "gus@example.com",
            "--password-stdin",
        ],
        &[],
        "\n",
    );
    assert_eq!(output.status.code(), Some(1));
    let line = one_clear_line(&output);
    assert!(line.starts_with("error: password:"), "{line}");
}
