//! The storage trait of tracking and its backends.
//!
//! Every change the service makes goes through [`TrackingStore::commit`]: a
//! list of [`Write`]s applied in ONE transaction, so a task change, its
//! activity entry, its notifications and its outbox events (with their
//! deliveries) are stored together or not at all — the transactional outbox.
//!
//! Backends: [`MemoryStore`] (always), [`SqlStore`] over a
//! [`Database`](jadugar_core::storage::Database) (SQLite or Postgres). The
//! conformance suite ([`conformance`], feature `test-support`) runs on each.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::model::*;

mod memory;
mod sql;

#[cfg(feature = "test-support")]
pub mod conformance;

pub use memory::MemoryStore;
pub use sql::SqlStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A versioned write found another version, or an insert found the key
    /// taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A record a write needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A stored document could not be read.
    #[error("corrupt stored record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Applies `change` to a webhook as stored and writes it back; when another
/// writer (an administrator, a dispatcher disabling the endpoint) changed it
/// in between, applies `change` again to the fresh copy, so neither change
/// is lost. Each write takes the next version. `None` when the webhook is
/// gone; `change` may refuse with an error, which is returned as is.
pub async fn modify_webhook<E: From<StoreError>>(
    store: &dyn TrackingStore,
    id: WebhookId,
    mut change: impl FnMut(&mut Webhook) -> Result<(), E>,
) -> Result<Option<Webhook>, E> {
    // Each retry follows a write that succeeded elsewhere: a handful
    // suffices unless the webhook is written in a tight loop.
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let Some(current) = store.get_webhook(id).await? else {
            return Ok(None);
        };
        let mut next = current.clone();
        change(&mut next)?;
        next.version = current.version + 1;
        match store.put_webhook(&next, Some(&current)).await {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::Conflict(_)) => continue,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict("the webhook kept changing; try again".into()).into())
}

/// One write of a [`TrackingStore::commit`].
#[derive(Debug, Clone)]
pub enum Write {
    /// Inserts (`expected_version: None`) or replaces a project whose stored
    /// version is `expected_version`.
    Project {
        /// The new state.
        project: Box<Project>,
        /// The version it replaces.
        expected_version: Option<i64>,
    },
    /// Like [`Write::Project`] for a milestone.
    Milestone {
        /// The new state.
        milestone: Box<Milestone>,
        /// The version it replaces.
        expected_version: Option<i64>,
    },
    /// Like [`Write::Project`] for a task.
    Task {
        /// The new state.
        task: Box<Task>,
        /// The version it replaces.
        expected_version: Option<i64>,
    },
    /// Fails the commit unless the task is still at `version`: a task the
    /// change was checked against but does not write (one on the path of a
    /// blocker cycle check). Two changes each checked against the other's
    /// old state, which together would close a cycle, cannot both commit.
    /// On SQL the check takes the row's write lock until the commit ends.
    TaskUnchanged {
        /// The task.
        id: TaskId,
        /// The version the change saw.
        version: i64,
    },
    /// Adds a watcher (no-op if present).
    Watch {
        /// The task.
        task_id: TaskId,
        /// The watcher.
        subject: String,
    },
    /// Removes a watcher (no-op if absent).
    Unwatch {
        /// The task.
        task_id: TaskId,
        /// The watcher.
        subject: String,
    },
    /// Appends to the activity log.
    Activity(Box<Activity>),
    /// Adds a comment.
    Comment(Box<Comment>),
    /// Adds a notification.
    Notification(Box<Notification>),
    /// Appends an event to the outbox with its deliveries.
    Event {
        /// The event.
        event: Box<OutboxEvent>,
        /// One pending delivery per subscribed webhook.
        deliveries: Vec<Delivery>,
    },
    /// Records an idempotency key. If the key is taken by a record not older
    /// than `expired_before`, the commit fails with [`StoreError::Conflict`];
    /// an older record is replaced.
    Idempotency {
        /// The record.
        record: IdempotencyRecord,
        /// Records created before this are expired.
        expired_before: DateTime<Utc>,
    },
}

