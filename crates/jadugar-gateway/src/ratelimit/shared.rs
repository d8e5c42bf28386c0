use std::time::{Duration, Instant};

use jadugar_core::storage::Redis;

use super::{Decision, KeyValue, LimiterUnavailable, quota_of};
use crate::model::RateLimitSpec;

/// GCRA in one atomic step, on Redis time (microseconds). Returns
/// `{allowed, remaining, retry_after_us, reset_us}`.
const SCRIPT: &str = r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tolerance = emission * burst
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tolerance - new_tat) / emission), 0, new_tat - now}
";

/// A GCRA limit shared by every host through Redis; see the
/// [module docs](super).
pub struct SharedLimiter {
    redis: Redis,
    script: redis::Script,
    prefix: String,
    emission_us: u64,
    limit: u32,
    timeout: Duration,
    fail_open: bool,
    denied: moka::sync::Cache<String, Instant>,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("prefix", &self.prefix)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// A limiter for `spec` whose keys live under `gw:rl:{scope}:` in Redis;
    /// each check waits at most `timeout` for Redis.
    pub fn new(redis: Redis, scope: &str, spec: &RateLimitSpec, timeout: Duration) -> Self {
        let (burst, emission) = quota_of(spec);
        Self {
            prefix: redis.key(&format!("gw:rl:{scope}:")),
            redis,
            script: redis::Script::new(SCRIPT),
            emission_us: u64::try_from(emission.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            limit: burst,
            timeout,
            fail_open: spec.fail_open,
            denied: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Checks one request of `key`.
    pub async fn check(&self, key: &KeyValue<'_>) -> Result<Decision, LimiterUnavailable> {
        let text = key.to_text();
        if let Some(until) = self.denied.get(&text) {
            let now = Instant::now();
            if until > now {
                return Ok(self.refused((until - now).as_micros() as u64));
            }
            self.denied.invalidate(&text);
        }
        let mut conn = self.redis.connection();
        let mut invocation = self.script.key(format!("{}{}", self.prefix, text));
        invocation.arg(self.emission_us).arg(self.limit);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((1, remaining, _, reset_us))) => Ok(Decision {
                allowed: true,
                limit: self.limit,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
                reset_secs: secs_ceil(reset_us),
                retry_after_secs: 0,
                degraded: false,
            }),
            Ok(Ok((_, _, retry_us, _))) => {
                let retry_us = u64::try_from(retry_us.max(0)).unwrap_or(0);
                self.denied
                    .insert(text, Instant::now() + Duration::from_micros(retry_us));
                Ok(self.refused(retry_us))
            }
            Ok(Err(e)) => self.unavailable(&e.to_string()),
            Err(_) => self.unavailable("timed out"),
        }
    }

    fn refused(&self, retry_us: u64) -> Decision {
        Decision {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset_secs: secs_ceil(
                i64::try_from(self.emission_us.saturating_mul(u64::from(self.limit)))
                    .unwrap_or(i64::MAX),
            ),
            retry_after_secs: secs_ceil(i64::try_from(retry_us).unwrap_or(i64::MAX)).max(1),
            degraded: false,
        }
    }

    fn unavailable(&self, why: &str) -> Result<Decision, LimiterUnavailable> {
        tracing::warn!(
            error = why,
            fail_open = self.fail_open,
            "shared rate limiter unavailable"
        );
        if self.fail_open {
            Ok(Decision {
                allowed: true,
                limit: self.limit,
                remaining: 0,
                reset_secs: 0,
                retry_after_secs: 0,
                degraded: true,
            })
        } else {
            Err(LimiterUnavailable)
        }
    }
}

fn secs_ceil(us: i64) -> u64 {
    u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1_000_000)
}
