//! The SQL store, for SQLite and Postgres.
//!
//! Each record is a JSON document plus the columns that are filtered,
//! sorted or claimed on. The same SQL serves both backends (sqlx binds
//! `$n` on SQLite too); where they differ (title search, the claim's
//! `FOR UPDATE SKIP LOCKED`) the text is chosen per backend.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use jadugar_core::storage::{Database, StorageError};
use sqlx::Row;
use sqlx::migrate::Migrator;

use super::*;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Stores tracking in SQLite or Postgres.
///
/// Each record is a JSON document plus the columns that are filtered,
/// sorted or claimed on; deliveries are claimed with `FOR UPDATE SKIP
/// LOCKED` on Postgres and by a single leasing `UPDATE` on SQLite.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use jadugar_core::storage::{Database, DatabaseOptions};
/// use jadugar_tracking::store::SqlStore;
///
/// let db = Database::connect("sqlite://./tracking.db", &DatabaseOptions::default()).await?;
/// let store = SqlStore::new(db);
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

/// A dynamically bound argument.
#[derive(Debug, Clone)]
enum Arg {
    S(String),
    I(i64),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::S(s) => q.bind(s.clone()),
                Arg::I(i) => q.bind(*i),
            };
        }
        q
    }};
}

fn us(dt: DateTime<Utc>) -> i64 {
    dt.timestamp_micros()
}

fn from_us(v: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(v).single().unwrap_or_default()
}

fn doc<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    Ok(serde_json::from_str(s)?)
}

