//! The host's configuration: `jadugar.toml`, overridden by `JADUGAR_*`
//! environment variables.
//!
//! Every key has a default, so no file at all is a valid configuration
//! (SQLite in `./jadugar-data`, listening on `127.0.0.1:8080`). Values are
//! layered: **defaults < file < environment**.
//!
//! # Environment variables
//!
//! `JADUGAR_<KEY>` sets the top-level key `<key>` (`JADUGAR_DATABASE_URL`,
//! `JADUGAR_LISTEN`, `JADUGAR_REDIS_URL`, `JADUGAR_MASTER_KEY`, ...);
//! `JADUGAR_<SECTION>__<KEY>` (two underscores) sets a key of a section
//! (`JADUGAR_TLS__CERT`, `JADUGAR_AUTH__SESSION_TTL_SECS`). Names are
//! case-insensitive. A value that reads as a TOML number, boolean or array
//! (`30`, `true`, `["a", "b"]`) is taken as such; anything else is a string;
//! quote it (`'"123"'`) to force a string. `JADUGAR_CONFIG` (the file) and
//! `JADUGAR_TEST_*` (test services) are not configuration keys. An unknown
//! key is an error, from a file or from the environment alike.
//!
//! ```
//! use jadugar_host::config::Config;
//!
//! let text = "listen = \"0.0.0.0:9000\"\nshutdown_grace_secs = 5\n";
//! let env = [("JADUGAR_SHUTDOWN_GRACE_SECS".to_owned(), "12".to_owned())];
//! let config = Config::load_from(Some(("jadugar.toml", text)), env).unwrap();
//! assert_eq!(config.listen.port(), 9000); // from the file
//! assert_eq!(config.shutdown_grace_secs, 12); // the environment wins
//! assert_eq!(config.request_timeout_secs, 60); // the default
//!
//! let bad = Config::load_from(Some(("jadugar.toml", "\nlisten = \"x\"\nfoo = 1\n")), []);
//! let problems = bad.unwrap_err();
//! assert_eq!(problems.len(), 2);
//! assert_eq!(problems[0].to_string(), "jadugar.toml:2: listen: invalid socket address syntax");
//! assert_eq!(problems[1].key, "foo");
//! assert_eq!(problems[1].line, Some(3));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use jadugar_core::storage::redact_url;

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "JADUGAR_";

/// The variable naming the configuration file (read by the CLI).
pub const CONFIG_FILE_VAR: &str = "JADUGAR_CONFIG";

/// The variable `jadugar user create` reads the new user's password from
/// (not a configuration key).
pub const NEW_USER_PASSWORD_VAR: &str = "JADUGAR_NEW_USER_PASSWORD";

/// Shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole configuration of a host; each field is a key of `jadugar.toml`.
///
/// `Debug` redacts passwords in URLs and master keys, as `config print` does.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory for the embedded database and the generated master key,
    /// created with mode 0700. Default `./jadugar-data`.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`. Default: the
    /// SQLite file `jadugar.db` in `data_dir`.
    #[serde(serialize_with = "serialize_url")]
    pub database_url: Option<String>,
    /// Postgres only: the schema to work in (`search_path`).
    pub database_schema: Option<String>,
    /// Most connections in the database pool. Default 16.
    pub database_max_connections: u32,
    /// How long to wait for a database connection (at start and per
    /// request) before giving up. Default 5.
    pub database_timeout_secs: u64,
    /// Optional `redis://` or `rediss://` URL; without it, everything that
    /// could live in Redis stays in the process or the database.
    #[serde(serialize_with = "serialize_url")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key. Default `jadugar:`.
    pub redis_prefix: String,
    /// The master key sealing secrets at rest, `<id>:<base64 of 32 bytes>`.
    /// Without it, a key is generated into `data_dir/master.key` on first
    /// start (SQLite only; Postgres hosts must share one key).
    pub master_key: Option<Secret>,
    /// Earlier master keys, still able to open what they sealed (rotation).
    /// An array, or one string of comma-separated keys.
    #[serde(deserialize_with = "deserialize_key_list")]
    pub old_master_keys: Vec<Secret>,
    /// `human` (default) or `json` logs.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,jadugar_gateway=debug`.
    /// `RUST_LOG`, when set, wins. Default `info`.
    pub log_level: String,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    /// Default 30.
    pub shutdown_grace_secs: u64,
    /// Longest time a request may take to produce its response headers.
    /// Default 60.
    pub request_timeout_secs: u64,
    /// Largest request body accepted, in bytes. Default 2 MiB.
    pub body_limit_bytes: usize,
    /// HTTPS: with both set, the listener speaks TLS.
    pub tls: TlsConfig,
    /// Password of the first admin (`admin@localhost`), created when there
    /// is no user yet. Without it, a one-time password is generated and
    /// printed once on stderr.
    pub admin_password: Option<Secret>,
    /// The `[auth]` section: see [`jadugar_auth::Config`].
    #[serde(skip_serializing)]
    pub auth: jadugar_auth::Config,
    /// The `[registry]` section: see [`jadugar_registry::Config`].
    #[serde(skip_serializing)]
    pub registry: jadugar_registry::Config,
    /// The `[tracking]` section: see [`jadugar_tracking::Config`].
    #[serde(skip_serializing)]
    pub tracking: jadugar_tracking::Config,
    /// The `[gateway]` section: see [`jadugar_gateway::Config`].
    #[serde(skip_serializing)]
    pub gateway: jadugar_gateway::Config,
    /// The component sections as given (file and environment merged), for
    /// `config print`: component configurations are not serialisable.
    #[serde(skip)]
    pub component_sections: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./jadugar-data"),
            database_url: None,
            database_schema: None,
            database_max_connections: 16,
            database_timeout_secs: 5,
            redis_url: None,
            redis_prefix: "jadugar:".to_owned(),
            master_key: None,
            old_master_keys: Vec::new(),
            log_format: LogFormat::Human,
            log_level: "info".to_owned(),
            shutdown_grace_secs: 30,
            request_timeout_secs: 60,
            body_limit_bytes: 2 * 1024 * 1024,
            tls: TlsConfig::default(),
            admin_password: None,
            auth: jadugar_auth::Config::default(),
            registry: jadugar_registry::Config::default(),
            tracking: jadugar_tracking::Config::default(),
            gateway: jadugar_gateway::Config::default(),
            component_sections: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(redact_url);
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &url(&self.database_url))
            .field("database_schema", &self.database_schema)
            .field("database_max_connections", &self.database_max_connections)
            .field("database_timeout_secs", &self.database_timeout_secs)
            .field("redis_url", &url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("master_key", &self.master_key)
            .field("old_master_keys", &self.old_master_keys)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("tls", &self.tls)
            .field("admin_password", &self.admin_password)
            .field("components", &self.component_sections.keys())
            .finish()
    }
}

/// The `[tls]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A secret string: never shown by `Debug` or by serialisation.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

fn serialize_url<S: Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&redact_url(url)),
        None => serializer.serialize_none(),
    }
}

fn deserialize_key_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    let keys = match List::deserialize(deserializer)? {
        List::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect(),
        List::Many(keys) => keys.into_iter().map(Secret::new).collect(),
    };
    Ok(keys)
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where the value came from: a file name or an environment variable.
    pub origin: Option<String>,
    /// Dotted key, e.g. `tls.cert`.
    pub key: String,
    /// 1-based line in the file, when the value came from a file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.origin, self.line) {
            (Some(origin), Some(line)) => write!(f, "{origin}:{line}: ")?,
            (Some(origin), None) => write!(f, "{origin}: ")?,
            (None, _) => {}
        }
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration, in the order of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigProblem];

    fn deref(&self) -> &[ConfigProblem] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where each key of the merged table came from.
#[derive(Debug, Default)]
struct Origins {
    file: Option<String>,
    /// key path → line in the file.
    lines: BTreeMap<String, usize>,
    /// key path → environment variable.
    env: BTreeMap<String, String>,
}

