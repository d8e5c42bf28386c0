//! Webhook signing (Standard Webhooks) and the delivery dispatcher.
//!
//! Each request carries `webhook-id` (`msg_` and the event id as 32 hex
//! digits without hyphens, the same on every retry), `webhook-timestamp`
//! (Unix seconds) and `webhook-signature`: one `v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">` per active secret, space-separated (two during a
//! secret rotation). Secrets are `whsec_` followed by the base64 of the key
//! bytes.
//!
//! ```
//! use jadugar_tracking::webhook::{generate_secret, sign, verify};
//!
//! let secret = generate_secret();
//! let header = sign(&[secret.as_str()], "msg_1", 1_700_000_000, b"{}").unwrap();
//! assert!(header.starts_with("v1,"));
//! assert!(verify(&secret, "msg_1", 1_700_000_000, b"{}", &header));
//! assert!(!verify(&secret, "msg_1", 1_700_000_000, b"{ }", &header));
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use jadugar_core::outbound::AddressPolicy;
use jadugar_core::{Sealer, SharedClock};
use rand::Rng;
use sha2::Sha256;
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::error::Error;
use crate::model::{Attempt, DeliveryState, Webhook, WebhookId};
use crate::store::{AttemptOutcome, ClaimedDelivery, TrackingStore};

/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Name of the lag gauge (seconds the oldest due delivery has waited).
pub const LAG_GAUGE: &str = "jadugar_tracking_webhook_lag_seconds";
/// Name of the delivery counter (label `outcome`).
pub const DELIVERIES_COUNTER: &str = "jadugar_tracking_webhook_deliveries_total";

/// A fresh `whsec_` secret of 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a `whsec_` secret.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()
}

/// The `webhook-signature` value for `body` under each of `secrets`.
/// `None` if a secret is not valid base64.
pub fn sign(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut parts = Vec::with_capacity(secrets.len());
    for s in secrets {
        let key = decode_secret(s)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        parts.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    Some(parts.join(" "))
}

/// Whether one of the signatures in `header` is `body`'s under `secret`
/// (constant-time comparison). Receivers should also refuse timestamps far
/// from their clock.
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(expected) = sign(&[secret], msg_id, timestamp, body) else {
        return false;
    };
    header.split(' ').any(|sig| {
        use subtle::ConstantTimeEq;
        sig.as_bytes().ct_eq(expected.as_bytes()).into()
    })
}

/// Webhooks by id, with when they were read.
type HookCache = HashMap<WebhookId, (Option<Webhook>, Instant)>;

/// Delivers outbox events to webhooks; see the [module docs](self).
///
/// Several dispatchers (in one process or on several hosts) may run on one
/// database: claims are leased, so each delivery goes out once in the normal
/// path, and a delivery whose dispatcher died is re-sent after the lease.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Arc<dyn TrackingStore>,
    clock: SharedClock,
    sealer: Sealer,
    config: Config,
    policy: AddressPolicy,
    client: reqwest::Client,
    last_warning: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Webhooks read in the last second (URL, secrets), to spare a query per
    /// delivery; changes reach the dispatcher within that second.
    hooks: Arc<std::sync::Mutex<HookCache>>,
}

impl Dispatcher {
    /// A dispatcher; usually built with [`Tracking::dispatcher`](crate::Tracking::dispatcher).
    pub fn new(
        store: Arc<dyn TrackingStore>,
        clock: SharedClock,
        sealer: Sealer,
        config: Config,
        policy: AddressPolicy,
    ) -> Result<Self, Error> {
        let client =
            policy.http_client(Duration::from_millis(config.webhook_request_timeout_ms))?;
        Ok(Self {
            store,
            clock,
            sealer,
            config,
            policy,
            client,
            last_warning: Arc::default(),
            hooks: Arc::default(),
        })
    }