/// Postgres aborts one of two transactions that lock the same task rows in
/// opposite orders (a deadlock, 40P01) or cannot be serialised (40001):
/// for the caller that is a concurrent change, not a failure.
fn concurrent_as_conflict(err: StoreError) -> StoreError {
    match &err {
        StoreError::Database(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01" | "40001")) =>
        {
            conflict("a concurrent change")
        }
        _ => err,
    }
}

fn conflict(what: &str) -> StoreError {
    StoreError::Conflict(what.to_owned())
}

impl SqlStore {
    /// A store on `db` (run [`migrate`](Self::migrate) once first).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Runs tracking's migrations (versions 3000001..).
    pub async fn migrate(&self) -> Result<(), StorageError> {
        self.db
            .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
            .await
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn is_pg(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    async fn docs(&self, sql: &str, args: &[Arg]) -> Result<Vec<String>, StoreError> {
        with_pool!(&self.db, pool => {
            let rows = bind_all!(sqlx::query(sql), args).fetch_all(pool).await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
                .collect()
        })
    }

    async fn parsed<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<T>, StoreError> {
        self.docs(sql, args)
            .await?
            .iter()
            .map(|d| parse(d))
            .collect()
    }

    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<T>, StoreError> {
        Ok(self.parsed(sql, args).await?.into_iter().next())
    }

    async fn exec(&self, sql: &str, args: &[Arg]) -> Result<u64, StoreError> {
        with_pool!(&self.db, pool => {
            Ok(bind_all!(sqlx::query(sql), args).execute(pool).await?.rows_affected())
        })
    }
}

fn task_args(t: &Task) -> Vec<Arg> {
    vec![
        Arg::S(t.id.to_string()),
        Arg::S(t.project_id.to_string()),
        Arg::S(t.milestone_id.map(|m| m.to_string()).unwrap_or_default()),
        Arg::S(t.parent_id.map(|m| m.to_string()).unwrap_or_default()),
        Arg::S(t.status.clone()),
        Arg::S(t.category.as_str().to_owned()),
        Arg::I(-t.priority.rank()),
        Arg::I(i64::from(t.estimate.unwrap_or(0))),
        Arg::S(t.due_date.map(|d| d.to_string()).unwrap_or_default()),
        Arg::S(t.title.to_lowercase()),
        Arg::I(us(t.created_at)),
        Arg::I(us(t.updated_at)),
        Arg::I(t.version),
        Arg::S(doc(t)),
    ]
}

/// Empty strings stand for NULL in the task columns above; `prio_key` is
/// the negated priority rank, so that ascending order is most urgent first.
const TASK_INSERT: &str = "INSERT INTO trk_tasks (id, project_id, milestone_id, parent_id, status, category, prio_key, estimate, due_date, title_lower, created_us, updated_us, version, doc) \
     VALUES ($1, $2, NULLIF($3, ''), NULLIF($4, ''), $5, $6, $7, $8, NULLIF($9, ''), $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING";
const TASK_UPDATE: &str = "UPDATE trk_tasks SET project_id = $2, milestone_id = NULLIF($3, ''), parent_id = NULLIF($4, ''), status = $5, category = $6, prio_key = $7, estimate = $8, due_date = NULLIF($9, ''), title_lower = $10, created_us = $11, updated_us = $12, version = $13, doc = $14 \
     WHERE id = $1 AND version = $15";

macro_rules! apply_writes {
    ($tx:expr, $writes:expr) => {{
        for w in $writes {
            match w {
                Write::Project { project, expected_version } => {
                    let args = [
                        Arg::S(project.id.to_string()),
                        Arg::I(project.version),
                        Arg::S(doc(&project)),
                    ];
                    let n = match expected_version {
                        None => bind_all!(sqlx::query("INSERT INTO trk_projects (id, version, doc) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING"), &args)
                            .execute(&mut *$tx).await?.rows_affected(),
                        Some(v) => bind_all!(sqlx::query("UPDATE trk_projects SET version = $2, doc = $3 WHERE id = $1 AND version = $4"), &args)
                            .bind(v).execute(&mut *$tx).await?.rows_affected(),
                    };
                    if n == 0 {
                        return Err(conflict("project"));
                    }
                }
                Write::Milestone { milestone, expected_version } => {
                    let args = [
                        Arg::S(milestone.id.to_string()),
                        Arg::S(milestone.project_id.to_string()),
                        Arg::I(milestone.version),
                        Arg::S(doc(&milestone)),
                    ];
                    let n = match expected_version {
                        None => bind_all!(sqlx::query("INSERT INTO trk_milestones (id, project_id, version, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"), &args)
                            .execute(&mut *$tx).await?.rows_affected(),
                        Some(v) => bind_all!(sqlx::query("UPDATE trk_milestones SET project_id = $2, version = $3, doc = $4 WHERE id = $1 AND version = $5"), &args)
                            .bind(v).execute(&mut *$tx).await?.rows_affected(),
                    };
                    if n == 0 {
                        return Err(conflict("milestone"));
                    }
                }
                Write::Task { task, expected_version } => {
                    let args = task_args(&task);
                    let n = match expected_version {
                        None => bind_all!(sqlx::query(TASK_INSERT), &args)
                            .execute(&mut *$tx).await?.rows_affected(),
                        Some(v) => bind_all!(sqlx::query(TASK_UPDATE), &args)
                            .bind(v).execute(&mut *$tx).await?.rows_affected(),
                    };
                    if n == 0 {
                        return Err(conflict("task"));
                    }
                    let id = task.id.to_string();
                    sqlx::query("DELETE FROM trk_task_tags WHERE task_id = $1")
                        .bind(&id).execute(&mut *$tx).await?;
                    for (kind, list) in [("a", &task.assignees), ("l", &task.labels)] {
                        for v in list.iter() {
                            sqlx::query("INSERT INTO trk_task_tags (kind, value, task_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                                .bind(kind).bind(v.clone()).bind(&id).execute(&mut *$tx).await?;
                        }
                    }
                }
                Write::TaskUnchanged { id, version } => {
                    // A write that changes nothing: it fails on another
                    // version and holds the row's lock, so a concurrent
                    // commit writing this task waits and then conflicts.
                    let n = sqlx::query("UPDATE trk_tasks SET version = version WHERE id = $1 AND version = $2")
                        .bind(id.to_string()).bind(version).execute(&mut *$tx).await?.rows_affected();
                    if n == 0 {
                        return Err(conflict("task"));
                    }
                }
                Write::Watch { task_id, subject } => {
                    sqlx::query("INSERT INTO trk_watchers (task_id, subject) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(task_id.to_string()).bind(subject.clone()).execute(&mut *$tx).await?;
                }
                Write::Unwatch { task_id, subject } => {
                    sqlx::query("DELETE FROM trk_watchers WHERE task_id = $1 AND subject = $2")
                        .bind(task_id.to_string()).bind(subject.clone()).execute(&mut *$tx).await?;
                }
                Write::Activity(a) => {
                    sqlx::query("INSERT INTO trk_activity (id, project_id, task_id, doc) VALUES ($1, $2, $3, $4)")
                        .bind(a.id.to_string()).bind(a.project_id.to_string())
                        .bind(a.task_id.map(|t| t.to_string())).bind(doc(&a))
                        .execute(&mut *$tx).await?;
                }
                Write::Comment(c) => {
                    sqlx::query("INSERT INTO trk_comments (id, task_id, doc) VALUES ($1, $2, $3)")
                        .bind(c.id.to_string()).bind(c.task_id.to_string()).bind(doc(&c))
                        .execute(&mut *$tx).await?;
                }
                Write::Notification(n) => {
                    sqlx::query("INSERT INTO trk_notifications (id, recipient, read_us, doc) VALUES ($1, $2, $3, $4)")
                        .bind(n.id.to_string()).bind(n.recipient.clone())
                        .bind(n.read_at.map(us)).bind(doc(&n))
                        .execute(&mut *$tx).await?;
                }
                Write::Event { event, deliveries } => {
                    sqlx::query("INSERT INTO trk_events (id, project_id, created_us, doc) VALUES ($1, $2, $3, $4)")
                        .bind(event.id.to_string()).bind(event.project_id.to_string())
                        .bind(us(event.created_at)).bind(doc(&event))
                        .execute(&mut *$tx).await?;
                    for d in deliveries.iter() {
                        let args = delivery_args(d);
                        bind_all!(sqlx::query(DELIVERY_INSERT), &args).execute(&mut *$tx).await?;
                    }
                }
                Write::Idempotency { record, expired_before } => {
                    let n = sqlx::query(
                        "INSERT INTO trk_idempotency (subject, key, fingerprint, status, body, created_us) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (subject, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status, body = excluded.body, created_us = excluded.created_us \
                         WHERE trk_idempotency.created_us < $7")
                        .bind(record.subject.clone()).bind(record.key.clone()).bind(record.fingerprint.clone())
                        .bind(i64::from(record.status)).bind(record.body.clone()).bind(us(record.created_at))
                        .bind(us(expired_before))
                        .execute(&mut *$tx).await?.rows_affected();
                    if n == 0 {
                        return Err(conflict("idempotency key"));
                    }
                }
            }
        }
    }};
}

const DELIVERY_INSERT: &str = "INSERT INTO trk_deliveries (id, webhook_id, event_id, state, attempts, next_attempt_us, doc) VALUES ($1, $2, $3, $4, $5, $6, $7)";

fn delivery_args(d: &Delivery) -> Vec<Arg> {
    vec![
        Arg::S(d.id.to_string()),
        Arg::S(d.webhook_id.to_string()),
        Arg::S(d.event_id.to_string()),
        Arg::S(d.state.as_str().to_owned()),
        Arg::I(i64::from(d.attempts)),
        Arg::I(us(d.next_attempt_at)),
        Arg::S(doc(d)),
    ]
}

/// A delivery from its document and authoritative columns.
fn delivery_from(
    doc: &str,
    state: &str,
    attempts: i64,
    next_us: i64,
) -> Result<Delivery, StoreError> {
    let mut d: Delivery = parse(doc)?;
    d.state = DeliveryState::parse(state).unwrap_or(d.state);
    d.attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    d.next_attempt_at = from_us(next_us);
    Ok(d)
}

const DELIVERY_COLS: &str = "doc, state, attempts, next_attempt_us";

fn in_list(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqlStore {
    /// [`TrackingStore::commit`] in one transaction (the macros return
    /// from here on the first failure).
    async fn commit_writes(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            apply_writes!(tx, writes);
            tx.commit().await?;
            Ok(())
        })
    }
}

#[async_trait]
impl TrackingStore for SqlStore {
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_writes(writes)
            .await
            .map_err(concurrent_as_conflict)
    }

    async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        self.one(
            "SELECT doc FROM trk_projects WHERE id = $1",
            &[Arg::S(id.to_string())],
        )
        .await
    }

    async fn list_projects(
        &self,
        only: Option<&[ProjectId]>,
        after: Option<ProjectId>,
        limit: u32,
    ) -> Result<Vec<Project>, StoreError> {
        let mut args = vec![
            Arg::S(after.map(|a| a.to_string()).unwrap_or_default()),
            Arg::I(i64::from(limit)),
        ];
        let mut sql = "SELECT doc FROM trk_projects WHERE id > $1".to_owned();
        if let Some(only) = only {
            if only.is_empty() {
                return Ok(vec![]);
            }
            sql.push_str(&format!(" AND id IN ({})", in_list(3, only.len())));
            args.extend(only.iter().map(|p| Arg::S(p.to_string())));
        }
        sql.push_str(" ORDER BY id LIMIT $2");
        self.parsed(&sql, &args).await
    }

    async fn project_ids(&self) -> Result<Vec<ProjectId>, StoreError> {
        let ids = self
            .docs("SELECT id FROM trk_projects ORDER BY id", &[])
            .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    async fn get_milestone(&self, id: MilestoneId) -> Result<Option<Milestone>, StoreError> {
        self.one(
            "SELECT doc FROM trk_milestones WHERE id = $1",
            &[Arg::S(id.to_string())],
        )
        .await
    }

    async fn list_milestones(
        &self,
        project: ProjectId,
        after: Option<MilestoneId>,
        limit: u32,
    ) -> Result<Vec<Milestone>, StoreError> {
        self.parsed(
            "SELECT doc FROM trk_milestones WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[
                Arg::S(project.to_string()),
                Arg::S(after.map(|a| a.to_string()).unwrap_or_default()),
                Arg::I(i64::from(limit)),
            ],
        )
        .await
    }

    async fn milestone_tallies(&self, id: MilestoneId) -> Result<Vec<CategoryTally>, StoreError> {
        let sql = "SELECT category, COUNT(*), CAST(COALESCE(SUM(estimate), 0) AS BIGINT) FROM trk_tasks WHERE milestone_id = $1 GROUP BY category";
        with_pool!(&self.db, pool => {
            let rows = sqlx::query(sql).bind(id.to_string()).fetch_all(pool).await?;
            let mut out = Vec::new();
            for r in rows {
                let cat: String = r.try_get(0)?;
                let count: i64 = r.try_get(1)?;
                let est: i64 = r.try_get(2)?;
                if let Some(category) = Category::parse(&cat) {
                    out.push(CategoryTally {
                        category,
                        count: u64::try_from(count).unwrap_or(0),
                        estimate: u64::try_from(est).unwrap_or(0),
                    });
                }
            }
            Ok(out)
        })
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.one(
            "SELECT doc FROM trk_tasks WHERE id = $1",
            &[Arg::S(id.to_string())],
        )
        .await
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let mut sql = String::from("SELECT t.doc FROM trk_tasks t WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let next = |args: &mut Vec<Arg>, a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        if let Some(projects) = &q.projects {
            if projects.is_empty() {
                return Ok(vec![]);
            }
            let ph: Vec<String> = projects
                .iter()
                .map(|p| next(&mut args, Arg::S(p.to_string())))
                .collect();
            if ph.len() == 1 {
                sql.push_str(&format!(" AND t.project_id = {}", ph[0]));
            } else {
                sql.push_str(&format!(" AND t.project_id IN ({})", ph.join(", ")));
            }
        }
        let eq = |sql: &mut String, args: &mut Vec<Arg>, col: &str, a: Arg| {
            args.push(a);
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        };
        if let Some(m) = q.milestone_id {
            eq(&mut sql, &mut args, "t.milestone_id", Arg::S(m.to_string()));
        }
        if let Some(p) = q.parent_id {
            eq(&mut sql, &mut args, "t.parent_id", Arg::S(p.to_string()));
        }
        if let Some(s) = &q.status {
            eq(&mut sql, &mut args, "t.status", Arg::S(s.clone()));
        }
        if let Some(c) = q.category {
            eq(&mut sql, &mut args, "t.category", Arg::S(c.as_str().into()));
        }
        if let Some(p) = q.priority {
            eq(&mut sql, &mut args, "t.prio_key", Arg::I(-p.rank()));
        }
        for (kind, value) in [("a", &q.assignee), ("l", &q.label)] {
            if let Some(v) = value {
                args.push(Arg::S(v.clone()));
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM trk_task_tags g WHERE g.kind = '{kind}' AND g.value = ${} AND g.task_id = t.id)",
                    args.len()
                ));
            }
        }
        if let Some(d) = q.due_before {
            args.push(Arg::S(d.to_string()));
            sql.push_str(&format!(" AND t.due_date <= ${}", args.len()));
        }
        if let Some(d) = q.due_after {
            args.push(Arg::S(d.to_string()));
            sql.push_str(&format!(" AND t.due_date >= ${}", args.len()));
        }
        if let Some(text) = &q.title_contains {
            args.push(Arg::S(text.to_lowercase()));
            let f = if self.is_pg() { "strpos" } else { "instr" };
            sql.push_str(&format!(" AND {f}(t.title_lower, ${}) > 0", args.len()));
        }
        let key = match q.sort {
            TaskSort::Created => "t.created_us",
            TaskSort::Updated => "t.updated_us",
            TaskSort::Priority => "t.prio_key",
        };
        if let Some((k, id)) = q.after {
            args.push(Arg::I(k));
            let kn = args.len();
            args.push(Arg::S(id.to_string()));
            let idn = args.len();
            // A row-value comparison, which both backends turn into an index
            // range over (…, sort key, id); the equivalent `OR` form is only a
            // filter, so later pages would re-read every earlier row.
            sql.push_str(&format!(" AND ({key}, t.id) > (${kn}, ${idn})"));
        }
        args.push(Arg::I(i64::from(q.limit)));
        sql.push_str(&format!(" ORDER BY {key}, t.id LIMIT ${}", args.len()));
        self.parsed(&sql, &args).await
    }

    async fn watchers(&self, task: TaskId) -> Result<Vec<String>, StoreError> {
        self.docs(
            "SELECT subject FROM trk_watchers WHERE task_id = $1 ORDER BY subject",
            &[Arg::S(task.to_string())],
        )
        .await
    }

    async fn list_activity(
        &self,
        scope: ActivityScope,
        after: Option<ActivityId>,
        limit: u32,
    ) -> Result<Vec<Activity>, StoreError> {
        let (col, id) = match scope {
            ActivityScope::Task(t) => ("task_id", t.to_string()),
            ActivityScope::Project(p) => ("project_id", p.to_string()),
        };
        self.parsed(
            &format!(
                "SELECT doc FROM trk_activity WHERE {col} = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
            &[
                Arg::S(id),
                Arg::S(after.map(|a| a.to_string()).unwrap_or_default()),
                Arg::I(i64::from(limit)),
            ],
        )
        .await
    }

    async fn list_comments(
        &self,
        task: TaskId,
        after: Option<CommentId>,
        limit: u32,
    ) -> Result<Vec<Comment>, StoreError> {
        self.parsed(
            "SELECT doc FROM trk_comments WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[
                Arg::S(task.to_string()),
                Arg::S(after.map(|a| a.to_string()).unwrap_or_default()),
                Arg::I(i64::from(limit)),
            ],
        )
        .await
    }

    async fn list_notifications(
        &self,
        recipient: &str,
        unread_only: bool,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let unread = if unread_only {
            " AND read_us IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT doc, read_us FROM trk_notifications WHERE recipient = $1 AND id < $2{unread} ORDER BY id DESC LIMIT $3"
        );
        let before = before.map_or_else(|| "~".to_owned(), |b| b.to_string());
        with_pool!(&self.db, pool => {
            let rows = sqlx::query(&sql)
                .bind(recipient.to_owned())
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let d: String = r.try_get(0)?;
                let read: Option<i64> = r.try_get(1)?;
                let mut n: Notification = parse(&d)?;
                n.read_at = read.map(from_us);
                out.push(n);
            }
            Ok(out)
        })
    }

    async fn unread_count(&self, recipient: &str) -> Result<u64, StoreError> {
        with_pool!(&self.db, pool => {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trk_notifications WHERE recipient = $1 AND read_us IS NULL")
                .bind(recipient.to_owned())
                .fetch_one(pool)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    async fn mark_read(
        &self,
        recipient: &str,
        ids: Option<&[NotificationId]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut args = vec![Arg::I(us(at)), Arg::S(recipient.to_owned())];
        let mut sql =
            "UPDATE trk_notifications SET read_us = $1 WHERE recipient = $2 AND read_us IS NULL"
                .to_owned();
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(0);
            }
            sql.push_str(&format!(" AND id IN ({})", in_list(3, ids.len())));
            args.extend(ids.iter().map(|i| Arg::S(i.to_string())));
        }
        self.exec(&sql, &args).await
    }

    async fn get_idempotency(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        with_pool!(&self.db, pool => {
            let row = sqlx::query("SELECT fingerprint, status, body, created_us FROM trk_idempotency WHERE subject = $1 AND key = $2")
                .bind(subject.to_owned())
                .bind(key.to_owned())
                .fetch_optional(pool)
                .await?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let status: i64 = r.try_get(1)?;
                    Ok(Some(IdempotencyRecord {
                        subject: subject.to_owned(),
                        key: key.to_owned(),
                        fingerprint: r.try_get(0)?,
                        status: u16::try_from(status).unwrap_or(200),
                        body: r.try_get(2)?,
                        created_at: from_us(r.try_get(3)?),
                    }))
                }
            }
        })
    }

    async fn put_webhook(
        &self,
        webhook: &Webhook,
        previous: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        let d = doc(&WebhookDoc::from(webhook));
        let id = webhook.id.to_string();
        let Some(previous) = previous else {
            let n = with_pool!(&self.db, pool => {
                sqlx::query("INSERT INTO trk_webhooks (id, project_id, enabled, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING")
                    .bind(&id).bind(webhook.project_id.to_string()).bind(webhook.enabled).bind(d)
                    .execute(pool).await?.rows_affected()
            });
            return if n == 0 {
                Err(conflict("webhook exists"))
            } else {
                Ok(())
            };
        };
        // Compared as read, then replaced only if the stored text is still
        // what was compared: documents written by another version of this
        // code may serialise differently, so `previous` is not re-encoded.
        let stored: Option<String> = with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT doc FROM trk_webhooks WHERE id = $1")
                .bind(&id).fetch_optional(pool).await?
        });
        let Some(stored) = stored else {
            return Err(StoreError::NotFound("webhook".into()));
        };
        let current = Webhook::from(serde_json::from_str::<WebhookDoc>(&stored)?);
        if current != *previous {
            return Err(conflict("webhook changed"));
        }
        let n = with_pool!(&self.db, pool => {
            sqlx::query("UPDATE trk_webhooks SET enabled = $2, doc = $3 WHERE id = $1 AND doc = $4")
                .bind(&id).bind(webhook.enabled).bind(d).bind(&stored)
                .execute(pool).await?.rows_affected()
        });
        if n == 0 {
            return Err(conflict("webhook changed"));
        }
        Ok(())
    }

    async fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(self
            .one::<WebhookDoc>(
                "SELECT doc FROM trk_webhooks WHERE id = $1",
                &[Arg::S(id.to_string())],
            )
            .await?
            .map(Webhook::from))
    }

    async fn list_webhooks(&self, project: ProjectId) -> Result<Vec<Webhook>, StoreError> {
        Ok(self
            .parsed::<WebhookDoc>(
                "SELECT doc FROM trk_webhooks WHERE project_id = $1 ORDER BY id",
                &[Arg::S(project.to_string())],
            )
            .await?
            .into_iter()
            .map(Webhook::from)
            .collect())
    }

    async fn delete_webhook(&self, id: WebhookId) -> Result<bool, StoreError> {
        let id = id.to_string();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM trk_deliveries WHERE webhook_id = $1").bind(&id).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM trk_webhooks WHERE id = $1").bind(&id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    async fn events_since(
        &self,
        project: ProjectId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.parsed(
            "SELECT doc FROM trk_events WHERE project_id = $1 AND created_us >= $2 ORDER BY seq LIMIT $3",
            &[
                Arg::S(project.to_string()),
                Arg::I(us(since)),
                Arg::I(i64::from(limit)),
            ],
        )
        .await
    }

    async fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for d in deliveries {
                let args = delivery_args(d);
                bind_all!(sqlx::query(DELIVERY_INSERT), &args).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn get_delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let sql = format!("SELECT {DELIVERY_COLS} FROM trk_deliveries WHERE id = $1");
        with_pool!(&self.db, pool => {
            let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(pool).await?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(delivery_from(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                )?)),
            }
        })
    }

    async fn list_deliveries(
        &self,
        webhook: WebhookId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM trk_deliveries WHERE webhook_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let before = before.map_or_else(|| "~".to_owned(), |b| b.to_string());
        with_pool!(&self.db, pool => {
            let rows = sqlx::query(&sql)
                .bind(webhook.to_string())
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    delivery_from(
                        &r.try_get::<String, _>(0)?,
                        &r.try_get::<String, _>(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                    )
                })
                .collect()
        })
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let lock = if self.is_pg() {
            " FOR UPDATE OF d SKIP LOCKED"
        } else {
            ""
        };
        let update = format!(
            "UPDATE trk_deliveries SET lease_token = $1, lease_until_us = $2, attempts = attempts + 1 \
             WHERE seq IN (SELECT d.seq FROM trk_deliveries d JOIN trk_webhooks w ON w.id = d.webhook_id \
               WHERE d.state = 'pending' AND w.enabled = $5 \
                 AND d.seq = (SELECT MIN(d2.seq) FROM trk_deliveries d2 WHERE d2.webhook_id = d.webhook_id AND d2.state = 'pending') \
                 AND d.next_attempt_us <= $3 AND (d.lease_until_us IS NULL OR d.lease_until_us <= $3) \
               ORDER BY d.seq LIMIT $4{lock}) \
             RETURNING {DELIVERY_COLS}, event_id"
        );
        // Postgres claims and reads the events in one round trip (a data-
        // modifying CTE); SQLite has no such CTE and reads them next.
        let sql = if self.is_pg() {
            format!(
                "WITH c AS ({update}) SELECT c.doc, c.state, c.attempts, c.next_attempt_us, c.event_id, e.doc \
                 FROM c JOIN trk_events e ON e.id = c.event_id"
            )
        } else {
            update
        };
        let token = uuid::Uuid::new_v4().to_string();
        let claimed: Vec<(Delivery, String, Option<String>)> = with_pool!(&self.db, pool => {
            let rows = sqlx::query(&sql)
                .bind(token.clone())
                .bind(us(lease_until))
                .bind(us(now))
                .bind(i64::from(limit))
                .bind(true)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let d = delivery_from(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                )?;
                let event_doc = if r.len() > 5 { Some(r.try_get::<String, _>(5)?) } else { None };
                out.push((d, r.try_get::<String, _>(4)?, event_doc));
            }
            out
        });
        if claimed.is_empty() {
            return Ok(vec![]);
        }
        let mut events: std::collections::HashMap<String, OutboxEvent> =
            std::collections::HashMap::new();
        for (_, event_id, event_doc) in &claimed {
            if let Some(d) = event_doc {
                if !events.contains_key(event_id) {
                    events.insert(event_id.clone(), parse::<OutboxEvent>(d)?);
                }
            }
        }
        let missing: std::collections::BTreeSet<&String> = claimed
            .iter()
            .filter(|(_, e, d)| d.is_none() && !events.contains_key(e))
            .map(|(_, e, _)| e)
            .collect();
        if !missing.is_empty() {
            // One query for every claimed delivery's event.
            let sql = format!(
                "SELECT doc FROM trk_events WHERE id IN ({})",
                in_list(1, missing.len())
            );
            let args: Vec<Arg> = missing.into_iter().map(|i| Arg::S(i.clone())).collect();
            for e in self.parsed::<OutboxEvent>(&sql, &args).await? {
                events.insert(e.id.to_string(), e);
            }
        }
        let mut out = Vec::with_capacity(claimed.len());
        for (delivery, event_id, _) in claimed {
            if let Some(event) = events.get(&event_id) {
                out.push(ClaimedDelivery {
                    delivery,
                    event: event.clone(),
                    lease: token.clone(),
                });
            }
        }
        out.sort_by_key(|c| c.delivery.id);
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        id: DeliveryId,
        lease: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM trk_deliveries WHERE id = $1 AND lease_token = $2"
        );
        let current = with_pool!(&self.db, pool => {
            match sqlx::query(&sql).bind(id.to_string()).bind(lease.to_owned()).fetch_optional(pool).await? {
                None => None,
                Some(r) => Some(delivery_from(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                )?),
            }
        });
        let Some(mut d) = current else {
            return Ok(false);
        };
        d.state = outcome.state;
        d.next_attempt_at = outcome.next_attempt_at;
        d.log.push(outcome.attempt.clone());
        if d.log.len() > 20 {
            d.log.remove(0);
        }
        let n = self
            .exec(
                "UPDATE trk_deliveries SET state = $1, next_attempt_us = $2, lease_token = NULL, lease_until_us = NULL, doc = $3 WHERE id = $4 AND lease_token = $5",
                &[
                    Arg::S(d.state.as_str().into()),
                    Arg::I(us(d.next_attempt_at)),
                    Arg::S(doc(&d)),
                    Arg::S(id.to_string()),
                    Arg::S(lease.to_owned()),
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn finish_deliveries(
        &self,
        items: &[(ClaimedDelivery, AttemptOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        // The claim returned each delivery's stored document, and nobody else
        // writes a leased delivery, so the new document is built from it
        // without reading the row again; the lease check in the `WHERE`
        // refuses rows whose lease was lost meanwhile.
        let rows: Vec<(String, String, String, i64, String)> = items
            .iter()
            .map(|(c, o)| {
                let mut d = c.delivery.clone();
                d.state = o.state;
                d.next_attempt_at = o.next_attempt_at;
                d.log.push(o.attempt.clone());
                if d.log.len() > 20 {
                    d.log.remove(0);
                }
                (
                    d.id.to_string(),
                    c.lease.clone(),
                    d.state.as_str().to_owned(),
                    us(d.next_attempt_at),
                    doc(&d),
                )
            })
            .collect();
        let done: std::collections::HashSet<String> = match &self.db {
            Database::Postgres(pool) => {
                let mut ids = Vec::with_capacity(rows.len());
                let mut leases = Vec::with_capacity(rows.len());
                let mut states = Vec::with_capacity(rows.len());
                let mut nexts = Vec::with_capacity(rows.len());
                let mut docs = Vec::with_capacity(rows.len());
                for (id, lease, state, next, d) in &rows {
                    ids.push(id.as_str());
                    leases.push(lease.as_str());
                    states.push(state.as_str());
                    nexts.push(*next);
                    docs.push(d.as_str());
                }
                sqlx::query_scalar::<_, String>(
                    "UPDATE trk_deliveries AS d SET state = v.state, next_attempt_us = v.next_us, \
                     lease_token = NULL, lease_until_us = NULL, doc = v.doc \
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
                       AS v(id, lease, state, next_us, doc) \
                     WHERE d.id = v.id AND d.lease_token = v.lease RETURNING d.id",
                )
                .bind(ids)
                .bind(leases)
                .bind(states)
                .bind(nexts)
                .bind(docs)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut done = std::collections::HashSet::new();
                for (id, lease, state, next, d) in &rows {
                    let n = sqlx::query(
                        "UPDATE trk_deliveries SET state = $1, next_attempt_us = $2, lease_token = NULL, \
                         lease_until_us = NULL, doc = $3 WHERE id = $4 AND lease_token = $5",
                    )
                    .bind(state.as_str())
                    .bind(*next)
                    .bind(d.as_str())
                    .bind(id.as_str())
                    .bind(lease.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n > 0 {
                        done.insert(id.clone());
                    }
                }
                tx.commit().await?;
                done
            }
        };
        Ok(rows.iter().map(|r| done.contains(&r.0)).collect())
    }

    async fn oldest_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        with_pool!(&self.db, pool => {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(d.next_attempt_us) FROM trk_deliveries d JOIN trk_webhooks w ON w.id = d.webhook_id WHERE d.state = 'pending' AND w.enabled = $1",
            )
            .bind(true)
            .fetch_one(pool)
            .await?;
            Ok(v.map(from_us))
        })
    }
}

/// The stored form of a webhook (with its sealed secrets, which the API
/// form never serialises).
#[derive(serde::Serialize, serde::Deserialize)]
struct WebhookDoc {
    #[serde(flatten)]
    webhook: Webhook,
    secrets: Vec<SealedSecret>,
}

impl From<&Webhook> for WebhookDoc {
    fn from(w: &Webhook) -> Self {
        Self {
            webhook: w.clone(),
            secrets: w.secrets.clone(),
        }
    }
}

impl From<WebhookDoc> for Webhook {
    fn from(d: WebhookDoc) -> Self {
        Webhook {
            secrets: d.secrets,
            ..d.webhook
        }
    }
}