/// The stored response of an idempotent create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The caller.
    pub subject: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// Hash of the request (method, path, body).
    pub fingerprint: String,
    /// Status code of the response.
    pub status: u16,
    /// JSON body of the response.
    pub body: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A task list query, with the caller's visibility already applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    /// Restrict to these projects (`None`: all).
    pub projects: Option<Vec<ProjectId>>,
    /// Milestone.
    pub milestone_id: Option<MilestoneId>,
    /// Parent task.
    pub parent_id: Option<TaskId>,
    /// Status key.
    pub status: Option<String>,
    /// Category.
    pub category: Option<Category>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Label.
    pub label: Option<String>,
    /// Priority.
    pub priority: Option<Priority>,
    /// Due on or before.
    pub due_before: Option<NaiveDate>,
    /// Due on or after.
    pub due_after: Option<NaiveDate>,
    /// Case-insensitive title substring.
    pub title_contains: Option<String>,
    /// Order.
    pub sort: TaskSort,
    /// Start after this position (sort key, id).
    pub after: Option<(i64, TaskId)>,
    /// Most rows returned.
    pub limit: u32,
}

/// The sort key of `task` under `sort`, as stored in the position of a
/// cursor. Priority sorts descending, so its key is negated.
pub fn sort_key(task: &Task, sort: TaskSort) -> i64 {
    match sort {
        TaskSort::Created => task.created_at.timestamp_micros(),
        TaskSort::Updated => task.updated_at.timestamp_micros(),
        TaskSort::Priority => -task.priority.rank(),
    }
}

/// Whose activity to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityScope {
    /// One task.
    Task(TaskId),
    /// A whole project.
    Project(ProjectId),
}

/// A delivery claimed by a dispatcher, with what it needs to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// The delivery (attempts already counts this one).
    pub delivery: Delivery,
    /// Its event.
    pub event: OutboxEvent,
    /// The token proving the claim; finishing needs it.
    pub lease: String,
}

/// What to record after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    /// New state.
    pub state: DeliveryState,
    /// When to try again (pending only).
    pub next_attempt_at: DateTime<Utc>,
    /// The attempt, appended to the log.
    pub attempt: Attempt,
}

