//! Request matching: host, path, method, headers, query.
//!
//! Paths are matched by a radix tree ([`matchit`]), so the cost of finding a
//! route depends on the length of the path, not on the number of routes.
//!
//! # Precedence
//!
//! 1. **Host.** Routes naming the request's exact host are tried first, then
//!    routes with a wildcard host (`*.example.com`, longest suffix first),
//!    then routes without hosts. A more specific host table that has no
//!    matching route falls through to the next.
//! 2. **Path.** Within a host table the most specific path pattern wins:
//!    a literal segment beats a `{param}`, which beats a catch-all (a prefix
//!    route `/api` is the pattern `/api/{*rest}` plus `/api` itself).
//! 3. **Route.** Among the routes sharing that exact pattern: higher
//!    `priority` first, then the route with more conditions (methods,
//!    headers, query), then the earlier one. The first whose method,
//!    headers and query conditions all hold is taken.
//! 4. **Fallback.** If none of them holds, prefix routes on shorter leading
//!    parts of the path are tried, longest first (`/api/users` → `/api`
//!    → `/`).
//!
//! Matching runs on the raw (still percent-encoded) path, after
//! [`check_path`] refused dot segments and encoded separators.
//!
//! ```
//! use http::{HeaderMap, Method};
//! use jadugar_gateway::router::{RouteMatcher, RouteTable};
//!
//! let mut table = RouteTable::builder();
//! table.insert(RouteMatcher::prefix("/api"), "api", "api").unwrap();
//! table.insert(RouteMatcher::exact("/api/users/{id}").methods(["GET"]), "user", "user").unwrap();
//! let table = table.build();
//! let h = HeaderMap::new();
//! let get = |path| table.find(None, &Method::GET, path, &h, None).map(|m| *m.value);
//! assert_eq!(get("/api/users/7"), Some("user"));
//! assert_eq!(get("/api/other"), Some("api"));
//! assert_eq!(table.find(None, &Method::POST, "/api/users/7", &h, None).map(|m| *m.value), Some("api"));
//! assert_eq!(get("/apix"), None);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::model::{PathMatch, RouteSpec};

/// The catch-all parameter name of prefix routes.
pub const REST_PARAM: &str = "__rest";

/// The conditions of one route.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    hosts: Vec<String>,
    path: String,
    prefix: bool,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    query: Vec<(String, Option<String>)>,
    priority: i32,
}

impl RouteMatcher {
    /// Matches `path` exactly.
    pub fn exact(path: impl Into<String>) -> Self {
        Self {
            hosts: Vec::new(),
            path: path.into(),
            prefix: false,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            priority: 0,
        }
    }

    /// Matches `path` and everything below it.
    pub fn prefix(path: impl Into<String>) -> Self {
        Self {
            prefix: true,
            ..Self::exact(path)
        }
    }

    /// Restricts to these methods (invalid names are ignored).
    pub fn methods<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, methods: I) -> Self {
        self.methods = methods
            .into_iter()
            .filter_map(|m| Method::from_bytes(m.as_ref().as_bytes()).ok())
            .collect();
        self
    }

    /// Restricts to these hosts.
    pub fn hosts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Requires a header (with a value, if given).
    pub fn header(mut self, name: HeaderName, value: Option<HeaderValue>) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Requires a query parameter (with a value, if given).
    pub fn query(mut self, name: impl Into<String>, value: Option<String>) -> Self {
        self.query.push((name.into(), value));
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The conditions of a (validated) route spec.
    pub fn from_spec(spec: &RouteSpec) -> Self {
        Self {
            hosts: spec.hosts.clone(),
            path: spec.path.clone(),
            prefix: spec.path_match == PathMatch::Prefix,
            methods: spec
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            headers: spec
                .headers
                .iter()
                .filter_map(|h| {
                    let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                    let value = match &h.value {
                        Some(v) => Some(HeaderValue::from_str(v).ok()?),
                        None => None,
                    };
                    Some((name, value))
                })
                .collect(),
            query: spec
                .query
                .iter()
                .map(|q| (q.name.clone(), q.value.clone()))
                .collect(),
            priority: spec.priority,
        }
    }

    fn specificity(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    fn holds(&self, method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        for (name, want) in &self.headers {
            match (headers.get(name), want) {
                (None, _) => return false,
                (Some(got), Some(want)) if got != want => return false,
                _ => {}
            }
        }
        for (name, want) in &self.query {
            let found = query.is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .any(|(k, v)| k == name.as_str() && want.as_ref().is_none_or(|w| *w == v))
            });
            if !found {
                return false;
            }
        }
        true
    }
}