    /// Runs until `cancel` fires: claims due deliveries, sends them, records
    /// the outcomes, and publishes the lag gauge.
    pub fn start(self, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        vec![tokio::spawn(async move {
            let idle = Duration::from_millis(self.config.webhook_poll_interval_ms.max(1));
            let mut last_lag = Instant::now() - Duration::from_secs(60);
            loop {
                if cancel.is_cancelled() {
                    break;
                }
                if last_lag.elapsed() >= Duration::from_secs(1) {
                    self.report_lag().await;
                    last_lag = Instant::now();
                }
                let sent = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = self.run_once() => r,
                };
                match sent {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = ?e, "webhook dispatcher iteration failed"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(idle) => {}
                }
            }
        })]
    }

    /// Publishes the lag gauge and, when behind, logs a warning (at most once
    /// a minute); returns the lag, `None` when nothing is due.
    pub async fn report_lag(&self) -> Option<chrono::Duration> {
        let oldest = self.store.oldest_due().await.ok().flatten();
        let lag = oldest
            .map(|o| self.clock.now() - o)
            .filter(|l| *l > chrono::Duration::zero())
            .unwrap_or_default();
        metrics::gauge!(LAG_GAUGE).set(lag.num_milliseconds() as f64 / 1000.0);
        if lag.num_seconds() > self.config.webhook_lag_warn_secs as i64 && self.may_warn() {
            tracing::warn!(
                lag_secs = lag.num_seconds(),
                "webhook dispatcher is behind: the oldest due delivery has waited too long"
            );
        }
        oldest.map(|_| lag)
    }

    fn may_warn(&self) -> bool {
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|l| l.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Claims one batch and delivers it; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let lease_until = now + chrono::Duration::seconds(self.config.webhook_lease_secs as i64);
        let claimed = self
            .store
            .claim_deliveries(now, lease_until, self.config.webhook_batch.max(1))
            .await?;
        let n = claimed.len();
        let mut hooks: HashMap<WebhookId, Option<Webhook>> = HashMap::new();
        for c in &claimed {
            let id = c.delivery.webhook_id;
            if hooks.contains_key(&id) {
                continue;
            }
            let cached = self
                .hooks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .filter(|(_, at)| at.elapsed() < Duration::from_secs(1))
                .map(|(w, _)| w.clone());
            let hook = match cached {
                Some(w) => w,
                None => {
                    let w = self.store.get_webhook(id).await?;
                    let mut cache = self
                        .hooks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(id, (w.clone(), Instant::now()));
                    w
                }
            };
            hooks.insert(id, hook);
        }
        let jobs = claimed.into_iter().map(|c| {
            let hook = hooks.get(&c.delivery.webhook_id).cloned().flatten();
            self.deliver(c, hook)
        });
        // Claims hold at most one delivery per endpoint, so sending them all
        // at once keeps the order per endpoint; the outcomes are then
        // recorded in one batch.
        let finished: Vec<(ClaimedDelivery, AttemptOutcome, WebhookId)> =
            futures_util::future::join_all(jobs)
                .await
                .into_iter()
                .flatten()
                .collect();
        if finished.is_empty() {
            return Ok(n);
        }
        let items: Vec<(ClaimedDelivery, AttemptOutcome)> = finished
            .iter()
            .map(|(c, o, _)| (c.clone(), o.clone()))
            .collect();
        let kept = self.store.finish_deliveries(&items).await?;
        for ((claimed, outcome, hook), kept) in finished.iter().zip(kept) {
            if kept && outcome.state == DeliveryState::Failed {
                self.disable(*hook, claimed).await?;
            }
        }
        Ok(n)
    }

    /// Sends one claimed delivery; the outcome to record, `None` when its
    /// webhook is gone.
    async fn deliver(
        &self,
        claimed: ClaimedDelivery,
        hook: Option<Webhook>,
    ) -> Option<(ClaimedDelivery, AttemptOutcome, WebhookId)> {
        let hook = hook?;
        let started = self.clock.now();
        let (status, excerpt, retry_after, latency_ms) = match self.send(&claimed, &hook).await {
            Ok(r) => r,
            Err(msg) => (None, msg, None, 0),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let attempt = Attempt {
            at: started,
            status,
            latency_ms,
            excerpt,
        };
        let now = self.clock.now();
        let window_end = claimed.delivery.created_at
            + chrono::Duration::seconds(self.config.webhook_retry_window_secs as i64);
        let (state, next) = if ok {
            (DeliveryState::Succeeded, now)
        } else {
            let next = now + self.backoff(claimed.delivery.attempts, retry_after);
            if next > window_end {
                (DeliveryState::Failed, now)
            } else {
                (DeliveryState::Pending, next)
            }
        };
        metrics::counter!(DELIVERIES_COUNTER, "outcome" => if ok { "success" } else if state == DeliveryState::Failed { "failed" } else { "retry" }).increment(1);
        let outcome = AttemptOutcome {
            state,
            next_attempt_at: next,
            attempt,
        };
        Some((claimed, outcome, hook.id))
    }

    async fn disable(&self, id: WebhookId, claimed: &ClaimedDelivery) -> Result<(), Error> {
        let reason = format!(
            "delivery {} failed for {} attempts over the retry window; re-enable it to resume",
            claimed.delivery.id, claimed.delivery.attempts
        );
        let now = self.clock.now();
        let disabled = crate::store::modify_webhook(&*self.store, id, |w| {
            w.enabled = false;
            w.disabled_reason = Some(reason.clone());
            w.updated_at = now;
            Ok::<_, Error>(())
        })
        .await?;
        if disabled.is_some() {
            tracing::warn!(webhook = %id, "webhook disabled after persistent delivery failure");
            self.hooks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        }
        Ok(())
    }

    /// Exponential backoff with full jitter, at least `Retry-After`.
    fn backoff(&self, attempts: u32, retry_after: Option<u64>) -> chrono::Duration {
        let max_ms = self
            .config
            .webhook_retry_max_backoff_secs
            .saturating_mul(1000);
        let exp = self
            .config
            .webhook_retry_base_ms
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
            .min(max_ms);
        // Full jitter over the upper half keeps retries spread but not too early.
        let jittered = exp / 2 + rand::thread_rng().gen_range(0..=exp / 2);
        let ms = match retry_after {
            Some(s) => jittered.max(s.saturating_mul(1000).min(max_ms)),
            None => jittered,
        };
        chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX / 2))
    }

    /// Sends one attempt: (status, excerpt, retry-after secs, latency ms),
    /// or an error text.
    async fn send(
        &self,
        claimed: &ClaimedDelivery,
        hook: &Webhook,
    ) -> Result<(Option<u16>, String, Option<u64>, u64), String> {
        let url = url::Url::parse(&hook.url).map_err(|_| "invalid URL".to_owned())?;
        self.policy.check_url(&url).map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let mut secrets = Vec::new();
        for s in &hook.secrets {
            if s.expires_at.is_none_or(|e| e > now) {
                let plain = self
                    .sealer
                    .open(&s.sealed, hook.id.to_string().as_bytes())
                    .map_err(|_| "secret could not be unsealed".to_owned())?;
                secrets.push(String::from_utf8_lossy(&plain).into_owned());
            }
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let msg_id = format!("msg_{}", claimed.event.id.as_uuid().simple());
        let ts = now.timestamp();
        let body = claimed.event.payload.as_bytes().to_vec();
        let signature =
            sign(&refs, &msg_id, ts, &body).ok_or_else(|| "invalid secret".to_owned())?;
        let started = Instant::now();
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "jadugar-webhooks/1")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let latency = started.elapsed().as_millis() as u64;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now));
                let limit = self.config.webhook_excerpt_bytes;
                let bytes = read_prefix(r, limit).await;
                Ok((
                    Some(status),
                    String::from_utf8_lossy(&bytes).into_owned(),
                    retry_after,
                    latency,
                ))
            }
            Err(e) if e.is_timeout() => Ok((None, "timed out".into(), None, latency)),
            Err(e) if e.is_connect() => Ok((None, "connection failed".into(), None, latency)),
            Err(_) => Ok((None, "request failed".into(), None, latency)),
        }
    }
}

