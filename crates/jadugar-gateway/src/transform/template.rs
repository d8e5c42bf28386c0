//! Value templates: literal text with `{placeholders}`.
//!
//! | placeholder | value |
//! |---|---|
//! | `{principal.subject}` | the caller's subject (empty if anonymous) |
//! | `{principal.kind}` | `user`, `api_key` or `service` |
//! | `{principal.owner}` | an API key's owner |
//! | `{param.NAME}` | a path parameter of the route |
//! | `{header.NAME}` | a request header |
//! | `{request_id}` | the request id |
//! | `{client_ip}` | the client address |
//! | `{route.id}` | the route id |
//!
//! `{{` and `}}` are literal braces. A rendered header value containing CR,
//! LF or NUL is refused, so a subject or header cannot inject headers.
//!
//! ```
//! use jadugar_gateway::transform::template::{Template, TemplateContext};
//! use jadugar_core::{Principal, PrincipalKind};
//!
//! let t = Template::parse("user={principal.subject}", &[]).unwrap();
//! let p = Principal::new("u-1", PrincipalKind::User);
//! let headers = http::HeaderMap::new();
//! let ctx = TemplateContext { principal: Some(&p), ..TemplateContext::new(&headers, "r") };
//! assert_eq!(t.render(&ctx).unwrap(), "user=u-1");
//!
//! let evil = Principal::new("x\r\nset-cookie: a=b", PrincipalKind::User);
//! let ctx = TemplateContext { principal: Some(&evil), ..TemplateContext::new(&headers, "r") };
//! assert!(t.render_header(&ctx).is_err());
//! ```

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use jadugar_core::{Principal, PrincipalKind};

/// A rendered header value contained CR, LF or NUL, or was not a valid
/// header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a templated header value contains CR, LF or other forbidden characters")]
pub struct UnsafeValue;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Subject,
    Kind,
    Owner,
    Param(String),
    Header(HeaderName),
    RequestId,
    ClientIp,
    RouteId,
}

/// A parsed template; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    literal: Option<HeaderValue>,
}

/// What placeholders are rendered from.
#[derive(Clone, Copy)]
pub struct TemplateContext<'a> {
    /// The caller.
    pub principal: Option<&'a Principal>,
    /// Path parameters.
    pub params: Option<&'a matchit::Params<'a, 'a>>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// The route id.
    pub route_id: &'a str,
}

impl std::fmt::Debug for TemplateContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateContext")
            .field("route_id", &self.route_id)
            .finish_non_exhaustive()
    }
}

impl<'a> TemplateContext<'a> {
    /// A context with only headers and a route id.
    pub fn new(headers: &'a HeaderMap, route_id: &'a str) -> Self {
        Self {
            principal: None,
            params: None,
            headers,
            request_id: None,
            client_ip: None,
            route_id,
        }
    }
}

impl Template {
    /// Parses `text`; `params` are the path parameters that may be used.
    pub fn parse(text: &str, params: &[String]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| "has an unclosed '{'".to_owned())?;
                    let name = &rest[..end];
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_placeholder(name, params)?);
                }
                '}' => return Err("has an unmatched '}'".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let literal = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Literal(s)] => HeaderValue::from_str(s).ok(),
            _ => None,
        };
        if literal.is_none() && parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            return Err("is not a valid header value".into());
        }
        Ok(Self { parts, literal })
    }

    /// Whether the value depends on the caller (an identity header).
    pub fn uses_principal(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Subject | Part::Kind | Part::Owner))
    }

    /// Whether the value reads request headers (`{header.*}`).
    pub fn reads_headers(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Header(_)))
    }

    /// Whether the template is plain text.
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    /// Renders to text.
    pub fn render(&self, ctx: &TemplateContext<'_>) -> Result<String, UnsafeValue> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Subject => {
                    if let Some(p) = ctx.principal {
                        out.push_str(&p.subject);
                    }
                }
                Part::Kind => {
                    if let Some(p) = ctx.principal {
                        out.push_str(match p.kind {
                            PrincipalKind::User => "user",
                            PrincipalKind::ApiKey => "api_key",
                            PrincipalKind::Service => "service",
                        });
                    }
                }
                Part::Owner => {
                    if let Some(owner) = ctx.principal.and_then(|p| p.owner.as_deref()) {
                        out.push_str(owner);
                    }
                }
                Part::Param(name) => {
                    if let Some(v) = ctx.params.and_then(|p| p.get(name.as_str())) {
                        out.push_str(v);
                    }
                }
                Part::Header(name) => {
                    if let Some(v) = ctx.headers.get(name) {
                        out.push_str(v.to_str().map_err(|_| UnsafeValue)?);
                    }
                }
                Part::RequestId => {
                    if let Some(id) = ctx.request_id {
                        out.push_str(id);
                    }
                }
                Part::ClientIp => {
                    if let Some(ip) = ctx.client_ip {
                        use std::fmt::Write;
                        let _ = write!(out, "{ip}");
                    }
                }
                Part::RouteId => out.push_str(ctx.route_id),
            }
        }
        if out.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(UnsafeValue);
        }
        Ok(out)
    }

    /// Renders to a header value, refusing CR, LF, NUL and other invalid
    /// bytes. Plain-text templates cost no allocation.
    pub fn render_header(&self, ctx: &TemplateContext<'_>) -> Result<HeaderValue, UnsafeValue> {
        if let Some(v) = &self.literal {
            return Ok(v.clone());
        }
        // The rendered String becomes the value's storage (no second copy).
        HeaderValue::from_maybe_shared(bytes::Bytes::from(self.render(ctx)?))
            .map_err(|_| UnsafeValue)
    }
}

fn parse_placeholder(name: &str, params: &[String]) -> Result<Part, String> {
    Ok(match name {
        "principal.subject" => Part::Subject,
        "principal.kind" => Part::Kind,
        "principal.owner" => Part::Owner,
        "request_id" => Part::RequestId,
        "client_ip" => Part::ClientIp,
        "route.id" => Part::RouteId,
        other => {
            if let Some(p) = other.strip_prefix("param.") {
                if !params.iter().any(|n| n == p) {
                    return Err(format!(
                        "uses {{{other}}} but the path has no parameter {p}"
                    ));
                }
                Part::Param(p.to_owned())
            } else if let Some(h) = other.strip_prefix("header.") {
                Part::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("{{{other}}} is not a header name"))?,
                )
            } else {
                return Err(format!("has an unknown placeholder {{{other}}}"));
            }
        }
    })
}
