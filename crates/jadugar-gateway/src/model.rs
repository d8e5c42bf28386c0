//! Route configuration: plain serde types and their validation.
//!
//! A [`RouteSpec`] says which requests a route takes (host, path, method,
//! headers, query), where it sends them ([`UpstreamSpec`]: fixed URLs or a
//! registry service with a tag filter), who may call it ([`AuthPolicy`]), how
//! fast ([`RateLimitSpec`]), what it changes on the way ([`TransformSpec`]) and
//! how it copes with failure ([`ResilienceSpec`]).
//!
//! Upstream targets are `http://` or `https://` base URLs; `https` ones are
//! verified (webpki roots plus the gateway's `upstream_ca_file`, see
//! [`UpstreamTls`](crate::proxy::client::UpstreamTls)) with the URL's host
//! as server name.
//!
//! ```
//! use jadugar_gateway::model::RouteSpec;
//!
//! let route: RouteSpec = toml::from_str(r#"
//!     id = "billing"
//!     path = "/billing"
//!     path_match = "prefix"
//!     methods = ["GET", "POST"]
//!     auth = { require = "billing:use" }
//!     upstream = { targets = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"] }
//!     rate_limit = { key = "api_key", requests = 100, per_secs = 1 }
//!     transform = { strip_prefix = "/billing", request_headers = { set = [{ name = "x-user-id", value = "{principal.subject}" }] } }
//! "#).unwrap();
//! assert!(route.validate().is_ok());
//! ```

use std::collections::BTreeMap;

use http::{HeaderName, Method};
use jadugar_core::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::transform::template::Template;

/// Longest route id.
pub const MAX_ID_LEN: usize = 64;

/// One route of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`.
    pub id: String,
    /// Higher wins among routes with the same host and path pattern.
    #[serde(default)]
    pub priority: i32,
    /// Host names the route serves (`api.example.com`, or `*.example.com`
    /// for any subdomain); empty serves every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path pattern: literal segments and `{name}` parameters, e.g.
    /// `/users/{id}/orders`; may end with a `{*rest}` catch-all.
    pub path: String,
    /// Whether `path` must match exactly or as a segment prefix.
    #[serde(default)]
    pub path_match: PathMatch,
    /// Allowed methods; empty allows every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers the request must carry.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameters the request must carry.
    #[serde(default)]
    pub query: Vec<ValueMatch>,
    /// Where matching requests go.
    pub upstream: UpstreamSpec,
    /// Who may call the route.
    #[serde(default)]
    pub auth: AuthPolicy,
    /// Per-client request rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Changes made to requests and responses.
    #[serde(default)]
    pub transform: TransformSpec,
    /// Timeouts and retries.
    #[serde(default)]
    pub resilience: ResilienceSpec,
    /// URL of the upstream's OpenAPI document, merged into the gateway's.
    #[serde(default)]
    pub openapi_url: Option<String>,
    /// Send the client's `Host` header upstream instead of the upstream's
    /// own authority.
    #[serde(default)]
    pub preserve_host: bool,
}

/// How [`RouteSpec::path`] matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The whole path must match the pattern.
    #[default]
    Exact,
    /// The pattern must match whole leading segments: `/api` matches
    /// `/api` and `/api/x/y`, never `/apix`.
    Prefix,
}

/// A header or query parameter a request must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// Header or parameter name (headers are case-insensitive).
    pub name: String,
    /// The exact value required; absent means "present with any value".
    #[serde(default)]
    pub value: Option<String>,
}