/// Why a route could not be added to a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConflictError(pub String);

struct Candidate<T> {
    /// Shared by the candidates a route adds (one per pattern and host).
    matcher: Arc<RouteMatcher>,
    order: usize,
    value: T,
}

struct HostTable<T> {
    paths: matchit::Router<usize>,
    prefixes: matchit::Router<usize>,
    patterns: HashMap<String, usize>,
    groups: Vec<Vec<Candidate<T>>>,
    labels: Vec<String>,
    /// Which groups are bound for `prefixes` (while building).
    in_prefixes: Vec<bool>,
    /// The patterns `prefixes` gets if it is needed (while building).
    prefix_patterns: Vec<(String, usize)>,
    /// Whether any route has method, header or query conditions.
    conditional: bool,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self {
            paths: matchit::Router::new(),
            prefixes: matchit::Router::new(),
            patterns: HashMap::new(),
            groups: Vec::new(),
            labels: Vec::new(),
            in_prefixes: Vec::new(),
            prefix_patterns: Vec::new(),
            conditional: false,
        }
    }
}

impl<T> HostTable<T> {
    fn insert(
        &mut self,
        matcher: Arc<RouteMatcher>,
        label: &str,
        order: usize,
        value: T,
    ) -> Result<(), ConflictError>
    where
        T: Clone,
    {
        self.conditional |= matcher.specificity() > 0;
        let result = self.insert_patterns(matcher, label, order, value);
        if result.is_err() {
            // A pattern may be in `paths` without its route: keep the
            // fallback tree, so such a table matches as it always did.
            self.conditional = true;
        }
        result
    }

    fn insert_patterns(
        &mut self,
        matcher: Arc<RouteMatcher>,
        label: &str,
        order: usize,
        value: T,
    ) -> Result<(), ConflictError>
    where
        T: Clone,
    {
        let patterns = expand(&matcher);
        let mut groups = Vec::with_capacity(patterns.len());
        for pattern in &patterns {
            let group = match self.patterns.get(pattern) {
                Some(&g) => g,
                None => {
                    let g = self.groups.len();
                    self.paths.insert(pattern.clone(), g).map_err(|e| {
                        ConflictError(conflict_message(&e, &self.patterns, &self.labels))
                    })?;
                    self.patterns.insert(pattern.clone(), g);
                    self.groups.push(Vec::new());
                    self.labels.push(label.to_owned());
                    self.in_prefixes.push(false);
                    g
                }
            };
            // Also when an exact route brought the pattern first: the
            // fallback must find this prefix route there.
            if matcher.prefix && !self.in_prefixes[group] {
                self.prefix_patterns.push((pattern.clone(), group));
                self.in_prefixes[group] = true;
            }
            groups.push(group);
        }
        for g in groups {
            let group = &mut self.groups[g];
            // Most groups hold one route: no spare capacity.
            group.reserve_exact(1);
            group.push(Candidate {
                matcher: Arc::clone(&matcher),
                order,
                value: value.clone(),
            });
            group.sort_by(|a, b| {
                b.matcher
                    .priority
                    .cmp(&a.matcher.priority)
                    .then(b.matcher.specificity().cmp(&a.matcher.specificity()))
                    .then(a.order.cmp(&b.order))
            });
        }
        Ok(())
    }

    /// Drops what only building needs (the pattern index and the labels
    /// of conflict messages) and spare capacity.
    ///
    /// The fallback tree is built only when some route has conditions:
    /// without any, the first match always holds, and a path `paths` does
    /// not match (matchit backtracks through every wildcard) no prefix
    /// pattern matches either, since `paths` has them all. Half of a
    /// prefix route's tree nodes are saved.
    fn finish(&mut self) {
        let pending = std::mem::take(&mut self.prefix_patterns);
        if self.conditional {
            for (pattern, group) in pending {
                // A subset of `paths`, which took them: cannot conflict.
                if let Err(e) = self.prefixes.insert(pattern, group) {
                    tracing::error!(error = %e, "route pattern left out of the fallback tree");
                }
            }
        }
        self.patterns = HashMap::new();
        self.labels = Vec::new();
        self.in_prefixes = Vec::new();
        self.groups.shrink_to_fit();
    }

