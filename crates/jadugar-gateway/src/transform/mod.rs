//! Request and response transformation.
//!
//! A [`Transform`] is compiled from a [`TransformSpec`]: header add/set/remove
//! with [templates](template), prefix stripping or path rewriting with the
//! route's captures, query parameter rewrites, and JSON body field
//! add/remove/rename within a size limit. Headers whose templates use the
//! principal are identity headers: any copy the client sent is removed
//! before the gateway sets its own.
//!
//! The gateway applies transforms inline; [`TransformLayer`] applies one in
//! any tower stack:
//!
//! ```
//! use jadugar_gateway::model::TransformSpec;
//! use jadugar_gateway::transform::TransformLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let spec: TransformSpec = toml::from_str(r#"
//!     strip_prefix = "/api"
//!     request_headers = { set = [{ name = "x-gateway", value = "jadugar" }] }
//!     response_headers = { remove = ["server"] }
//! "#).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(TransformLayer::new(&spec).unwrap())
//!     .service(service_fn(|req: http::Request<_>| async move {
//!         assert_eq!(req.uri().path(), "/users");
//!         assert_eq!(req.headers()["x-gateway"], "jadugar");
//!         let res = http::Response::builder().header("server", "x").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//! let req = http::Request::get("/api/users").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert!(res.headers().get("server").is_none());
//! # });
//! ```

pub mod template;

mod layer;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, header};
use jadugar_core::{FieldError, Problem};
use serde_json::Value;

pub use layer::{TransformLayer, TransformService};

use crate::model::{JsonOps, TransformSpec};
use template::{Template, TemplateContext, UnsafeValue};

/// Default body size limit for JSON changes.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Why a transform could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A templated header value contained CR/LF.
    #[error(transparent)]
    Unsafe(#[from] UnsafeValue),
    /// The rewritten path or query is not a valid URI.
    #[error("the rewritten path is not a valid URI")]
    InvalidUri,
    /// The body is larger than the limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not valid JSON.
    #[error("the body is not valid JSON")]
    InvalidJson,
    /// Reading the body failed.
    #[error("reading the body failed")]
    Body,
}

impl TransformError {
    /// The problem a client sees for a request-side failure.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::Unsafe(_) => Problem::bad_request(
                "a header the gateway derives from this request would contain CR or LF",
            ),
            Self::InvalidUri => Problem::bad_request("the rewritten path is not a valid URI"),
            Self::TooLarge(n) => Problem::payload_too_large(format!("the body exceeds {n} bytes")),
            Self::InvalidJson => Problem::bad_request("the body is not valid JSON"),
            Self::Body => Problem::bad_request("the request body could not be read"),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct HeaderPlan {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
}

impl HeaderPlan {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn apply(&self, headers: &mut HeaderMap, ctx: &TemplateContext<'_>) -> Result<(), UnsafeValue> {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, t) in &self.set {
            let v = t.render_header(ctx)?;
            headers.insert(name.clone(), v);
        }
        for (name, t) in &self.add {
            let v = t.render_header(ctx)?;
            headers.append(name.clone(), v);
        }
        Ok(())
    }
}

/// A compiled [`TransformSpec`]; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Transform {
    request: HeaderPlan,
    response: HeaderPlan,
    identity: Vec<HeaderName>,
    strip_prefix: Option<String>,
    rewrite_path: Option<Template>,
    query_set: Vec<(String, Template)>,
    query_remove: Vec<String>,
    query_rename: Vec<(String, String)>,
    request_body: Option<JsonOps>,
    response_body: Option<JsonOps>,
    max_body: usize,
    noop: bool,
}

impl Transform {
    /// How many response header fields this transform may add.
    pub(crate) fn added_response_headers(&self) -> usize {
        self.response.set.len() + self.response.add.len()
    }