async fn read_prefix(mut r: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match r.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(limit);
    out
}

/// Parses `Retry-After` (seconds or an HTTP date) into seconds from `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<u64> {
    if let Ok(s) = value.trim().parse::<u64>() {
        return Some(s);
    }
    let when: DateTime<Utc> = httpdate::parse_http_date(value.trim()).ok()?.into();
    Some((when - now).num_seconds().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_gives_two_signatures() {
        let a = generate_secret();
        let b = generate_secret();
        let header = sign(&[&a, &b], "m", 5, b"x").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&a, "m", 5, b"x", &header));
        assert!(verify(&b, "m", 5, b"x", &header));
        assert!(!verify(&generate_secret(), "m", 5, b"x", &header));
    }

    fn dispatcher(config: Config) -> Dispatcher {
        Dispatcher::new(
            Arc::new(crate::store::MemoryStore::new()),
            jadugar_core::SystemClock::shared(),
            Sealer::new(jadugar_core::MasterKey::generate("k"), []),
            config,
            AddressPolicy::strict(),
        )
        .unwrap()
    }

    #[test]
    fn backoff_grows_with_jitter_caps_and_honours_retry_after() {
        let d = dispatcher(Config {
            webhook_retry_base_ms: 1_000,
            webhook_retry_max_backoff_secs: 60,
            ..Config::default()
        });
        for attempt in 1..=4u32 {
            let full = 1_000i64 << (attempt - 1);
            for _ in 0..20 {
                let b = d.backoff(attempt, None).num_milliseconds();
                assert!((full / 2..=full).contains(&b), "attempt {attempt}: {b}");
            }
        }
        assert!(d.backoff(30, None).num_milliseconds() <= 60_000);
        assert!(d.backoff(30, None).num_milliseconds() >= 30_000);
        assert!(d.backoff(1, Some(20)).num_milliseconds() >= 20_000);
        // Retry-After beyond the cap is capped.
        assert!(d.backoff(1, Some(100_000)).num_milliseconds() <= 60_000);
    }

    #[test]
    fn retry_after_forms() {
        let now = Utc::now();
        assert_eq!(parse_retry_after("120", now), Some(120));
        assert_eq!(parse_retry_after("soon", now), None);
        let later = now + chrono::Duration::seconds(30);
        let text = httpdate::fmt_http_date(later.into());
        let got = parse_retry_after(&text, now).unwrap();
        assert!((28..=30).contains(&got), "{got}");
    }
}
