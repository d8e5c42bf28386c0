//! Jadugar tracking: projects → milestones → tasks, per-project workflows,
//! assignment, activity, comments, notifications and signed webhooks.
//!
//! The pieces:
//!
//! - [`Tracking`] (in [`service`]): the domain logic over a
//!   [`TrackingStore`](store::TrackingStore); every change writes its
//!   activity, notifications and outbox events in the same transaction.
//! - [`http::router`] / [`http::openapi`]: the JSON API under `/v1/tracking`.
//! - [`webhook::Dispatcher`]: delivers outbox events, signed with the
//!   Standard Webhooks scheme, at least once, in order per endpoint.
//! - [`access`]: the permission scheme (`tracking:read|write|admin`, globally
//!   or per project as `tracking:project:<id>:read|write|admin`).
//!
//! ```
//! use jadugar_core::{ManualClock, MasterKey, Principal, PrincipalKind, Sealer};
//! use jadugar_tracking::{Config, Tracking};
//! use jadugar_tracking::model::{NewProject, NewTask, TaskPatch};
//! use jadugar_tracking::store::MemoryStore;
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let sealer = Sealer::new(MasterKey::generate("k1"), []);
//! let tracking = Tracking::new(
//!     Arc::new(MemoryStore::new()),
//!     ManualClock::default().shared(),
//!     sealer,
//!     Config::default(),
//! );
//! let ana = Principal::new("ana", PrincipalKind::User).with_permissions(["tracking:write"]);
//! let project = tracking
//!     .create_project(&ana, NewProject { name: "Launch".into(), ..Default::default() }, None)
//!     .await
//!     .unwrap()
//!     .0;
//! let task = tracking
//!     .create_task(&ana, project.id, NewTask { title: "Write docs".into(), ..Default::default() }, None)
//!     .await
//!     .unwrap()
//!     .0;
//! // backlog -> done is not an allowed transition of the default workflow.
//! let err = tracking
//!     .update_task(&ana, task.id, TaskPatch { status: Some("backlog".into()), ..Default::default() }, None)
//!     .await;
//! assert!(err.is_ok());
//! let err = tracking
//!     .update_task(&ana, task.id, TaskPatch { status: Some("done".into()), ..Default::default() }, None)
//!     .await
//!     .unwrap_err();
//! assert_eq!(jadugar_core::Problem::from(err).status, 422);
//! # });
//! ```

//!
//! # Host wiring
//!
//! ```no_run
//! # async fn wire(
//! #     config: jadugar_tracking::Config,
//! #     db: jadugar_core::storage::Database,
//! #     redis: Option<jadugar_core::storage::Redis>,
//! #     clock: jadugar_core::SharedClock,
//! #     sealer: jadugar_core::Sealer,
//! # ) -> Result<(), jadugar_tracking::Error> {
//! use jadugar_tracking::webhook::CancellationToken;
//!
//! // Runs tracking's migrations (3000001..) on SQLite or Postgres.
//! let tracking = jadugar_tracking::Tracking::from_backends(&config, &db, redis.as_ref(), clock, sealer)
//!     .await?;
//! // Optionally: .with_directory(..) backed by the auth user store, .with_notifier(..).
//! let api: axum::Router = jadugar_tracking::http::router(tracking.clone());
//! let spec = jadugar_tracking::http::openapi();
//! let cancel = CancellationToken::new();
//! let handles = tracking.dispatcher()?.start(cancel.clone());
//! // ... serve `api` (it reads the Principal from the request extensions) ...
//! cancel.cancel();
//! for h in handles {
//!     let _ = h.await;
//! }
//! # drop(spec); Ok(()) }
//! ```

use serde::Deserialize;

pub mod access;
pub mod error;
pub mod http;
pub mod model;
pub mod notify;
pub mod service;
pub mod store;
pub mod webhook;

pub use error::Error;
pub use service::Tracking;