impl Origins {
    fn problem(&self, key: &str, message: impl Into<String>) -> ConfigProblem {
        // The nearest key with a known origin: the key itself or a parent.
        let mut probe = key;
        loop {
            if let Some(var) = self.env.get(probe) {
                return ConfigProblem {
                    origin: Some(var.clone()),
                    key: key.to_owned(),
                    line: None,
                    message: message.into(),
                };
            }
            if let Some(line) = self.lines.get(probe) {
                return ConfigProblem {
                    origin: self.file.clone(),
                    key: key.to_owned(),
                    line: Some(*line),
                    message: message.into(),
                };
            }
            // `gateway.routes[1].path` → `gateway.routes[1]` →
            // `gateway.routes` → `gateway`.
            let parent = if probe.ends_with(']') {
                probe.rfind('[')
            } else {
                probe.rfind('.')
            };
            match parent {
                Some(end) => probe = &probe[..end],
                None => break,
            }
        }
        ConfigProblem {
            origin: None,
            key: key.to_owned(),
            line: None,
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads the configuration: defaults, then the file at `path` (if any),
    /// then the `JADUGAR_*` variables of this process.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigErrors> {
        let text = match path {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some((path.display().to_string(), text)),
                Err(e) => {
                    return Err(ConfigErrors(vec![ConfigProblem {
                        origin: Some(path.display().to_string()),
                        key: String::new(),
                        line: None,
                        message: format!("cannot read the configuration file: {e}"),
                    }]));
                }
            },
            None => None,
        };
        Self::load_from(
            text.as_ref()
                .map(|(name, text)| (name.as_str(), text.as_str())),
            std::env::vars(),
        )
    }

