//! The in-memory store: one mutex over plain maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;

/// Keeps everything in memory; for tests and single-process demos.
///
/// ```
/// use jadugar_tracking::store::{MemoryStore, TrackingStore};
/// # tokio_test_block(async {
/// let store = MemoryStore::new();
/// assert!(store.project_ids().await.unwrap().is_empty());
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

/// A lease token and when it runs out.
type Lease = (String, DateTime<Utc>);

#[derive(Debug, Default)]
struct Inner {
    projects: BTreeMap<ProjectId, Project>,
    milestones: BTreeMap<MilestoneId, Milestone>,
    tasks: BTreeMap<TaskId, Task>,
    watchers: BTreeMap<TaskId, BTreeSet<String>>,
    activity: BTreeMap<ActivityId, Activity>,
    comments: BTreeMap<CommentId, Comment>,
    notifications: BTreeMap<NotificationId, Notification>,
    idempotency: HashMap<(String, String), IdempotencyRecord>,
    webhooks: BTreeMap<WebhookId, Webhook>,
    events: BTreeMap<EventId, (u64, OutboxEvent)>,
    /// seq -> delivery and its lease.
    deliveries: BTreeMap<u64, (Delivery, Option<Lease>)>,
    seq: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check_version<K: Ord, V>(
    map: &BTreeMap<K, V>,
    key: &K,
    expected: Option<i64>,
    version_of: impl Fn(&V) -> i64,
    what: &str,
) -> Result<(), StoreError> {
    match (map.get(key), expected) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(StoreError::Conflict(format!("{what} exists"))),
        (None, Some(_)) => Err(StoreError::NotFound(what.to_owned())),
        (Some(v), Some(e)) if version_of(v) == e => Ok(()),
        (Some(_), Some(_)) => Err(StoreError::Conflict(format!("{what} version changed"))),
    }
}

fn matches(task: &Task, q: &TaskQuery) -> bool {
    q.projects
        .as_ref()
        .is_none_or(|p| p.contains(&task.project_id))
        && q.milestone_id.is_none_or(|m| task.milestone_id == Some(m))
        && q.parent_id.is_none_or(|p| task.parent_id == Some(p))
        && q.status.as_ref().is_none_or(|s| &task.status == s)
        && q.category.is_none_or(|c| task.category == c)
        && q.assignee
            .as_ref()
            .is_none_or(|a| task.assignees.contains(a))
        && q.label.as_ref().is_none_or(|l| task.labels.contains(l))
        && q.priority.is_none_or(|p| task.priority == p)
        && q.due_before
            .is_none_or(|d| task.due_date.is_some_and(|t| t <= d))
        && q.due_after
            .is_none_or(|d| task.due_date.is_some_and(|t| t >= d))
        && q.title_contains
            .as_ref()
            .is_none_or(|t| task.title.to_lowercase().contains(&t.to_lowercase()))
}

