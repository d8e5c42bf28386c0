//! The in-memory store: both traits over one mutex.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{AuthStore, GuardedChange, SessionStore, StoreError};
use crate::model::{
    ApiKeyId, ApiKeyRecord, AuditEvent, AuditFilter, AuditId, OneTimeToken, Role, Session,
    SessionId, SigningKeyRecord, TokenKind, UserId, UserRecord,
};

/// Everything in process memory; lost on restart. For tests, examples and
/// single-process apps. Implements [`AuthStore`] and [`SessionStore`].
///
/// ```
/// use jadugar_auth::store::MemoryStore;
/// let store = MemoryStore::default();
/// # let _ = store;
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<UserId, UserRecord>,
    roles: BTreeMap<String, Role>,
    keys: BTreeMap<ApiKeyId, ApiKeyRecord>,
    tokens: HashMap<[u8; 32], (OneTimeToken, bool)>,
    audit: BTreeMap<AuditId, AuditEvent>,
    signing: Vec<SigningKeyRecord>,
    sessions: HashMap<SessionId, Session>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn holds(user: &UserRecord, role: &str) -> bool {
    !user.user.disabled && user.user.roles.iter().any(|r| r == role)
}

impl State {
    /// Whether `id` is an enabled holder of `role` and nobody else is.
    fn last_holder(&self, id: UserId, role: &str) -> bool {
        self.users.get(&id).is_some_and(|u| holds(u, role))
            && !self
                .users
                .values()
                .any(|u| u.user.id != id && holds(u, role))
    }

    fn update_user(&mut self, record: &UserRecord) -> Result<bool, StoreError> {
        // As in SQL: a stale write is stale before it can conflict.
        match self.users.get(&record.user.id) {
            None => return Ok(false),
            Some(u) if u.user.version != record.user.version => return Err(StoreError::Stale),
            Some(_) => {}
        }
        if self
            .users
            .values()
            .any(|u| u.user.email == record.user.email && u.user.id != record.user.id)
        {
            return Err(StoreError::Conflict("email"));
        }
        let mut stored = record.clone();
        stored.user.version += 1;
        self.users.insert(record.user.id, stored);
        Ok(true)
    }

    fn delete_user(&mut self, id: UserId) -> bool {
        self.keys.retain(|_, k| k.key.owner != id);
        self.users.remove(&id).is_some()
    }
}

