//! Layers and the HTTP API, driven with `oneshot`.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use jadugar_auth::layer::{AuthLayer, Signer, SigningKey, SigningLayer, require};
use jadugar_auth::service::NewUser;
use jadugar_auth::store::MemoryStore;
use jadugar_auth::{AuthService, Config, http as api};
use jadugar_core::{Clock, ManualClock, Principal};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn setup(config: Config) -> (AuthService, Router) {
    let store = Arc::new(MemoryStore::default());
    let auth = AuthService::builder(
        Config {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..config
        },
        store.clone(),
        store,
    )
    .build()
    .await
    .unwrap();
    auth.create_user(
        None,
        NewUser {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            password: Some("correct horse battery".into()),
            roles: vec!["admin".into()],
            must_change_password: false,
        },
    )
    .await
    .unwrap();
    let app = api::router(auth.clone())
        .route(
            "/private",
            get(|p: Principal| async move { p.subject.to_string() })
                .route_layer(require("reports:read")),
        )
        .route(
            "/open",
            get(|p: Option<Principal>| async move { format!("{}", p.is_some()) }),
        )
        .route("/echo", post(|| async { "posted" }))
        .layer(AuthLayer::new(auth.clone()));
    (auth, app)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

fn json_post(path: &str, body: Value) -> http::request::Builder {
    let _ = body;
    Request::post(path).header(header::CONTENT_TYPE, "application/json")
}

async fn login(app: &Router, cookies: bool) -> (http::HeaderMap, Value) {
    let body = json!({"email": "ada@example.com", "password": "correct horse battery", "set_cookies": cookies});
    let req = json_post("/v1/auth/login", body.clone())
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, headers, body) = send(app, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (headers, body)
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let (_, app) = setup(Config::default()).await;
    let req = Request::builder()
        .method("DELETE")
        .uri("/v1/auth/login")
        .body(Body::empty())
        .unwrap();
    let (status, headers, problem) = send(&app, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(headers[header::ALLOW], "POST");
    assert_eq!(problem["status"], 405);
}

#[tokio::test]
async fn garbage_and_oversized_credentials_are_401_not_500() {
    let (_, app) = setup(Config::default()).await;
    let huge = format!("Bearer {}", "a".repeat(100_000));
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("authorization", HeaderValue::from_static("Basic YWRhOnB3")),
        ("authorization", HeaderValue::from_static("Bearer")),
        ("authorization", HeaderValue::from_static("Bearer ")),
        ("authorization", HeaderValue::from_static("garbage")),
        ("authorization", HeaderValue::from_static("Bearer a.b.c")),
        ("authorization", HeaderValue::from_static("Bearer ....")),
        ("authorization", HeaderValue::from_static("Bearer jdg_")),
        (
            "authorization",
            HeaderValue::from_static("Bearer jdg_0123456789abcdef_secret"),
        ),
        (
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap(),
        ),
        ("authorization", HeaderValue::from_str(&huge).unwrap()),
        ("x-api-key", HeaderValue::from_static("nonsense")),
        ("x-api-key", HeaderValue::from_bytes(b"\xff").unwrap()),
    ];
    for (name, value) in cases {
        let req = Request::get("/open")
            .header(name, value.clone())
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = send(&app, req).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{name}: {value:?} -> {body}"
        );
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    }
    // Anonymous passes; the route decides. A stale session cookie is anonymous.
    let (status, _, body) = send(&app, Request::get("/open").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body), (StatusCode::OK, json!(false)));
    let stale = Request::get("/open")
        .header("cookie", "__Host-jadugar_session=not.a.jwt")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, stale).await.2, json!(false));
    let stale = Request::get("/private")
        .header("cookie", "__Host-jadugar_session=not.a.jwt")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, stale).await.0, StatusCode::UNAUTHORIZED);
    let huge = format!("__Host-jadugar_session={}", "a".repeat(100_000));
    let req = Request::get("/open")
        .header("cookie", huge)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn require_gives_401_then_403_then_200() {
    let (auth, app) = setup(Config::default()).await;
    let (status, headers, _) =
        send(&app, Request::get("/private").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    let bob = auth
        .create_user(
            None,
            NewUser {
                email: "bob@example.com".into(),
                display_name: String::new(),
                password: None,
                roles: vec![],
                must_change_password: false,
            },
        )
        .await
        .unwrap();
    let key = auth
        .create_api_key(
            None,
            jadugar_auth::service::NewApiKey {
                name: "k".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(bob.id),
            },
        )
        .await
        .unwrap();
    let req = Request::get("/private")
        .header("x-api-key", &key.secret)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::FORBIDDEN);

    let (_, body) = login(&app, false).await;
    let token = body["access_token"].as_str().unwrap();
    for _ in 0..2 {
        // Second round is served from the token cache.
        let req = Request::get("/private")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.0, StatusCode::OK);
    }
    let admin_key = auth
        .create_api_key(
            None,
            jadugar_auth::service::NewApiKey {
                name: "a".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(body["user_id"].as_str().unwrap().parse().unwrap()),
            },
        )
        .await
        .unwrap();
    let req = Request::get("/private")
        .header("authorization", format!("Bearer {}", admin_key.secret))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
}