/// Where a route sends requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// A name for logs, metrics and error responses; defaults to the
    /// service name, else the target URLs joined by `,`.
    #[serde(default)]
    pub name: Option<String>,
    /// Fixed upstream base URLs (`http://host:port` or `https://host:port`),
    /// optionally weighted. `https` upstreams are verified against the
    /// webpki roots plus the gateway's `upstream_ca_file`, with the URL's
    /// host as the TLS server name (SNI).
    #[serde(default)]
    pub targets: Vec<Target>,
    /// A registry service name, resolved through `Discovery` (instead of
    /// `targets`).
    #[serde(default)]
    pub service: Option<String>,
    /// Only instances carrying all these tags (with `service`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// How an instance is chosen.
    #[serde(default)]
    pub balance: Balance,
    /// Speak HTTP/2 to the upstream instead of HTTP/1.1: with prior
    /// knowledge over `http`, negotiated by ALPN (`h2` only) over `https`.
    #[serde(default)]
    pub http2: bool,
    /// Most requests in flight to this upstream; beyond it requests wait
    /// (see `max_pending`) or get 503 at once. Absent: unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Most requests waiting for a `max_concurrent` slot; more are shed
    /// with 503 at once.
    #[serde(default)]
    pub max_pending: u32,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierSpec,
}

/// One fixed upstream instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Target {
    /// A base URL of weight 1.
    Url(String),
    /// A base URL with a weight.
    Weighted {
        /// `http://host:port` or `https://host:port`.
        url: String,
        /// Relative weight (at least 1).
        weight: u32,
    },
}

impl Target {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            Self::Url(url) | Self::Weighted { url, .. } => url,
        }
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        match self {
            Self::Url(_) => 1,
            Self::Weighted { weight, .. } => *weight,
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// In turn, proportionally to instance weights (smooth weighted round robin).
    Weighted,
    /// Power of two random choices, picking the lower of
    /// `peak EWMA latency × (in flight + 1)`.
    LeastRequests,
    /// The same key goes to the same instance (a hash ring), from a header
    /// or a cookie; requests without the key are spread at random.
    ConsistentHash {
        /// Header carrying the key.
        #[serde(default)]
        header: Option<String>,
        /// Cookie carrying the key.
        #[serde(default)]
        cookie: Option<String>,
    },
}

/// Passive outlier detection: eject an instance after consecutive failures
/// (connect errors, timeouts, broken exchanges, 502/503/504), re-admit it
/// after a back-off that doubles with each ejection. A client whose own
/// request body fails (it went away mid-upload, say) is not the instance's
/// failure and never counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSpec {
    /// Consecutive failures that eject an instance; 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection time, in milliseconds.
    pub base_ejection_ms: u64,
    /// Longest ejection time, in milliseconds.
    pub max_ejection_ms: u64,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 5_000,
            max_ejection_ms: 300_000,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthPolicy {
    /// Anyone.
    #[default]
    Public,
    /// Any authenticated principal (401 otherwise).
    Authenticated,
    /// A principal holding this permission (401 without one, 403 without it).
    Require(String),
}

/// A per-client rate limit (GCRA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// What identifies a client.
    #[serde(default)]
    pub key: RateKey,
    /// Requests allowed per `per_secs` on average.
    pub requests: u32,
    /// The period, in seconds.
    pub per_secs: u32,
    /// Requests allowed at once (default `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Share the limit between hosts through Redis.
    #[serde(default)]
    pub shared: bool,
    /// When Redis cannot be reached: allow (true, default) or refuse with 503.
    #[serde(default = "yes")]
    pub fail_open: bool,
}

fn yes() -> bool {
    true
}

/// What identifies a client for rate limiting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The client IP address.
    #[default]
    Ip,
    /// The API key (principal subject of an API-key principal), else the IP.
    ApiKey,
    /// The user (principal subject, or an API key's owner), else the IP.
    User,
    /// Any principal's subject, else the IP.
    Principal,
    /// The value of this header, else the IP.
    Header(String),
}

