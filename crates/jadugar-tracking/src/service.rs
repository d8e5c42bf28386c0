//! The domain logic of tracking, over a [`TrackingStore`]; no HTTP, no SQL.
//!
//! Every method takes the calling [`Principal`] and enforces the
//! [permission scheme](crate::access). A project the caller cannot read is
//! reported as not found; one they can read but not change is forbidden.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use jadugar_core::outbound::AddressPolicy;
use jadugar_core::storage::{Database, Redis};
use jadugar_core::{CursorCodec, FieldError, Page, PageRequest, Principal, Sealer, SharedClock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Config;
use crate::access::{Level, allowed, require};
use crate::error::Error;
use crate::model::*;
use crate::notify::{
    AssigneeDirectory, AssigneeStatus, NoopNotifier, Notifier, PermissiveDirectory,
};
use crate::store::{
    ActivityScope, IdempotencyRecord, StoreError, TaskQuery, TrackingStore, Write, sort_key,
};
use crate::webhook;

/// The tracking service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracking {
    store: Arc<dyn TrackingStore>,
    clock: SharedClock,
    sealer: Sealer,
    config: Config,
    cursor: CursorCodec,
    directory: Arc<dyn AssigneeDirectory>,
    notifier: Arc<dyn Notifier>,
    policy: AddressPolicy,
}

/// An idempotent create's outcome: the value and whether it was replayed
/// from an earlier request with the same `Idempotency-Key`.
pub type Created<T> = (T, bool);

impl Tracking {
    /// A service over `store`, with a permissive assignee directory, no
    /// external notifier, the address policy of `config`, and a cursor key
    /// derived from `sealer`.
    pub fn new(
        store: Arc<dyn TrackingStore>,
        clock: SharedClock,
        sealer: Sealer,
        config: Config,
    ) -> Self {
        let cursor = CursorCodec::new(sealer.derive_key("jadugar-tracking-cursor"));
        let policy = config.address_policy();
        Self {
            store,
            clock,
            sealer,
            config,
            cursor,
            directory: Arc::new(PermissiveDirectory),
            notifier: Arc::new(NoopNotifier),
            policy,
        }
    }

    /// Builds the service on a SQL database (running tracking's migrations).
    /// Redis is not used by tracking; the parameter keeps the host contract.
    pub async fn from_backends(
        config: &Config,
        database: &Database,
        _redis: Option<&Redis>,
        clock: SharedClock,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        let store = crate::store::SqlStore::new(database.clone());
        store.migrate().await?;
        Ok(Self::new(Arc::new(store), clock, sealer, config.clone()))
    }

    /// Uses `directory` to validate assignees.
    pub fn with_directory(mut self, directory: Arc<dyn AssigneeDirectory>) -> Self {
        self.directory = directory;
        self
    }

    /// Sends notifications through `notifier` too.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Checks webhook URLs (and their deliveries) with `policy`.
    pub fn with_address_policy(mut self, policy: AddressPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TrackingStore> {
        &self.store
    }

    /// A webhook dispatcher sharing this service's store, clock, sealer,
    /// configuration and address policy.
    pub fn dispatcher(&self) -> Result<webhook::Dispatcher, Error> {
        webhook::Dispatcher::new(
            self.store.clone(),
            self.clock.clone(),
            self.sealer.clone(),
            self.config.clone(),
            self.policy.clone(),
        )
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    // ----- idempotency -------------------------------------------------

    fn fingerprint<T: Serialize>(scope: &str, input: &T) -> String {
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(input).unwrap_or_default());
        hex_encode(&h.finalize())
    }

    async fn replayed<T: DeserializeOwned>(
        &self,
        p: &Principal,
        key: Option<&str>,
        fingerprint: &str,
    ) -> Result<Option<T>, Error> {
        let Some(key) = key else { return Ok(None) };
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(Error::field(
                "Idempotency-Key",
                "must be 1-255 visible ASCII characters",
            ));
        }
        let Some(record) = self.store.get_idempotency(&p.subject, key).await? else {
            return Ok(None);
        };
        if record.created_at < self.idempotency_expiry() {
            return Ok(None);
        }
        if record.fingerprint != fingerprint {
            return Err(Error::IdempotencyMismatch);
        }
        Ok(Some(
            serde_json::from_str(&record.body).map_err(StoreError::from)?,
        ))
    }

    fn idempotency_expiry(&self) -> DateTime<Utc> {
        self.now() - secs(self.config.idempotency_ttl_secs)
    }

    fn idempotency_write<T: Serialize>(
        &self,
        p: &Principal,
        key: Option<&str>,
        fingerprint: &str,
        value: &T,
    ) -> Option<Write> {
        key.map(|key| Write::Idempotency {
            record: IdempotencyRecord {
                subject: p.subject.to_string(),
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                status: 201,
                body: serde_json::to_string(value).unwrap_or_default(),
                created_at: self.now(),
            },
            expired_before: self.idempotency_expiry(),
        })
    }

