//! Sessions in Redis, shared fast between hosts.
//!
//! A session is a hash `auth:session:<id>`; `auth:user_sessions:<user>` is
//! the set of a user's session ids and `auth:session_ends` a sorted set of
//! ids by the time their session ended or will end (for purging).
//! Compare-and-set and revocation run as Lua scripts, so they are atomic.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jadugar_core::storage::Redis;

use super::{SessionStore, StoreError, backend};
use crate::model::{Session, SessionId, UserId};

const ADVANCE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local g = redis.call('HGET', KEYS[1], 'generation')
local r = redis.call('HGET', KEYS[1], 'revoked_at')
if r ~= '' or g ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'generation', ARGV[5], 'refreshed_at', ARGV[2], 'idle_expires_at', ARGV[3])
local abs = redis.call('HGET', KEYS[1], 'absolute_expires_at')
if tonumber(abs) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], abs, ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
return 1
";

const REVOKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'revoked_at') ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
";

/// Sessions in Redis. Implements [`SessionStore`].
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use jadugar_core::storage::Redis;
/// use jadugar_auth::store::RedisSessionStore;
///
/// let redis = Redis::connect("redis://127.0.0.1:6379", "jadugar:").await?;
/// let sessions = RedisSessionStore::new(redis);
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    redis: Redis,
}

impl RedisSessionStore {
    /// Sessions under the key prefix of `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn session_key(&self, id: SessionId) -> String {
        self.redis.key(&format!("auth:session:{id}"))
    }

    fn user_key(&self, user: UserId) -> String {
        self.redis.key(&format!("auth:user_sessions:{user}"))
    }

    fn ends_key(&self) -> String {
        self.redis.key("auth:session_ends")
    }

    async fn read(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let mut conn = self.redis.connection();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.session_key(id))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        if map.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            map.get(name)
                .cloned()
                .ok_or_else(|| StoreError::Corrupt(format!("session field {name}")))
        };
        let time = |name: &str| -> Result<DateTime<Utc>, StoreError> {
            let v = field(name)?;
            v.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .ok_or_else(|| StoreError::Corrupt(format!("session time {name}")))
        };
        let optional = |name: &str| map.get(name).filter(|v| !v.is_empty()).cloned();
        Ok(Some(Session {
            id,
            user_id: field("user_id")?
                .parse()
                .map_err(|_| StoreError::Corrupt("session user".into()))?,
            generation: field("generation")?
                .parse()
                .map_err(|_| StoreError::Corrupt("session generation".into()))?,
            salt: field("salt")?,
            created_at: time("created_at")?,
            refreshed_at: time("refreshed_at")?,
            idle_expires_at: time("idle_expires_at")?,
            absolute_expires_at: time("absolute_expires_at")?,
            revoked_at: match optional("revoked_at") {
                Some(_) => Some(time("revoked_at")?),
                None => None,
            },
            ip: optional("ip"),
            user_agent: optional("user_agent"),
        }))
    }

    async fn revoke_one(&self, id: SessionId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut conn = self.redis.connection();
        let done: i64 = redis::Script::new(REVOKE)
            .key(self.session_key(id))
            .key(self.ends_key())
            .arg(at.timestamp_millis())
            .arg(id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(done == 1)
    }

    async fn members(&self, user: UserId) -> Result<Vec<SessionId>, StoreError> {
        let mut conn = self.redis.connection();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.user_key(user))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut ids: Vec<SessionId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        let mut conn = self.redis.connection();
        let key = self.session_key(s.id);
        let created: bool = redis::cmd("HSETNX")
            .arg(&key)
            .arg("user_id")
            .arg(s.user_id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        if !created {
            return Err(StoreError::Conflict("session"));
        }
        let end = s.idle_expires_at.min(s.absolute_expires_at);
        let end = s.revoked_at.unwrap_or(end);
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("generation", s.generation.to_string()),
                    ("salt", s.salt.clone()),
                    ("created_at", s.created_at.timestamp_millis().to_string()),
                    (
                        "refreshed_at",
                        s.refreshed_at.timestamp_millis().to_string(),
                    ),
                    (
                        "idle_expires_at",
                        s.idle_expires_at.timestamp_millis().to_string(),
                    ),
                    (
                        "absolute_expires_at",
                        s.absolute_expires_at.timestamp_millis().to_string(),
                    ),
                    (
                        "revoked_at",
                        s.revoked_at
                            .map(|t| t.timestamp_millis().to_string())
                            .unwrap_or_default(),
                    ),
                    ("ip", s.ip.clone().unwrap_or_default()),
                    ("user_agent", s.user_agent.clone().unwrap_or_default()),
                ],
            )
            .ignore()
            .sadd(self.user_key(s.user_id), s.id.to_string())
            .ignore()
            .zadd(self.ends_key(), s.id.to_string(), end.timestamp_millis())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        self.read(id).await
    }

    async fn advance_session(
        &self,
        id: SessionId,
        expected_generation: i64,
        refreshed_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.connection();
        let done: i64 = redis::Script::new(ADVANCE)
            .key(self.session_key(id))
            .key(self.ends_key())
            .arg(expected_generation.to_string())
            .arg(refreshed_at.timestamp_millis())
            .arg(idle_expires_at.timestamp_millis())
            .arg(id.to_string())
            .arg((expected_generation + 1).to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(done == 1)
    }

    async fn revoke_session(&self, id: SessionId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.revoke_one(id, at).await
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut revoked = Vec::new();
        for id in self.members(user).await? {
            if self.revoke_one(id, at).await? {
                revoked.push(id);
            }
        }
        Ok(revoked)
    }

    async fn list_user_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let mut list = Vec::new();
        for id in self.members(user).await? {
            if let Some(s) = self.read(id).await?
                && s.is_active(now)
            {
                list.push(s);
            }
        }
        Ok(list)
    }

    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = self.redis.connection();
        let ended: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.ends_key())
            .arg("-inf")
            .arg(format!("({}", before.timestamp_millis()))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut purged = 0;
        for id in ended {
            let Ok(sid) = id.parse::<SessionId>() else {
                continue;
            };
            let session = self.read(sid).await?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .del(self.session_key(sid))
                .ignore()
                .zrem(self.ends_key(), &id)
                .ignore();
            if let Some(s) = &session {
                pipe.srem(self.user_key(s.user_id), &id).ignore();
                purged += 1;
            }
            pipe.query_async::<()>(&mut conn).await.map_err(backend)?;
        }
        Ok(purged)
    }
}
