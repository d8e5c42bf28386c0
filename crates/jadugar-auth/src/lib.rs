//! Jadugar auth: users, roles, API keys, sessions and JWTs as tower layers.
//!
//! - [`AuthService`] ([`service`]): the domain — users with argon2id
//!   passwords, RBAC with escalation checks, API keys, login sessions with
//!   rotating refresh tokens, EdDSA/ES256 JWTs with JWKS, throttling, audit.
//! - [`layer::AuthLayer`]: puts the caller's [`jadugar_core::Principal`] into
//!   the request extensions (bearer JWT, `jdg_` API key, `x-api-key`, session
//!   cookie with CSRF checks); [`layer::require`] guards routes by permission;
//!   [`layer::SigningLayer`] / [`layer::Signer`] do HMAC-signed service calls.
//! - [`http::router`] / [`http::openapi`]: the `/v1/auth` API, JWKS and
//!   OpenID discovery documents.
//! - [`store`]: the storage traits and their memory, SQLite, Postgres and
//!   Redis backends.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use axum::{Router, routing::get};
//! use jadugar_auth::layer::{AuthLayer, require};
//! use jadugar_auth::service::{NewApiKey, NewUser};
//! use jadugar_auth::{AuthService, Config};
//! use tower::ServiceExt;
//!
//! let auth = AuthService::memory(Config::default()).await.unwrap();
//! let ada = auth
//!     .create_user(None, NewUser {
//!         email: "ada@example.com".into(),
//!         display_name: "Ada".into(),
//!         password: None,
//!         roles: vec!["admin".into()],
//!         must_change_password: false,
//!     })
//!     .await
//!     .unwrap();
//! let key = auth
//!     .create_api_key(None, NewApiKey {
//!         name: "ci".into(),
//!         scopes: vec!["reports:read".into()],
//!         expires_in_secs: None,
//!         owner: Some(ada.id),
//!     })
//!     .await
//!     .unwrap();
//!
//! let app = Router::new()
//!     .route("/reports", get(|| async { "q3" }))
//!     .route_layer(require("reports:read"))
//!     .merge(jadugar_auth::http::router(auth.clone()))
//!     .layer(AuthLayer::new(auth));
//!
//! let request = http::Request::get("/reports")
//!     .header("x-api-key", &key.secret)
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # });
//! ```
//!
//! ## Host wiring
//!
//! ```no_run
//! # async fn f(database: jadugar_core::storage::Database, redis: Option<jadugar_core::storage::Redis>,
//! #            sealer: jadugar_core::Sealer) -> Result<(), jadugar_auth::Error> {
//! use jadugar_auth::{AuthService, Config};
//! use tokio_util::sync::CancellationToken;
//!
//! let auth = AuthService::from_backends(&Config::default(), &database, redis.as_ref(),
//!     jadugar_core::SystemClock::shared(), sealer).await?;
//! if let Some(admin) = auth.bootstrap(std::env::var("JADUGAR_ADMIN_PASSWORD").ok()).await? {
//!     if let Some(password) = admin.generated_password {
//!         println!("created {} with one-time password {password}", admin.email);
//!     }
//! }
//! let tasks = auth.spawn_background(CancellationToken::new());
//! let app = jadugar_auth::http::router(auth.clone()).layer(jadugar_auth::layer::AuthLayer::new(auth));
//! # let _ = (tasks, app); Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod http;
mod jwt;
pub mod layer;
pub mod model;
pub mod password;
pub mod service;
pub mod store;
mod throttle;

pub use config::{Config, ExternalIssuer};
pub use error::Error;
pub use layer::{AuthLayer, require};
pub use service::AuthService;