    fn find<'a, 'p>(
        &'a self,
        method: &Method,
        path: &'p str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Matched<'a, 'p, T>> {
        let mut tried = usize::MAX;
        if let Ok(m) = self.paths.at(path) {
            tried = *m.value;
            if let Some(c) = self.groups[tried]
                .iter()
                .find(|c| c.matcher.holds(method, headers, query))
            {
                return Some(Matched {
                    value: &c.value,
                    params: m.params,
                });
            }
        }
        let mut p = path;
        loop {
            // Only prefix routes: an exact route sharing the pattern must
            // not take a longer path.
            if let Ok(m) = self.prefixes.at(p)
                && *m.value != tried
                && let Some(c) = self.groups[*m.value]
                    .iter()
                    .find(|c| c.matcher.prefix && c.matcher.holds(method, headers, query))
            {
                return Some(Matched {
                    value: &c.value,
                    params: m.params,
                });
            }
            match p.rfind('/') {
                Some(0) if p.len() > 1 => p = "/",
                Some(0) | None => return None,
                Some(i) => p = &p[..i],
            }
        }
    }
}

fn conflict_message(
    err: &matchit::InsertError,
    patterns: &HashMap<String, usize>,
    labels: &[String],
) -> String {
    if let matchit::InsertError::Conflict { with } = err
        && let Some(&g) = patterns.get(with.as_str())
    {
        return format!("path conflicts with {with} of route {}", labels[g]);
    }
    format!("path is not allowed: {err}")
}

fn expand(matcher: &RouteMatcher) -> Vec<String> {
    if !matcher.prefix || matcher.path.contains("{*") {
        return vec![matcher.path.clone()];
    }
    let base = matcher.path.trim_end_matches('/');
    if base.is_empty() {
        vec!["/".to_owned(), format!("/{{*{REST_PARAM}}}")]
    } else {
        // `{base}/` too: matchit's catch-all needs at least one character.
        vec![
            base.to_owned(),
            format!("{base}/"),
            format!("{base}/{{*{REST_PARAM}}}"),
        ]
    }
}

/// A matched route and the path parameters.
#[derive(Debug)]
pub struct Matched<'a, 'p, T> {
    /// The route's value.
    pub value: &'a T,
    /// The `{param}` values, still percent-encoded.
    pub params: matchit::Params<'a, 'p>,
}

/// Collects routes for a [`RouteTable`].
pub struct RouteTableBuilder<T> {
    exact: HashMap<String, HostTable<T>>,
    wildcard: Vec<(String, HostTable<T>)>,
    any: HostTable<T>,
    order: usize,
}

impl<T> std::fmt::Debug for RouteTableBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTableBuilder")
            .field("routes", &self.order)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> RouteTableBuilder<T> {
    /// Adds a route; `label` names it in conflict messages.
    pub fn insert(
        &mut self,
        matcher: RouteMatcher,
        label: &str,
        value: T,
    ) -> Result<(), ConflictError> {
        let order = self.order;
        self.order += 1;
        let matcher = Arc::new(matcher);
        if matcher.hosts.is_empty() {
            return self.any.insert(matcher, label, order, value);
        }
        for host in matcher.hosts.clone() {
            let host = host.to_ascii_lowercase();
            let table = if let Some(suffix) = host.strip_prefix('*') {
                let suffix = suffix.to_owned();
                match self.wildcard.iter().position(|(s, _)| *s == suffix) {
                    Some(i) => &mut self.wildcard[i].1,
                    None => {
                        self.wildcard.push((suffix, HostTable::default()));
                        let last = self.wildcard.len() - 1;
                        &mut self.wildcard[last].1
                    }
                }
            } else {
                self.exact.entry(host).or_default()
            };
            table.insert(Arc::clone(&matcher), label, order, value.clone())?;
        }
        Ok(())
    }

    /// The finished table.
    pub fn build(mut self) -> RouteTable<T> {
        self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        for table in self
            .exact
            .values_mut()
            .chain(self.wildcard.iter_mut().map(|(_, t)| t))
            .chain(std::iter::once(&mut self.any))
        {
            table.finish();
        }
        RouteTable {
            exact: self.exact,
            wildcard: self.wildcard,
            any: self.any,
            len: self.order,
        }
    }
}

/// Routes indexed for matching; see the [module docs](self).
pub struct RouteTable<T> {
    exact: HashMap<String, HostTable<T>>,
    wildcard: Vec<(String, HostTable<T>)>,
    any: HostTable<T>,
    len: usize,
}

impl<T> std::fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> RouteTable<T> {
    /// An empty builder.
    pub fn builder() -> RouteTableBuilder<T> {
        RouteTableBuilder {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: HostTable::default(),
            order: 0,
        }
    }
}

