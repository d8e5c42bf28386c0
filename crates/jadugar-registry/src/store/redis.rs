//! The Redis store: state shared by many hosts, changes by pub/sub.
//!
//! Every mutation is one Lua script (atomic on the server): it checks the
//! compare-and-set condition, takes the next change index (`INCR`), writes,
//! and `PUBLISH`es the change, so every host's listener hears of it as it
//! happens. Records are stored as `"<index>|<json>"` (instances) and
//! `"<version>|<index>|<json>"` (config versions) so scripts never parse
//! JSON. Check leases are `"<host>|<until ms>"` entries claimed by a script.
//!
//! Keys, under the connection's prefix: `reg:idx`, `reg:services`,
//! `reg:inst:<service>`, `reg:ttl:<service>`, `reg:checked`, `reg:lease`,
//! `reg:cfg:<ns>` (latest), `reg:cfgmeta:<ns>`, `reg:cfgh:<ns>:<key>`
//! (history), channel `reg:changes`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::StreamExt;
use jadugar_core::storage::Redis;
use redis::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RegistryStore, RemoteEvent};
use crate::Error;
use crate::model::{Change, Instance, NewConfig, StoredConfig, Topic};

/// The Redis store; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
}

const PUT_INSTANCE: &str = r"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local curidx = 0
if cur then curidx = tonumber(string.sub(cur, 1, string.find(cur, '|', 1, true) - 1)) end
local exp = tonumber(ARGV[2])
if exp >= 0 and exp ~= curidx then return -1 end
local idx = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], idx .. '|' .. ARGV[3])
if ARGV[4] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) else redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
redis.call('SADD', KEYS[4], ARGV[6])
local member = ARGV[6] .. '\n' .. ARGV[1]
if ARGV[5] == '1' then redis.call('SADD', KEYS[5], member) else redis.call('SREM', KEYS[5], member) end
redis.call('PUBLISH', KEYS[6], idx .. '|' .. ARGV[7])
return idx
";

const DELETE_INSTANCE: &str = r"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then return -1 end
local curidx = tonumber(string.sub(cur, 1, string.find(cur, '|', 1, true) - 1))
local exp = tonumber(ARGV[2])
if exp >= 0 and exp ~= curidx then return -1 end
local idx = redis.call('INCR', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local member = ARGV[3] .. '\n' .. ARGV[1]
redis.call('SREM', KEYS[5], member)
redis.call('HDEL', KEYS[6], member)
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[4], ARGV[3]) end
redis.call('PUBLISH', KEYS[7], idx .. '|' .. ARGV[4])
return idx
";

const TOUCH: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
";

const CLAIM: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local held = {}
local free = {}
local now = tonumber(ARGV[2])
for _, m in ipairs(members) do
  local l = redis.call('HGET', KEYS[2], m)
  if l then
    local sep = string.find(l, '|', 1, true)
    local owner = string.sub(l, 1, sep - 1)
    local untilv = tonumber(string.sub(l, sep + 1))
    if owner == ARGV[1] then table.insert(held, m) elseif untilv <= now then table.insert(free, m) end
  else
    table.insert(free, m)
  end
end
local out = {}
local limit = tonumber(ARGV[4])
for _, m in ipairs(held) do
  if #out < limit then redis.call('HSET', KEYS[2], m, ARGV[1] .. '|' .. ARGV[3]); table.insert(out, m) end
end
for _, m in ipairs(free) do
  if #out < limit then redis.call('HSET', KEYS[2], m, ARGV[1] .. '|' .. ARGV[3]); table.insert(out, m) end
end
return out
";

const RELEASE: &str = r"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then redis.call('HDEL', KEYS[1], all[i]) end
end
return 1
";

const CONFIG_PUT: &str = r"
local meta = redis.call('HGET', KEYS[2], ARGV[1])
local latest = 0
local del = 1
if meta then
  local sep = string.find(meta, '|', 1, true)
  latest = tonumber(string.sub(meta, 1, sep - 1))
  del = tonumber(string.sub(meta, sep + 1))
end
local current = 0
if del == 0 then current = latest end
if ARGV[3] == '1' and current == 0 then return {-2, 0} end
local exp = tonumber(ARGV[2])
if exp >= 0 and exp ~= current then return {-1, current} end
local idx = redis.call('INCR', KEYS[1])
local v = latest + 1
local rec = v .. '|' .. idx .. '|' .. ARGV[4]
redis.call('HSET', KEYS[2], ARGV[1], v .. '|' .. ARGV[3])
redis.call('RPUSH', KEYS[3], rec)
if ARGV[3] == '1' then redis.call('HDEL', KEYS[4], ARGV[1]) else redis.call('HSET', KEYS[4], ARGV[1], rec) end
redis.call('PUBLISH', KEYS[5], idx .. '|' .. ARGV[5])
return {v, idx}
";

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn split_once_num(record: &str) -> Option<(u64, &str)> {
    let (num, rest) = record.split_once('|')?;
    Some((num.parse().ok()?, rest))
}

