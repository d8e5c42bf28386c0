//! Plain data types of the registry and the validation of user input.
//!
//! ```
//! use jadugar_registry::model::{Address, Registration};
//!
//! let reg = Registration::new(Address::new("http", "10.0.0.5", 8080)).with_tags(["v2"]);
//! let limits = jadugar_registry::Config::default();
//! assert!(reg.validate(&limits).is_ok());
//! assert!(jadugar_registry::model::validate_service_name("Billing_Svc").is_err());
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use jadugar_core::{Endpoint, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Config;

/// Health of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy: receives traffic.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Unhealthy: a missed TTL or failing check.
    Critical,
    /// Taken out of rotation by an operator.
    Maintenance,
}

impl Status {
    /// Parses `passing`, `warning`, `critical` or `maintenance`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }
}

/// Where an instance listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP address.
    pub host: String,
    /// Port, 1..=65535.
    pub port: u16,
}

impl Address {
    /// An address.
    pub fn new(scheme: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    /// `host:port`, IPv6 bracketed.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The kind of an active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET scheme://host:port/path`; success is an expected status.
    Http,
    /// A TCP connection to `host:port` succeeds.
    Tcp,
}

/// An active health check, run by the registry against the instance's own
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// HTTP or TCP.
    pub kind: CheckKind,
    /// HTTP path (absolute, on the instance's own address), default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Statuses counted as success; empty means any 2xx. Redirects are
    /// never followed: a 3xx is a failure unless listed.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    /// Time between probes, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Probe timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that make a critical instance passing.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures that make a passing instance critical.
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn default_interval_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl CheckSpec {
    /// An HTTP check of `path` with default timing (10 s, 2 s, 1/3).
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            kind: CheckKind::Http,
            path: Some(path.into()),
            expected_statuses: Vec::new(),
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }

    /// A TCP connect check with default timing.
    pub fn tcp() -> Self {
        Self {
            kind: CheckKind::Tcp,
            path: None,
            ..Self::http("/")
        }
    }

    /// Sets interval and timeout, in milliseconds.
    pub fn with_timing(mut self, interval_ms: u64, timeout_ms: u64) -> Self {
        self.interval_ms = interval_ms;
        self.timeout_ms = timeout_ms;
        self
    }

    /// Sets the success and failure thresholds.
    pub fn with_thresholds(mut self, success: u32, failure: u32) -> Self {
        self.success_threshold = success;
        self.failure_threshold = failure;
        self
    }
}

/// What a service sends to register one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Where the instance listens.
    pub address: Address,
    /// Tags (discovery filters on all of them).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata (size-bounded).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative weight, 1..=10000 (default 1).
    #[serde(default = "weight_one")]
    pub weight: u32,
    /// TTL liveness: the instance must heartbeat within this many seconds
    /// or it becomes critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// An active health check run by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
}

fn weight_one() -> u32 {
    1
}

