//! The JSON HTTP API under `/v1/tracking`, and its OpenAPI description.
//!
//! Every route reads the caller from the [`Principal`] in the request
//! extensions (401 problem+json with `WWW-Authenticate` without one) and
//! enforces the [permission scheme](crate::access). Single resources carry
//! an `ETag` (`"<version>"`); `PATCH` honours `If-Match` (stale: 412).
//! Creates honour `Idempotency-Key`. Errors are `application/problem+json`;
//! bad input is a 422 naming each bad field.
//!
//! ```
//! use jadugar_core::{ManualClock, MasterKey, Sealer};
//! use jadugar_tracking::{Config, Tracking, store::MemoryStore};
//! use std::sync::Arc;
//!
//! let tracking = Tracking::new(
//!     Arc::new(MemoryStore::new()),
//!     ManualClock::default().shared(),
//!     Sealer::new(MasterKey::generate("k"), []),
//!     Config::default(),
//! );
//! let app: axum::Router = jadugar_tracking::http::router(tracking);
//! let doc = jadugar_tracking::http::openapi();
//! assert!(doc.paths.paths.contains_key("/v1/tracking/tasks/{task_id}"));
//! # drop(app);
//! ```

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jadugar_core::conditional::if_match_version;
use jadugar_core::{FieldError, Page, PageRequest, Principal, Problem};
use serde::Serialize;
use utoipa::OpenApi;

use crate::Tracking;
use crate::model::*;

pub use jadugar_core::extract::{JsonBody, QueryParams};

/// `?unread=` of the notification list.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only unread notifications.
    #[serde(default)]
    pub unread: Option<bool>,
    /// Page size, 1-500.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

fn page_of(limit: Option<u32>, cursor: Option<String>) -> Result<PageRequest, Problem> {
    if let Some(l) = limit
        && !(1..=500).contains(&l)
    {
        return Err(Problem::validation(vec![FieldError::new(
            "limit",
            "must be between 1 and 500",
        )]));
    }
    Ok(PageRequest { limit, cursor })
}

fn id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, Problem> {
    raw.parse()
        .map_err(|_| Problem::not_found(format!("no such {what}")))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "Idempotency-Key",
                "must be visible ASCII",
            )])
        }),
    }
}

fn with_etag<T: Serialize>(status: StatusCode, version: i64, body: &T) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn created<T: Serialize>(version: i64, body: &T, replayed: bool) -> Response {
    let mut r = with_etag(StatusCode::CREATED, version, body);
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

type Res = Result<Response, Problem>;

fn json<T: Serialize>(body: &T) -> Res {
    Ok(axum::Json(body).into_response())
}

/// The tracking API, with its state; merge it into the host's router.
pub fn router(tracking: Tracking) -> Router {
    let limit = tracking.config().max_body_bytes;
    Router::new()
        .route(
            "/v1/tracking/projects",
            get(list_projects).post(create_project),
        )
        .route(
            "/v1/tracking/projects/{project_id}",
            get(get_project).patch(update_project),
        )
        .route(
            "/v1/tracking/projects/{project_id}/activity",
            get(project_activity),
        )
        .route(
            "/v1/tracking/projects/{project_id}/milestones",
            get(list_milestones).post(create_milestone),
        )
        .route(
            "/v1/tracking/projects/{project_id}/tasks",
            get(list_project_tasks).post(create_task),
        )
        .route(
            "/v1/tracking/projects/{project_id}/webhooks",
            get(list_webhooks).post(create_webhook),
        )
        .route(
            "/v1/tracking/milestones/{milestone_id}",
            get(get_milestone).patch(update_milestone),
        )
        .route("/v1/tracking/tasks", get(list_tasks))
        .route("/v1/tracking/tasks/bulk", post(bulk_update))
        .route(
            "/v1/tracking/tasks/{task_id}",
            get(get_task).patch(update_task),
        )
        .route("/v1/tracking/tasks/{task_id}/activity", get(task_activity))
        .route(
            "/v1/tracking/tasks/{task_id}/comments",
            get(list_comments).post(add_comment),
        )
        .route(
            "/v1/tracking/tasks/{task_id}/watchers",
            get(list_watchers).put(watch).delete(unwatch),
        )
        .route("/v1/tracking/me/tasks", get(my_tasks))
        .route("/v1/tracking/me/notifications", get(list_notifications))
        .route(
            "/v1/tracking/me/notifications/unread-count",
            get(unread_count),
        )
        .route("/v1/tracking/me/notifications/read", post(mark_read))
        .route(
            "/v1/tracking/webhooks/{webhook_id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/v1/tracking/webhooks/{webhook_id}/enable",
            post(enable_webhook),
        )
        .route(
            "/v1/tracking/webhooks/{webhook_id}/rotate-secret",
            post(rotate_secret),
        )
        .route(
            "/v1/tracking/webhooks/{webhook_id}/deliveries",
            get(list_deliveries),
        )
        .route(
            "/v1/tracking/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
        .route("/v1/tracking/webhooks/{webhook_id}/replay", post(replay))
        .method_not_allowed_fallback(jadugar_core::problem::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(tracking)
}

/// The OpenAPI description of exactly the routes of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Jadugar tracking", description = "Projects, milestones, tasks, workflows, notifications and webhooks."),
    paths(
        list_projects, create_project, get_project, update_project, project_activity,
        list_milestones, create_milestone, get_milestone, update_milestone,
        list_project_tasks, create_task, list_tasks, bulk_update, get_task, update_task,
        task_activity, list_comments, add_comment, list_watchers, watch, unwatch,
        my_tasks, list_notifications, unread_count, mark_read,
        list_webhooks, create_webhook, get_webhook, update_webhook, delete_webhook,
        enable_webhook, rotate_secret, list_deliveries, redeliver, replay,
    ),
    components(schemas(Problem, FieldError, Page<Task>, Page<Project>, Page<MilestoneView>, Page<Activity>, Page<Comment>, Page<Notification>, Page<Delivery>, ReplayCount)),
    tags((name = "tracking", description = "Jadugar tracking"))
)]
struct ApiDoc;

/// How many deliveries a replay queued.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReplayCount {
    /// Deliveries queued.
    pub queued: usize,
}

