//! Jadugar registry: registration, TTL and active health checks, discovery,
//! watch and configuration management.
//!
//! Services register instances (idempotently, by instance id), keep them
//! alive with heartbeats or let the registry probe them, and find each other
//! through discovery; configuration lives in versioned key/value entries.
//! Every change takes the next value of one monotonic *change index*;
//! blocking queries and the server-sent-events stream watch it.
//!
//! ```
//! use jadugar_core::{Discovery, ManualClock, MasterKey, Sealer};
//! use jadugar_registry::model::{Address, Registration};
//! use jadugar_registry::{Config, Registry};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let registry = Registry::in_memory(
//!     Config::default(),
//!     ManualClock::default().shared(),
//!     Sealer::new(MasterKey::generate("k1"), []),
//! )
//! .await
//! .unwrap();
//! let reg = Registration::new(Address::new("http", "10.0.0.5", 8080)).with_tags(["v2"]);
//! registry.register("billing", "billing-1", reg).await.unwrap();
//! assert_eq!(registry.endpoints("billing", &[]).len(), 1);
//! assert_eq!(registry.endpoints("billing", &["v1".to_owned()]).len(), 0);
//! # });
//! ```
//!
//! # The mass-expiry guard (self-preservation)
//!
//! When, in one sweep, more than [`Config::guard_expiry_share`] of a
//! service's live instances (and at least [`Config::guard_min_instances`])
//! would be marked critical because their TTL ran out, the cause is far
//! more likely the registry (a restart, a network cut between the registry
//! and the services) than all of those instances dying together. The
//! sweeper then expires none of them: the last healthy set keeps being
//! served, the service is flagged `self_preservation: true` in
//! `GET /v1/registry/services` and a warning is logged. Instances that
//! heartbeat again simply carry on. If the condition persists longer than
//! [`Config::guard_max_secs`], the guard gives up and expires them, so dead
//! instances never linger forever (Eureka's self-preservation without its
//! zombies). Instances failing an active check or put in maintenance are
//! never held back: the guard only covers silence, not evidence.
//!
//! # Several hosts
//!
//! On Postgres every host shares the tables; a change commits with a
//! `NOTIFY` that every host's listener turns into a snapshot reload and a
//! watcher wake-up (well under a second). The change index has no gaps, and
//! a host announces its own change only once the earlier ones reached it
//! (waiting two seconds at most), so every host's watchers see changes in
//! index order. Each instance's active check is leased to one host at a
//! time (`FOR UPDATE SKIP LOCKED` over lease rows with an expiry), renewed
//! every third of [`Config::check_lease_secs`] and taken over by another
//! host when the holder stops renewing. On Redis the same happens through
//! Lua scripts and pub/sub.

pub mod checker;
pub mod client;
pub mod discovery;
pub mod error;
pub mod http;
pub mod model;
pub mod service;
pub mod store;
pub mod watch;

use jadugar_core::FieldError;
use serde::Deserialize;

pub use client::RegistryClient;
pub use error::Error;
pub use service::Registry;