/// Changes made to requests and responses of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSpec {
    /// Request header changes. Values are templates (see
    /// [`transform`](crate::transform)).
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
    /// A leading path prefix removed before proxying.
    pub strip_prefix: Option<String>,
    /// The upstream path, as a template using the route's `{param}`s,
    /// e.g. `/v2/accounts/{param.id}` (on prefix routes `{param.__rest}` is
    /// the part below the route's path). The merged OpenAPI document maps
    /// upstream paths back through it when it can be inverted (see
    /// [`docs`](crate::docs)).
    pub rewrite_path: Option<String>,
    /// Query parameter changes.
    pub query: QueryOps,
    /// JSON request body changes.
    pub request_body: Option<JsonOps>,
    /// JSON response body changes.
    pub response_body: Option<JsonOps>,
    /// Largest body read for JSON changes, in bytes (default 1 MiB);
    /// larger request bodies get 413, larger responses 502.
    pub max_body_bytes: Option<usize>,
}

impl TransformSpec {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Header changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    /// Appended values. Framing and hop-by-hop headers (`content-length`,
    /// `transfer-encoding`, `connection`, `keep-alive`, `te`, `trailer`,
    /// `upgrade`, `proxy-connection`) are the gateway's own and refused.
    pub add: Vec<NameValue>,
    /// Replaced values; the same names are refused as for `add`.
    pub set: Vec<NameValue>,
    /// Removed headers.
    pub remove: Vec<String>,
}

/// A header or parameter name with a value template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    /// Name.
    pub name: String,
    /// Value template.
    pub value: String,
}

/// Query parameter changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueryOps {
    /// Parameters set (replacing any present), values are templates.
    pub set: Vec<NameValue>,
    /// Parameters removed.
    pub remove: Vec<String>,
    /// Parameters renamed, `from` → `to`.
    pub rename: BTreeMap<String, String>,
}

/// JSON body field changes; fields are top-level names or dotted paths
/// (`a.b`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JsonOps {
    /// Fields set to a value.
    #[schema(value_type = Object)]
    pub add: BTreeMap<String, serde_json::Value>,
    /// Fields removed.
    pub remove: Vec<String>,
    /// Fields renamed, `from` → `to`.
    pub rename: BTreeMap<String, String>,
}

/// Timeouts and retries of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceSpec {
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for the upstream's response headers, in milliseconds.
    pub request_timeout_ms: u64,
    /// Extra attempts for idempotent requests (GET, HEAD, OPTIONS, PUT,
    /// DELETE, or any method with an `Idempotency-Key` header) without a
    /// body, after connect errors, timeouts and 502/503/504.
    pub retries: u32,
    /// Retries allowed as a percentage of live requests (retry budget).
    pub retry_budget_percent: f32,
}

impl Default for ResilienceSpec {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            retries: 0,
            retry_budget_percent: 20.0,
        }
    }
}

