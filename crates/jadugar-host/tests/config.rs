//! Configuration: precedence (default < file < environment) and errors.
#![allow(clippy::unwrap_used)]

use jadugar_core::MasterKey;
use jadugar_host::Config;
use jadugar_host::config::LogFormat;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const FILE: &str = r#"
listen = "0.0.0.0:9000"
database_url = "postgres://app:filepass@db.internal:5432/jadugar"
shutdown_grace_secs = 5
log_format = "json"

[tls]
cert = "/etc/jadugar/cert.pem"
key = "/etc/jadugar/key.pem"
"#;

#[test]
fn defaults_then_file_then_environment() {
    let defaults = Config::load_from(None, []).unwrap();
    assert_eq!(defaults.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        defaults.effective_database_url(),
        "sqlite://./jadugar-data/jadugar.db"
    );
    assert_eq!(defaults.shutdown_grace_secs, 30);
    assert_eq!(defaults.log_format, LogFormat::Human);
    assert!(!defaults.tls.enabled());

    let file = Config::load_from(Some(("jadugar.toml", FILE)), []).unwrap();
    assert_eq!(file.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(file.shutdown_grace_secs, 5);
    assert_eq!(file.log_format, LogFormat::Json);
    assert!(file.tls.enabled());
    assert_eq!(
        file.request_timeout_secs, 60,
        "untouched keys keep defaults"
    );

    let both = Config::load_from(
        Some(("jadugar.toml", FILE)),
        env(&[
            ("JADUGAR_LISTEN", "127.0.0.1:7000"),
            ("JADUGAR_DATABASE_URL", "sqlite://./other.db"),
            ("JADUGAR_SHUTDOWN_GRACE_SECS", "9"),
            ("JADUGAR_TLS__KEY", "/run/secrets/key.pem"),
            ("jadugar_log_format", "human"),
        ]),
    )
    .unwrap();
    assert_eq!(both.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(both.effective_database_url(), "sqlite://./other.db");
    assert_eq!(both.shutdown_grace_secs, 9);
    assert_eq!(both.log_format, LogFormat::Human);
    assert_eq!(
        both.tls.key.as_deref(),
        Some(std::path::Path::new("/run/secrets/key.pem"))
    );
    assert_eq!(
        both.tls.cert.as_deref(),
        Some(std::path::Path::new("/etc/jadugar/cert.pem")),
        "a section's other keys stay from the file"
    );
}

#[test]
fn unknown_keys_are_reported_with_their_line() {
    let text = "listen = \"127.0.0.1:1\"\n\n[tls]\ncert = \"a\"\nkey = \"b\"\ncolour = \"red\"\n";
    let problems = Config::load_from(Some(("j.toml", text)), []).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "tls.colour");
    assert_eq!(problems[0].line, Some(6));
    assert_eq!(problems[0].to_string(), "j.toml:6: tls.colour: unknown key");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
lisen = "127.0.0.1:8080"
database_url = "mysql://db/x"
redis_url = "redis://[broken"
shutdown_grace_secs = "soon"
listen = "127.0.0.1:99999"
"#;
    let problems = Config::load_from(Some(("j.toml", text)), []).unwrap_err();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "lisen",
            "database_url",
            "redis_url",
            "shutdown_grace_secs",
            "listen"
        ],
        "{lines:#?}"
    );
    assert_eq!(
        problems.iter().map(|p| p.line.unwrap()).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6]
    );
    assert!(
        lines[1].contains("neither sqlite://PATH nor postgres://"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("malformed redis URL"), "{}", lines[2]);
    assert!(lines[4].contains("invalid socket address"), "{}", lines[4]);
}

#[test]
fn bad_port_and_malformed_url_from_the_environment() {
    let problems = Config::load_from(
        None,
        env(&[
            ("JADUGAR_LISTEN", "127.0.0.1:http"),
            ("JADUGAR_DATABASE_URL", "postgres://user@:5432/db"),
            ("JADUGAR_MASTER_KEY", "too-short"),
        ]),
    )
    .unwrap_err();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("JADUGAR_LISTEN: listen:"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("JADUGAR_DATABASE_URL: database_url:"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("JADUGAR_MASTER_KEY: master_key:"))
    );
    assert!(
        lines.iter().all(|l| !l.contains("too-short")),
        "secrets are not echoed: {lines:#?}"
    );
}

#[test]
fn tls_needs_both_files() {
    let problems = Config::load_from(None, env(&[("JADUGAR_TLS__CERT", "/c.pem")])).unwrap_err();
    assert_eq!(problems[0].key, "tls.key");
}

#[test]
fn component_settings_they_cannot_work_with_name_their_line() {
    let text = r#"
[registry]
sweep_interval_ms = 0
guard_expiry_share = 2.0
max_wait_secs = 30
check_lease_secs = 0
"#;
    let problems = Config::load_from(Some(("j.toml", text)), []).unwrap_err();
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [
            ("registry.sweep_interval_ms", Some(3)),
            ("registry.guard_expiry_share", Some(4)),
            ("registry.check_lease_secs", Some(6)),
        ],
        "{problems:#?}"
    );
    assert!(problems[1].message.contains("between 0 and 1"));
    assert!(problems[2].message.contains("at least 1"));

    let text = "[tracking]\nwebhook_request_timeout_ms = 30000\nwebhook_lease_secs = 20\n";
    let problems = Config::load_from(Some(("j.toml", text)), []).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "tracking.webhook_lease_secs");
    assert_eq!(problems[0].line, Some(3));
    assert!(
        problems[0]
            .message
            .contains("must exceed webhook_request_timeout_ms")
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let problems = Config::load_from(Some(("j.toml", "listen = \"x\"\n[tls\n")), []).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(2));
    assert!(problems[0].message.starts_with("not valid TOML"));
}