/// Configuration of the registry: the `[registry]` section of
/// `jadugar.toml`.
///
/// ```
/// let config: jadugar_registry::Config = toml_like();
/// assert_eq!(config.max_wait_secs, 300);
/// # fn toml_like() -> jadugar_registry::Config { serde_json::from_str("{}").unwrap() }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where state is kept: `database` (the host's SQLite or Postgres),
    /// `redis`, or `memory`.
    pub store: StoreKind,
    /// Remove an instance after it has been critical this long (0 = never).
    pub deregister_critical_after_secs: u64,
    /// How often the TTL sweeper runs, in milliseconds.
    pub sweep_interval_ms: u64,
    /// Mass-expiry guard: the share (0..=1) of a service's live instances
    /// whose simultaneous expiry triggers self-preservation (1 disables).
    pub guard_expiry_share: f64,
    /// Mass-expiry guard: only services with at least this many live
    /// instances are protected.
    pub guard_min_instances: usize,
    /// Mass-expiry guard: give up protecting after this long.
    pub guard_max_secs: u64,
    /// Shortest allowed active-check interval, in milliseconds.
    pub min_check_interval_ms: u64,
    /// At most this many probes in flight at once on a host.
    pub max_concurrent_checks: usize,
    /// At most this many instances' checks leased by one host.
    pub max_checks_per_host: usize,
    /// Length of a check lease, in seconds (renewed every third of it).
    pub check_lease_secs: u64,
    /// Allow probes to loopback addresses (single-machine setups).
    pub allow_loopback_checks: bool,
    /// Allow probes to private ranges (RFC 1918, ULA, CGNAT).
    pub allow_private_checks: bool,
    /// Longest wait of a blocking query, in seconds.
    pub max_wait_secs: u64,
    /// Wait of a blocking query that asks for none, in seconds (at most
    /// `max_wait_secs`).
    pub default_wait_secs: u64,
    /// Changes kept for watchers; older indexes get 410.
    pub history_size: usize,
    /// Seconds between progress events on the event stream.
    pub progress_interval_secs: u64,
    /// Largest config value, in bytes.
    pub max_value_bytes: usize,
    /// Largest total of metadata keys and values of an instance, in bytes.
    pub max_metadata_bytes: usize,
    /// Most tags on an instance.
    pub max_tags: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: StoreKind::Database,
            deregister_critical_after_secs: 600,
            sweep_interval_ms: 1_000,
            guard_expiry_share: 0.5,
            guard_min_instances: 3,
            guard_max_secs: 900,
            min_check_interval_ms: 1_000,
            max_concurrent_checks: 256,
            max_checks_per_host: 100_000,
            check_lease_secs: 15,
            allow_loopback_checks: false,
            allow_private_checks: true,
            max_wait_secs: 300,
            default_wait_secs: 60,
            history_size: 10_000,
            progress_interval_secs: 15,
            max_value_bytes: 64 * 1024,
            max_metadata_bytes: 8 * 1024,
            max_tags: 32,
        }
    }
}

impl Config {
    /// One error per setting outside what the registry can work with (a
    /// zero interval, a share outside 0..=1, a lease of no length);
    /// [`Registry::new`] refuses a configuration with any.
    ///
    /// ```
    /// let mut config = jadugar_registry::Config::default();
    /// assert!(config.validate().is_empty());
    /// config.guard_expiry_share = 1.5;
    /// config.check_lease_secs = 0;
    /// let fields: Vec<_> = config.validate().into_iter().map(|e| e.field).collect();
    /// assert_eq!(fields, ["guard_expiry_share", "check_lease_secs"]);
    /// ```
    pub fn validate(&self) -> Vec<FieldError> {
        // Checked in declaration order, so errors come as a file lists them.
        let checks: [(&str, bool, String); 11] = [
            (
                "sweep_interval_ms",
                self.sweep_interval_ms < 10,
                at_least(10),
            ),
            (
                "guard_expiry_share",
                !(0.0..=1.0).contains(&self.guard_expiry_share),
                "must be between 0 and 1 (1 turns the guard off)".to_owned(),
            ),
            (
                "min_check_interval_ms",
                self.min_check_interval_ms == 0,
                at_least(1),
            ),
            (
                "min_check_interval_ms",
                self.min_check_interval_ms > MAX_CHECK_INTERVAL_MS,
                format!("must be at most {MAX_CHECK_INTERVAL_MS}, the longest check interval"),
            ),
            (
                "max_concurrent_checks",
                self.max_concurrent_checks == 0,
                at_least(1),
            ),
            (
                "max_checks_per_host",
                self.max_checks_per_host == 0,
                at_least(1),
            ),
            ("check_lease_secs", self.check_lease_secs == 0, at_least(1)),
            ("max_wait_secs", self.max_wait_secs == 0, at_least(1)),
            ("history_size", self.history_size == 0, at_least(1)),
            (
                "progress_interval_secs",
                self.progress_interval_secs == 0,
                at_least(1),
            ),
            ("max_value_bytes", self.max_value_bytes == 0, at_least(1)),
        ];
        checks
            .into_iter()
            .filter(|(_, bad, _)| *bad)
            .map(|(field, _, message)| FieldError::new(field, message))
            .collect()
    }
}

fn at_least(min: u64) -> String {
    format!("must be at least {min}")
}

/// The longest interval an active check may have, in milliseconds.
pub const MAX_CHECK_INTERVAL_MS: u64 = 3_600_000;

/// Which backend keeps the registry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The host's database (SQLite for one host, Postgres for many).
    #[default]
    Database,
    /// The host's Redis.
    Redis,
    /// Memory only (tests, demos).
    Memory,
}

impl Config {
    /// The address policy health checks go through.
    pub fn address_policy(&self) -> jadugar_core::outbound::AddressPolicy {
        jadugar_core::outbound::AddressPolicy::strict()
            .allow_loopback(self.allow_loopback_checks)
            .allow_private(self.allow_private_checks)
    }
}