    /// Loads from a file's `(name, text)` and environment variables, for
    /// tests and embedding; see the [module docs](self).
    pub fn load_from(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut origins = Origins::default();
        let mut table = toml::Table::new();
        if let Some((name, text)) = file {
            origins.file = Some(name.to_owned());
            match toml::de::DeTable::parse(text) {
                Ok(spanned) => record_lines(text, "", spanned.get_ref(), &mut origins.lines),
                Err(e) => return Err(ConfigErrors(vec![syntax_problem(name, text, &e)])),
            }
            table = match toml::from_str::<toml::Table>(text) {
                Ok(table) => table,
                Err(e) => return Err(ConfigErrors(vec![syntax_problem(name, text, &e)])),
            };
        }
        let mut problems = Vec::new();
        overlay_env(&mut table, env, &mut origins, &mut problems);
        let sections: BTreeMap<String, toml::Value> = COMPONENT_SECTIONS
            .iter()
            .filter_map(|name| table.get(*name).map(|v| ((*name).to_owned(), v.clone())))
            .collect();
        let mut removed = Removed::new();
        let mut config = deserialize_all(table, &origins, &mut removed, &mut problems);
        config.component_sections = sections;
        problems.extend(config.validate(&origins, &removed));
        if problems.is_empty() {
            // How the routes fit together, only once each is valid: with
            // elements taken out, the gateway would number them otherwise.
            problems.extend(config.check_gateway(&origins));
        }
        // File problems in line order, then environment problems.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// The database URL in use: `database_url`, or the SQLite file in
    /// `data_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.default_database_path().display()),
        }
    }

    /// `data_dir/jadugar.db`.
    pub fn default_database_path(&self) -> PathBuf {
        self.data_dir.join("jadugar.db")
    }

    /// `data_dir/master.key`.
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }

    /// The effective configuration as TOML, secrets redacted (passwords in
    /// URLs, master keys).
    pub fn to_redacted_toml(&self) -> String {
        let mut text = toml::to_string_pretty(self).unwrap_or_default();
        for (name, value) in &self.component_sections {
            let mut section = toml::Table::new();
            section.insert(name.clone(), redact_value(None, value));
            text.push_str(&format!(
                "\n# [{name}]: keys not shown take their defaults\n{}",
                toml::to_string_pretty(&section).unwrap_or_default()
            ));
        }
        if self.database_url.is_none() {
            text = format!(
                "# database_url defaults to {}\n{text}",
                self.effective_database_url()
            );
        }
        text
    }

    fn validate(&self, origins: &Origins, removed: &Removed) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Some(url) = &self.database_url
            && let Err(message) = check_database_url(url)
        {
            problems.push(origins.problem("database_url", message));
        }
        if let Some(url) = &self.redis_url
            && let Err(message) = check_redis_url(url)
        {
            problems.push(origins.problem("redis_url", message));
        }
        if self.database_max_connections == 0 {
            problems.push(origins.problem("database_max_connections", "must be at least 1"));
        }
        if let Some(key) = &self.master_key
            && jadugar_core::MasterKey::parse(key.expose()).is_err()
        {
            problems.push(origins.problem(
                "master_key",
                "must be `<id>:<base64 of 32 bytes>` or bare base64 of 32 bytes",
            ));
        }
        for key in &self.old_master_keys {
            if jadugar_core::MasterKey::parse(key.expose()).is_err() {
                problems.push(origins.problem(
                    "old_master_keys",
                    "each key must be `<id>:<base64 of 32 bytes>`",
                ));
                break;
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.push(origins.problem("log_level", format!("not a tracing filter: {e}")));
        }
        if self.database_timeout_secs == 0 {
            problems.push(origins.problem("database_timeout_secs", "must be at least 1"));
        }
        if self.request_timeout_secs == 0 {
            problems.push(origins.problem("request_timeout_secs", "must be at least 1"));
        }
        if self.body_limit_bytes == 0 {
            problems.push(origins.problem("body_limit_bytes", "must be at least 1"));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                problems.push(origins.problem("tls.key", "tls.cert is set, so tls.key must be too"))
            }
            (None, Some(_)) => problems
                .push(origins.problem("tls.cert", "tls.key is set, so tls.cert must be too")),
            _ => {}
        }
        if self.redis_prefix.is_empty() {
            problems.push(origins.problem("redis_prefix", "must not be empty"));
        }
        for e in self.registry.validate() {
            problems.push(origins.problem(&format!("registry.{}", e.field), e.message));
        }
        for e in self.tracking.validate() {
            problems.push(origins.problem(&format!("tracking.{}", e.field), e.message));
        }
        // What can be checked of each route alone; how the routes fit
        // together is `check_gateway`'s.
        for (i, route) in self.gateway.routes.iter().enumerate() {
            // Numbered as in the file, whatever elements were taken out.
            let i = original_index(removed, "gateway.routes", i);
            // Elements taken out of this route's own arrays would make the
            // gateway's numbers wrong: it is checked once those are fixed.
            let inner = format!("gateway.routes[{i}].");
            if removed.keys().any(|array| array.starts_with(&inner)) {
                continue;
            }
            if crate::app::is_reserved(&route.path) {
                problems.push(origins.problem(
                    &format!("gateway.routes[{i}].path"),
                    format!(
                        "is served by the host itself ({}): requests there never reach the gateway",
                        crate::app::RESERVED_PREFIXES.join(", ")
                    ),
                ));
            }
            if let Err(errors) = route.validate() {
                for e in errors {
                    problems.push(
                        origins.problem(&format!("gateway.routes[{i}].{}", e.field), e.message),
                    );
                }
            }
        }
        problems
    }

    /// Compiles the `[gateway]` section as the gateway does when `serve`
    /// starts it (duplicate route ids, conflicting paths, transforms,
    /// `identity_headers`, `upstream_ca_file`, ...), without any backend.
    fn check_gateway(&self, origins: &Origins) -> Vec<ConfigProblem> {
        let build = jadugar_gateway::Gateway::builder(self.gateway.clone()).build();
        // With no backend nothing in the build waits: it is ready at the
        // first poll. Were it not, the gateway checks the same at start.
        match futures_util::FutureExt::now_or_never(build) {
            None | Some(Ok(_)) => Vec::new(),
            Some(Err(jadugar_gateway::Error::Invalid(errors))) => errors
                .into_iter()
                .map(|e| origins.problem(&format!("gateway.{}", e.field), e.message))
                .collect(),
            Some(Err(other)) => vec![origins.problem("gateway", other.to_string())],
        }
    }
}