fn cookie_value(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap()
                .split_once('=')
                .unwrap()
                .1
                .to_owned()
        })
        .unwrap()
}

#[tokio::test]
async fn cookie_sessions_need_csrf_on_unsafe_methods() {
    let (_, app) = setup(Config::default()).await;
    let (headers, _) = login(&app, true).await;
    let all: Vec<&str> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session_cookie = all
        .iter()
        .find(|c| c.starts_with("__Host-jadugar_session="))
        .unwrap();
    assert!(
        session_cookie.contains("HttpOnly")
            && session_cookie.contains("Secure")
            && session_cookie.contains("SameSite=Lax")
            && session_cookie.contains("Path=/")
    );
    let session = cookie_value(&headers, "__Host-jadugar_session");
    let csrf = cookie_value(&headers, "__Host-jadugar_csrf");
    let jar = format!("__Host-jadugar_session={session}; __Host-jadugar_csrf={csrf}");

    // Safe method: no token needed.
    let req = Request::get("/v1/auth/me")
        .header(header::COOKIE, &jar)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "ada@example.com");

    let create = json!({"name": "from-browser"}).to_string();
    let post = |token: Option<&str>, origin: Option<&str>| {
        let mut b = Request::post("/v1/auth/api-keys")
            .header(header::HOST, "app.example.com")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, &jar);
        if let Some(t) = token {
            b = b.header("x-csrf-token", t);
        }
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::from(create.clone())).unwrap()
    };
    assert_eq!(send(&app, post(None, None)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, post(Some("forged"), None)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, post(Some(&csrf), Some("https://evil.example")))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, _, body) = send(&app, post(Some(&csrf), Some("https://app.example.com"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = send(&app, post(Some(&csrf), None)).await;
    assert_eq!(status, StatusCode::CREATED);

    // Bearer requests need no CSRF token.
    let (_, body) = login(&app, false).await;
    let req = Request::post("/v1/auth/api-keys")
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            "authorization",
            format!("Bearer {}", body["access_token"].as_str().unwrap()),
        )
        .body(Body::from(create.clone()))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn login_brute_force_is_429_with_retry_after() {
    let (_, app) = setup(Config {
        login_attempts_per_account: 2,
        ..Config::default()
    })
    .await;
    for email in ["ada@example.com", "nobody@example.com"] {
        let body = json!({"email": email, "password": "wrong password"}).to_string();
        let mut last = (StatusCode::OK, http::HeaderMap::new(), Value::Null);
        for _ in 0..3 {
            last = send(
                &app,
                json_post("/v1/auth/login", Value::Null)
                    .body(Body::from(body.clone()))
                    .unwrap(),
            )
            .await;
        }
        assert_eq!(last.0, StatusCode::TOO_MANY_REQUESTS, "{email}");
        assert!(last.1.contains_key(header::RETRY_AFTER));
    }
}

#[tokio::test]
async fn api_flows_refresh_logout_users_roles_audit() {
    let (_, app) = setup(Config::default()).await;
    let (_, body) = login(&app, false).await;
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let (status, _, fresh) = send(
        &app,
        json_post("/v1/auth/refresh", Value::Null)
            .body(Body::from(json!({"refresh_token": refresh}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fresh}");

    let authed = |method: &str, path: &str, body: Option<Value>| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &bearer)
            .header(header::USER_AGENT, "test-agent")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap()
    };
    let (status, _, user) = send(
        &app,
        authed(
            "POST",
            "/v1/auth/users",
            Some(json!({"email": "Bob@Example.com", "password": "bob's long password"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "bob@example.com");
    assert_eq!(user["must_change_password"], false);
    // A password an administrator hands over can be made temporary.
    let (status, _, carol) = send(
        &app,
        authed(
            "POST",
            "/v1/auth/users",
            Some(
                json!({"email": "carol@example.com", "password": "carol's temporary one",
                        "must_change_password": true}),
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{carol}");
    assert_eq!(carol["must_change_password"], true);
    assert_eq!(carol["version"], 1, "created flagged, in one write");
    let body = json!({"email": "carol@example.com", "password": "carol's temporary one"});
    let (status, _, pair) = send(
        &app,
        json_post("/v1/auth/login", Value::Null)
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pair}");
    assert_eq!(pair["must_change_password"], true);
    let (status, _, problem) = send(
        &app,
        authed(
            "POST",
            "/v1/auth/users",
            Some(json!({"email": "nope", "password": "x"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "email");
    let (status, _, _) = send(
        &app,
        authed("POST", "/v1/auth/users", Some(json!({"wrong": true}))),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = send(&app, authed("GET", "/v1/auth/users/not-a-uuid", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, role) = send(
        &app,
        authed(
            "PUT",
            "/v1/auth/roles/deployer",
            Some(json!({"permissions": ["registry:*"]})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{role}");
    let path = format!(
        "/v1/auth/users/{}/roles/deployer",
        user["id"].as_str().unwrap()
    );
    let (status, _, edited) = send(&app, authed("PUT", &path, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(edited["roles"], json!(["deployer"]));
    let (status, _, page) = send(&app, authed("GET", "/v1/auth/users?limit=1", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page["next_cursor"].is_string());

    let (status, _, audit) = send(
        &app,
        authed("GET", "/v1/auth/audit?action=login.success", None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        audit["items"].as_array().unwrap().len(),
        2,
        "ada's and carol's"
    );

    let (_, _, created) = send(
        &app,
        authed("GET", "/v1/auth/audit?action=user.create", None),
    )
    .await;
    assert_eq!(
        created["items"][0]["user_agent"], "test-agent",
        "admin actions record the client"
    );
    let (status, _, sessions) = send(&app, authed("GET", "/v1/auth/sessions", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions.as_array().unwrap().len(), 1);

    let (status, _, _) = send(&app, authed("POST", "/v1/auth/logout", None)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = send(&app, authed("GET", "/v1/auth/me", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged-out token refused");

    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    ] {
        let (status, _, doc) = send(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(doc.is_object());
    }
}

#[tokio::test]
async fn users_carry_an_etag_and_writes_honour_if_match() {
    let (_, app) = setup(Config::default()).await;
    let (_, body) = login(&app, false).await;
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let req = |method: &str, path: &str, if_match: Option<&str>, body: Option<Value>| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &bearer)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(tag) = if_match {
            r = r.header(header::IF_MATCH, tag);
        }
        r.body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap()
    };
    let etag = |h: &http::HeaderMap| h[header::ETAG].to_str().unwrap().to_owned();
    let rename = |name: &str| Some(json!({ "display_name": name }));

    let (status, _, bob) = send(
        &app,
        req(
            "POST",
            "/v1/auth/users",
            None,
            Some(json!({"email": "bob@example.com"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bob}");
    let path = format!("/v1/auth/users/{}", bob["id"].as_str().unwrap());
    let (status, headers, got) = send(&app, req("GET", &path, None, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag(&headers), "\"1\"");
    assert_eq!(got["version"], 1);

    // A write naming the current version is made and answers the next one.
    let (status, headers, got) =
        send(&app, req("PATCH", &path, Some("\"1\""), rename("Bob"))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(etag(&headers), "\"2\"");
    assert_eq!(got["version"], 2);

    // A stale or foreign tag: 412 problem+json, nothing written.
    for stale in ["\"1\"", "\"abc\"", "1", "\"\""] {
        let (status, headers, problem) =
            send(&app, req("PATCH", &path, Some(stale), rename("Stale"))).await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "{stale}: {problem}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("precondition-failed"),
            "{problem}"
        );
    }
    let (_, headers, got) = send(&app, req("GET", &path, None, None)).await;
    assert_eq!(
        (etag(&headers).as_str(), &got["display_name"]),
        ("\"2\"", &json!("Bob"))
    );

    // No If-Match (or `*`): last writer wins on the named fields.
    let (status, headers, _) = send(&app, req("PATCH", &path, None, rename("Robert"))).await;
    assert_eq!((status, etag(&headers).as_str()), (StatusCode::OK, "\"3\""));
    let (status, headers, _) = send(&app, req("PATCH", &path, Some("*"), rename("Rob"))).await;
    assert_eq!((status, etag(&headers).as_str()), (StatusCode::OK, "\"4\""));
    // A weakened copy of the tag names the same version.
    let (status, headers, _) =
        send(&app, req("PATCH", &path, Some("W/\"4\""), rename("Bobby"))).await;
    assert_eq!((status, etag(&headers).as_str()), (StatusCode::OK, "\"5\""));
    // A null cannot remove an email or a name: 422 naming it, nothing written.
    for field in ["email", "display_name", "disabled"] {
        let (status, _, problem) = send(
            &app,
            req("PATCH", &path, None, Some(json!({ field: null }))),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (_, headers, got) = send(&app, req("GET", &path, None, None)).await;
    assert_eq!(etag(&headers), "\"5\"");
    assert_eq!(got["email"], "bob@example.com");
    // Role changes answer the new tag too.
    let (status, headers, _) =
        send(&app, req("PUT", &format!("{path}/roles/admin"), None, None)).await;
    assert_eq!((status, etag(&headers).as_str()), (StatusCode::OK, "\"6\""));

    // DELETE: a stale tag deletes nothing; the current one deletes.
    let (status, _, _) = send(&app, req("DELETE", &path, Some("\"5\""), None)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _, _) = send(&app, req("GET", &path, None, None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, req("DELETE", &path, Some("\"6\""), None)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = send(&app, req("GET", &path, None, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The OpenAPI description says so.
    let doc = serde_json::to_value(api::openapi()).unwrap();
    let user = &doc["paths"]["/v1/auth/users/{id}"];
    assert!(user["get"]["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(user["patch"]["responses"]["200"]["headers"]["ETag"].is_object());
    for method in ["patch", "delete"] {
        assert!(user[method]["responses"]["412"].is_object(), "{method}");
        assert!(
            user[method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "If-Match" && p["in"] == "header"),
            "{method}"
        );
    }
}

#[test]
fn openapi_describes_the_routes() {
    let doc = api::openapi();
    for path in [
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/users/{id}/roles/{role}",
        "/v1/auth/api-keys",
        "/v1/auth/audit",
        "/.well-known/jwks.json",
    ] {
        assert!(doc.paths.paths.contains_key(path), "{path}");
    }
    assert!(
        doc.paths
            .paths
            .keys()
            .all(|p| p.starts_with("/v1/auth/") || p.starts_with("/.well-known/"))
    );
}

#[tokio::test]
async fn signed_requests_verify_and_replays_fail() {
    let clock = ManualClock::default();
    let layer = SigningLayer::new(
        [SigningKey {
            key_id: "billing".into(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            permissions: vec!["tracking:*".into()],
        }],
        300,
        clock.shared(),
    );
    let app = Router::new()
        .route(
            "/charge",
            post(|p: Principal, body: String| async move { format!("{}:{}", p.subject, body) }),
        )
        .layer(layer);
    let signer = Signer::new("billing", b"0123456789abcdef0123456789abcdef".to_vec());
    let now = clock.now().timestamp();
    let signed = |body: &str, at: i64| {
        let mut req = Request::post("/charge?x=1").body(()).unwrap();
        signer.sign(&mut req, body.as_bytes(), at);
        req
    };
    let with_body = |req: Request<()>, body: &str| {
        let (parts, ()) = req.into_parts();
        Request::from_parts(parts, Body::from(body.to_owned()))
    };
    let first = signed("{\"amount\":5}", now);
    let replay = first.headers().clone();
    let (status, _, body) = send(&app, with_body(first, "{\"amount\":5}")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            Value::String("billing:{\"amount\":5}".into())
        )
    );

    let mut again = Request::post("/charge?x=1")
        .body(Body::from("{\"amount\":5}"))
        .unwrap();
    *again.headers_mut() = replay;
    assert_eq!(
        send(&app, again).await.0,
        StatusCode::UNAUTHORIZED,
        "replay"
    );
    assert_eq!(
        send(
            &app,
            with_body(signed("{\"amount\":5}", now), "{\"amount\":500}")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED,
        "tampered body"
    );
    assert_eq!(
        send(&app, with_body(signed("x", now - 301), "x")).await.0,
        StatusCode::UNAUTHORIZED,
        "stale"
    );
    let other = Signer::new("billing", b"another secret, another secret!!".to_vec());
    let mut req = Request::post("/charge?x=1").body(()).unwrap();
    other.sign(&mut req, b"x", now);
    assert_eq!(
        send(&app, with_body(req, "x")).await.0,
        StatusCode::UNAUTHORIZED,
        "wrong secret"
    );
    // Unsigned requests pass without a principal (the route then refuses).
    let (status, _, _) = send(
        &app,
        Request::post("/charge").body(Body::from("x")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    clock.advance(Duration::from_secs(1));
}

/// Typos in a body or a query are refused with a 422 naming the field,
/// never ignored (an unknown `scope` would have given a key every one of
/// its owner's permissions); a body that is not JSON is a 415 problem.
#[tokio::test]
async fn unknown_fields_bad_queries_and_media_types_are_problems() {
    let (_, app) = setup(Config::default()).await;
    let (_, body) = login(&app, false).await;
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let request = |method: &str, path: &str, media: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &bearer)
            .header(header::CONTENT_TYPE, media)
            .body(Body::from(body))
            .unwrap()
    };
    let json = "application/json";
    let cases = [
        (
            "/v1/auth/users",
            json!({"email": "eve@example.com", "pasword": "a long enough password"}),
            "pasword",
        ),
        (
            "/v1/auth/api-keys",
            json!({"name": "ci", "scope": ["tracking:read"]}),
            "scope",
        ),
        (
            "/v1/auth/roles",
            json!({"name": "pm", "permisions": ["tracking:*"]}),
            "permisions",
        ),
        ("/v1/auth/users", json!({"email": 7}), "email"),
        // A key that would expire as it is made.
        (
            "/v1/auth/api-keys",
            json!({"name": "ci", "expires_in_secs": 0}),
            "expires_in_secs",
        ),
    ];
    for (path, body, field) in cases {
        let (status, headers, problem) =
            send(&app, request("POST", path, json, body.to_string())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {problem}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let errors = problem["errors"].to_string();
        assert!(errors.contains(field), "{path}: {problem}");
    }
    // Nothing was created by the refused bodies.
    let (_, _, users) = send(&app, request("GET", "/v1/auth/users", json, String::new())).await;
    assert!(!users.to_string().contains("eve@example.com"), "{users}");

    for (path, field) in [
        ("/v1/auth/users?limit=abc", "limit"),
        ("/v1/auth/audit?since=yesterday", "since"),
        ("/v1/auth/api-keys?user_id=nope", "user_id"),
    ] {
        let (status, headers, problem) =
            send(&app, request("GET", path, json, String::new())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {problem}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }

    let (status, _, problem) = send(
        &app,
        request("POST", "/v1/auth/users", "text/plain", "hello".into()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("unsupported-media-type"),
        "{problem}"
    );
}

/// Creating a role whose name is taken is a 409 that changes nothing;
/// replacing is the PUT of the role's own path.
#[tokio::test]
async fn creating_a_taken_role_name_is_a_conflict() {
    let (_, app) = setup(Config::default()).await;
    let (_, body) = login(&app, false).await;
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let request = |method: &str, path: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = json!({"name": "pm", "permissions": ["tracking:*", "registry:read"]});
    let (status, _, role) = send(&app, request("POST", "/v1/auth/roles", first)).await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let again = json!({"name": "pm", "description": "dup", "permissions": ["tracking:*"]});
    let (status, headers, problem) = send(&app, request("POST", "/v1/auth/roles", again)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (_, _, roles) = send(&app, request("GET", "/v1/auth/roles", Value::Null)).await;
    let pm = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pm")
        .unwrap();
    assert_eq!(pm["permissions"], json!(["tracking:*", "registry:read"]));
    let edit = json!({"permissions": ["tracking:*"]});
    let (status, _, role) = send(&app, request("PUT", "/v1/auth/roles/pm", edit)).await;
    assert_eq!(status, StatusCode::OK, "{role}");
    assert_eq!(role["permissions"], json!(["tracking:*"]));
}

/// An API key's id is not a user id: what needs a signed-in user is a 403
/// saying so for a key (it was a 404 "user not found", or an empty list),
/// and an admin key naming the user still acts for them.
#[tokio::test]
async fn api_keys_are_not_users() {
    let (_, app) = setup(Config::default()).await;
    let (_, body) = login(&app, false).await;
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let request = |method: &str, path: &str, credential: (&str, &str), body: Value| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(credential.0, credential.1)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let as_user = ("authorization", bearer.as_str());
    let (status, _, created) = send(
        &app,
        request(
            "POST",
            "/v1/auth/api-keys",
            as_user,
            json!({"name": "admin key"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let owner = created["key"]["owner"].as_str().unwrap().to_owned();
    let as_key = ("x-api-key", secret.as_str());

    let (status, _, problem) = send(
        &app,
        request("POST", "/v1/auth/api-keys", as_key, json!({"name": "ci2"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("only users own API keys"),
        "{problem}"
    );
    for path in ["/v1/auth/sessions", "/v1/auth/api-keys"] {
        let (status, _, answer) = send(&app, request("GET", path, as_key, Value::Null)).await;
        if path == "/v1/auth/sessions" {
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
        } else {
            // With `auth:keys:write` the key lists everyone's keys.
            assert_eq!(status, StatusCode::OK, "{path}: {answer}");
            assert!(answer.to_string().contains("admin key"), "{answer}");
        }
    }

    // Naming the owner, the admin key acts for the user.
    let (status, _, created) = send(
        &app,
        request(
            "POST",
            "/v1/auth/api-keys",
            as_key,
            json!({"name": "ci2", "owner": owner}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["key"]["owner"], owner.as_str());
    let (status, _, sessions) = send(
        &app,
        request(
            "GET",
            &format!("/v1/auth/sessions?user_id={owner}"),
            as_key,
            Value::Null,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
}