/// How many notifications were marked read.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MarkedCount {
    /// Notifications changed.
    pub marked: u64,
}

#[utoipa::path(get, path = "/v1/tracking/projects", tag = "tracking", params(PageRequest),
    responses((status = 200, body = Page<Project>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_projects(
    State(t): State<Tracking>,
    p: Principal,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.list_projects(&p, &page).await?)
}

#[utoipa::path(post, path = "/v1/tracking/projects", tag = "tracking", request_body = NewProject,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the create idempotent")),
    responses((status = 201, body = Project), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_project(
    State(t): State<Tracking>,
    p: Principal,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewProject>,
) -> Res {
    let key = idempotency_key(&headers)?;
    let (project, replayed) = t.create_project(&p, input, key.as_deref()).await?;
    Ok(created(project.version, &project, replayed))
}

#[utoipa::path(get, path = "/v1/tracking/projects/{project_id}", tag = "tracking",
    params(("project_id" = ProjectId, Path)),
    responses((status = 200, body = Project), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_project(State(t): State<Tracking>, p: Principal, Path(pid): Path<String>) -> Res {
    let project = t.get_project(&p, id(&pid, "project")?).await?;
    Ok(with_etag(StatusCode::OK, project.version, &project))
}

#[utoipa::path(patch, path = "/v1/tracking/projects/{project_id}", tag = "tracking", request_body = ProjectPatch,
    params(("project_id" = ProjectId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Project), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_project(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<ProjectPatch>,
) -> Res {
    let project = t
        .update_project(&p, id(&pid, "project")?, patch, if_match_version(&headers)?)
        .await?;
    Ok(with_etag(StatusCode::OK, project.version, &project))
}

#[utoipa::path(get, path = "/v1/tracking/projects/{project_id}/activity", tag = "tracking",
    params(("project_id" = ProjectId, Path), PageRequest),
    responses((status = 200, body = Page<Activity>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn project_activity(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.project_activity(&p, id(&pid, "project")?, &page).await?)
}

#[utoipa::path(get, path = "/v1/tracking/projects/{project_id}/milestones", tag = "tracking",
    params(("project_id" = ProjectId, Path), PageRequest),
    responses((status = 200, body = Page<MilestoneView>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_milestones(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.list_milestones(&p, id(&pid, "project")?, &page).await?)
}

#[utoipa::path(post, path = "/v1/tracking/projects/{project_id}/milestones", tag = "tracking", request_body = NewMilestone,
    params(("project_id" = ProjectId, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = MilestoneView), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_milestone(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewMilestone>,
) -> Res {
    let key = idempotency_key(&headers)?;
    let (m, replayed) = t
        .create_milestone(&p, id(&pid, "project")?, input, key.as_deref())
        .await?;
    Ok(created(m.milestone.version, &m, replayed))
}

#[utoipa::path(get, path = "/v1/tracking/milestones/{milestone_id}", tag = "tracking",
    params(("milestone_id" = MilestoneId, Path)),
    responses((status = 200, body = MilestoneView), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_milestone(State(t): State<Tracking>, p: Principal, Path(mid): Path<String>) -> Res {
    let m = t.get_milestone(&p, id(&mid, "milestone")?).await?;
    Ok(with_etag(StatusCode::OK, m.milestone.version, &m))
}

#[utoipa::path(patch, path = "/v1/tracking/milestones/{milestone_id}", tag = "tracking", request_body = MilestonePatch,
    params(("milestone_id" = MilestoneId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = MilestoneView), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_milestone(
    State(t): State<Tracking>,
    p: Principal,
    Path(mid): Path<String>,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<MilestonePatch>,
) -> Res {
    let m = t
        .update_milestone(
            &p,
            id(&mid, "milestone")?,
            patch,
            if_match_version(&headers)?,
        )
        .await?;
    Ok(with_etag(StatusCode::OK, m.milestone.version, &m))
}

#[utoipa::path(get, path = "/v1/tracking/projects/{project_id}/tasks", tag = "tracking",
    params(("project_id" = ProjectId, Path), TaskFilter),
    responses((status = 200, body = Page<Task>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_project_tasks(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    QueryParams(mut filter): QueryParams<TaskFilter>,
) -> Res {
    filter.project_id = Some(id(&pid, "project")?);
    json(&t.list_tasks(&p, filter).await?)
}

#[utoipa::path(post, path = "/v1/tracking/projects/{project_id}/tasks", tag = "tracking", request_body = NewTask,
    params(("project_id" = ProjectId, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Task), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_task(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewTask>,
) -> Res {
    let key = idempotency_key(&headers)?;
    let (task, replayed) = t
        .create_task(&p, id(&pid, "project")?, input, key.as_deref())
        .await?;
    Ok(created(task.version, &task, replayed))
}

#[utoipa::path(get, path = "/v1/tracking/tasks", tag = "tracking", params(TaskFilter),
    responses((status = 200, body = Page<Task>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_tasks(
    State(t): State<Tracking>,
    p: Principal,
    QueryParams(filter): QueryParams<TaskFilter>,
) -> Res {
    json(&t.list_tasks(&p, filter).await?)
}

#[utoipa::path(post, path = "/v1/tracking/tasks/bulk", tag = "tracking", request_body = BulkUpdate,
    responses((status = 200, body = BulkResult), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn bulk_update(
    State(t): State<Tracking>,
    p: Principal,
    JsonBody(req): JsonBody<BulkUpdate>,
) -> Res {
    json(&t.bulk_update(&p, req).await?)
}

#[utoipa::path(get, path = "/v1/tracking/tasks/{task_id}", tag = "tracking",
    params(("task_id" = TaskId, Path)),
    responses((status = 200, body = Task), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_task(State(t): State<Tracking>, p: Principal, Path(tid): Path<String>) -> Res {
    let task = t.get_task(&p, id(&tid, "task")?).await?;
    Ok(with_etag(StatusCode::OK, task.version, &task))
}

#[utoipa::path(patch, path = "/v1/tracking/tasks/{task_id}", tag = "tracking", request_body = TaskPatch,
    params(("task_id" = TaskId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Task), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_task(
    State(t): State<Tracking>,
    p: Principal,
    Path(tid): Path<String>,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<TaskPatch>,
) -> Res {
    let task = t
        .update_task(&p, id(&tid, "task")?, patch, if_match_version(&headers)?)
        .await?;
    Ok(with_etag(StatusCode::OK, task.version, &task))
}

#[utoipa::path(get, path = "/v1/tracking/tasks/{task_id}/activity", tag = "tracking",
    params(("task_id" = TaskId, Path), PageRequest),
    responses((status = 200, body = Page<Activity>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn task_activity(
    State(t): State<Tracking>,
    p: Principal,
    Path(tid): Path<String>,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.task_activity(&p, id(&tid, "task")?, &page).await?)
}

#[utoipa::path(get, path = "/v1/tracking/tasks/{task_id}/comments", tag = "tracking",
    params(("task_id" = TaskId, Path), PageRequest),
    responses((status = 200, body = Page<Comment>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_comments(
    State(t): State<Tracking>,
    p: Principal,
    Path(tid): Path<String>,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.list_comments(&p, id(&tid, "task")?, &page).await?)
}

#[utoipa::path(post, path = "/v1/tracking/tasks/{task_id}/comments", tag = "tracking", request_body = NewComment,
    params(("task_id" = TaskId, Path)),
    responses((status = 201, body = Comment), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn add_comment(
    State(t): State<Tracking>,
    p: Principal,
    Path(tid): Path<String>,
    JsonBody(input): JsonBody<NewComment>,
) -> Res {
    let c = t.add_comment(&p, id(&tid, "task")?, input).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

#[utoipa::path(get, path = "/v1/tracking/tasks/{task_id}/watchers", tag = "tracking",
    params(("task_id" = TaskId, Path)),
    responses((status = 200, body = Vec<String>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_watchers(State(t): State<Tracking>, p: Principal, Path(tid): Path<String>) -> Res {
    json(&t.watchers(&p, id(&tid, "task")?).await?)
}

#[utoipa::path(put, path = "/v1/tracking/tasks/{task_id}/watchers", tag = "tracking",
    description = "The caller starts watching the task.",
    params(("task_id" = TaskId, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn watch(State(t): State<Tracking>, p: Principal, Path(tid): Path<String>) -> Res {
    t.watch(&p, id(&tid, "task")?, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/v1/tracking/tasks/{task_id}/watchers", tag = "tracking",
    description = "The caller stops watching the task.",
    params(("task_id" = TaskId, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn unwatch(State(t): State<Tracking>, p: Principal, Path(tid): Path<String>) -> Res {
    t.watch(&p, id(&tid, "task")?, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/tracking/me/tasks", tag = "tracking", params(TaskFilter),
    description = "Tasks assigned to the caller, across every project they may read.",
    responses((status = 200, body = Page<Task>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn my_tasks(
    State(t): State<Tracking>,
    p: Principal,
    QueryParams(filter): QueryParams<TaskFilter>,
) -> Res {
    json(&t.my_tasks(&p, filter).await?)
}

#[utoipa::path(get, path = "/v1/tracking/me/notifications", tag = "tracking", params(NotificationQuery),
    responses((status = 200, body = Page<Notification>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_notifications(
    State(t): State<Tracking>,
    p: Principal,
    QueryParams(q): QueryParams<NotificationQuery>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(
        &t.notifications_of(&p, q.unread.unwrap_or(false), &page)
            .await?,
    )
}

#[utoipa::path(get, path = "/v1/tracking/me/notifications/unread-count", tag = "tracking",
    responses((status = 200, body = UnreadCount), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn unread_count(State(t): State<Tracking>, p: Principal) -> Res {
    json(&t.unread_count(&p).await?)
}

#[utoipa::path(post, path = "/v1/tracking/me/notifications/read", tag = "tracking", request_body = MarkRead,
    responses((status = 200, body = MarkedCount), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn mark_read(
    State(t): State<Tracking>,
    p: Principal,
    JsonBody(req): JsonBody<MarkRead>,
) -> Res {
    json(&MarkedCount {
        marked: t.mark_read(&p, req).await?,
    })
}

#[utoipa::path(get, path = "/v1/tracking/projects/{project_id}/webhooks", tag = "tracking",
    params(("project_id" = ProjectId, Path)),
    responses((status = 200, body = Vec<Webhook>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_webhooks(State(t): State<Tracking>, p: Principal, Path(pid): Path<String>) -> Res {
    json(&t.list_webhooks(&p, id(&pid, "project")?).await?)
}

#[utoipa::path(post, path = "/v1/tracking/projects/{project_id}/webhooks", tag = "tracking", request_body = NewWebhook,
    description = "Subscribes a URL; the response carries the signing secret, shown only once.",
    params(("project_id" = ProjectId, Path)),
    responses((status = 201, body = WebhookWithSecret), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_webhook(
    State(t): State<Tracking>,
    p: Principal,
    Path(pid): Path<String>,
    JsonBody(input): JsonBody<NewWebhook>,
) -> Res {
    let w = t.create_webhook(&p, id(&pid, "project")?, input).await?;
    Ok((StatusCode::CREATED, axum::Json(w)).into_response())
}

#[utoipa::path(get, path = "/v1/tracking/webhooks/{webhook_id}", tag = "tracking",
    params(("webhook_id" = WebhookId, Path)),
    responses((status = 200, body = Webhook), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_webhook(State(t): State<Tracking>, p: Principal, Path(wid): Path<String>) -> Res {
    let webhook = t.get_webhook(&p, id(&wid, "webhook")?).await?;
    Ok(with_etag(StatusCode::OK, webhook.version, &webhook))
}

#[utoipa::path(patch, path = "/v1/tracking/webhooks/{webhook_id}", tag = "tracking", request_body = WebhookPatch,
    params(("webhook_id" = WebhookId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Webhook), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_webhook(
    State(t): State<Tracking>,
    p: Principal,
    Path(wid): Path<String>,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<WebhookPatch>,
) -> Res {
    let webhook = t
        .update_webhook(&p, id(&wid, "webhook")?, patch, if_match_version(&headers)?)
        .await?;
    Ok(with_etag(StatusCode::OK, webhook.version, &webhook))
}

#[utoipa::path(delete, path = "/v1/tracking/webhooks/{webhook_id}", tag = "tracking",
    params(("webhook_id" = WebhookId, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn delete_webhook(State(t): State<Tracking>, p: Principal, Path(wid): Path<String>) -> Res {
    t.delete_webhook(&p, id(&wid, "webhook")?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/tracking/webhooks/{webhook_id}/enable", tag = "tracking",
    params(("webhook_id" = WebhookId, Path)),
    responses((status = 200, body = Webhook), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn enable_webhook(State(t): State<Tracking>, p: Principal, Path(wid): Path<String>) -> Res {
    json(&t.enable_webhook(&p, id(&wid, "webhook")?).await?)
}

#[utoipa::path(post, path = "/v1/tracking/webhooks/{webhook_id}/rotate-secret", tag = "tracking",
    description = "New secret (shown once); the old one keeps signing during the overlap.",
    params(("webhook_id" = WebhookId, Path)),
    responses((status = 200, body = WebhookWithSecret), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn rotate_secret(State(t): State<Tracking>, p: Principal, Path(wid): Path<String>) -> Res {
    json(&t.rotate_secret(&p, id(&wid, "webhook")?).await?)
}

#[utoipa::path(get, path = "/v1/tracking/webhooks/{webhook_id}/deliveries", tag = "tracking",
    params(("webhook_id" = WebhookId, Path), PageRequest),
    responses((status = 200, body = Page<Delivery>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_deliveries(
    State(t): State<Tracking>,
    p: Principal,
    Path(wid): Path<String>,
    QueryParams(q): QueryParams<PageRequest>,
) -> Res {
    let page = page_of(q.limit, q.cursor)?;
    json(&t.list_deliveries(&p, id(&wid, "webhook")?, &page).await?)
}

#[utoipa::path(post, path = "/v1/tracking/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", tag = "tracking",
    params(("webhook_id" = WebhookId, Path), ("delivery_id" = DeliveryId, Path)),
    responses((status = 202, body = Delivery), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn redeliver(
    State(t): State<Tracking>,
    p: Principal,
    Path((wid, did)): Path<(String, String)>,
) -> Res {
    let d = t
        .redeliver(&p, id(&wid, "webhook")?, id(&did, "delivery")?)
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(d)).into_response())
}

#[utoipa::path(post, path = "/v1/tracking/webhooks/{webhook_id}/replay", tag = "tracking", request_body = ReplayRequest,
    params(("webhook_id" = WebhookId, Path)),
    responses((status = 202, body = ReplayCount), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn replay(
    State(t): State<Tracking>,
    p: Principal,
    Path(wid): Path<String>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> Res {
    let queued = t.replay(&p, id(&wid, "webhook")?, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(ReplayCount { queued })).into_response())
}