#[async_trait]
impl AuthStore for MemoryStore {
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.users.contains_key(&record.user.id)
            || s.users.values().any(|u| u.user.email == record.user.email)
        {
            return Err(StoreError::Conflict("email"));
        }
        s.users.insert(record.user.id, record.clone());
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .lock()
            .users
            .values()
            .find(|u| u.user.email == email)
            .cloned())
    }

    async fn update_user(&self, record: &UserRecord) -> Result<bool, StoreError> {
        self.lock().update_user(record)
    }

    async fn update_user_keeping_role(
        &self,
        record: &UserRecord,
        role: &str,
    ) -> Result<GuardedChange, StoreError> {
        // One lock for the check and the write.
        let mut s = self.lock();
        if s.users
            .get(&record.user.id)
            .is_some_and(|u| u.user.version != record.user.version)
        {
            return Err(StoreError::Stale);
        }
        if !holds(record, role) && s.last_holder(record.user.id, role) {
            return Ok(GuardedChange::LastHolder);
        }
        Ok(if s.update_user(record)? {
            GuardedChange::Done
        } else {
            GuardedChange::NotFound
        })
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        Ok(self.lock().delete_user(id))
    }

    async fn delete_user_keeping_role(
        &self,
        id: UserId,
        role: &str,
        version: Option<i64>,
    ) -> Result<GuardedChange, StoreError> {
        let mut s = self.lock();
        if let (Some(v), Some(u)) = (version, s.users.get(&id))
            && u.user.version != v
        {
            return Err(StoreError::Stale);
        }
        if s.last_holder(id, role) {
            return Ok(GuardedChange::LastHolder);
        }
        Ok(if s.delete_user(id) {
            GuardedChange::Done
        } else {
            GuardedChange::NotFound
        })
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let s = self.lock();
        Ok(s.users
            .values()
            .filter(|u| after.is_none_or(|a| u.user.id > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        Ok(self.lock().users.len() as u64)
    }

    async fn users_with_role(&self, role: &str) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .lock()
            .users
            .values()
            .filter(|u| !u.user.disabled && u.user.roles.iter().any(|r| r == role))
            .map(|u| u.user.id)
            .collect())
    }

    async fn put_role(&self, role: &Role) -> Result<(), StoreError> {
        self.lock().roles.insert(role.name.clone(), role.clone());
        Ok(())
    }

    async fn insert_role(&self, role: &Role) -> Result<(), StoreError> {
        match self.lock().roles.entry(role.name.clone()) {
            std::collections::btree_map::Entry::Occupied(_) => Err(StoreError::Conflict("role")),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(role.clone());
                Ok(())
            }
        }
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, StoreError> {
        Ok(self.lock().roles.get(name).cloned())
    }

    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        Ok(self.lock().roles.values().cloned().collect())
    }

    async fn delete_role(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().roles.remove(name).is_some())
    }

    async fn create_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.keys.contains_key(&record.key.id)
            || s.keys
                .values()
                .any(|k| k.key.public_id == record.key.public_id)
        {
            return Err(StoreError::Conflict("api key"));
        }
        s.keys.insert(record.key.id, record.clone());
        Ok(())
    }

    async fn get_api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.get(&id).cloned())
    }

    async fn get_api_key_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self
            .lock()
            .keys
            .values()
            .find(|k| k.key.public_id == public_id)
            .cloned())
    }

    async fn list_api_keys(&self, owner: Option<UserId>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(self
            .lock()
            .keys
            .values()
            .filter(|k| owner.is_none_or(|o| k.key.owner == o))
            .cloned()
            .collect())
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.keys.get_mut(&id) {
            Some(k) if k.key.revoked_at.is_none() => {
                k.key.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_api_key_use(
        &self,
        uses: &[(ApiKeyId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        for (id, at) in uses {
            if let Some(k) = s.keys.get_mut(id)
                && k.key.last_used_at.is_none_or(|old| old < *at)
            {
                k.key.last_used_at = Some(*at);
            }
        }
        Ok(())
    }

    async fn create_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
        self.lock()
            .tokens
            .insert(token.hash, (token.clone(), false));
        Ok(())
    }

    async fn consume_token(
        &self,
        hash: &[u8; 32],
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        let mut s = self.lock();
        match s.tokens.get_mut(hash) {
            Some((token, used)) if !*used && token.kind == kind && now < token.expires_at => {
                *used = true;
                Ok(Some(token.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.lock().audit.insert(event.id, event.clone());
        Ok(())
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let s = self.lock();
        Ok(s.audit
            .values()
            .rev()
            .filter(|e| before.is_none_or(|b| e.id < b) && filter.matches(e))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.signing.iter().any(|k| k.kid == key.kid) {
            return Err(StoreError::Conflict("kid"));
        }
        s.signing.push(key.clone());
        Ok(())
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let mut keys = self.lock().signing.clone();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)));
        Ok(keys)
    }

    async fn retire_signing_key(&self, kid: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.signing.iter_mut().find(|k| k.kid == kid) {
            Some(k) if k.retired_at.is_none() => {
                k.retired_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict("session"));
        }
        s.sessions.insert(session.id, session.clone());
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.lock().sessions.get(&id).cloned())
    }

    async fn advance_session(
        &self,
        id: SessionId,
        expected_generation: i64,
        refreshed_at: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.sessions.get_mut(&id) {
            Some(session)
                if session.revoked_at.is_none() && session.generation == expected_generation =>
            {
                session.generation += 1;
                session.refreshed_at = refreshed_at;
                session.idle_expires_at = idle_expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_session(&self, id: SessionId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.sessions.get_mut(&id) {
            Some(session) if session.revoked_at.is_none() => {
                session.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut s = self.lock();
        let mut ids = Vec::new();
        for session in s.sessions.values_mut() {
            if session.user_id == user && session.revoked_at.is_none() {
                session.revoked_at = Some(at);
                ids.push(session.id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    async fn list_user_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let s = self.lock();
        let mut list: Vec<Session> = s
            .sessions
            .values()
            .filter(|x| x.user_id == user && x.is_active(now))
            .cloned()
            .collect();
        list.sort_by_key(|x| x.id);
        Ok(list)
    }

    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let n = s.sessions.len();
        s.sessions.retain(|_, x| {
            let ended = x
                .revoked_at
                .unwrap_or(x.idle_expires_at.min(x.absolute_expires_at));
            ended >= before
        });
        Ok((n - s.sessions.len()) as u64)
    }
}