impl<T> RouteTable<T> {
    /// How many routes were inserted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no route was inserted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route taking this request, by the [precedence](self) rules.
    /// `host` may carry a port; `path` must have passed [`check_path`].
    pub fn find<'a, 'p>(
        &'a self,
        host: Option<&str>,
        method: &Method,
        path: &'p str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Matched<'a, 'p, T>> {
        if let Some(host) = host.filter(|_| !self.exact.is_empty() || !self.wildcard.is_empty()) {
            let host = strip_port(host);
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(table) = self.exact.get(host)
                && let Some(m) = table.find(method, path, headers, query)
            {
                return Some(m);
            }
            for (suffix, table) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(m) = table.find(method, path, headers, query)
                {
                    return Some(m);
                }
            }
        }
        self.any.find(method, path, headers, query)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Checks a path pattern: a leading `/`, valid `{param}` segments, a
/// catch-all only at the end, no dot segments.
pub fn check_pattern(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if path.len() > 2048 {
        return Err("must be at most 2048 bytes".into());
    }
    if path.bytes().any(|b| {
        b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#' || b == b'\\'
    }) {
        return Err("must not contain whitespace, control characters, '?', '#' or '\\'".into());
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("must not contain '.' or '..' segments".into());
    }
    for name in pattern_params(path) {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "parameter {{{name}}} must be letters, digits or '_'"
            ));
        }
    }
    let mut scratch = matchit::Router::new();
    scratch
        .insert(path, ())
        .map_err(|e| format!("is not a valid pattern: {e}"))?;
    Ok(())
}

/// The names of the `{param}`s of a pattern (catch-alls without the `*`),
/// plus the prefix catch-all.
pub fn pattern_params(path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        names.push(
            rest[start + 1..start + end]
                .trim_start_matches('*')
                .to_owned(),
        );
        rest = &rest[start + end + 1..];
    }
    names.push(REST_PARAM.to_owned());
    names
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `.` or `..` segments, literal or percent-encoded, also with path
    /// parameters (`..;x`).
    #[error("path contains a dot segment")]
    DotSegment,
    /// An encoded `/`, `\`, NUL or an encoded unreserved character that a
    /// server would decode into a different path.
    #[error("path contains a forbidden percent-encoding")]
    Encoding,
    /// A backslash or control character.
    #[error("path contains a forbidden character")]
    Character,
}