/// The sections of the component configurations, by name.
pub const COMPONENT_SECTIONS: &[&str] = &["auth", "registry", "tracking", "gateway"];

/// Whether a key names a secret: its value is never printed.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "token", "private", "credential"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with("key")
        || key.ends_with("keys")
}

/// `value` with secrets redacted: values of secret-named keys, and
/// passwords in URLs.
fn redact_value(key: Option<&str>, value: &toml::Value) -> toml::Value {
    let secret = key.is_some_and(is_secret_key);
    match value {
        toml::Value::String(_) if secret => toml::Value::String(REDACTED.to_owned()),
        toml::Value::String(text) if text.contains("://") => toml::Value::String(redact_url(text)),
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|item| redact_value(key, item)).collect())
        }
        toml::Value::Table(table) => toml::Value::Table(
            table
                .iter()
                .map(|(k, v)| (k.clone(), redact_value(Some(k), v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Checks a database URL: `sqlite:` or `postgres:`, and well-formed.
///
/// ```
/// use jadugar_host::config::check_database_url;
///
/// assert!(check_database_url("sqlite://./data/app.db").is_ok());
/// assert!(check_database_url("postgres://app@db.internal/jadugar").is_ok());
/// assert!(check_database_url("mysql://db/x").is_err());
/// assert!(check_database_url("postgres://[::1/x").is_err());
/// ```
pub fn check_database_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") {
        let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
        if path.is_empty() {
            return Err(
                "a sqlite URL needs a path, e.g. sqlite://./jadugar-data/jadugar.db".into(),
            );
        }
        return Ok(());
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("malformed postgres URL {}: {e}", redact_url(url)))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("postgres URL {} has no host", redact_url(url)));
        }
        return Ok(());
    }
    Err(format!(
        "{} is neither sqlite://PATH nor postgres://USER@HOST/DB",
        redact_url(url)
    ))
}

/// Checks a Redis URL: `redis://` or `rediss://`, and well-formed.
///
/// ```
/// use jadugar_host::config::check_redis_url;
///
/// assert!(check_redis_url("rediss://:pw@cache:6380").is_ok());
/// assert!(check_redis_url("http://cache").is_err());
/// ```
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("malformed redis URL {}: {e}", redact_url(url)))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(format!(
            "{} must start with redis:// or rediss://",
            redact_url(url)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("redis URL {} has no host", redact_url(url)));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .unwrap_or(text)
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn syntax_problem(name: &str, text: &str, error: &toml::de::Error) -> ConfigProblem {
    ConfigProblem {
        origin: Some(name.to_owned()),
        key: String::new(),
        line: error.span().map(|span| line_of(text, span.start)),
        message: format!("not valid TOML: {}", error.message().trim()),
    }
}

fn record_lines(
    text: &str,
    prefix: &str,
    table: &toml::de::DeTable<'_>,
    lines: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        lines.insert(path.clone(), line_of(text, key.span().start));
        if let Some(inner) = value.get_ref().as_table() {
            record_lines(text, &path, inner, lines);
        } else if let Some(items) = value.get_ref().as_array() {
            // `[[gateway.routes]]`: each element is `gateway.routes[i]`.
            for (i, item) in items.iter().enumerate() {
                let element = format!("{path}[{i}]");
                lines.insert(element.clone(), line_of(text, item.span().start));
                if let Some(inner) = item.get_ref().as_table() {
                    record_lines(text, &element, inner, lines);
                }
            }
        }
    }
}

fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Origins,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            let upper = name.to_ascii_uppercase();
            upper.starts_with(ENV_PREFIX)
                && upper != CONFIG_FILE_VAR
                && upper != NEW_USER_PASSWORD_VAR
                && !upper.starts_with("JADUGAR_TEST_")
        })
        .collect();
    vars.sort();
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            problems.push(ConfigProblem {
                origin: Some(name.clone()),
                key: String::new(),
                line: None,
                message: "not a configuration key (use JADUGAR_KEY or JADUGAR_SECTION__KEY)".into(),
            });
            continue;
        }
        let dotted = path.join(".");
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        match insert_path(table, parents, last, env_value(&value)) {
            Ok(()) => {
                origins.env.insert(dotted, name.clone());
            }
            Err(section) => problems.push(ConfigProblem {
                origin: Some(name.clone()),
                key: dotted.clone(),
                line: None,
                message: format!("{section} is not a section"),
            }),
        }
    }
}

/// Sets `parents.last = value`, creating sections; fails with the name of
/// a parent that is not a section.
fn insert_path(
    table: &mut toml::Table,
    parents: &[String],
    last: &str,
    value: toml::Value,
) -> Result<(), String> {
    match parents.split_first() {
        None => {
            table.insert(last.to_owned(), value);
            Ok(())
        }
        Some((first, rest)) => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => insert_path(inner, rest, last, value),
                _ => Err(first.clone()),
            }
        }
    }
}

/// A number, boolean or array reads as TOML; anything else is a string.
fn env_value(raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    let literal = format!("v = {trimmed}");
    if let Ok(mut table) = toml::from_str::<toml::Table>(&literal)
        && let Some(value) = table.remove("v")
        && matches!(
            value,
            toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)
        )
    {
        return value;
    }
    if trimmed.len() >= 2
        && ((trimmed.starts_with('"') && trimmed.ends_with('"'))
            || (trimmed.starts_with('\'') && trimmed.ends_with('\'')))
        && let Ok(mut table) = toml::from_str::<toml::Table>(&literal)
        && let Some(value @ toml::Value::String(_)) = table.remove("v")
    {
        return value;
    }
    toml::Value::String(raw.to_owned())
}

/// Array elements taken out of the configuration by [`deserialize_all`],
/// by the array's key (`gateway.routes`): their indices in the file, in
/// ascending order, so that later problems keep the file's numbering.
type Removed = BTreeMap<String, Vec<usize>>;