    /// Commits a create; if the commit lost an idempotency race, returns
    /// the winner's stored response instead.
    async fn commit_create<T: DeserializeOwned>(
        &self,
        p: &Principal,
        key: Option<&str>,
        fingerprint: &str,
        writes: Vec<Write>,
        value: T,
    ) -> Result<Created<T>, Error> {
        match self.store.commit(writes).await {
            Ok(()) => Ok((value, false)),
            Err(StoreError::Conflict(_)) if key.is_some() => {
                match self.replayed(p, key, fingerprint).await? {
                    Some(v) => Ok((v, true)),
                    None => Err(Error::Conflict("idempotency key".into())),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    // ----- events ------------------------------------------------------

    async fn event_write(
        &self,
        project: ProjectId,
        event_type: &str,
        data: Value,
    ) -> Result<Write, Error> {
        let now = self.now();
        let event = OutboxEvent {
            id: EventId::new(),
            project_id: project,
            event_type: event_type.to_owned(),
            payload: json!({ "type": event_type, "timestamp": now, "data": data }).to_string(),
            created_at: now,
        };
        let deliveries = self
            .store
            .list_webhooks(project)
            .await?
            .into_iter()
            .filter(|w| w.wants(event_type))
            .map(|w| new_delivery(w.id, &event, now))
            .collect();
        Ok(Write::Event {
            event: Box::new(event),
            deliveries,
        })
    }

    fn activity(
        &self,
        p: &Principal,
        project: ProjectId,
        task: Option<TaskId>,
        action: &str,
        changes: Vec<FieldChange>,
    ) -> Write {
        Write::Activity(Box::new(Activity {
            id: ActivityId::new(),
            project_id: project,
            task_id: task,
            actor: p.subject.to_string(),
            at: self.now(),
            action: action.to_owned(),
            changes,
        }))
    }

    // ----- projects ----------------------------------------------------

    async fn project_for(
        &self,
        p: &Principal,
        id: ProjectId,
        level: Level,
    ) -> Result<Project, Error> {
        if !allowed(p, Some(id), Level::Read) {
            return Err(Error::NotFound("project"));
        }
        let project = self
            .store
            .get_project(id)
            .await?
            .ok_or(Error::NotFound("project"))?;
        require(p, Some(id), level)?;
        Ok(project)
    }

    /// Creates a project (needs the global `tracking:write`).
    pub async fn create_project(
        &self,
        p: &Principal,
        input: NewProject,
        idempotency_key: Option<&str>,
    ) -> Result<Created<Project>, Error> {
        require(p, None, Level::Write)?;
        let fp = Self::fingerprint("create_project", &input);
        if let Some(v) = self.replayed(p, idempotency_key, &fp).await? {
            return Ok((v, true));
        }
        let errors = input.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let now = self.now();
        let project = Project {
            id: ProjectId::new(),
            name: input.name.trim().to_owned(),
            description: input.description,
            workflow: input.workflow.unwrap_or_default(),
            created_by: p.subject.to_string(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let mut writes = vec![Write::Project {
            project: Box::new(project.clone()),
            expected_version: None,
        }];
        writes.extend(self.idempotency_write(p, idempotency_key, &fp, &project));
        self.commit_create(p, idempotency_key, &fp, writes, project)
            .await
    }

    /// A project.
    pub async fn get_project(&self, p: &Principal, id: ProjectId) -> Result<Project, Error> {
        self.project_for(p, id, Level::Read).await
    }

    /// The projects the caller may read.
    pub async fn list_projects(
        &self,
        p: &Principal,
        page: &PageRequest,
    ) -> Result<Page<Project>, Error> {
        let after: Option<ProjectId> = page.position(&self.cursor)?;
        let visible = self.visible_projects(p).await?;
        let rows = self
            .store
            .list_projects(visible.as_deref(), after, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |x| x.id,
        ))
    }

    async fn visible_projects(&self, p: &Principal) -> Result<Option<Vec<ProjectId>>, Error> {
        if allowed(p, None, Level::Read) {
            return Ok(None);
        }
        Ok(Some(
            self.store
                .project_ids()
                .await?
                .into_iter()
                .filter(|id| allowed(p, Some(*id), Level::Read))
                .collect(),
        ))
    }

    /// Changes a project; a new workflow needs project admin.
    pub async fn update_project(
        &self,
        p: &Principal,
        id: ProjectId,
        patch: ProjectPatch,
        if_match: Option<i64>,
    ) -> Result<Project, Error> {
        let level = if patch.workflow.is_some() {
            Level::Admin
        } else {
            Level::Write
        };
        let old = self.project_for(p, id, level).await?;
        check_if_match(if_match, old.version)?;
        let errors = patch.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let mut new = old.clone();
        if let Some(n) = patch.name {
            new.name = n.trim().to_owned();
        }
        if let Some(d) = patch.description {
            new.description = d;
        }
        if let Some(w) = patch.workflow {
            new.workflow = w;
        }
        let changes = diff(&[
            ("name", json!(old.name), json!(new.name)),
            (
                "description",
                json!(old.description),
                json!(new.description),
            ),
            ("workflow", json!(old.workflow), json!(new.workflow)),
        ]);
        if changes.is_empty() {
            return Ok(old);
        }
        new.version += 1;
        new.updated_at = self.now();
        let recategorised = if new.workflow == old.workflow {
            vec![]
        } else {
            self.recategorised_tasks(p, id, &new.workflow).await?
        };
        let mut writes = vec![
            Write::Project {
                project: Box::new(new.clone()),
                expected_version: Some(old.version),
            },
            self.activity(p, id, None, "project.updated", changes.clone()),
            self.event_write(
                id,
                "project.updated",
                json!({ "project": new, "changes": changes }),
            )
            .await?,
        ];
        writes.extend(recategorised);
        self.store
            .commit(writes)
            .await
            .map_err(|e| stale(e, if_match))?;
        Ok(new)
    }

    /// Writes giving every task of `project` whose status `workflow` puts in
    /// another category that category, in the workflow change's commit: the
    /// stored category is what progress, filters and blocking read, so it
    /// must follow the workflow. Each write is versioned, so a task changed
    /// meanwhile makes the commit a conflict instead of being overwritten.
    async fn recategorised_tasks(
        &self,
        p: &Principal,
        project: ProjectId,
        workflow: &Workflow,
    ) -> Result<Vec<Write>, Error> {
        // The store lists tasks a page at a time.
        const PAGE: u32 = 500;
        let now = self.now();
        let mut writes = Vec::new();
        for status in &workflow.statuses {
            let mut after = None;
            loop {
                let query = TaskQuery {
                    projects: Some(vec![project]),
                    status: Some(status.key.clone()),
                    sort: TaskSort::Created,
                    after,
                    limit: PAGE,
                    ..TaskQuery::default()
                };
                let rows = self.store.list_tasks(&query).await?;
                let full = rows.len() == PAGE as usize;
                after = rows.last().map(|t| (sort_key(t, TaskSort::Created), t.id));
                for old in rows {
                    if old.category == status.category {
                        continue;
                    }
                    let mut task = old.clone();
                    task.category = status.category;
                    task.version = old.version + 1;
                    task.updated_at = now;
                    task.updated_by = p.subject.to_string();
                    writes.push(Write::Task {
                        task: Box::new(task),
                        expected_version: Some(old.version),
                    });
                }
                if !full {
                    break;
                }
            }
        }
        Ok(writes)
    }

    // ----- milestones ----------------------------------------------------

    async fn milestone_view(&self, m: Milestone) -> Result<MilestoneView, Error> {
        let progress = Progress::from_tallies(&self.store.milestone_tallies(m.id).await?);
        let today = self.now().date_naive();
        let finished = progress.total > 0 && progress.completed == progress.total;
        let overdue =
            m.state == MilestoneState::Open && m.due_date.is_some_and(|d| d < today) && !finished;
        Ok(MilestoneView {
            milestone: m,
            progress,
            overdue,
        })
    }

    /// Creates a milestone in a project.
    pub async fn create_milestone(
        &self,
        p: &Principal,
        project: ProjectId,
        input: NewMilestone,
        idempotency_key: Option<&str>,
    ) -> Result<Created<MilestoneView>, Error> {
        self.project_for(p, project, Level::Write).await?;
        let fp = Self::fingerprint(&format!("create_milestone:{project}"), &input);
        if let Some(v) = self.replayed(p, idempotency_key, &fp).await? {
            return Ok((v, true));
        }
        let errors = input.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let now = self.now();
        let m = Milestone {
            id: MilestoneId::new(),
            project_id: project,
            title: input.title.trim().to_owned(),
            description: input.description,
            start_date: input.start_date,
            due_date: input.due_date,
            state: MilestoneState::Open,
            created_by: p.subject.to_string(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let view = self.milestone_view(m.clone()).await?;
        let mut writes = vec![
            Write::Milestone {
                milestone: Box::new(m.clone()),
                expected_version: None,
            },
            self.activity(p, project, None, "milestone.created", vec![]),
            self.event_write(project, "milestone.created", json!({ "milestone": m }))
                .await?,
        ];
        writes.extend(self.idempotency_write(p, idempotency_key, &fp, &view));
        self.commit_create(p, idempotency_key, &fp, writes, view)
            .await
    }

    async fn milestone_for(
        &self,
        p: &Principal,
        id: MilestoneId,
        level: Level,
    ) -> Result<Milestone, Error> {
        let m = self
            .store
            .get_milestone(id)
            .await?
            .ok_or(Error::NotFound("milestone"))?;
        if !allowed(p, Some(m.project_id), Level::Read) {
            return Err(Error::NotFound("milestone"));
        }
        require(p, Some(m.project_id), level)?;
        Ok(m)
    }

    /// A milestone with its progress.
    pub async fn get_milestone(
        &self,
        p: &Principal,
        id: MilestoneId,
    ) -> Result<MilestoneView, Error> {
        let m = self.milestone_for(p, id, Level::Read).await?;
        self.milestone_view(m).await
    }

    /// A project's milestones with their progress.
    pub async fn list_milestones(
        &self,
        p: &Principal,
        project: ProjectId,
        page: &PageRequest,
    ) -> Result<Page<MilestoneView>, Error> {
        self.project_for(p, project, Level::Read).await?;
        let after: Option<MilestoneId> = page.position(&self.cursor)?;
        let rows = self
            .store
            .list_milestones(project, after, page.limit() + 1)
            .await?;
        let page = Page::from_overfetch(rows, page.limit(), &self.cursor, |m| m.id);
        let mut items = Vec::with_capacity(page.items.len());
        for m in page.items {
            items.push(self.milestone_view(m).await?);
        }
        Ok(Page::new(items, page.next_cursor))
    }

    /// Changes a milestone.
    pub async fn update_milestone(
        &self,
        p: &Principal,
        id: MilestoneId,
        patch: MilestonePatch,
        if_match: Option<i64>,
    ) -> Result<MilestoneView, Error> {
        let old = self.milestone_for(p, id, Level::Write).await?;
        check_if_match(if_match, old.version)?;
        let errors = patch.validate(&old);
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let mut new = old.clone();
        if let Some(t) = patch.title {
            new.title = t.trim().to_owned();
        }
        if let Some(d) = patch.description {
            new.description = d;
        }
        if let Some(s) = patch.start_date {
            new.start_date = s;
        }
        if let Some(d) = patch.due_date {
            new.due_date = d;
        }
        if let Some(s) = patch.state {
            new.state = s;
        }
        let changes = diff(&[
            ("title", json!(old.title), json!(new.title)),
            (
                "description",
                json!(old.description),
                json!(new.description),
            ),
            ("start_date", json!(old.start_date), json!(new.start_date)),
            ("due_date", json!(old.due_date), json!(new.due_date)),
            ("state", json!(old.state), json!(new.state)),
        ]);
        if changes.is_empty() {
            return self.milestone_view(old).await;
        }
        new.version += 1;
        new.updated_at = self.now();
        let writes = vec![
            Write::Milestone {
                milestone: Box::new(new.clone()),
                expected_version: Some(old.version),
            },
            self.activity(
                p,
                new.project_id,
                None,
                "milestone.updated",
                changes.clone(),
            ),
            self.event_write(
                new.project_id,
                "milestone.updated",
                json!({ "milestone": new, "changes": changes }),
            )
            .await?,
        ];
        self.store
            .commit(writes)
            .await
            .map_err(|e| stale(e, if_match))?;
        self.milestone_view(new).await
    }

    // ----- tasks -------------------------------------------------------

    async fn task_for(&self, p: &Principal, id: TaskId, level: Level) -> Result<Task, Error> {
        let t = self
            .store
            .get_task(id)
            .await?
            .ok_or(Error::NotFound("task"))?;
        if !allowed(p, Some(t.project_id), Level::Read) {
            return Err(Error::NotFound("task"));
        }
        require(p, Some(t.project_id), level)?;
        Ok(t)
    }

    /// Creates a task in a project.
    pub async fn create_task(
        &self,
        p: &Principal,
        project_id: ProjectId,
        input: NewTask,
        idempotency_key: Option<&str>,
    ) -> Result<Created<Task>, Error> {
        let project = self.project_for(p, project_id, Level::Write).await?;
        let fp = Self::fingerprint(&format!("create_task:{project_id}"), &input);
        if let Some(v) = self.replayed(p, idempotency_key, &fp).await? {
            return Ok((v, true));
        }
        let mut errors = input.validate(&project.workflow);
        let id = TaskId::new();
        if let Some(parent) = input.parent_id {
            self.check_parent(id, parent, project_id, &mut errors)
                .await?;
        }
        let blocked_by = dedupe_ids(&input.blocked_by);
        let mut checked = Vec::new();
        self.check_blockers(id, &input.blocked_by, project_id, &mut errors, &mut checked)
            .await?;
        if let Some(m) = input.milestone_id {
            self.check_milestone(m, project_id, &mut errors).await?;
        }
        let assignees = normalise_list(&input.assignees);
        self.check_assignees(&input.assignees, &[], project_id, &mut errors)
            .await;
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let status_key = input
            .status
            .clone()
            .unwrap_or_else(|| project.workflow.initial.clone());
        let status = project
            .workflow
            .status(&status_key)
            .ok_or_else(|| Error::field("status", "is not a status of this workflow"))?;
        if status.category == Category::Completed {
            self.check_open_blockers(p, project_id, &blocked_by, false)
                .await?;
        }
        let now = self.now();
        let task = Task {
            id,
            project_id,
            milestone_id: input.milestone_id,
            parent_id: input.parent_id,
            title: input.title.trim().to_owned(),
            description: input.description.clone(),
            priority: input.priority,
            estimate: input.estimate,
            due_date: input.due_date,
            labels: normalise_list(&input.labels),
            blocked_by,
            status: status.key.clone(),
            category: status.category,
            assignees: assignees.clone(),
            created_by: p.subject.to_string(),
            updated_by: p.subject.to_string(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let changes = task_diff(None, &task);
        let mut writes = vec![
            Write::Task {
                task: Box::new(task.clone()),
                expected_version: None,
            },
            self.activity(p, project_id, Some(id), "task.created", changes),
            self.event_write(project_id, "task.created", json!({ "task": task }))
                .await?,
        ];
        writes.extend(unchanged(checked));
        let mut watchers: BTreeSet<String> = assignees.iter().cloned().collect();
        watchers.insert(p.subject.to_string());
        for w in &watchers {
            writes.push(Write::Watch {
                task_id: id,
                subject: w.clone(),
            });
        }
        let notes = self
            .notifications(
                p,
                &task,
                "task.created",
                format!("{} created {:?}", p.subject, task.title),
                watchers.iter(),
            )
            .await;
        writes.extend(
            notes
                .iter()
                .cloned()
                .map(|n| Write::Notification(Box::new(n))),
        );
        writes.extend(self.idempotency_write(p, idempotency_key, &fp, &task));
        let created = self
            .commit_create(p, idempotency_key, &fp, writes, task)
            .await?;
        if !created.1 {
            self.send_notifications(&notes).await;
        }
        Ok(created)
    }

    /// A task.
    pub async fn get_task(&self, p: &Principal, id: TaskId) -> Result<Task, Error> {
        self.task_for(p, id, Level::Read).await
    }

    /// Changes a task. `if_match` is the version the caller last saw; a
    /// stale one is [`Error::PreconditionFailed`].
    pub async fn update_task(
        &self,
        p: &Principal,
        id: TaskId,
        patch: TaskPatch,
        if_match: Option<i64>,
    ) -> Result<Task, Error> {
        let old = self.task_for(p, id, Level::Write).await?;
        check_if_match(if_match, old.version)?;
        let project = self
            .store
            .get_project(old.project_id)
            .await?
            .ok_or(Error::NotFound("project"))?;
        let (new, changes, checked) = self.prepare_update(p, &old, &project, patch).await?;
        if changes.is_empty() {
            return Ok(old);
        }
        self.commit_update(p, &old, new, changes, checked, if_match)
            .await
    }

    async fn commit_update(
        &self,
        p: &Principal,
        old: &Task,
        new: Task,
        changes: Vec<FieldChange>,
        checked: Vec<(TaskId, i64)>,
        if_match: Option<i64>,
    ) -> Result<Task, Error> {
        // The task and the tasks guarded as unchanged, in task-id order:
        // two commits that each guard the other's task then lock the rows
        // in one order, and the later one waits and conflicts instead of
        // deadlocking.
        let mut writes = unchanged(checked);
        writes.push(Write::Task {
            task: Box::new(new.clone()),
            expected_version: Some(old.version),
        });
        writes.sort_by_key(task_row);
        writes.push(self.activity(
            p,
            new.project_id,
            Some(new.id),
            "task.updated",
            changes.clone(),
        ));
        writes.push(
            self.event_write(
                new.project_id,
                "task.updated",
                json!({ "task": new, "changes": changes }),
            )
            .await?,
        );
        let added: Vec<String> = new
            .assignees
            .iter()
            .filter(|a| !old.assignees.contains(a))
            .cloned()
            .collect();
        for a in &added {
            writes.push(Write::Watch {
                task_id: new.id,
                subject: a.clone(),
            });
        }
        let mut recipients: BTreeSet<String> =
            self.store.watchers(new.id).await?.into_iter().collect();
        recipients.extend(added);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        let notes = self
            .notifications(
                p,
                &new,
                "task.updated",
                format!(
                    "{} changed {} of {:?}",
                    p.subject,
                    fields.join(", "),
                    new.title
                ),
                recipients.iter(),
            )
            .await;
        writes.extend(
            notes
                .iter()
                .cloned()
                .map(|n| Write::Notification(Box::new(n))),
        );
        self.store
            .commit(writes)
            .await
            .map_err(|e| stale(e, if_match))?;
        self.send_notifications(&notes).await;
        Ok(new)
    }

    /// Validates `patch` against `old` and computes the new task and its
    /// field changes, without writing anything.
    async fn prepare_update(
        &self,
        p: &Principal,
        old: &Task,
        project: &Project,
        patch: TaskPatch,
    ) -> Result<(Task, Vec<FieldChange>, Vec<(TaskId, i64)>), Error> {
        let mut errors = patch.validate();
        // The tasks a blocker check read: they must not change before the
        // commit (see `Write::TaskUnchanged`).
        let mut checked = Vec::new();
        let mut new = old.clone();
        if let Some(t) = &patch.title {
            new.title = t.trim().to_owned();
        }
        if let Some(d) = &patch.description {
            new.description = d.clone();
        }
        if let Some(pr) = patch.priority {
            new.priority = pr;
        }
        if let Some(e) = patch.estimate {
            new.estimate = e;
        }
        if let Some(d) = patch.due_date {
            new.due_date = d;
        }
        if let Some(l) = &patch.labels {
            new.labels = normalise_list(l);
        }
        if let Some(parent) = patch.parent_id {
            if let Some(parent) = parent
                && Some(parent) != old.parent_id
            {
                self.check_parent(old.id, parent, old.project_id, &mut errors)
                    .await?;
            }
            new.parent_id = parent;
        }
        if let Some(b) = &patch.blocked_by {
            new.blocked_by = dedupe_ids(b);
            if new.blocked_by != old.blocked_by {
                self.check_blockers(old.id, b, old.project_id, &mut errors, &mut checked)
                    .await?;
            }
        }
        if let Some(m) = patch.milestone_id {
            if let Some(m) = m
                && Some(m) != old.milestone_id
            {
                self.check_milestone(m, old.project_id, &mut errors).await?;
            }
            new.milestone_id = m;
        }
        if let Some(a) = &patch.assignees {
            new.assignees = normalise_list(a);
            self.check_assignees(a, &old.assignees, old.project_id, &mut errors)
                .await;
        }
        let mut target = None;
        if let Some(s) = &patch.status {
            match project.workflow.status(s) {
                Some(st) => target = Some(st.clone()),
                None => errors.push(FieldError::new(
                    "status",
                    format!("{s:?} is not a status of this project's workflow"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        if let Some(st) = target {
            if !project.workflow.allows(&old.status, &st.key) {
                return Err(Error::Transition {
                    from: old.status.clone(),
                    to: st.key,
                });
            }
            new.status = st.key;
            new.category = st.category;
        }
        if new.category == Category::Completed
            && (old.category != Category::Completed || new.blocked_by != old.blocked_by)
        {
            self.check_open_blockers(p, old.project_id, &new.blocked_by, patch.force)
                .await?;
        }
        let changes = task_diff(Some(old), &new);
        if !changes.is_empty() {
            new.version = old.version + 1;
            new.updated_at = self.now();
            new.updated_by = p.subject.to_string();
        }
        Ok((new, changes, checked))
    }

    async fn check_parent(
        &self,
        id: TaskId,
        parent: TaskId,
        project: ProjectId,
        errors: &mut Vec<FieldError>,
    ) -> Result<(), Error> {
        if parent == id {
            errors.push(FieldError::new(
                "parent_id",
                "a task cannot be its own parent",
            ));
            return Ok(());
        }
        let mut cursor = Some(parent);
        let mut steps = 0;
        while let Some(cur) = cursor {
            let Some(t) = self.store.get_task(cur).await? else {
                errors.push(FieldError::new("parent_id", "no such task"));
                return Ok(());
            };
            if cur == parent && t.project_id != project {
                errors.push(FieldError::new(
                    "parent_id",
                    "must be a task of the same project",
                ));
                return Ok(());
            }
            if t.parent_id == Some(id) || steps > 1000 {
                errors.push(FieldError::new(
                    "parent_id",
                    "would make the task an ancestor of itself",
                ));
                return Ok(());
            }
            cursor = t.parent_id;
            steps += 1;
        }
        Ok(())
    }

    /// Checks `blockers` as the caller listed them, so that each error names
    /// the index the caller sent (not one in the sorted, deduplicated list).
    async fn check_blockers(
        &self,
        id: TaskId,
        blockers: &[TaskId],
        project: ProjectId,
        errors: &mut Vec<FieldError>,
        checked: &mut Vec<(TaskId, i64)>,
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        for (i, b) in blockers.iter().enumerate() {
            if !seen.insert(*b) {
                continue;
            }
            let field = format!("blocked_by[{i}]");
            if *b == id {
                errors.push(FieldError::new(field, "a task cannot block itself"));
                continue;
            }
            match self.store.get_task(*b).await? {
                None => errors.push(FieldError::new(field, "no such task")),
                Some(t) if t.project_id != project => {
                    errors.push(FieldError::new(field, "must be a task of the same project"))
                }
                Some(_) => {
                    if let Some(path) = self.blocking_path(*b, id, checked).await? {
                        let path: Vec<String> = path.iter().map(ToString::to_string).collect();
                        errors.push(FieldError::new(
                            field,
                            format!(
                                "would create a cycle: {} is already (transitively) blocked by this task ({})",
                                b,
                                path.join(" -> ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// If `target` is reachable from `start` along blocked-by links, the
    /// path. Each task read is added to `checked` with its version.
    async fn blocking_path(
        &self,
        start: TaskId,
        target: TaskId,
        checked: &mut Vec<(TaskId, i64)>,
    ) -> Result<Option<Vec<TaskId>>, Error> {
        let mut seen = HashSet::from([start]);
        let mut queue = VecDeque::from([(start, vec![start])]);
        while let Some((cur, path)) = queue.pop_front() {
            if seen.len() > 10_000 {
                return Ok(Some(path));
            }
            let Some(t) = self.store.get_task(cur).await? else {
                continue;
            };
            checked.push((t.id, t.version));
            for next in t.blocked_by {
                let mut p = path.clone();
                p.push(next);
                if next == target {
                    return Ok(Some(p));
                }
                if seen.insert(next) {
                    queue.push_back((next, p));
                }
            }
        }
        Ok(None)
    }

    async fn check_milestone(
        &self,
        m: MilestoneId,
        project: ProjectId,
        errors: &mut Vec<FieldError>,
    ) -> Result<(), Error> {
        match self.store.get_milestone(m).await? {
            None => errors.push(FieldError::new("milestone_id", "no such milestone")),
            Some(ms) if ms.project_id != project => errors.push(FieldError::new(
                "milestone_id",
                "must be a milestone of the same project",
            )),
            Some(_) => {}
        }
        Ok(())
    }

    /// Checks `assignees` as the caller listed them (untrimmed, unsorted),
    /// so that each error names the index the caller sent.
    async fn check_assignees(
        &self,
        assignees: &[String],
        already: &[String],
        project: ProjectId,
        errors: &mut Vec<FieldError>,
    ) {
        let mut seen = HashSet::new();
        for (i, a) in assignees.iter().enumerate() {
            let a = a.trim();
            // Blank entries are the model's validation errors already.
            if a.is_empty() || !seen.insert(a) || already.iter().any(|x| x == a) {
                continue;
            }
            match self.directory.check(a, project).await {
                AssigneeStatus::Ok => {}
                AssigneeStatus::Unknown => {
                    errors.push(FieldError::new(format!("assignees[{i}]"), "no such user"))
                }
                AssigneeStatus::NoAccess => errors.push(FieldError::new(
                    format!("assignees[{i}]"),
                    "this user cannot read the project",
                )),
            }
        }
    }

    async fn check_open_blockers(
        &self,
        p: &Principal,
        project: ProjectId,
        blockers: &[TaskId],
        force: bool,
    ) -> Result<(), Error> {
        let mut open = Vec::new();
        for b in blockers {
            if let Some(t) = self.store.get_task(*b).await?
                && !t.category.is_closed()
            {
                open.push(t.id.to_string());
            }
        }
        if open.is_empty() {
            return Ok(());
        }
        if force {
            return require(p, Some(project), Level::Admin);
        }
        Err(Error::OpenBlockers(open.join(", ")))
    }

    /// One notification per recipient other than the actor who may still
    /// read the project: a watcher whose access was taken away (or who is
    /// gone from the directory) is told nothing more about its tasks.
    async fn notifications<'a>(
        &self,
        p: &Principal,
        task: &Task,
        kind: &str,
        summary: String,
        recipients: impl Iterator<Item = &'a String>,
    ) -> Vec<Notification> {
        let mut notes = Vec::new();
        for r in recipients.filter(|r| r.as_str() != &*p.subject) {
            if self.directory.check(r, task.project_id).await != AssigneeStatus::Ok {
                continue;
            }
            notes.push(Notification {
                id: NotificationId::new(),
                recipient: r.clone(),
                project_id: task.project_id,
                task_id: Some(task.id),
                kind: kind.to_owned(),
                summary: summary.clone(),
                actor: p.subject.to_string(),
                created_at: self.now(),
                read_at: None,
            });
        }
        notes
    }

    async fn send_notifications(&self, notes: &[Notification]) {
        for n in notes {
            self.notifier.notify(n).await;
        }
    }

    /// Tasks matching `filter` in the projects the caller may read.
    pub async fn list_tasks(&self, p: &Principal, filter: TaskFilter) -> Result<Page<Task>, Error> {
        let errors = filter.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let projects = match filter.project_id {
            Some(id) => {
                self.project_for(p, id, Level::Read).await?;
                Some(vec![id])
            }
            None => self.visible_projects(p).await?,
        };
        let page = PageRequest {
            limit: filter.limit,
            cursor: filter.cursor.clone(),
        };
        let sort = filter.sort.unwrap_or_default();
        let query_digest = task_query_digest(&filter);
        let after = match page.position::<TaskPosition>(&self.cursor)? {
            Some(at) if at.query != query_digest => {
                return Err(jadugar_core::CursorError::OtherQuery.into());
            }
            Some(at) => Some((at.key, at.id)),
            None => None,
        };
        let query = TaskQuery {
            projects,
            milestone_id: filter.milestone_id,
            parent_id: filter.parent_id,
            status: filter.status,
            category: filter.category,
            assignee: filter.assignee,
            label: filter.label,
            priority: filter.priority,
            due_before: filter.due_before,
            due_after: filter.due_after,
            title_contains: filter.q,
            sort,
            after,
            limit: page.limit() + 1,
        };
        let rows = self.store.list_tasks(&query).await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |t| TaskPosition {
                query: query_digest,
                key: sort_key(t, sort),
                id: t.id,
            },
        ))
    }

    /// The caller's tasks across every project they may read.
    pub async fn my_tasks(
        &self,
        p: &Principal,
        mut filter: TaskFilter,
    ) -> Result<Page<Task>, Error> {
        filter.assignee = Some(p.subject.to_string());
        self.list_tasks(p, filter).await
    }

    /// Applies the same change to many tasks, each on its own, reporting
    /// per task; with `dry_run` nothing is written.
    pub async fn bulk_update(&self, p: &Principal, req: BulkUpdate) -> Result<BulkResult, Error> {
        if req.task_ids.is_empty() || req.task_ids.len() > self.config.bulk_max {
            return Err(Error::field(
                "task_ids",
                format!("must list 1 to {} tasks", self.config.bulk_max),
            ));
        }
        let patch = TaskPatch::from(req.changes);
        let errors = patch.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let mut items = Vec::with_capacity(req.task_ids.len());
        for id in req.task_ids {
            let result = self.bulk_one(p, id, patch.clone(), req.dry_run).await;
            items.push(match result {
                Ok(task) => BulkItemResult {
                    task_id: id,
                    ok: true,
                    status: 200,
                    task: Some(task),
                    problem: None,
                },
                Err(e) => {
                    let problem = jadugar_core::Problem::from(e);
                    BulkItemResult {
                        task_id: id,
                        ok: false,
                        status: problem.status,
                        task: None,
                        problem: Some(problem),
                    }
                }
            });
        }
        let succeeded = items.iter().filter(|i| i.ok).count();
        Ok(BulkResult {
            dry_run: req.dry_run,
            succeeded,
            failed: items.len() - succeeded,
            items,
        })
    }

    async fn bulk_one(
        &self,
        p: &Principal,
        id: TaskId,
        patch: TaskPatch,
        dry_run: bool,
    ) -> Result<Task, Error> {
        let old = self.task_for(p, id, Level::Write).await?;
        let project = self
            .store
            .get_project(old.project_id)
            .await?
            .ok_or(Error::NotFound("project"))?;
        let (new, changes, checked) = self.prepare_update(p, &old, &project, patch).await?;
        if dry_run || changes.is_empty() {
            return Ok(new);
        }
        self.commit_update(p, &old, new, changes, checked, None)
            .await
    }

    // ----- activity, comments, watching --------------------------------

    /// A task's activity, oldest first.
    pub async fn task_activity(
        &self,
        p: &Principal,
        id: TaskId,
        page: &PageRequest,
    ) -> Result<Page<Activity>, Error> {
        self.task_for(p, id, Level::Read).await?;
        self.activity_page(ActivityScope::Task(id), page).await
    }

    /// A project's activity, oldest first.
    pub async fn project_activity(
        &self,
        p: &Principal,
        id: ProjectId,
        page: &PageRequest,
    ) -> Result<Page<Activity>, Error> {
        self.project_for(p, id, Level::Read).await?;
        self.activity_page(ActivityScope::Project(id), page).await
    }

    async fn activity_page(
        &self,
        scope: ActivityScope,
        page: &PageRequest,
    ) -> Result<Page<Activity>, Error> {
        let after: Option<ActivityId> = page.position(&self.cursor)?;
        let rows = self
            .store
            .list_activity(scope, after, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |a| a.id,
        ))
    }

    /// Comments on a task (needs write on the project).
    pub async fn add_comment(
        &self,
        p: &Principal,
        task_id: TaskId,
        input: NewComment,
    ) -> Result<Comment, Error> {
        let task = self.task_for(p, task_id, Level::Write).await?;
        let errors = input.validate();
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let comment = Comment {
            id: CommentId::new(),
            task_id,
            project_id: task.project_id,
            author: p.subject.to_string(),
            body: input.body,
            created_at: self.now(),
        };
        let watchers = self.store.watchers(task_id).await?;
        let notes = self
            .notifications(
                p,
                &task,
                "task.commented",
                format!("{} commented on {:?}", p.subject, task.title),
                watchers.iter(),
            )
            .await;
        let mut writes = vec![
            Write::Comment(Box::new(comment.clone())),
            self.activity(
                p,
                task.project_id,
                Some(task_id),
                "task.commented",
                vec![FieldChange {
                    field: "comment".into(),
                    from: Value::Null,
                    to: json!(comment.id),
                }],
            ),
            self.event_write(
                task.project_id,
                "task.commented",
                json!({ "task_id": task_id, "comment": comment }),
            )
            .await?,
        ];
        writes.extend(
            notes
                .iter()
                .cloned()
                .map(|n| Write::Notification(Box::new(n))),
        );
        self.store.commit(writes).await?;
        self.send_notifications(&notes).await;
        Ok(comment)
    }

    /// Comments of a task, oldest first.
    pub async fn list_comments(
        &self,
        p: &Principal,
        task_id: TaskId,
        page: &PageRequest,
    ) -> Result<Page<Comment>, Error> {
        self.task_for(p, task_id, Level::Read).await?;
        let after: Option<CommentId> = page.position(&self.cursor)?;
        let rows = self
            .store
            .list_comments(task_id, after, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |c| c.id,
        ))
    }

    /// Starts (`true`) or stops watching a task.
    pub async fn watch(&self, p: &Principal, task_id: TaskId, on: bool) -> Result<(), Error> {
        self.task_for(p, task_id, Level::Read).await?;
        let subject = p.subject.to_string();
        let write = if on {
            Write::Watch { task_id, subject }
        } else {
            Write::Unwatch { task_id, subject }
        };
        self.store.commit(vec![write]).await?;
        Ok(())
    }

    /// The watchers of a task.
    pub async fn watchers(&self, p: &Principal, task_id: TaskId) -> Result<Vec<String>, Error> {
        self.task_for(p, task_id, Level::Read).await?;
        Ok(self.store.watchers(task_id).await?)
    }

    // ----- notifications -------------------------------------------------

    /// The caller's notifications, newest first.
    pub async fn notifications_of(
        &self,
        p: &Principal,
        unread_only: bool,
        page: &PageRequest,
    ) -> Result<Page<Notification>, Error> {
        let before: Option<NotificationId> = page.position(&self.cursor)?;
        let rows = self
            .store
            .list_notifications(&p.subject, unread_only, before, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |n| n.id,
        ))
    }

    /// The caller's unread count.
    pub async fn unread_count(&self, p: &Principal) -> Result<UnreadCount, Error> {
        Ok(UnreadCount {
            unread: self.store.unread_count(&p.subject).await?,
        })
    }

    /// Marks the caller's notifications read; returns how many changed.
    pub async fn mark_read(&self, p: &Principal, req: MarkRead) -> Result<u64, Error> {
        if req.ids.as_ref().is_some_and(|ids| ids.len() > 1000) {
            return Err(Error::field("ids", "must list at most 1000 ids"));
        }
        Ok(self
            .store
            .mark_read(&p.subject, req.ids.as_deref(), self.now())
            .await?)
    }

    // ----- webhooks ------------------------------------------------------

    fn check_url_policy(&self, url: &str, errors: &mut Vec<FieldError>) {
        if let Ok(parsed) = url::Url::parse(url)
            && let Err(e) = self.policy.check_url(&parsed)
        {
            errors.push(FieldError::new("url", format!("not allowed: {e}")));
        }
    }

    fn seal_new_secret(&self, id: WebhookId) -> (String, SealedSecret) {
        let secret = webhook::generate_secret();
        let sealed = self
            .sealer
            .seal(secret.as_bytes(), id.to_string().as_bytes());
        (
            secret,
            SealedSecret {
                sealed,
                expires_at: None,
            },
        )
    }

    /// Subscribes a URL to a project's events (project admin). The secret
    /// is returned only here.
    pub async fn create_webhook(
        &self,
        p: &Principal,
        project: ProjectId,
        input: NewWebhook,
    ) -> Result<WebhookWithSecret, Error> {
        self.project_for(p, project, Level::Admin).await?;
        let mut errors = validate_webhook_fields(
            Some(&input.url),
            Some(&input.event_types),
            Some(&input.description),
        );
        if errors.is_empty() {
            self.check_url_policy(&input.url, &mut errors);
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let id = WebhookId::new();
        let (secret, sealed) = self.seal_new_secret(id);
        let now = self.now();
        let webhook = Webhook {
            id,
            project_id: project,
            url: input.url,
            event_types: normalise_list(&input.event_types),
            description: input.description,
            enabled: true,
            disabled_reason: None,
            created_by: p.subject.to_string(),
            created_at: now,
            updated_at: now,
            version: 1,
            secrets: vec![sealed],
        };
        self.store.put_webhook(&webhook, None).await?;
        Ok(WebhookWithSecret { webhook, secret })
    }

    async fn webhook_for(&self, p: &Principal, id: WebhookId) -> Result<Webhook, Error> {
        let w = self
            .store
            .get_webhook(id)
            .await?
            .ok_or(Error::NotFound("webhook"))?;
        if !allowed(p, Some(w.project_id), Level::Read) {
            return Err(Error::NotFound("webhook"));
        }
        require(p, Some(w.project_id), Level::Admin)?;
        Ok(w)
    }

    /// A project's webhooks (project admin).
    pub async fn list_webhooks(
        &self,
        p: &Principal,
        project: ProjectId,
    ) -> Result<Vec<Webhook>, Error> {
        self.project_for(p, project, Level::Admin).await?;
        Ok(self.store.list_webhooks(project).await?)
    }

    /// A webhook (project admin).
    pub async fn get_webhook(&self, p: &Principal, id: WebhookId) -> Result<Webhook, Error> {
        self.webhook_for(p, id).await
    }

    /// Changes a webhook's URL, event types or description. `if_match` is
    /// the version the caller last saw; a stale one is
    /// [`Error::PreconditionFailed`].
    pub async fn update_webhook(
        &self,
        p: &Principal,
        id: WebhookId,
        patch: WebhookPatch,
        if_match: Option<i64>,
    ) -> Result<Webhook, Error> {
        self.webhook_for(p, id).await?;
        let mut errors = validate_webhook_fields(
            patch.url.as_deref(),
            patch.event_types.as_deref(),
            patch.description.as_deref(),
        );
        if let Some(u) = &patch.url
            && errors.is_empty()
        {
            self.check_url_policy(u, &mut errors);
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let now = self.now();
        let event_types = patch.event_types.as_deref().map(normalise_list);
        self.modify_webhook(id, |w| {
            if let Some(expected) = if_match
                && w.version != expected
            {
                return Err(Error::PreconditionFailed(expected.to_string()));
            }
            if let Some(u) = &patch.url {
                w.url.clone_from(u);
            }
            if let Some(t) = &event_types {
                w.event_types.clone_from(t);
            }
            if let Some(d) = &patch.description {
                w.description.clone_from(d);
            }
            w.updated_at = now;
            Ok(())
        })
        .await
    }

    /// [`store::modify_webhook`](crate::store::modify_webhook), with a
    /// webhook deleted meanwhile as a 404.
    async fn modify_webhook(
        &self,
        id: WebhookId,
        change: impl FnMut(&mut Webhook) -> Result<(), Error>,
    ) -> Result<Webhook, Error> {
        crate::store::modify_webhook(&*self.store, id, change)
            .await?
            .ok_or(Error::NotFound("webhook"))
    }

    /// Deletes a webhook and its queued deliveries.
    pub async fn delete_webhook(&self, p: &Principal, id: WebhookId) -> Result<(), Error> {
        self.webhook_for(p, id).await?;
        self.store.delete_webhook(id).await?;
        Ok(())
    }

    /// Re-enables a webhook disabled after persistent failure; its queued
    /// deliveries resume in order.
    pub async fn enable_webhook(&self, p: &Principal, id: WebhookId) -> Result<Webhook, Error> {
        self.webhook_for(p, id).await?;
        let now = self.now();
        self.modify_webhook(id, |w| {
            w.enabled = true;
            w.disabled_reason = None;
            w.updated_at = now;
            Ok(())
        })
        .await
    }

    /// Starts signing with a new secret (returned only here); the previous
    /// one keeps signing too for `webhook_secret_overlap_secs`. At most
    /// [`MAX_WEBHOOK_SECRETS`] sign at once: rotating again within the
    /// overlap retires the oldest at once, so repeated rotations cannot
    /// grow every delivery's signature header.
    pub async fn rotate_secret(
        &self,
        p: &Principal,
        id: WebhookId,
    ) -> Result<WebhookWithSecret, Error> {
        self.webhook_for(p, id).await?;
        let now = self.now();
        let until = now + secs(self.config.webhook_secret_overlap_secs);
        let (secret, sealed) = self.seal_new_secret(id);
        let webhook = self
            .modify_webhook(id, |w| {
                let mut secrets = vec![sealed.clone()];
                // Newest first, as each rotation puts its secret in front.
                for old in &w.secrets {
                    if secrets.len() == MAX_WEBHOOK_SECRETS {
                        break;
                    }
                    if old.expires_at.is_none_or(|e| e > now) {
                        let mut old = old.clone();
                        old.expires_at = Some(old.expires_at.map_or(until, |e| e.min(until)));
                        secrets.push(old);
                    }
                }
                w.secrets = secrets;
                w.updated_at = now;
                Ok(())
            })
            .await?;
        Ok(WebhookWithSecret { webhook, secret })
    }

    /// A webhook's delivery log, newest first.
    pub async fn list_deliveries(
        &self,
        p: &Principal,
        id: WebhookId,
        page: &PageRequest,
    ) -> Result<Page<Delivery>, Error> {
        self.webhook_for(p, id).await?;
        let before: Option<DeliveryId> = page.position(&self.cursor)?;
        let rows = self
            .store
            .list_deliveries(id, before, page.limit() + 1)
            .await?;
        Ok(Page::from_overfetch(
            rows,
            page.limit(),
            &self.cursor,
            |d| d.id,
        ))
    }

    /// Queues the event of a delivery again (at the end of the endpoint's queue).
    pub async fn redeliver(
        &self,
        p: &Principal,
        webhook_id: WebhookId,
        delivery_id: DeliveryId,
    ) -> Result<Delivery, Error> {
        self.webhook_for(p, webhook_id).await?;
        let d = self
            .store
            .get_delivery(delivery_id)
            .await?
            .filter(|d| d.webhook_id == webhook_id)
            .ok_or(Error::NotFound("delivery"))?;
        let now = self.now();
        let fresh = Delivery {
            id: DeliveryId::new(),
            webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            log: vec![],
        };
        self.store
            .insert_deliveries(std::slice::from_ref(&fresh))
            .await?;
        Ok(fresh)
    }

    /// Queues again every event of the webhook's project since `since`
    /// that it subscribes to (at most 10,000); returns how many.
    pub async fn replay(
        &self,
        p: &Principal,
        webhook_id: WebhookId,
        req: ReplayRequest,
    ) -> Result<usize, Error> {
        let w = self.webhook_for(p, webhook_id).await?;
        let now = self.now();
        if req.since > now {
            return Err(Error::field("since", "must not be in the future"));
        }
        let events = self
            .store
            .events_since(w.project_id, req.since, 10_000)
            .await?;
        let deliveries: Vec<Delivery> = events
            .iter()
            .filter(|e| w.wants(&e.event_type))
            .map(|e| new_delivery(webhook_id, e, now))
            .collect();
        self.store.insert_deliveries(&deliveries).await?;
        Ok(deliveries.len())
    }
}

fn new_delivery(webhook: WebhookId, event: &OutboxEvent, now: DateTime<Utc>) -> Delivery {
    Delivery {
        id: DeliveryId::new(),
        webhook_id: webhook,
        event_id: event.id,
        event_type: event.event_type.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: now,
        created_at: now,
        log: vec![],
    }
}

fn secs(s: u64) -> Duration {
    Duration::seconds(
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1_000_000)
            .min(100 * 365 * 86_400),
    )
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_if_match(if_match: Option<i64>, version: i64) -> Result<(), Error> {
    match if_match {
        Some(v) if v != version => Err(Error::PreconditionFailed(v.to_string())),
        _ => Ok(()),
    }
}

/// A versioned write that lost a race: a failed precondition for a caller
/// who sent `If-Match`, a conflict (409) for one who did not.
fn stale(e: StoreError, if_match: Option<i64>) -> Error {
    match (e, if_match) {
        (StoreError::Conflict(_), Some(v)) => Error::PreconditionFailed(v.to_string()),
        (other, _) => other.into(),
    }
}

fn dedupe_ids(ids: &[TaskId]) -> Vec<TaskId> {
    let set: BTreeSet<TaskId> = ids.iter().copied().collect();
    set.into_iter().collect()
}

fn diff(fields: &[(&str, Value, Value)]) -> Vec<FieldChange> {
    fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(f, a, b)| FieldChange {
            field: (*f).to_owned(),
            from: a.clone(),
            to: b.clone(),
        })
        .collect()
}

fn task_fields(t: &Task) -> [(&'static str, Value); 11] {
    [
        ("title", json!(t.title)),
        ("description", json!(t.description)),
        ("priority", json!(t.priority)),
        ("estimate", json!(t.estimate)),
        ("due_date", json!(t.due_date)),
        ("labels", json!(t.labels)),
        ("parent_id", json!(t.parent_id)),
        ("blocked_by", json!(t.blocked_by)),
        ("milestone_id", json!(t.milestone_id)),
        ("status", json!(t.status)),
        ("assignees", json!(t.assignees)),
    ]
}

/// Field changes from `old` (or nothing, for a creation) to `new`.
fn task_diff(old: Option<&Task>, new: &Task) -> Vec<FieldChange> {
    let after = task_fields(new);
    let before = old.map(task_fields);
    after
        .into_iter()
        .enumerate()
        .map(|(i, (field, to))| {
            let from = before.as_ref().map_or(Value::Null, |b| b[i].1.clone());
            (field, from, to)
        })
        .filter(|(_, from, to)| from != to && !(old.is_none() && is_empty(to)))
        .map(|(field, from, to)| FieldChange {
            field: field.to_owned(),
            from,
            to,
        })
        .collect()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Guards for the tasks a change was checked against, in [`task_row`]
/// order: each once, at the version first seen (a later read of the same
/// task in one check is the same row unless it changed, which the guard
/// then catches anyway).
fn unchanged(checked: Vec<(TaskId, i64)>) -> Vec<Write> {
    let mut seen = HashSet::new();
    let mut guards: Vec<Write> = checked
        .into_iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|(id, version)| Write::TaskUnchanged { id, version })
        .collect();
    guards.sort_by_key(task_row);
    guards
}

/// The task row a write locks, the order commits take them in.
fn task_row(write: &Write) -> Option<TaskId> {
    match write {
        Write::Task { task, .. } => Some(task.id),
        Write::TaskUnchanged { id, .. } => Some(*id),
        _ => None,
    }
}

/// Most secrets signing a webhook's deliveries at once: the current one
/// and two earlier ones still in their overlap.
pub const MAX_WEBHOOK_SECRETS: usize = 3;

/// What a task-list cursor holds: the list it was issued for and the
/// position after the last task of its page.
#[derive(Debug, Serialize, serde::Deserialize)]
struct TaskPosition {
    /// [`task_query_digest`] of the list.
    query: u64,
    /// The sort key of the last task.
    key: i64,
    /// The id of the last task (ties of the sort key).
    id: TaskId,
}

/// Which list a cursor belongs to: its filters and order, not its page
/// size. The same on every host (no per-process hash seed), since a cursor
/// may come back to another host.
fn task_query_digest(filter: &TaskFilter) -> u64 {
    let list = TaskFilter {
        sort: Some(filter.sort.unwrap_or_default()),
        limit: None,
        cursor: None,
        ..filter.clone()
    };
    // Serialising a plain struct into memory cannot fail; an empty result
    // would only make every list share one digest.
    let bytes = serde_json::to_vec(&list).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}
