//! Brute-force throttling of logins per account and per client IP.
//!
//! In process: a governor keyed limiter per dimension (a token bucket that
//! refills over the window). With Redis: fixed-window counters incremented
//! atomically by a script, shared by every host. Every attempt counts,
//! whether the account exists or not, so the answer is the same for both.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jadugar_core::storage::Redis;

use crate::Error;

const SCRIPT: &str = r"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
return {c, ttl}
";

/// Counts login attempts and refuses them past the limits.
pub(crate) struct Throttle {
    account: Option<DefaultKeyedRateLimiter<String>>,
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    account_limit: u32,
    ip_limit: u32,
    window: Duration,
    clock: DefaultClock,
    redis: Option<Redis>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("account_limit", &self.account_limit)
            .field("ip_limit", &self.ip_limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    limit: u32,
    window: Duration,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let burst = NonZeroU32::new(limit)?;
    let period = window / limit.max(1);
    let quota = Quota::with_period(period.max(Duration::from_millis(1)))?.allow_burst(burst);
    Some(RateLimiter::keyed(quota))
}

impl Throttle {
    pub(crate) fn new(
        account_limit: u32,
        ip_limit: u32,
        window: Duration,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            account: limiter(account_limit, window),
            ip: limiter(ip_limit, window),
            account_limit,
            ip_limit,
            window,
            clock: DefaultClock::default(),
            redis,
        }
    }

    /// Counts one attempt for `account` (a normalised email) and `ip`;
    /// `Err(Throttled(secs))` if either is over its limit.
    pub(crate) async fn attempt(&self, account: &str, ip: Option<IpAddr>) -> Result<(), Error> {
        if let Some(redis) = &self.redis {
            return self.attempt_redis(redis, account, ip).await;
        }
        let mut wait = Duration::ZERO;
        if let Some(limiter) = &self.account
            && let Err(not_until) = limiter.check_key(&account.to_owned())
        {
            wait = wait.max(not_until.wait_time_from(self.clock.now()));
        }
        if let (Some(limiter), Some(ip)) = (&self.ip, ip)
            && let Err(not_until) = limiter.check_key(&ip)
        {
            wait = wait.max(not_until.wait_time_from(self.clock.now()));
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Error::Throttled(wait.as_secs().max(1)))
        }
    }

    async fn attempt_redis(
        &self,
        redis: &Redis,
        account: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), Error> {
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut checks = vec![(
            redis.key(&format!("auth:throttle:acct:{account}")),
            self.account_limit,
        )];
        if let Some(ip) = ip {
            checks.push((redis.key(&format!("auth:throttle:ip:{ip}")), self.ip_limit));
        }
        let script = redis::Script::new(SCRIPT);
        let mut conn = redis.connection();
        let mut wait_ms: i64 = 0;
        for (key, limit) in checks {
            if limit == 0 {
                continue;
            }
            let (count, ttl): (i64, i64) = script
                .key(&key)
                .arg(window_ms)
                .invoke_async(&mut conn)
                .await?;
            if count > i64::from(limit) {
                wait_ms = wait_ms.max(ttl.max(1000));
            }
        }
        if wait_ms == 0 {
            Ok(())
        } else {
            Err(Error::Throttled(
                u64::try_from(wait_ms / 1000).unwrap_or(1).max(1),
            ))
        }
    }

    /// Drops idle in-process state (called periodically).
    pub(crate) fn shrink(&self) {
        if let Some(l) = &self.account {
            l.retain_recent();
        }
        if let Some(l) = &self.ip {
            l.retain_recent();
        }
    }
}