impl RouteSpec {
    /// A public route on `path` (exact) to fixed targets, for quick setup.
    ///
    /// ```
    /// let r = jadugar_gateway::model::RouteSpec::new("r", "/x", ["http://127.0.0.1:1"]);
    /// assert!(r.validate().is_ok());
    /// ```
    pub fn new<I, S>(id: impl Into<String>, path: impl Into<String>, targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            id: id.into(),
            priority: 0,
            hosts: Vec::new(),
            path: path.into(),
            path_match: PathMatch::Exact,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            upstream: UpstreamSpec {
                name: None,
                targets: targets.into_iter().map(|t| Target::Url(t.into())).collect(),
                service: None,
                tags: Vec::new(),
                balance: Balance::RoundRobin,
                http2: false,
                max_concurrent: None,
                max_pending: 0,
                outlier: OutlierSpec::default(),
            },
            auth: AuthPolicy::Public,
            rate_limit: None,
            transform: TransformSpec::default(),
            resilience: ResilienceSpec::default(),
            openapi_url: None,
            preserve_host: false,
        }
    }

    /// Makes the path a prefix match.
    pub fn prefix(mut self) -> Self {
        self.path_match = PathMatch::Prefix;
        self
    }

    /// The upstream's name for logs, metrics and error responses: its
    /// `name`, else its service, else its target URLs joined by `,`. It
    /// does not depend on the route, so routes with the same upstream
    /// share one pool of instances and connections.
    ///
    /// ```
    /// let r = jadugar_gateway::model::RouteSpec::new("r", "/x", ["http://10.0.0.1:80/", "https://b:8443"]);
    /// assert_eq!(r.upstream_name(), "http://10.0.0.1:80,https://b:8443");
    /// ```
    pub fn upstream_name(&self) -> std::borrow::Cow<'_, str> {
        match (&self.upstream.name, &self.upstream.service) {
            (Some(name), _) | (None, Some(name)) => std::borrow::Cow::Borrowed(name),
            (None, None) => std::borrow::Cow::Owned(
                self.upstream
                    .targets
                    .iter()
                    .map(|t| t.url().trim_end_matches('/'))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }

    /// Checks everything that can be checked on one route alone; field
    /// names are relative to the route (`upstream.targets[0]`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut bad = |field: String, message: &str| errors.push(FieldError::new(field, message));
        if self.id.is_empty()
            || self.id.len() > MAX_ID_LEN
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        {
            bad("id".into(), "must be 1 to 64 of a-z, 0-9, '-', '_', '.'");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if name.is_empty()
                || name.len() > 253
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            {
                bad(
                    format!("hosts[{i}]"),
                    "must be a lowercase host name, optionally starting with '*.'",
                );
            }
        }
        if let Err(message) = crate::router::check_pattern(&self.path) {
            bad("path".into(), &message);
        }
        for (i, method) in self.methods.iter().enumerate() {
            if Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                bad(format!("methods[{i}]"), "is not an HTTP method");
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                bad(format!("headers[{i}].name"), "is not a header name");
            }
        }
        for (i, q) in self.query.iter().enumerate() {
            if q.name.is_empty() {
                bad(format!("query[{i}].name"), "must not be empty");
            }
        }
        validate_upstream(&self.upstream, &mut bad);
        if let AuthPolicy::Require(permission) = &self.auth
            && (permission.is_empty() || permission.contains(char::is_whitespace))
        {
            bad(
                "auth.require".into(),
                "must be a permission like billing:read",
            );
        }
        if let Some(rl) = &self.rate_limit {
            if rl.requests == 0 {
                bad("rate_limit.requests".into(), "must be at least 1");
            }
            if rl.per_secs == 0 {
                bad("rate_limit.per_secs".into(), "must be at least 1");
            }
            if rl.burst == Some(0) {
                bad("rate_limit.burst".into(), "must be at least 1");
            }
            if let RateKey::Header(name) = &rl.key
                && HeaderName::from_bytes(name.as_bytes()).is_err()
            {
                bad("rate_limit.key.header".into(), "is not a header name");
            }
        }
        validate_transform(&self.transform, &self.path, &mut bad);
        let r = &self.resilience;
        if r.connect_timeout_ms == 0 || r.connect_timeout_ms > 600_000 {
            bad(
                "resilience.connect_timeout_ms".into(),
                "must be 1 to 600000",
            );
        }
        if r.request_timeout_ms == 0 || r.request_timeout_ms > 3_600_000 {
            bad(
                "resilience.request_timeout_ms".into(),
                "must be 1 to 3600000",
            );
        }
        if r.retries > 10 {
            bad("resilience.retries".into(), "must be at most 10");
        }
        if !(0.0..=1000.0).contains(&r.retry_budget_percent) {
            bad(
                "resilience.retry_budget_percent".into(),
                "must be 0 to 1000",
            );
        }
        if let Some(url) = &self.openapi_url {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => bad("openapi_url".into(), "must be an http(s) URL"),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn validate_upstream(u: &UpstreamSpec, bad: &mut impl FnMut(String, &str)) {
    match (&u.service, u.targets.is_empty()) {
        (Some(_), false) => bad(
            "upstream".into(),
            "give either targets or service, not both",
        ),
        (None, true) => bad("upstream".into(), "give targets or a service"),
        (Some(s), true) if s.is_empty() => bad("upstream.service".into(), "must not be empty"),
        _ => {}
    }
    for (i, t) in u.targets.iter().enumerate() {
        match url::Url::parse(t.url()) {
            Ok(url)
                if (url.scheme() == "http" || url.scheme() == "https")
                    && url.host_str().is_some()
                    && (url.path() == "/" || url.path().is_empty())
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && url.password().is_none() => {}
            _ => bad(
                format!("upstream.targets[{i}]"),
                "must be a base URL like http://host:port or https://host:port",
            ),
        }
        if t.weight() == 0 || t.weight() > 10_000 {
            bad(
                format!("upstream.targets[{i}].weight"),
                "must be 1 to 10000",
            );
        }
    }
    if let Balance::ConsistentHash { header, cookie } = &u.balance {
        match (header, cookie) {
            (Some(h), None) if HeaderName::from_bytes(h.as_bytes()).is_ok() => {}
            (None, Some(c)) if !c.is_empty() => {}
            _ => bad(
                "upstream.balance".into(),
                "consistent_hash needs exactly one of a valid header or cookie",
            ),
        }
    }
    if u.max_concurrent == Some(0) {
        bad("upstream.max_concurrent".into(), "must be at least 1");
    }
    if u.outlier.base_ejection_ms == 0 || u.outlier.max_ejection_ms < u.outlier.base_ejection_ms {
        bad(
            "upstream.outlier".into(),
            "base_ejection_ms must be at least 1 and at most max_ejection_ms",
        );
    }
}

/// Headers that describe one connection or message framing, not the
/// message: a transform may not set them.
fn is_connection_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn validate_transform(t: &TransformSpec, path: &str, bad: &mut impl FnMut(String, &str)) {
    let params = crate::router::pattern_params(path);
    for (side, ops) in [
        ("request_headers", &t.request_headers),
        ("response_headers", &t.response_headers),
    ] {
        for (kind, list) in [("add", &ops.add), ("set", &ops.set)] {
            for (i, nv) in list.iter().enumerate() {
                match HeaderName::from_bytes(nv.name.as_bytes()) {
                    Err(_) => bad(
                        format!("transform.{side}.{kind}[{i}].name"),
                        "is not a header name",
                    ),
                    // The gateway frames each message itself: a set length
                    // or coding would disagree with the body it sends.
                    Ok(name) if is_connection_header(&name) => bad(
                        format!("transform.{side}.{kind}[{i}].name"),
                        "is a framing or hop-by-hop header the gateway sets itself",
                    ),
                    Ok(_) => {}
                }
                if let Err(e) = Template::parse(&nv.value, &params) {
                    bad(format!("transform.{side}.{kind}[{i}].value"), &e);
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                bad(
                    format!("transform.{side}.remove[{i}]"),
                    "is not a header name",
                );
            }
        }
    }
    if let Some(prefix) = &t.strip_prefix
        && (!prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/'))
    {
        bad(
            "transform.strip_prefix".into(),
            "must start with '/' and not end with '/'",
        );
    }
    if let Some(rewrite) = &t.rewrite_path {
        if !rewrite.starts_with('/') {
            bad("transform.rewrite_path".into(), "must start with '/'");
        }
        if let Err(e) = Template::parse(rewrite, &params) {
            bad("transform.rewrite_path".into(), &e);
        }
        if t.strip_prefix.is_some() {
            bad(
                "transform.rewrite_path".into(),
                "give either strip_prefix or rewrite_path, not both",
            );
        }
    }
    for (i, nv) in t.query.set.iter().enumerate() {
        if nv.name.is_empty() {
            bad(
                format!("transform.query.set[{i}].name"),
                "must not be empty",
            );
        }
        if let Err(e) = Template::parse(&nv.value, &params) {
            bad(format!("transform.query.set[{i}].value"), &e);
        }
    }
    if t.max_body_bytes == Some(0) || t.max_body_bytes.is_some_and(|m| m > 64 << 20) {
        bad("transform.max_body_bytes".into(), "must be 1 to 67108864");
    }
}