/// The `[tracking]` section of `jadugar.toml`.
///
/// ```
/// let config: jadugar_tracking::Config = toml_like();
/// # fn toml_like() -> jadugar_tracking::Config {
/// #     serde_json::from_str(r#"{"bulk_max": 50, "allow_loopback_targets": true}"#).unwrap()
/// # }
/// assert_eq!(config.bulk_max, 50);
/// assert_eq!(config.webhook_retry_window_secs, 86_400);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Most tasks in one bulk update.
    pub bulk_max: usize,
    /// How long an `Idempotency-Key` is remembered, in seconds.
    pub idempotency_ttl_secs: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Timeout of one webhook request (connect + response), in milliseconds.
    pub webhook_request_timeout_ms: u64,
    /// How long a claimed delivery stays leased to a dispatcher, in seconds;
    /// a host that dies mid-delivery has its deliveries re-sent after this.
    /// Must exceed the request timeout.
    pub webhook_lease_secs: u64,
    /// First retry delay, in milliseconds; doubled per attempt, with jitter.
    pub webhook_retry_base_ms: u64,
    /// Longest delay between two attempts, in seconds.
    pub webhook_retry_max_backoff_secs: u64,
    /// How long a delivery is retried before it fails and its endpoint is
    /// disabled, in seconds (about a day).
    pub webhook_retry_window_secs: u64,
    /// Most deliveries a dispatcher sends at once (one per endpoint).
    pub webhook_batch: u32,
    /// How often an idle dispatcher looks for work, in milliseconds.
    pub webhook_poll_interval_ms: u64,
    /// A warning is logged when the oldest due delivery is older than this,
    /// in seconds.
    pub webhook_lag_warn_secs: u64,
    /// How long the previous secret keeps signing after a rotation, in seconds.
    pub webhook_secret_overlap_secs: u64,
    /// Longest response excerpt kept in the delivery log, in bytes.
    pub webhook_excerpt_bytes: usize,
    /// Allow webhooks to loopback addresses (development only).
    pub allow_loopback_targets: bool,
    /// Allow webhooks to private (RFC 1918, ULA, CGNAT) addresses.
    pub allow_private_targets: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bulk_max: 100,
            idempotency_ttl_secs: 86_400,
            max_body_bytes: 1024 * 1024,
            webhook_request_timeout_ms: 10_000,
            webhook_lease_secs: 60,
            webhook_retry_base_ms: 5_000,
            webhook_retry_max_backoff_secs: 3 * 3600,
            webhook_retry_window_secs: 86_400,
            webhook_batch: 32,
            webhook_poll_interval_ms: 500,
            webhook_lag_warn_secs: 60,
            webhook_secret_overlap_secs: 86_400,
            webhook_excerpt_bytes: 512,
            allow_loopback_targets: false,
            allow_private_targets: false,
        }
    }
}

impl Config {
    /// One error per setting the service cannot work with: a zero count or
    /// interval, or a delivery lease that ends before its request's timeout
    /// (another dispatcher would claim the delivery while it is still being
    /// sent, and the receiver would get it twice). The host's config check
    /// reports them; an embedder calls it before [`Tracking::new`].
    ///
    /// ```
    /// let mut config = jadugar_tracking::Config::default();
    /// assert!(config.validate().is_empty());
    /// config.webhook_lease_secs = 5;
    /// config.webhook_request_timeout_ms = 10_000;
    /// assert_eq!(config.validate()[0].field, "webhook_lease_secs");
    /// ```
    pub fn validate(&self) -> Vec<jadugar_core::FieldError> {
        let mut errors = Vec::new();
        let counts = [
            ("bulk_max", self.bulk_max as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            (
                "webhook_request_timeout_ms",
                self.webhook_request_timeout_ms,
            ),
            ("webhook_lease_secs", self.webhook_lease_secs),
            ("webhook_retry_base_ms", self.webhook_retry_base_ms),
            (
                "webhook_retry_max_backoff_secs",
                self.webhook_retry_max_backoff_secs,
            ),
            ("webhook_batch", u64::from(self.webhook_batch)),
            ("webhook_poll_interval_ms", self.webhook_poll_interval_ms),
        ];
        for (field, value) in counts {
            if value == 0 {
                errors.push(jadugar_core::FieldError::new(field, "must be at least 1"));
            }
        }
        if self.webhook_lease_secs > 0
            && self.webhook_lease_secs.saturating_mul(1000) <= self.webhook_request_timeout_ms
        {
            errors.push(jadugar_core::FieldError::new(
                "webhook_lease_secs",
                format!(
                    "must exceed webhook_request_timeout_ms ({} ms): a delivery still being sent would be claimed again",
                    self.webhook_request_timeout_ms
                ),
            ));
        }
        errors
    }

    /// The outbound address policy these settings describe.
    pub fn address_policy(&self) -> jadugar_core::outbound::AddressPolicy {
        jadugar_core::outbound::AddressPolicy::strict()
            .allow_loopback(self.allow_loopback_targets)
            .allow_private(self.allow_private_targets)
    }
}