#[test]
fn printing_redacts_secrets() {
    let key = MasterKey::generate("k1").to_text();
    let old = MasterKey::generate("k0").to_text();
    let config = Config::load_from(
        None,
        env(&[
            (
                "JADUGAR_DATABASE_URL",
                "postgres://app:hunter2@db.internal/jadugar",
            ),
            ("JADUGAR_REDIS_URL", "redis://:redispass@cache:6379"),
            ("JADUGAR_MASTER_KEY", &key),
            ("JADUGAR_OLD_MASTER_KEYS", &old),
        ]),
    )
    .unwrap();
    let text = config.to_redacted_toml();
    for secret in ["hunter2", "redispass", &key, &old] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(
        text.contains("postgres://app:***@db.internal/jadugar"),
        "{text}"
    );
    assert!(text.contains("master_key = \"<redacted>\""), "{text}");
    // The printout is TOML.
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table["listen"].as_str(), Some("127.0.0.1:8080"));
    let debug = format!("{config:?}");
    for secret in ["hunter2", "redispass", &key, &old] {
        assert!(!debug.contains(secret), "{secret} leaked by Debug: {debug}");
    }
}

#[test]
fn component_sections_follow_the_same_rules() {
    let text = "[registry]\nmax_wait_secs = 30\n\n[auth]\naccess_token_ttl_secs = 120\nnot_an_auth_key = 1\n";
    let problems = Config::load_from(Some(("j.toml", text)), []).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].to_string(),
        "j.toml:6: auth.not_an_auth_key: unknown key"
    );

    let text = "[registry]\nmax_wait_secs = 30\n";
    let config = Config::load_from(
        Some(("j.toml", text)),
        env(&[
            ("JADUGAR_REGISTRY__MAX_WAIT_SECS", "45"),
            ("JADUGAR_AUTH__ISSUER", "https://auth.example.com"),
        ]),
    )
    .unwrap();
    assert_eq!(config.registry.max_wait_secs, 45, "the environment wins");
    assert_eq!(config.auth.issuer, "https://auth.example.com");
    let printed = config.to_redacted_toml();
    assert!(printed.contains("[registry]"), "{printed}");
    assert!(printed.contains("max_wait_secs = 45"), "{printed}");
}

/// A route that cannot be read at all (a required key missing, a value of
/// the wrong type) is reported at its own line and index, and the routes
/// after it are still checked under their own numbers.
#[test]
fn a_bad_route_does_not_hide_the_next_ones() {
    let file = "[[gateway.routes]]\nid = \"no-upstream\"\npath = \"/a\"\n\n\
                [[gateway.routes]]\nid = \"ok\"\npath = \"/b\"\n\
                upstream = { targets = [\"http://127.0.0.1:9\"] }\n\n\
                [[gateway.routes]]\nid = \"typo\"\npath = \"/c\"\nwrong = 1\n\
                upstream = { targets = [5, \"ftp://x\"] }\n\n\
                [[gateway.routes]]\nid = \"BAD\"\npath = \"/d\"\n\
                upstream = { targets = [\"http://127.0.0.1:9\"] }\n";
    let problems = Config::load_from(Some(("routes.toml", file)), []).unwrap_err();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "routes.toml:1: gateway.routes[0]: missing field `upstream`",
            "routes.toml:13: gateway.routes[2].wrong: unknown key",
            "routes.toml:14: gateway.routes[2].upstream.targets[0]: data did not match any variant of untagged enum Target",
            "routes.toml:17: gateway.routes[3].id: must be 1 to 64 of a-z, 0-9, '-', '_', '.'",
        ],
        "{problems}"
    );
}

/// How the routes fit together is checked as the gateway does at start:
/// a duplicate id names the route and its line; routes from the
/// environment name the variable.
#[test]
fn routes_are_checked_together_as_the_gateway_would() {
    let file = "[[gateway.routes]]\nid = \"a\"\npath = \"/a\"\n\
                upstream = { targets = [\"http://127.0.0.1:9\"] }\n\n\
                [[gateway.routes]]\nid = \"a\"\npath = \"/b\"\n\
                upstream = { targets = [\"http://127.0.0.1:9\"] }\n";
    let problems = Config::load_from(Some(("routes.toml", file)), []).unwrap_err();
    assert_eq!(
        problems.to_string(),
        "invalid configuration: routes.toml:7: gateway.routes[1].id: duplicates routes[0]"
    );

    let problems = Config::load_from(
        Some((
            "gw.toml",
            "[gateway]\nidentity_headers = [\"not a header\"]\n",
        )),
        [],
    )
    .unwrap_err();
    assert_eq!(
        problems.to_string(),
        "invalid configuration: gw.toml:2: gateway.identity_headers: must be header names"
    );

    let problems = Config::load_from(
        None,
        env(&[(
            "JADUGAR_GATEWAY__ROUTES",
            "[{ id = \"x\", path = \"y\", upstream = { targets = [\"http://127.0.0.1:9\"] } }]",
        )]),
    )
    .unwrap_err();
    assert_eq!(
        problems.to_string(),
        "invalid configuration: JADUGAR_GATEWAY__ROUTES: gateway.routes[0].path: must start with '/'"
    );
}