#[async_trait]
impl TrackingStore for MemoryStore {
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut guard = self.lock();
        // Check every precondition first, so that a failing commit leaves
        // nothing behind; then apply.
        for write in &writes {
            match write {
                Write::Project {
                    project,
                    expected_version,
                } => check_version(
                    &guard.projects,
                    &project.id,
                    *expected_version,
                    |p| p.version,
                    "project",
                )?,
                Write::Milestone {
                    milestone,
                    expected_version,
                } => check_version(
                    &guard.milestones,
                    &milestone.id,
                    *expected_version,
                    |m| m.version,
                    "milestone",
                )?,
                Write::Task {
                    task,
                    expected_version,
                } => check_version(
                    &guard.tasks,
                    &task.id,
                    *expected_version,
                    |t| t.version,
                    "task",
                )?,
                Write::TaskUnchanged { id, version } => {
                    check_version(&guard.tasks, id, Some(*version), |t| t.version, "task")?;
                }
                Write::Idempotency {
                    record,
                    expired_before,
                } => {
                    let key = (record.subject.clone(), record.key.clone());
                    if let Some(old) = guard.idempotency.get(&key)
                        && old.created_at >= *expired_before
                    {
                        return Err(StoreError::Conflict("idempotency key taken".into()));
                    }
                }
                _ => {}
            }
        }
        let next = &mut *guard;
        for write in writes {
            match write {
                Write::Project {
                    project,
                    expected_version: _,
                } => {
                    next.projects.insert(project.id, *project);
                }
                Write::Milestone {
                    milestone,
                    expected_version: _,
                } => {
                    next.milestones.insert(milestone.id, *milestone);
                }
                Write::Task {
                    task,
                    expected_version: _,
                } => {
                    next.tasks.insert(task.id, *task);
                }
                Write::TaskUnchanged { .. } => {}
                Write::Watch { task_id, subject } => {
                    next.watchers.entry(task_id).or_default().insert(subject);
                }
                Write::Unwatch { task_id, subject } => {
                    if let Some(w) = next.watchers.get_mut(&task_id) {
                        w.remove(&subject);
                    }
                }
                Write::Activity(a) => {
                    next.activity.insert(a.id, *a);
                }
                Write::Comment(c) => {
                    next.comments.insert(c.id, *c);
                }
                Write::Notification(n) => {
                    next.notifications.insert(n.id, *n);
                }
                Write::Event { event, deliveries } => {
                    next.seq += 1;
                    let seq = next.seq;
                    next.events.insert(event.id, (seq, *event));
                    for d in deliveries {
                        next.seq += 1;
                        let seq = next.seq;
                        next.deliveries.insert(seq, (d, None));
                    }
                }
                Write::Idempotency { record, .. } => {
                    let key = (record.subject.clone(), record.key.clone());
                    next.idempotency.insert(key, record);
                }
            }
        }
        Ok(())
    }

    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        Ok(self.lock().projects.get(&id).cloned())
    }

    async fn list_projects(
        &self,
        only: Option<&[ProjectId]>,
        after: Option<ProjectId>,
        limit: u32,
    ) -> Result<Vec<Project>, StoreError> {
        Ok(self
            .lock()
            .projects
            .values()
            .filter(|p| after.is_none_or(|a| p.id > a))
            .filter(|p| only.is_none_or(|o| o.contains(&p.id)))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn project_ids(&self) -> Result<Vec<ProjectId>, StoreError> {
        Ok(self.lock().projects.keys().copied().collect())
    }

    async fn get_milestone(&self, id: MilestoneId) -> Result<Option<Milestone>, StoreError> {
        Ok(self.lock().milestones.get(&id).cloned())
    }

    async fn list_milestones(
        &self,
        project: ProjectId,
        after: Option<MilestoneId>,
        limit: u32,
    ) -> Result<Vec<Milestone>, StoreError> {
        Ok(self
            .lock()
            .milestones
            .values()
            .filter(|m| m.project_id == project && after.is_none_or(|a| m.id > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn milestone_tallies(&self, id: MilestoneId) -> Result<Vec<CategoryTally>, StoreError> {
        let mut tallies: BTreeMap<Category, CategoryTally> = BTreeMap::new();
        for t in self.lock().tasks.values() {
            if t.milestone_id == Some(id) {
                let e = tallies.entry(t.category).or_insert(CategoryTally {
                    category: t.category,
                    count: 0,
                    estimate: 0,
                });
                e.count += 1;
                e.estimate += u64::from(t.estimate.unwrap_or(0));
            }
        }
        Ok(tallies.into_values().collect())
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let inner = self.lock();
        let mut rows: Vec<(i64, TaskId, &Task)> = inner
            .tasks
            .values()
            .filter(|t| matches(t, query))
            .map(|t| (sort_key(t, query.sort), t.id, t))
            .filter(|(k, id, _)| query.after.is_none_or(|a| (*k, *id) > a))
            .collect();
        rows.sort_by_key(|(k, id, _)| (*k, *id));
        Ok(rows
            .into_iter()
            .take(query.limit as usize)
            .map(|(_, _, t)| t.clone())
            .collect())
    }

    async fn watchers(&self, task: TaskId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .watchers
            .get(&task)
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn list_activity(
        &self,
        scope: ActivityScope,
        after: Option<ActivityId>,
        limit: u32,
    ) -> Result<Vec<Activity>, StoreError> {
        Ok(self
            .lock()
            .activity
            .values()
            .filter(|a| match scope {
                ActivityScope::Task(t) => a.task_id == Some(t),
                ActivityScope::Project(p) => a.project_id == p,
            })
            .filter(|a| after.is_none_or(|x| a.id > x))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn list_comments(
        &self,
        task: TaskId,
        after: Option<CommentId>,
        limit: u32,
    ) -> Result<Vec<Comment>, StoreError> {
        Ok(self
            .lock()
            .comments
            .values()
            .filter(|c| c.task_id == task && after.is_none_or(|x| c.id > x))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn list_notifications(
        &self,
        recipient: &str,
        unread_only: bool,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        Ok(self
            .lock()
            .notifications
            .values()
            .rev()
            .filter(|n| n.recipient == recipient)
            .filter(|n| !unread_only || n.read_at.is_none())
            .filter(|n| before.is_none_or(|b| n.id < b))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn unread_count(&self, recipient: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .notifications
            .values()
            .filter(|n| n.recipient == recipient && n.read_at.is_none())
            .count() as u64)
    }

    async fn mark_read(
        &self,
        recipient: &str,
        ids: Option<&[NotificationId]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut count = 0;
        for n in self.lock().notifications.values_mut() {
            if n.recipient == recipient
                && n.read_at.is_none()
                && ids.is_none_or(|ids| ids.contains(&n.id))
            {
                n.read_at = Some(at);
                count += 1;
            }
        }
        Ok(count)
    }

    async fn get_idempotency(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self
            .lock()
            .idempotency
            .get(&(subject.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn put_webhook(
        &self,
        webhook: &Webhook,
        previous: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match (inner.webhooks.get(&webhook.id), previous) {
            (Some(_), None) => return Err(StoreError::Conflict("webhook exists".into())),
            (None, Some(_)) => return Err(StoreError::NotFound("webhook".into())),
            (Some(stored), Some(previous)) if stored != previous => {
                return Err(StoreError::Conflict("webhook changed".into()));
            }
            _ => {}
        }
        inner.webhooks.insert(webhook.id, webhook.clone());
        Ok(())
    }

    async fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(self.lock().webhooks.get(&id).cloned())
    }

    async fn list_webhooks(&self, project: ProjectId) -> Result<Vec<Webhook>, StoreError> {
        Ok(self
            .lock()
            .webhooks
            .values()
            .filter(|w| w.project_id == project)
            .cloned()
            .collect())
    }

    async fn delete_webhook(&self, id: WebhookId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let existed = inner.webhooks.remove(&id).is_some();
        inner.deliveries.retain(|_, (d, _)| d.webhook_id != id);
        Ok(existed)
    }

    async fn events_since(
        &self,
        project: ProjectId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let inner = self.lock();
        let mut events: Vec<&(u64, OutboxEvent)> = inner
            .events
            .values()
            .filter(|(_, e)| e.project_id == project && e.created_at >= since)
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        Ok(events
            .into_iter()
            .take(limit as usize)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for d in deliveries {
            inner.seq += 1;
            let seq = inner.seq;
            inner.deliveries.insert(seq, (d.clone(), None));
        }
        Ok(())
    }

    async fn get_delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .lock()
            .deliveries
            .values()
            .find(|(d, _)| d.id == id)
            .map(|(d, _)| d.clone()))
    }

    async fn list_deliveries(
        &self,
        webhook: WebhookId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let inner = self.lock();
        let mut list: Vec<Delivery> = inner
            .deliveries
            .values()
            .filter(|(d, _)| d.webhook_id == webhook && before.is_none_or(|b| d.id < b))
            .map(|(d, _)| d.clone())
            .collect();
        list.sort_by_key(|d| std::cmp::Reverse(d.id));
        list.truncate(limit as usize);
        Ok(list)
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut inner = self.lock();
        let enabled: BTreeSet<WebhookId> = inner
            .webhooks
            .values()
            .filter(|w| w.enabled)
            .map(|w| w.id)
            .collect();
        let mut heads: BTreeMap<WebhookId, u64> = BTreeMap::new();
        for (seq, (d, _)) in &inner.deliveries {
            if d.state == DeliveryState::Pending && enabled.contains(&d.webhook_id) {
                heads.entry(d.webhook_id).or_insert(*seq);
            }
        }
        let mut seqs: Vec<u64> = heads.into_values().collect();
        seqs.sort_unstable();
        let mut claimed = Vec::new();
        for seq in seqs {
            if claimed.len() >= limit as usize {
                break;
            }
            let Some((d, lease)) = inner.deliveries.get(&seq).cloned() else {
                continue;
            };
            if d.next_attempt_at > now || lease.as_ref().is_some_and(|(_, until)| *until > now) {
                continue;
            }
            let Some((_, event)) = inner.events.get(&d.event_id).cloned() else {
                continue;
            };
            let token = uuid::Uuid::new_v4().to_string();
            let mut d = d;
            d.attempts += 1;
            inner
                .deliveries
                .insert(seq, (d.clone(), Some((token.clone(), lease_until))));
            claimed.push(ClaimedDelivery {
                delivery: d,
                event,
                lease: token,
            });
        }
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        id: DeliveryId,
        lease: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        for (d, l) in inner.deliveries.values_mut() {
            if d.id == id {
                if l.as_ref().is_none_or(|(token, _)| token != lease) {
                    return Ok(false);
                }
                d.state = outcome.state;
                d.next_attempt_at = outcome.next_attempt_at;
                d.log.push(outcome.attempt.clone());
                if d.log.len() > 20 {
                    d.log.remove(0);
                }
                *l = None;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn oldest_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .deliveries
            .values()
            .filter(|(d, _)| {
                d.state == DeliveryState::Pending
                    && inner.webhooks.get(&d.webhook_id).is_some_and(|w| w.enabled)
            })
            .map(|(d, _)| d.next_attempt_at)
            .min())
    }
}