impl Registration {
    /// A registration at `address` with weight 1, no TTL and no check.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: 1,
            ttl_secs: None,
            check: None,
        }
    }

    /// Sets the tags.
    pub fn with_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the TTL in seconds.
    pub fn with_ttl_secs(mut self, ttl: u64) -> Self {
        self.ttl_secs = Some(ttl);
        self
    }

    /// Sets the active check.
    pub fn with_check(mut self, check: CheckSpec) -> Self {
        self.check = Some(check);
        self
    }

    /// Checks every field against the limits of `config`.
    pub fn validate(&self, config: &Config) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        validate_address(&self.address, &mut errors);
        if self.tags.len() > config.max_tags {
            errors.push(FieldError::new(
                "tags",
                format!("at most {} tags", config.max_tags),
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > 128 || tag.chars().any(|c| c.is_control() || c == ',')
            {
                errors.push(FieldError::new(
                    format!("tags[{i}]"),
                    "1 to 128 characters, no commas or control characters",
                ));
            }
        }
        let size: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.metadata.len() > 64 || size > config.max_metadata_bytes {
            errors.push(FieldError::new(
                "metadata",
                format!(
                    "at most 64 entries and {} bytes in all",
                    config.max_metadata_bytes
                ),
            ));
        }
        for key in self.metadata.keys() {
            if !is_token(key, 128) {
                errors.push(FieldError::new(
                    format!("metadata.{}", key.chars().take(32).collect::<String>()),
                    "keys are 1 to 128 of A-Z a-z 0-9 . _ -",
                ));
            }
        }
        if !(1..=10_000).contains(&self.weight) {
            errors.push(FieldError::new("weight", "between 1 and 10000"));
        }
        if let Some(ttl) = self.ttl_secs
            && !(1..=86_400).contains(&ttl)
        {
            errors.push(FieldError::new("ttl_secs", "between 1 and 86400"));
        }
        if let Some(check) = &self.check {
            validate_check(check, config, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn validate_address(address: &Address, errors: &mut Vec<FieldError>) {
    if !matches!(address.scheme.as_str(), "http" | "https") {
        errors.push(FieldError::new("address.scheme", "http or https"));
    }
    if address.port == 0 {
        errors.push(FieldError::new("address.port", "between 1 and 65535"));
    }
    // Brackets only as a pair around an IPv6 address: anything else would
    // make a broken URL authority (`[api]:80`, `[::1:80`).
    let valid = match address
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
    {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().is_ok(),
        None => address.host.parse::<IpAddr>().is_ok() || is_hostname(&address.host),
    };
    if !valid {
        errors.push(FieldError::new(
            "address.host",
            "an IP address or a DNS host name",
        ));
    }
}

fn validate_check(check: &CheckSpec, config: &Config, errors: &mut Vec<FieldError>) {
    if check.kind == CheckKind::Http {
        let path = check.path.as_deref().unwrap_or("/");
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.len() > 1024
            || path.contains(['\\', '#', ' ', '@'])
            || path.chars().any(|c| c.is_control())
        {
            errors.push(FieldError::new(
                "check.path",
                "an absolute path on the instance's own address (starts with one /)",
            ));
        }
    } else if check.path.is_some() {
        errors.push(FieldError::new("check.path", "only for HTTP checks"));
    }
    if check
        .expected_statuses
        .iter()
        .any(|s| !(100..=599).contains(s))
    {
        errors.push(FieldError::new(
            "check.expected_statuses",
            "HTTP statuses 100..=599",
        ));
    }
    if check.interval_ms < config.min_check_interval_ms
        || check.interval_ms > crate::MAX_CHECK_INTERVAL_MS
    {
        errors.push(FieldError::new(
            "check.interval_ms",
            format!("between {} and 3600000", config.min_check_interval_ms),
        ));
    }
    if check.timeout_ms == 0
        || check.timeout_ms > check.interval_ms.max(1)
        || check.timeout_ms > 60_000
    {
        errors.push(FieldError::new(
            "check.timeout_ms",
            "between 1 and the interval (at most 60000)",
        ));
    }
    if !(1..=100).contains(&check.success_threshold) {
        errors.push(FieldError::new(
            "check.success_threshold",
            "between 1 and 100",
        ));
    }
    if !(1..=100).contains(&check.failure_threshold) {
        errors.push(FieldError::new(
            "check.failure_threshold",
            "between 1 and 100",
        ));
    }
}

/// A service name must be a DNS label: 1 to 63 of `a-z 0-9 -`, not
/// starting or ending with `-`.
pub fn validate_service_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "service",
            "a DNS label: 1 to 63 of a-z 0-9 -, not starting or ending with -",
        ))
    }
}

/// An instance id: 1 to 128 of `A-Z a-z 0-9 . _ - :`.
pub fn validate_instance_id(id: &str) -> Result<(), FieldError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        Ok(())
    } else {
        Err(FieldError::new(
            "instance_id",
            "1 to 128 of A-Z a-z 0-9 . _ - :",
        ))
    }
}

/// A config namespace: 1 to 128 of `a-z 0-9 . _ -` (e.g. `prod.billing`).
pub fn validate_namespace(ns: &str) -> Result<(), FieldError> {
    if !ns.is_empty()
        && ns.len() <= 128
        && ns.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
    {
        Ok(())
    } else {
        Err(FieldError::new(
            "namespace",
            "1 to 128 of a-z 0-9 . _ - (e.g. prod.billing)",
        ))
    }
}

/// A config key: 1 to 256 of `A-Z a-z 0-9 . _ -`.
pub fn validate_key(key: &str) -> Result<(), FieldError> {
    if is_token(key, 256) {
        Ok(())
    } else {
        Err(FieldError::new("key", "1 to 256 of A-Z a-z 0-9 . _ -"))
    }
}

fn is_token(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// The service it belongs to.
    pub service: String,
    /// Its id, stable across re-registrations.
    pub id: String,
    /// Where it listens.
    pub address: Address,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Relative weight.
    pub weight: u32,
    /// Current health, derived from TTL, check and maintenance.
    pub status: Status,
    /// TTL in seconds, if the instance heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// The active check, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// Outcome of the active check (`None` without a check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_status: Option<Status>,
    /// A short, fixed description of the last check outcome (never the
    /// probe's response body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_output: Option<String>,
    /// Whether the TTL ran out.
    #[serde(default)]
    pub ttl_expired: bool,
    /// The maintenance reason, when in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
    /// When the TTL runs out unless a heartbeat arrives. Service listings
    /// show it as of the instance's last change (a heartbeat is not one);
    /// `GET` of the instance and the heartbeat's answer show the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ttl_deadline: Option<DateTime<Utc>>,
    /// Since when it is critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub critical_since: Option<DateTime<Utc>>,
    /// First registration.
    #[schema(value_type = String)]
    pub registered_at: DateTime<Utc>,
    /// Last change.
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
    /// The change index of the last change.
    pub modify_index: u64,
}