fn parse_instance(record: &str, deadline: Option<String>) -> Result<Instance, Error> {
    let (index, body) = split_once_num(record).ok_or_else(corrupt)?;
    let mut instance: Instance = serde_json::from_str(body)?;
    instance.modify_index = index;
    instance.ttl_deadline = deadline
        .and_then(|d| d.parse::<i64>().ok())
        .map(from_millis);
    Ok(instance)
}

fn parse_config(record: &str) -> Result<StoredConfig, Error> {
    let (version, rest) = split_once_num(record).ok_or_else(corrupt)?;
    let (index, body) = split_once_num(rest).ok_or_else(corrupt)?;
    let mut entry: StoredConfig = serde_json::from_str(body)?;
    entry.version = version;
    entry.modify_index = index;
    Ok(entry)
}

fn corrupt() -> Error {
    Error::Corrupt(<serde_json::Error as serde::de::Error>::custom(
        "malformed registry record",
    ))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RedisStore {
    /// A store on `redis` (keys under its prefix).
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn key(&self, suffix: &str) -> String {
        self.redis.key(&format!("reg:{suffix}"))
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.redis.connection()
    }

    async fn list_service(&self, service: &str) -> Result<Vec<Instance>, Error> {
        let mut conn = self.conn();
        type Pairs = Vec<(String, String)>;
        let (records, ttls): (Pairs, Pairs) = redis::pipe()
            .hgetall(self.key(&format!("inst:{service}")))
            .hgetall(self.key(&format!("ttl:{service}")))
            .query_async(&mut conn)
            .await?;
        let ttls: std::collections::HashMap<String, String> = ttls.into_iter().collect();
        let mut out = records
            .into_iter()
            .map(|(id, record)| parse_instance(&record, ttls.get(&id).cloned()))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait]
impl RegistryStore for RedisStore {
    async fn put_instance(
        &self,
        instance: &Instance,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let mut body = instance.clone();
        body.modify_index = 0;
        body.ttl_deadline = None;
        let topic = serde_json::to_string(&Topic::Service {
            service: instance.service.clone(),
        })?;
        let index: i64 = Script::new(PUT_INSTANCE)
            .key(self.key("idx"))
            .key(self.key(&format!("inst:{}", instance.service)))
            .key(self.key(&format!("ttl:{}", instance.service)))
            .key(self.key("services"))
            .key(self.key("checked"))
            .key(self.key("changes"))
            .arg(&instance.id)
            .arg(if_index.map_or(-1, to_i64))
            .arg(serde_json::to_string(&body)?)
            .arg(
                instance
                    .ttl_deadline
                    .map_or(String::new(), |d| d.timestamp_millis().to_string()),
            )
            .arg(if instance.check.is_some() { "1" } else { "0" })
            .arg(&instance.service)
            .arg(topic)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(u64::try_from(index).ok())
    }

    async fn delete_instance(
        &self,
        service: &str,
        id: &str,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let topic = serde_json::to_string(&Topic::Service {
            service: service.to_owned(),
        })?;
        let index: i64 = Script::new(DELETE_INSTANCE)
            .key(self.key("idx"))
            .key(self.key(&format!("inst:{service}")))
            .key(self.key(&format!("ttl:{service}")))
            .key(self.key("services"))
            .key(self.key("checked"))
            .key(self.key("lease"))
            .key(self.key("changes"))
            .arg(id)
            .arg(if_index.map_or(-1, to_i64))
            .arg(service)
            .arg(topic)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(u64::try_from(index).ok())
    }

    async fn touch_instance(
        &self,
        service: &str,
        id: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let done: i64 = Script::new(TOUCH)
            .key(self.key(&format!("inst:{service}")))
            .key(self.key(&format!("ttl:{service}")))
            .arg(id)
            .arg(deadline.timestamp_millis())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 1)
    }

    async fn get_instance(&self, service: &str, id: &str) -> Result<Option<Instance>, Error> {
        let mut conn = self.conn();
        let (record, deadline): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.key(&format!("inst:{service}")), id)
            .hget(self.key(&format!("ttl:{service}")), id)
            .query_async(&mut conn)
            .await?;
        record.map(|r| parse_instance(&r, deadline)).transpose()
    }

    async fn list_instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        if let Some(service) = service {
            return self.list_service(service).await;
        }
        let mut conn = self.conn();
        let mut services: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("services"))
            .query_async(&mut conn)
            .await?;
        services.sort();
        let mut out = Vec::new();
        for service in services {
            out.extend(self.list_service(&service).await?);
        }
        Ok(out)
    }

    async fn claim_checks(
        &self,
        host: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let members: Vec<String> = Script::new(CLAIM)
            .key(self.key("checked"))
            .key(self.key("lease"))
            .arg(host)
            .arg(now.timestamp_millis())
            .arg(until.timestamp_millis())
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await?;
        let mut held: Vec<(String, String)> = members
            .into_iter()
            .filter_map(|m| {
                m.split_once('\n')
                    .map(|(s, i)| (s.to_owned(), i.to_owned()))
            })
            .collect();
        held.sort();
        Ok(held)
    }

    async fn release_checks(&self, host: &str) -> Result<(), Error> {
        let _: i64 = Script::new(RELEASE)
            .key(self.key("lease"))
            .arg(host)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn config_get(&self, namespace: &str, key: &str) -> Result<Option<StoredConfig>, Error> {
        let record: Option<String> = redis::cmd("LINDEX")
            .arg(self.key(&format!("cfgh:{namespace}:{key}")))
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        record.map(|r| parse_config(&r)).transpose()
    }

    async fn config_version(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, Error> {
        if version == 0 {
            return Ok(None);
        }
        let record: Option<String> = redis::cmd("LINDEX")
            .arg(self.key(&format!("cfgh:{namespace}:{key}")))
            .arg(to_i64(version - 1))
            .query_async(&mut self.conn())
            .await?;
        record.map(|r| parse_config(&r)).transpose()
    }

    async fn config_put(
        &self,
        new: &NewConfig,
        expected: Option<u64>,
    ) -> Result<StoredConfig, Error> {
        let body = StoredConfig {
            namespace: new.namespace.clone(),
            key: new.key.clone(),
            version: 0,
            value: new.value.clone(),
            kind: new.kind,
            secret: new.secret,
            deleted: new.deleted,
            modify_index: 0,
            updated_at: new.at,
            updated_by: new.by.clone(),
        };
        let topic = serde_json::to_string(&Topic::Config {
            namespace: new.namespace.clone(),
            key: new.key.clone(),
        })?;
        let (version, index): (i64, i64) = Script::new(CONFIG_PUT)
            .key(self.key("idx"))
            .key(self.key(&format!("cfgmeta:{}", new.namespace)))
            .key(self.key(&format!("cfgh:{}:{}", new.namespace, new.key)))
            .key(self.key(&format!("cfg:{}", new.namespace)))
            .key(self.key("changes"))
            .arg(&new.key)
            .arg(expected.map_or(-1, to_i64))
            .arg(if new.deleted { "1" } else { "0" })
            .arg(serde_json::to_string(&body)?)
            .arg(topic)
            .invoke_async(&mut self.conn())
            .await?;
        match version {
            -2 => Err(Error::NotFound(format!("config key {}", new.key))),
            -1 => Err(Error::Conflict {
                current: u64::try_from(index).unwrap_or(0),
            }),
            _ => Ok(StoredConfig {
                version: u64::try_from(version).unwrap_or(0),
                modify_index: u64::try_from(index).unwrap_or(0),
                ..body
            }),
        }
    }

    async fn config_list(&self, namespace: &str, prefix: &str) -> Result<Vec<StoredConfig>, Error> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key(&format!("cfg:{namespace}")))
            .query_async(&mut self.conn())
            .await?;
        let mut out = all
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, r)| parse_config(&r))
            .collect::<Result<Vec<_>, _>>()?;
        out.retain(|e| !e.deleted);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn config_history(&self, namespace: &str, key: &str) -> Result<Vec<StoredConfig>, Error> {
        let all: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(&format!("cfgh:{namespace}:{key}")))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        all.iter().map(|r| parse_config(r)).collect()
    }

    async fn current_index(&self) -> Result<u64, Error> {
        let value: Option<u64> = redis::cmd("GET")
            .arg(self.key("idx"))
            .query_async(&mut self.conn())
            .await?;
        Ok(value.unwrap_or(0))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn listen(
        &self,
        sink: mpsc::UnboundedSender<RemoteEvent>,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let channel = self.key("changes");
        while !cancel.is_cancelled() {
            let pubsub = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                p = self.redis.client().get_async_pubsub() => p,
            };
            let mut pubsub = match pubsub {
                Ok(p) => p,
                Err(err) => {
                    tracing::warn!(error = %err, "registry pub/sub could not connect");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            if let Err(err) = pubsub.subscribe(&channel).await {
                tracing::warn!(error = %err, "registry pub/sub could not subscribe");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
            if sink.send(RemoteEvent::Resync).is_err() {
                return Ok(());
            }
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    m = messages.next() => m,
                };
                let Some(message) = message else { break };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                let parsed = split_once_num(&payload).and_then(|(index, topic)| {
                    serde_json::from_str::<Topic>(topic)
                        .ok()
                        .map(|topic| Change { index, topic })
                });
                match parsed {
                    Some(change) => {
                        if sink.send(RemoteEvent::Change(change)).is_err() {
                            return Ok(());
                        }
                    }
                    None => tracing::warn!("unreadable registry change message"),
                }
            }
        }
        Ok(())
    }
}