/// Deserialises `table`; on each error, records it, removes the offending
/// value and tries again, so that every problem is reported at once.
fn deserialize_all(
    table: toml::Table,
    origins: &Origins,
    removed: &mut Removed,
    problems: &mut Vec<ConfigProblem>,
) -> Config {
    let mut root = toml::Value::Table(table);
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
            Ok(config) => return config,
            Err(error) => {
                let mut path: Vec<Segment> = error
                    .path()
                    .iter()
                    .filter_map(|segment| match segment {
                        serde_path_to_error::Segment::Map { key } => {
                            Some(Segment::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                        serde_path_to_error::Segment::Enum { variant } => {
                            Some(Segment::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
                let message = error.inner().message().trim().to_owned();
                if let Some(field) = unknown_field(&message)
                    && path.last() != Some(&Segment::Key(field.clone()))
                {
                    path.push(Segment::Key(field));
                }
                let key = key_of(&original_path(&path, removed));
                let text = if message.starts_with("unknown field") {
                    "unknown key".to_owned()
                } else {
                    message
                };
                problems.push(origins.problem(&key, text));
                // The offending value goes, or else its nearest parent: a
                // bad array element goes alone, the others keep being
                // checked under their own numbers.
                let mut target = path;
                let removed_something = loop {
                    if target.is_empty() {
                        break false;
                    }
                    if remove_at(&mut root, &target) {
                        if let Some((Segment::Index(i), array)) =
                            original_path(&target, removed).split_last()
                        {
                            let gone = removed.entry(key_of(array)).or_default();
                            let at = gone.partition_point(|g| g < i);
                            gone.insert(at, *i);
                        }
                        break true;
                    }
                    target.pop();
                };
                if !removed_something {
                    break;
                }
            }
        }
    }
    Config::default()
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

/// One step of a configuration key's path: a key, or an array element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `gateway.routes[1].path`.
fn key_of(path: &[Segment]) -> String {
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Key(name) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Index(i) => key.push_str(&format!("[{i}]")),
        }
    }
    key
}

/// The index in the file of what is now element `index` of `array`, once
/// the elements in `removed` were taken out.
fn original_index(removed: &Removed, array: &str, index: usize) -> usize {
    let mut original = index;
    for gone in removed.get(array).into_iter().flatten() {
        if *gone <= original {
            original += 1;
        }
    }
    original
}

/// `path` (numbered as the table is now) numbered as in the file.
fn original_path(path: &[Segment], removed: &Removed) -> Vec<Segment> {
    let mut original = Vec::with_capacity(path.len());
    for segment in path {
        let segment = match segment {
            Segment::Index(i) => Segment::Index(original_index(removed, &key_of(&original), *i)),
            key @ Segment::Key(_) => key.clone(),
        };
        original.push(segment);
    }
    original
}

/// Removes the value at `path` (a key of a table or an element of an
/// array); false when there is none.
fn remove_at(value: &mut toml::Value, path: &[Segment]) -> bool {
    match (value, path) {
        (toml::Value::Table(table), [Segment::Key(key)]) => table.remove(key).is_some(),
        (toml::Value::Table(table), [Segment::Key(key), rest @ ..]) => table
            .get_mut(key)
            .is_some_and(|inner| remove_at(inner, rest)),
        (toml::Value::Array(items), [Segment::Index(i)]) if *i < items.len() => {
            items.remove(*i);
            true
        }
        (toml::Value::Array(items), [Segment::Index(i), rest @ ..]) => items
            .get_mut(*i)
            .is_some_and(|inner| remove_at(inner, rest)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn env_values_are_typed() {
        assert_eq!(env_value("30"), toml::Value::Integer(30));
        assert_eq!(env_value("true"), toml::Value::Boolean(true));
        assert_eq!(
            env_value("127.0.0.1:80"),
            toml::Value::String("127.0.0.1:80".into())
        );
        assert_eq!(env_value("\"123\""), toml::Value::String("123".into()));
        assert!(matches!(env_value("[\"a\"]"), toml::Value::Array(_)));
    }

    #[test]
    fn nested_env_keys_and_reserved_names() {
        let config = Config::load_from(
            None,
            env(&[
                ("JADUGAR_TLS__CERT", "/c.pem"),
                ("JADUGAR_TLS__KEY", "/k.pem"),
                ("JADUGAR_TEST_POSTGRES_URL", "postgres://x@y/z"),
                ("JADUGAR_CONFIG", "jadugar.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert!(config.tls.enabled());
        let problems = Config::load_from(None, env(&[("JADUGAR_NOPE", "1")])).unwrap_err();
        assert_eq!(problems[0].to_string(), "JADUGAR_NOPE: nope: unknown key");
    }

    #[test]
    fn old_keys_from_a_comma_list() {
        let a = jadugar_core::MasterKey::generate("a").to_text();
        let b = jadugar_core::MasterKey::generate("b").to_text();
        let config = Config::load_from(
            None,
            env(&[("JADUGAR_OLD_MASTER_KEYS", &format!("{a}, {b}"))]),
        )
        .unwrap();
        assert_eq!(config.old_master_keys.len(), 2);
    }

    #[test]
    fn component_sections_print_redacted() {
        let value: toml::Value = toml::from_str(
            r#"
            client_secret = "s3cret"
            api_key_flush_secs = 30
            upstream = "http://user:pw@10.0.0.1:80/"
            plain = "hello"
            [nested]
            signing_keys = ["a", "b"]
            "#,
        )
        .unwrap();
        let redacted = redact_value(None, &value);
        let text = toml::to_string(&redacted).unwrap();
        for secret in ["s3cret", ":pw@", "\"a\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("api_key_flush_secs = 30"), "{text}");
        assert!(text.contains("plain = \"hello\""), "{text}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let problems =
            Config::load_from(Some(("j.toml", "listen = \"a\"\n\nfoo = = 1\n")), []).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(3));
    }
}