impl Instance {
    /// Recomputes `status` and `critical_since` from TTL, check and
    /// maintenance.
    pub fn recompute(&mut self, now: DateTime<Utc>) {
        let status = if self.maintenance.is_some() {
            Status::Maintenance
        } else if self.ttl_expired {
            Status::Critical
        } else {
            self.check_status.unwrap_or(Status::Passing)
        };
        if status == Status::Critical {
            if self.critical_since.is_none() {
                self.critical_since = Some(now);
            }
        } else {
            self.critical_since = None;
        }
        self.status = status;
    }

    /// The endpoint the gateway sees.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            id: self.id.clone(),
            scheme: self.address.scheme.clone(),
            host: self.address.host.clone(),
            port: self.address.port,
            weight: self.weight,
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// Counts of one service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Instances in all.
    pub instances: usize,
    /// Passing instances.
    pub passing: usize,
    /// Warning instances.
    pub warning: usize,
    /// Critical instances.
    pub critical: usize,
    /// Instances in maintenance.
    pub maintenance: usize,
    /// The service's change index.
    pub index: u64,
    /// Whether the mass-expiry guard is holding expiries back.
    pub self_preservation: bool,
}

/// Which instances a discovery query wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Every one of these metadata pairs.
    pub metadata: BTreeMap<String, String>,
    /// These statuses; empty means passing only.
    pub health: Vec<Status>,
    /// Every status.
    pub any_health: bool,
}

impl InstanceFilter {
    /// Whether `instance` matches.
    pub fn matches(&self, instance: &Instance) -> bool {
        let health_ok = if self.any_health {
            true
        } else if self.health.is_empty() {
            instance.status == Status::Passing
        } else {
            self.health.contains(&instance.status)
        };
        health_ok
            && self.tags.iter().all(|t| instance.tags.contains(t))
            && self
                .metadata
                .iter()
                .all(|(k, v)| instance.metadata.get(k) == Some(v))
    }
}

/// What a change touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Topic {
    /// A service's instance set.
    Service {
        /// The service.
        service: String,
    },
    /// A config key.
    Config {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
    },
}

/// One change, with its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// The change index (monotonic across the registry).
    pub index: u64,
    /// What changed.
    #[serde(flatten)]
    pub topic: Topic,
}

/// How a config value is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// A JSON document.
    Json,
    /// Plain text.
    Text,
}

impl ValueKind {
    /// `json` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }

    /// Parses `json` or `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            _ => None,
        }
    }
}

/// One version of a config entry as stored (secret values sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Version, from 1.
    pub version: u64,
    /// The value: JSON text, plain text, or a sealed secret.
    pub value: String,
    /// How the value is typed.
    pub kind: ValueKind,
    /// Whether the value is a sealed secret.
    pub secret: bool,
    /// Whether this version is a deletion (tombstone).
    pub deleted: bool,
    /// The change index of this version.
    pub modify_index: u64,
    /// When this version was written.
    pub updated_at: DateTime<Utc>,
    /// Who wrote it.
    pub updated_by: Option<String>,
}

/// A config entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigEntry {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Version, from 1.
    pub version: u64,
    /// The value (a JSON value, a string for text, `null` when redacted).
    pub value: serde_json::Value,
    /// How the value is typed.
    pub kind: ValueKind,
    /// Whether the value is a secret.
    pub secret: bool,
    /// Whether the value was redacted.
    pub redacted: bool,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// The change index of this version.
    pub modify_index: u64,
    /// When this version was written.
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
    /// Who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// A write of a config value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPut {
    /// The value: any JSON for `json`, a string for `text`.
    pub value: serde_json::Value,
    /// `json` (default) or `text`.
    #[serde(default = "json_kind")]
    pub kind: ValueKind,
    /// Encrypt at rest and redact in lists.
    #[serde(default)]
    pub secret: bool,
    /// Compare-and-set: the current version expected (0 = must not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

fn json_kind() -> ValueKind {
    ValueKind::Json
}

/// What [`crate::store::RegistryStore::config_put`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConfig {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Value as stored (sealed for secrets).
    pub value: String,
    /// Kind.
    pub kind: ValueKind,
    /// Secret.
    pub secret: bool,
    /// Tombstone.
    pub deleted: bool,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ok(host: &str) -> bool {
        Registration::new(Address::new("http", host, 80))
            .validate(&Config::default())
            .is_ok()
    }

    #[test]
    fn hosts_take_brackets_only_around_ipv6() {
        for ok in ["10.0.0.5", "::1", "[::1]", "[fe80::1]", "api.internal"] {
            assert!(host_ok(ok), "{ok}");
        }
        for bad in ["[api]", "[::1", "::1]", "[10.0.0.5]", "", "a..b", "[]"] {
            assert!(!host_ok(bad), "{bad}");
        }
    }
}