/// Storage of tracking; see the [module docs](self).
///
/// Lists are ordered by id (UUIDv7, so creation order) unless stated, and
/// start after `after` when given. "Not found" is `Ok(None)`.
#[async_trait]
pub trait TrackingStore: Debug + Send + Sync + 'static {
    /// Applies every write in one transaction, all or nothing. A versioned
    /// write whose expected version does not match, or an insert whose id
    /// exists, fails the whole commit with [`StoreError::Conflict`].
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// A project.
    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError>;
    /// Projects, restricted to `only` when given.
    async fn list_projects(
        &self,
        only: Option<&[ProjectId]>,
        after: Option<ProjectId>,
        limit: u32,
    ) -> Result<Vec<Project>, StoreError>;
    /// Every project id (for permission filtering).
    async fn project_ids(&self) -> Result<Vec<ProjectId>, StoreError>;

    /// A milestone.
    async fn get_milestone(&self, id: MilestoneId) -> Result<Option<Milestone>, StoreError>;
    /// A project's milestones.
    async fn list_milestones(
        &self,
        project: ProjectId,
        after: Option<MilestoneId>,
        limit: u32,
    ) -> Result<Vec<Milestone>, StoreError>;
    /// Count and estimate sum of a milestone's tasks per category.
    async fn milestone_tallies(&self, id: MilestoneId) -> Result<Vec<CategoryTally>, StoreError>;

    /// A task.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
    /// Tasks matching `query`, ordered by its sort key then id.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;
    /// Watchers of a task, sorted.
    async fn watchers(&self, task: TaskId) -> Result<Vec<String>, StoreError>;

    /// Activity, oldest first.
    async fn list_activity(
        &self,
        scope: ActivityScope,
        after: Option<ActivityId>,
        limit: u32,
    ) -> Result<Vec<Activity>, StoreError>;
    /// Comments of a task, oldest first.
    async fn list_comments(
        &self,
        task: TaskId,
        after: Option<CommentId>,
        limit: u32,
    ) -> Result<Vec<Comment>, StoreError>;

    /// Notifications of `recipient`, newest first, before `before`.
    async fn list_notifications(
        &self,
        recipient: &str,
        unread_only: bool,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;
    /// Unread notifications of `recipient`.
    async fn unread_count(&self, recipient: &str) -> Result<u64, StoreError>;
    /// Marks `recipient`'s notifications (those in `ids`, or all) read at
    /// `at`; returns how many changed.
    async fn mark_read(
        &self,
        recipient: &str,
        ids: Option<&[NotificationId]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// An idempotency record.
    async fn get_idempotency(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Inserts a webhook (`previous: None`; [`StoreError::Conflict`] when
    /// its id is taken), or replaces it if it is still stored as
    /// `previous` ([`StoreError::Conflict`] when another write came first,
    /// [`StoreError::NotFound`] when it is gone). Use [`modify_webhook`]
    /// for a read-modify-write that loses no concurrent change.
    async fn put_webhook(
        &self,
        webhook: &Webhook,
        previous: Option<&Webhook>,
    ) -> Result<(), StoreError>;
    /// A webhook.
    async fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError>;
    /// A project's webhooks.
    async fn list_webhooks(&self, project: ProjectId) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes a webhook and its deliveries; whether it existed.
    async fn delete_webhook(&self, id: WebhookId) -> Result<bool, StoreError>;

    /// A project's events created at or after `since`, oldest first, at most `limit`.
    async fn events_since(
        &self,
        project: ProjectId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Queues deliveries (redelivery, replay).
    async fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<(), StoreError>;
    /// A delivery.
    async fn get_delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError>;
    /// A webhook's deliveries, newest first, before `before`.
    async fn list_deliveries(
        &self,
        webhook: WebhookId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Claims up to `limit` due deliveries, at most one per enabled webhook
    /// and only the oldest pending one of each (so each endpoint gets its
    /// events in order), whose lease is free or expired at `now`; leases
    /// them until `lease_until` and counts the attempt. Concurrent claimers
    /// never get the same delivery while its lease runs.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records the outcome of a claimed attempt and frees the lease; `false`
    /// (and nothing changed) if the lease was lost to another claimer.
    async fn finish_delivery(
        &self,
        id: DeliveryId,
        lease: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError>;
    /// Records the outcomes of several claimed attempts, each as
    /// [`finish_delivery`](Self::finish_delivery) would; one `bool` per
    /// item, in order (`false`: that lease was lost, nothing changed for
    /// it). SQL stores write the whole batch in one statement or
    /// transaction; the default finishes them one by one.
    async fn finish_deliveries(
        &self,
        items: &[(ClaimedDelivery, AttemptOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for (claimed, outcome) in items {
            out.push(
                self.finish_delivery(claimed.delivery.id, &claimed.lease, outcome)
                    .await?,
            );
        }
        Ok(out)
    }
    /// The oldest `next_attempt_at` among pending deliveries of enabled
    /// webhooks (for the lag metric).
    async fn oldest_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    fn webhook() -> Webhook {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        Webhook {
            id: WebhookId::new(),
            project_id: ProjectId::new(),
            url: "https://example.com/hook".into(),
            event_types: vec!["*".into()],
            description: String::new(),
            enabled: true,
            disabled_reason: None,
            created_by: "ana".into(),
            created_at: at,
            updated_at: at,
            version: 1,
            secrets: Vec::new(),
        }
    }

    #[tokio::test]
    async fn modify_webhook_applies_its_change_again_over_a_concurrent_write() {
        let store = MemoryStore::new();
        let original = webhook();
        store.put_webhook(&original, None).await.unwrap();
        let mut calls = 0;
        let changed = modify_webhook(&store, original.id, |w| {
            calls += 1;
            if calls == 1 {
                // Another writer (a dispatcher disabling the endpoint)
                // commits between this read and its write.
                let mut disabled = original.clone();
                disabled.enabled = false;
                let raced = store.put_webhook(&disabled, Some(&original)).now_or_never();
                assert!(matches!(raced, Some(Ok(()))));
            }
            w.description = "renamed".into();
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(calls, 2, "the change was made again on the fresh copy");
        assert!(!changed.enabled, "the concurrent write is kept");
        assert_eq!(changed.description, "renamed");
        assert_eq!(store.get_webhook(original.id).await.unwrap(), Some(changed));

        let gone = modify_webhook(&store, WebhookId::new(), |_| Ok::<_, StoreError>(()));
        assert_eq!(gone.await.unwrap(), None);
    }
}