    /// Compiles `spec` for a route whose path pattern is `path`.
    pub fn compile(spec: &TransformSpec, path: &str) -> Result<Self, Vec<FieldError>> {
        let params = crate::router::pattern_params(path);
        let mut errors = Vec::new();
        let mut plan = |ops: &crate::model::HeaderOps, side: &str| {
            let mut plan = HeaderPlan::default();
            for (i, name) in ops.remove.iter().enumerate() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) => plan.remove.push(n),
                    Err(_) => errors.push(FieldError::new(
                        format!("transform.{side}.remove[{i}]"),
                        "is not a header name",
                    )),
                }
            }
            for (kind, list, out) in [
                ("set", &ops.set, &mut plan.set),
                ("add", &ops.add, &mut plan.add),
            ] {
                for (i, nv) in list.iter().enumerate() {
                    let name = HeaderName::from_bytes(nv.name.as_bytes());
                    let value = Template::parse(&nv.value, &params);
                    match (name, value) {
                        (Ok(n), Ok(t)) => out.push((n, t)),
                        (Err(_), _) => errors.push(FieldError::new(
                            format!("transform.{side}.{kind}[{i}].name"),
                            "is not a header name",
                        )),
                        (_, Err(e)) => errors.push(FieldError::new(
                            format!("transform.{side}.{kind}[{i}].value"),
                            e,
                        )),
                    }
                }
            }
            plan
        };
        let request = plan(&spec.request_headers, "request_headers");
        let response = plan(&spec.response_headers, "response_headers");
        let rewrite_path = match spec
            .rewrite_path
            .as_deref()
            .map(|p| Template::parse(p, &params))
        {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                errors.push(FieldError::new("transform.rewrite_path", e));
                None
            }
        };
        let mut query_set = Vec::new();
        for (i, nv) in spec.query.set.iter().enumerate() {
            match Template::parse(&nv.value, &params) {
                Ok(t) => query_set.push((nv.name.clone(), t)),
                Err(e) => errors.push(FieldError::new(
                    format!("transform.query.set[{i}].value"),
                    e,
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let identity = request
            .set
            .iter()
            .chain(&request.add)
            .filter(|(_, t)| t.uses_principal())
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Self {
            noop: spec.is_empty(),
            request,
            response,
            identity,
            strip_prefix: spec.strip_prefix.clone(),
            rewrite_path,
            query_set,
            query_remove: spec.query.remove.clone(),
            query_rename: spec
                .query
                .rename
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            request_body: spec.request_body.clone(),
            response_body: spec.response_body.clone(),
            max_body: spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        })
    }

    /// Whether the transform changes nothing.
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// The identity headers this transform sets from the principal.
    pub fn identity_headers(&self) -> &[HeaderName] {
        &self.identity
    }

    /// Whether the request body is rewritten.
    pub fn maps_request_body(&self) -> bool {
        self.request_body.is_some()
    }

    /// Whether the response body is rewritten.
    pub fn maps_response_body(&self) -> bool {
        self.response_body.is_some()
    }

    /// The body size limit for JSON changes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Whether response headers are changed.
    pub fn changes_response_headers(&self) -> bool {
        !self.response.is_empty()
    }

    /// Removes identity headers the client sent, then applies the request
    /// header changes.
    pub fn apply_request_headers(
        &self,
        headers: &mut HeaderMap,
        ctx: &TemplateContext<'_>,
    ) -> Result<(), TransformError> {
        if self.request.is_empty() {
            return Ok(());
        }
        for name in &self.identity {
            headers.remove(name);
        }
        // Templates that read request headers render against the headers
        // as received (after identity stripping), then apply; the copy is
        // only made when one of them does.
        let snapshot;
        let ctx = if self
            .request
            .set
            .iter()
            .chain(&self.request.add)
            .any(|(_, t)| t.reads_headers())
        {
            snapshot = headers.clone();
            TemplateContext {
                headers: &snapshot,
                ..*ctx
            }
        } else {
            *ctx
        };
        self.request.apply(headers, &ctx)?;
        Ok(())
    }

    /// Applies the response header changes.
    pub fn apply_response_headers(
        &self,
        headers: &mut HeaderMap,
        ctx: &TemplateContext<'_>,
    ) -> Result<(), TransformError> {
        self.response.apply(headers, ctx)?;
        Ok(())
    }

    /// The upstream path and query, or `None` when unchanged.
    pub fn rewrite(
        &self,
        path: &str,
        query: Option<&str>,
        ctx: &TemplateContext<'_>,
    ) -> Result<Option<PathAndQuery>, TransformError> {
        let new_path: Option<std::borrow::Cow<'_, str>> = if let Some(t) = &self.rewrite_path {
            Some(t.render(ctx)?.into())
        } else if let Some(prefix) = &self.strip_prefix {
            match path.strip_prefix(prefix.as_str()) {
                Some("") => Some("/".into()),
                Some(rest) if rest.starts_with('/') => Some(rest.into()),
                _ => None,
            }
        } else {
            None
        };
        let new_query = self.rewrite_query(query, ctx)?;
        if new_path.is_none() && new_query.is_none() {
            return Ok(None);
        }
        let path = new_path.unwrap_or(path.into());
        let query = match &new_query {
            Some(q) => Some(q.as_str()),
            None => query,
        };
        let text = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.into_owned(),
        };
        if crate::router::check_path(text.split('?').next().unwrap_or("")).is_err() {
            return Err(TransformError::InvalidUri);
        }
        PathAndQuery::try_from(text)
            .map(Some)
            .map_err(|_| TransformError::InvalidUri)
    }

    fn rewrite_query(
        &self,
        query: Option<&str>,
        ctx: &TemplateContext<'_>,
    ) -> Result<Option<String>, TransformError> {
        if self.query_set.is_empty() && self.query_remove.is_empty() && self.query_rename.is_empty()
        {
            return Ok(None);
        }
        // Pairs the transform does not touch are kept as they came, byte
        // for byte: decoding and re-encoding them would turn `%20` into
        // `+`, `flag` into `flag=` and undecodable bytes into U+FFFD.
        let mut out = String::with_capacity(query.map_or(0, str::len) + 16);
        let push = |out: &mut String, name: &str, raw_rest: &str| {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push_str(raw_rest);
        };
        for raw in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_rest) = raw.split_at(raw.find('=').unwrap_or(raw.len()));
            let decoded: String = url::form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if self.query_remove.contains(&decoded) {
                continue;
            }
            let mut name = decoded.as_str();
            for (from, to) in &self.query_rename {
                if name == from {
                    name = to;
                }
            }
            if self.query_set.iter().any(|(n, _)| n == name) {
                continue;
            }
            if name == decoded {
                push(&mut out, raw_name, raw_rest);
            } else {
                let encoded: String =
                    url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
                push(&mut out, &encoded, raw_rest);
            }
        }
        for (name, t) in &self.query_set {
            let value = t.render(ctx)?;
            let mut pair = url::form_urlencoded::Serializer::new(String::new());
            pair.append_pair(name, &value);
            push(&mut out, &pair.finish(), "");
        }
        Ok(Some(out))
    }

    /// Rewrites a JSON request body (non-JSON content types pass unchanged).
    pub fn map_request_json(
        &self,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, TransformError> {
        match &self.request_body {
            Some(ops) if is_json(headers) => map_json(ops, &body),
            _ => Ok(body),
        }
    }

    /// Rewrites a JSON response body (non-JSON content types pass unchanged).
    pub fn map_response_json(
        &self,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, TransformError> {
        match &self.response_body {
            Some(ops) if is_json(headers) => map_json(ops, &body),
            _ => Ok(body),
        }
    }
}

/// Whether the content type is JSON (`application/json` or `+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"))
}