/// Refuses paths that could reach a route they do not match once an
/// upstream normalises them: dot segments (`/a/../admin`, also
/// `/a/..;/admin`, which servers that drop path parameters resolve), encoded
/// separators (`%2F`, `%5C`), encoded NUL, percent-encoded unreserved
/// characters (`%61dmin` for `admin`, `%2E%2E`), backslashes and control
/// characters. A clean path costs one scan, no allocation.
///
/// ```
/// use jadugar_gateway::router::check_path;
/// assert!(check_path("/api/users/7").is_ok());
/// assert!(check_path("/a/../admin").is_err());
/// assert!(check_path("/a/%2e%2e/admin").is_err());
/// assert!(check_path("/a%2fb").is_err());
/// assert!(check_path("/search/caf%C3%A9").is_ok());
/// ```
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    let mut segment_start = 0;
    while i <= bytes.len() {
        let b = if i < bytes.len() { bytes[i] } else { b'/' };
        match b {
            b'/' => {
                let segment = &bytes[segment_start..i];
                // Servers that strip path parameters (`;...`) before
                // resolving dot segments read `/a/..;/b` as `/b`: a route
                // on `/a` would forward a request for `/b`.
                let name = match segment.iter().position(|&b| b == b';') {
                    Some(end) => &segment[..end],
                    None => segment,
                };
                if name == b"." || name == b".." {
                    return Err(PathError::DotSegment);
                }
                segment_start = i + 1;
            }
            b'%' => {
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::Encoding);
                };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                    return Err(PathError::Encoding);
                };
                let decoded = h * 16 + l;
                if decoded == b'/'
                    || decoded == b'\\'
                    || decoded < 0x20
                    || decoded == 0x7f
                    || decoded.is_ascii_alphanumeric()
                    || b"-._~".contains(&decoded)
                {
                    return Err(PathError::Encoding);
                }
                i += 2;
            }
            b'\\' => return Err(PathError::Character),
            c if c < 0x20 || c == 0x7f => return Err(PathError::Character),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(
        t: &RouteTable<&'static str>,
        host: Option<&str>,
        m: Method,
        p: &str,
    ) -> Option<&'static str> {
        t.find(host, &m, p, &HeaderMap::new(), None)
            .map(|m| *m.value)
    }

    #[test]
    fn precedence() {
        let mut b = RouteTable::builder();
        b.insert(RouteMatcher::prefix("/"), "root", "root").unwrap();
        b.insert(RouteMatcher::prefix("/api"), "api", "api")
            .unwrap();
        b.insert(RouteMatcher::exact("/api/users/{id}"), "user", "user")
            .unwrap();
        b.insert(RouteMatcher::exact("/api/users/me"), "me", "me")
            .unwrap();
        b.insert(
            RouteMatcher::exact("/api/users/{id}").methods(["DELETE"]),
            "del",
            "del",
        )
        .unwrap();
        b.insert(
            RouteMatcher::exact("/api/users/{id}")
                .priority(-1)
                .query("v", Some("2".into())),
            "v2",
            "v2",
        )
        .unwrap();
        b.insert(
            RouteMatcher::prefix("/api").hosts(["api.example.com"]),
            "host",
            "host",
        )
        .unwrap();
        b.insert(
            RouteMatcher::prefix("/api").hosts(["*.example.com"]),
            "wild",
            "wild",
        )
        .unwrap();
        let t = b.build();
        assert_eq!(find(&t, None, Method::GET, "/api/users/me"), Some("me"));
        assert_eq!(find(&t, None, Method::GET, "/api/users/7"), Some("user"));
        assert_eq!(find(&t, None, Method::DELETE, "/api/users/7"), Some("del"));
        assert_eq!(find(&t, None, Method::GET, "/api/x/y"), Some("api"));
        assert_eq!(find(&t, None, Method::GET, "/api"), Some("api"));
        assert_eq!(find(&t, None, Method::GET, "/apix"), Some("root"));
        assert_eq!(find(&t, None, Method::GET, "/"), Some("root"));
        assert_eq!(
            find(
                &t,
                Some("API.example.com:8080"),
                Method::GET,
                "/api/users/7"
            ),
            Some("host")
        );
        assert_eq!(
            find(&t, Some("x.example.com"), Method::GET, "/api/a"),
            Some("wild")
        );
        assert_eq!(
            find(&t, Some("x.example.com"), Method::GET, "/other"),
            Some("root")
        );
        assert_eq!(
            find(&t, Some("example.com"), Method::GET, "/api/a"),
            Some("api")
        );
        let h = HeaderMap::new();
        assert_eq!(
            t.find(None, &Method::GET, "/api/users/7", &h, Some("v=2"))
                .map(|m| *m.value),
            Some("user")
        );
    }

    #[test]
    fn a_prefix_matches_its_own_path_with_a_trailing_slash() {
        // Without conditions (no fallback tree) and with them.
        for conditional in [false, true] {
            let mut b = RouteTable::builder();
            b.insert(RouteMatcher::prefix("/files"), "files", "files")
                .unwrap();
            b.insert(RouteMatcher::exact("/exact"), "exact", "exact")
                .unwrap();
            if conditional {
                b.insert(
                    RouteMatcher::prefix("/other").methods(["POST"]),
                    "other",
                    "other",
                )
                .unwrap();
            }
            let t = b.build();
            for path in ["/files", "/files/", "/files/a", "/files/a/"] {
                assert_eq!(find(&t, None, Method::GET, path), Some("files"), "{path}");
            }
            assert_eq!(find(&t, None, Method::GET, "/filesx"), None);
            assert_eq!(find(&t, None, Method::GET, "/exact"), Some("exact"));
            assert_eq!(find(&t, None, Method::GET, "/exact/"), None);
        }
    }

    #[test]
    fn conflicts_name_the_route() {
        let mut b = RouteTable::builder();
        b.insert(RouteMatcher::exact("/a/{x}"), "first", 1).unwrap();
        let err = b
            .insert(RouteMatcher::exact("/a/{y}"), "second", 2)
            .unwrap_err();
        assert!(err.0.contains("first"), "{err}");
    }

    #[test]
    fn traversal_refused() {
        for bad in [
            "/a/../admin",
            "/..",
            "/a/./b",
            "/a/%2e%2e/admin",
            "/a/%2E./x",
            "/a%2fadmin",
            "/a%5cadmin",
            "/%61dmin",
            "/a\\..\\admin",
            "/a/%00",
            "/a/%zz",
            "/a/%2",
            "/a/.%2e/x",
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/a/.;x/b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/a/b",
            "/a/b.c",
            "/a/..b",
            "/a/...",
            "/caf%C3%A9",
            "/a%20b",
            "/a/",
            "/a;v=1/b",
            "/a/..x;y",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}