/// Applies JSON field changes: renames, then removals, then additions.
pub fn map_json(ops: &JsonOps, body: &[u8]) -> Result<Bytes, TransformError> {
    if body.is_empty() {
        return Ok(Bytes::new());
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|_| TransformError::InvalidJson)?;
    for (from, to) in &ops.rename {
        if let Some(v) = take(&mut value, from) {
            put(&mut value, to, v);
        }
    }
    for field in &ops.remove {
        take(&mut value, field);
    }
    for (field, v) in &ops.add {
        put(&mut value, field, v.clone());
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| TransformError::InvalidJson)
}

fn take(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (walk(value, p)?, l),
        None => (value, path),
    };
    parent.as_object_mut()?.remove(last)
}

fn put(value: &mut Value, path: &str, v: Value) {
    let mut cur = value;
    let mut segments = path.split('.').peekable();
    while let Some(seg) = segments.next() {
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if segments.peek().is_none() {
            obj.insert(seg.to_owned(), v);
            return;
        }
        cur = obj
            .entry(seg.to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

fn walk<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut cur = value;
    for seg in path.split('.') {
        cur = cur.as_object_mut()?.get_mut(seg)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NameValue;
    use jadugar_core::{Principal, PrincipalKind};

    #[test]
    fn crlf_in_templated_header_refused() {
        let mut spec = TransformSpec::default();
        spec.request_headers.set.push(NameValue {
            name: "x-user-id".into(),
            value: "{principal.subject}".into(),
        });
        let t = Transform::compile(&spec, "/x").unwrap();
        let evil = Principal::new("bob\r\nx-admin: 1", PrincipalKind::User);
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", "spoofed".parse().unwrap());
        let h2 = HeaderMap::new();
        let ctx = TemplateContext {
            principal: Some(&evil),
            ..TemplateContext::new(&h2, "r")
        };
        let err = t.apply_request_headers(&mut headers, &ctx).unwrap_err();
        assert!(matches!(err, TransformError::Unsafe(_)));
        assert_eq!(err.to_problem().status, 400);
        let good = Principal::new("bob", PrincipalKind::User);
        let ctx = TemplateContext {
            principal: Some(&good),
            ..TemplateContext::new(&h2, "r")
        };
        let mut headers = HeaderMap::new();
        headers.append("x-user-id", "spoofed".parse().unwrap());
        t.apply_request_headers(&mut headers, &ctx).unwrap();
        assert_eq!(headers.get_all("x-user-id").iter().count(), 1);
        assert_eq!(headers["x-user-id"], "bob");
    }

    #[test]
    fn header_templates_read_headers_as_received() {
        let mut spec = TransformSpec::default();
        for (name, value) in [("x-copy", "was {header.x-b}"), ("x-b", "new")] {
            spec.request_headers.set.push(NameValue {
                name: name.into(),
                value: value.into(),
            });
        }
        let t = Transform::compile(&spec, "/x").unwrap();
        let empty = HeaderMap::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-b", "old".parse().unwrap());
        t.apply_request_headers(&mut headers, &TemplateContext::new(&empty, "r"))
            .unwrap();
        assert_eq!(headers["x-copy"], "was old");
        assert_eq!(headers["x-b"], "new");
    }

    #[test]
    fn json_fields() {
        let ops: JsonOps = serde_json::from_value(serde_json::json!({
            "add": {"meta.source": "gw"}, "remove": ["secret"], "rename": {"name": "full_name"}
        }))
        .unwrap();
        let out = map_json(&ops, br#"{"name":"a","secret":1}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"full_name":"a","meta":{"source":"gw"}})
        );
        assert!(map_json(&ops, b"{nope").is_err());
    }

    #[test]
    fn paths_and_queries() {
        let spec: TransformSpec = toml::from_str(r#"
            rewrite_path = "/v2/accounts/{param.id}"
            query = { set = [{ name = "src", value = "gw" }], remove = ["debug"], rename = { q = "query" } }
        "#).unwrap();
        let t = Transform::compile(&spec, "/accounts/{id}").unwrap();
        let mut router = matchit::Router::new();
        router.insert("/accounts/{id}", ()).unwrap();
        let m = router.at("/accounts/42").unwrap();
        let h = HeaderMap::new();
        let ctx = TemplateContext {
            params: Some(&m.params),
            ..TemplateContext::new(&h, "r")
        };
        let pq = t
            .rewrite("/accounts/42", Some("q=x&debug=1"), &ctx)
            .unwrap()
            .unwrap();
        assert_eq!(pq.as_str(), "/v2/accounts/42?query=x&src=gw");
        // Pairs the transform leaves alone reach the upstream unchanged.
        let pq = t
            .rewrite(
                "/accounts/42",
                Some("flag&q=a%20b&tok=%FF%00&debug=1&src=client&q%20x=1&=v"),
                &ctx,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            pq.as_str(),
            "/v2/accounts/42?flag&query=a%20b&tok=%FF%00&q%20x=1&=v&src=gw"
        );
        let strip: TransformSpec = toml::from_str(r#"strip_prefix = "/api""#).unwrap();
        let t = Transform::compile(&strip, "/api").unwrap();
        assert_eq!(
            t.rewrite("/api", None, &ctx).unwrap().unwrap().as_str(),
            "/"
        );
        assert_eq!(
            t.rewrite("/api/a", Some("x=1"), &ctx)
                .unwrap()
                .unwrap()
                .as_str(),
            "/a?x=1"
        );
        assert!(t.rewrite("/apix", None, &ctx).unwrap().is_none());
    }
}
