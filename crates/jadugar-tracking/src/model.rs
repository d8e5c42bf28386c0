//! Plain data types of tracking and the validation of user input.
//!
//! Every `New*`/`*Patch` input has a `validate` that returns one
//! [`FieldError`] per bad field, so a request with three bad fields gets one
//! 422 naming all three.
//!
//! ```
//! use jadugar_tracking::model::{NewTask, Workflow};
//!
//! let input: NewTask = serde_json::from_value(serde_json::json!({
//!     "title": "  ",
//!     "labels": ["ok", ""],
//!     "estimate": 1000000,
//! })).unwrap();
//! let errors = input.validate(&Workflow::default());
//! let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
//! assert_eq!(fields, ["title", "estimate", "labels[1]"]);
//! ```

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use jadugar_core::FieldError;
use jadugar_core::extract::{double_option, not_null};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

jadugar_core::define_id!(
    /// The id of a project.
    ProjectId
);
jadugar_core::define_id!(
    /// The id of a milestone.
    MilestoneId
);
jadugar_core::define_id!(
    /// The id of a task.
    TaskId
);
jadugar_core::define_id!(
    /// The id of a comment.
    CommentId
);
jadugar_core::define_id!(
    /// The id of an activity log entry.
    ActivityId
);
jadugar_core::define_id!(
    /// The id of an in-app notification.
    NotificationId
);
jadugar_core::define_id!(
    /// The id of a webhook subscription.
    WebhookId
);
jadugar_core::define_id!(
    /// The id of an outbox event (the `webhook-id` header is `msg_` and its
    /// 32 hex digits).
    EventId
);
jadugar_core::define_id!(
    /// The id of one delivery of an event to one webhook.
    DeliveryId
);

/// Longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 20_000;
/// Most labels on a task.
pub const MAX_LABELS: usize = 20;
/// Longest label.
pub const MAX_LABEL: usize = 50;
/// Most assignees on a task.
pub const MAX_ASSIGNEES: usize = 10;
/// Most blocked-by links on a task.
pub const MAX_BLOCKERS: usize = 50;
/// Largest estimate (in whatever unit the team uses: points, hours).
pub const MAX_ESTIMATE: u32 = 10_000;
/// Longest comment.
pub const MAX_COMMENT: usize = 10_000;

/// The category a workflow status belongs to; what progress and blocking
/// rules are computed from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Not planned yet.
    Backlog,
    /// Planned, not started.
    Unstarted,
    /// In progress.
    Started,
    /// Done.
    Completed,
    /// Will not be done; excluded from progress.
    Canceled,
}

impl Category {
    /// The name used in storage and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::Unstarted => "unstarted",
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "backlog" => Self::Backlog,
            "unstarted" => Self::Unstarted,
            "started" => Self::Started,
            "completed" => Self::Completed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Completed or canceled: the task no longer blocks anything.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Completed | Self::Canceled)
    }
}

/// Task priority, ordered from none to urgent.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// No priority set.
    #[default]
    None,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Urgent.
    Urgent,
}

impl Priority {
    /// The rank stored in the database (0 = none .. 4 = urgent).
    pub fn rank(self) -> i64 {
        self as i64
    }

    /// Parses a snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "urgent" => Self::Urgent,
            _ => return None,
        })
    }
}

/// One status of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStatus {
    /// Stable key, `[a-z0-9_]{1,40}`, used in the API.
    pub key: String,
    /// Display name.
    pub name: String,
    /// The category.
    pub category: Category,
}

/// An allowed move between two statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The status key moved from.
    pub from: String,
    /// The status key moved to.
    pub to: String,
}

/// A project's workflow: its statuses and the transitions allowed between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The statuses, at least one, keys unique.
    pub statuses: Vec<WorkflowStatus>,
    /// Allowed transitions; a move not listed here is refused with 422.
    pub transitions: Vec<Transition>,
    /// The status of new tasks.
    pub initial: String,
}

impl Default for Workflow {
    /// `backlog`, `todo`, `in_progress`, `in_review`, `done`, `canceled`;
    /// forward moves, reopening, and canceling from anywhere.
    fn default() -> Self {
        let s = |key: &str, name: &str, category| WorkflowStatus {
            key: key.into(),
            name: name.into(),
            category,
        };
        let statuses = vec![
            s("backlog", "Backlog", Category::Backlog),
            s("todo", "To do", Category::Unstarted),
            s("in_progress", "In progress", Category::Started),
            s("in_review", "In review", Category::Started),
            s("done", "Done", Category::Completed),
            s("canceled", "Canceled", Category::Canceled),
        ];
        let pairs = [
            ("backlog", "todo"),
            ("backlog", "in_progress"),
            ("todo", "backlog"),
            ("todo", "in_progress"),
            ("in_progress", "todo"),
            ("in_progress", "in_review"),
            ("in_progress", "done"),
            ("in_review", "in_progress"),
            ("in_review", "done"),
            ("done", "todo"),
            ("done", "in_progress"),
            ("canceled", "backlog"),
            ("canceled", "todo"),
            ("backlog", "canceled"),
            ("todo", "canceled"),
            ("in_progress", "canceled"),
            ("in_review", "canceled"),
        ];
        Self {
            statuses,
            transitions: pairs
                .iter()
                .map(|(f, t)| Transition {
                    from: (*f).into(),
                    to: (*t).into(),
                })
                .collect(),
            initial: "todo".into(),
        }
    }
}

impl Workflow {
    /// The status with `key`.
    pub fn status(&self, key: &str) -> Option<&WorkflowStatus> {
        self.statuses.iter().find(|s| s.key == key)
    }

    /// Whether moving from `from` to `to` is allowed (staying put always is).
    ///
    /// A task in a status this workflow no longer has (left there by a
    /// workflow change) may move to any status: no transition can name its
    /// status, so it could otherwise never move again.
    pub fn allows(&self, from: &str, to: &str) -> bool {
        from == to
            || self.status(from).is_none()
            || self
                .transitions
                .iter()
                .any(|t| t.from == from && t.to == to)
    }

    /// Field errors of this workflow, under `prefix` (e.g. `workflow`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.statuses.is_empty() {
            errors.push(FieldError::new(
                format!("{prefix}.statuses"),
                "must list at least one status",
            ));
        }
        if self.statuses.len() > 50 {
            errors.push(FieldError::new(
                format!("{prefix}.statuses"),
                "must list at most 50 statuses",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, status) in self.statuses.iter().enumerate() {
            if !valid_key(&status.key) {
                errors.push(FieldError::new(
                    format!("{prefix}.statuses[{i}].key"),
                    "must be 1-40 characters of a-z, 0-9 and _",
                ));
            } else if !seen.insert(status.key.as_str()) {
                errors.push(FieldError::new(
                    format!("{prefix}.statuses[{i}].key"),
                    "is listed twice",
                ));
            }
            if let Some(msg) = text_error(&status.name, 1, 80) {
                errors.push(FieldError::new(format!("{prefix}.statuses[{i}].name"), msg));
            }
        }
        if self.transitions.len() > 2500 {
            errors.push(FieldError::new(
                format!("{prefix}.transitions"),
                "must list at most 2500 transitions",
            ));
        }
        for (i, t) in self.transitions.iter().enumerate() {
            if self.status(&t.from).is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}.transitions[{i}].from"),
                    "is not a status of this workflow",
                ));
            }
            if self.status(&t.to).is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}.transitions[{i}].to"),
                    "is not a status of this workflow",
                ));
            }
        }
        if self.status(&self.initial).is_none() {
            errors.push(FieldError::new(
                format!("{prefix}.initial"),
                "is not a status of this workflow",
            ));
        }
        errors
    }
}

fn valid_key(key: &str) -> bool {
    (1..=40).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why `text` is not an acceptable single-line text of `min..=max`
/// characters, if it is not.
fn text_error(text: &str, min: usize, max: usize) -> Option<String> {
    let len = text.chars().count();
    if min > 0 && text.trim().is_empty() {
        Some("must not be empty".into())
    } else if len > max {
        Some(format!("must be at most {max} characters"))
    } else if len < min {
        Some(format!("must be at least {min} characters"))
    } else if text.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

/// Why a multi-line text is not acceptable.
fn long_text_error(text: &str, max: usize) -> Option<String> {
    if text.chars().count() > max {
        Some(format!("must be at most {max} characters"))
    } else if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        Some("must not contain control characters other than newlines and tabs".into())
    } else {
        None
    }
}

/// Escapes `text` for inclusion in HTML (`&`, `<`, `>`, `"`, `'`).
///
/// Descriptions and comments are stored as the text the user wrote; anything
/// rendering them as HTML goes through this.
///
/// ```
/// assert_eq!(
///     jadugar_tracking::model::escape_html("<b>\"x\" & 'y'</b>"),
///     "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
/// );
/// ```
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn validate_labels(labels: &[String], field: &str, errors: &mut Vec<FieldError>) {
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            field,
            format!("must list at most {MAX_LABELS} labels"),
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if let Some(msg) = text_error(label, 1, MAX_LABEL) {
            errors.push(FieldError::new(format!("{field}[{i}]"), msg));
        }
    }
}

fn validate_assignees(assignees: &[String], field: &str, errors: &mut Vec<FieldError>) {
    if assignees.len() > MAX_ASSIGNEES {
        errors.push(FieldError::new(
            field,
            format!("must list at most {MAX_ASSIGNEES} assignees"),
        ));
    }
    for (i, a) in assignees.iter().enumerate() {
        if let Some(msg) = text_error(a, 1, 200) {
            errors.push(FieldError::new(format!("{field}[{i}]"), msg));
        }
    }
}

/// Sorted, deduplicated, trimmed copy of a list of names.
pub fn normalise_list(list: &[String]) -> Vec<String> {
    let set: BTreeSet<String> = list.iter().map(|s| s.trim().to_owned()).collect();
    set.into_iter().collect()
}

/// A project: the scope of workflows, permissions and webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    /// Id.
    pub id: ProjectId,
    /// Name.
    pub name: String,
    /// Description (plain text; escape it with [`escape_html`] to show as HTML).
    pub description: String,
    /// The workflow of the project's tasks.
    pub workflow: Workflow,
    /// Who created it (principal subject).
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Incremented by each change; the ETag.
    pub version: i64,
}

/// Input creating a project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Name, 1-200 characters.
    pub name: String,
    /// Description, up to 20,000 characters.
    #[serde(default)]
    pub description: String,
    /// The workflow; the [default](Workflow::default) if absent.
    #[serde(default)]
    pub workflow: Option<Workflow>,
}

impl NewProject {
    /// One error per bad field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(msg) = text_error(&self.name, 1, MAX_TITLE) {
            errors.push(FieldError::new("name", msg));
        }
        if let Some(msg) = long_text_error(&self.description, MAX_DESCRIPTION) {
            errors.push(FieldError::new("description", msg));
        }
        if let Some(w) = &self.workflow {
            errors.extend(w.validate("workflow"));
        }
        errors
    }
}

/// Changes to a project; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    /// New name.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// New workflow. Tasks in a status it no longer has keep it until moved
    /// (to any status of the new workflow); tasks in a status whose category
    /// it changes take the new category.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub workflow: Option<Workflow>,
}

impl ProjectPatch {
    /// One error per bad field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(name) = &self.name
            && let Some(msg) = text_error(name, 1, MAX_TITLE)
        {
            errors.push(FieldError::new("name", msg));
        }
        if let Some(d) = &self.description
            && let Some(msg) = long_text_error(d, MAX_DESCRIPTION)
        {
            errors.push(FieldError::new("description", msg));
        }
        if let Some(w) = &self.workflow {
            errors.extend(w.validate("workflow"));
        }
        errors
    }
}

/// Whether a milestone is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneState {
    /// Open.
    #[default]
    Open,
    /// Closed.
    Closed,
}

/// A milestone of a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Milestone {
    /// Id.
    pub id: MilestoneId,
    /// The project.
    pub project_id: ProjectId,
    /// Title.
    pub title: String,
    /// Description (plain text).
    pub description: String,
    /// First day.
    pub start_date: Option<NaiveDate>,
    /// Last day.
    pub due_date: Option<NaiveDate>,
    /// Open or closed.
    pub state: MilestoneState,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Incremented by each change; the ETag.
    pub version: i64,
}

/// Progress of a milestone, computed from its tasks; canceled tasks are
/// excluded from every figure but `canceled`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Tasks counted (not canceled).
    pub total: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Canceled tasks (not counted in `total`).
    pub canceled: u64,
    /// `completed / total` in percent (0 when empty).
    pub percent_by_count: f64,
    /// Sum of the estimates of counted tasks.
    pub estimate_total: u64,
    /// Sum of the estimates of completed tasks.
    pub estimate_completed: u64,
    /// `estimate_completed / estimate_total` in percent (0 when no estimates).
    pub percent_by_estimate: f64,
}

/// Per-category task counts and estimate sums of a milestone, as stores
/// return them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryTally {
    /// The category.
    pub category: Category,
    /// Tasks in it.
    pub count: u64,
    /// Sum of their estimates.
    pub estimate: u64,
}

impl Progress {
    /// Computes progress from per-category tallies.
    pub fn from_tallies(tallies: &[CategoryTally]) -> Self {
        let mut p = Progress::default();
        for t in tallies {
            match t.category {
                Category::Canceled => p.canceled += t.count,
                c => {
                    p.total += t.count;
                    p.estimate_total += t.estimate;
                    if c == Category::Completed {
                        p.completed += t.count;
                        p.estimate_completed += t.estimate;
                    }
                }
            }
        }
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                (a as f64 * 10_000.0 / b as f64).round() / 100.0
            }
        };
        p.percent_by_count = pct(p.completed, p.total);
        p.percent_by_estimate = pct(p.estimate_completed, p.estimate_total);
        p
    }
}

/// A milestone with its computed progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MilestoneView {
    /// The milestone.
    #[serde(flatten)]
    pub milestone: Milestone,
    /// Progress from its tasks.
    pub progress: Progress,
    /// Open, past its due date, with unfinished tasks.
    pub overdue: bool,
}

/// Input creating a milestone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMilestone {
    /// Title, 1-200 characters.
    pub title: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// First day (`YYYY-MM-DD`).
    #[serde(default)]
    pub start_date: Option<NaiveDate>,
    /// Last day (`YYYY-MM-DD`), not before `start_date`.
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
}

impl NewMilestone {
    /// One error per bad field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(msg) = text_error(&self.title, 1, MAX_TITLE) {
            errors.push(FieldError::new("title", msg));
        }
        if let Some(msg) = long_text_error(&self.description, MAX_DESCRIPTION) {
            errors.push(FieldError::new("description", msg));
        }
        if let (Some(s), Some(d)) = (self.start_date, self.due_date)
            && d < s
        {
            errors.push(FieldError::new("due_date", "must not be before start_date"));
        }
        errors
    }
}

/// Changes to a milestone; absent fields stay, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MilestonePatch {
    /// New title.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub title: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// New start date, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<NaiveDate>)]
    pub start_date: Option<Option<NaiveDate>>,
    /// New due date, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<NaiveDate>)]
    pub due_date: Option<Option<NaiveDate>>,
    /// Open or close.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub state: Option<MilestoneState>,
}

impl MilestonePatch {
    /// One error per bad field, given the milestone it applies to.
    pub fn validate(&self, current: &Milestone) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(t) = &self.title
            && let Some(msg) = text_error(t, 1, MAX_TITLE)
        {
            errors.push(FieldError::new("title", msg));
        }
        if let Some(d) = &self.description
            && let Some(msg) = long_text_error(d, MAX_DESCRIPTION)
        {
            errors.push(FieldError::new("description", msg));
        }
        let start = self.start_date.unwrap_or(current.start_date);
        let due = self.due_date.unwrap_or(current.due_date);
        if let (Some(s), Some(d)) = (start, due)
            && d < s
        {
            errors.push(FieldError::new("due_date", "must not be before start_date"));
        }
        errors
    }
}

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Id.
    pub id: TaskId,
    /// The project.
    pub project_id: ProjectId,
    /// The milestone, if any (same project).
    pub milestone_id: Option<MilestoneId>,
    /// The parent task, for sub-tasks (same project).
    pub parent_id: Option<TaskId>,
    /// Title.
    pub title: String,
    /// Description (plain text; escape with [`escape_html`] to show as HTML).
    pub description: String,
    /// Priority.
    pub priority: Priority,
    /// Estimate (points or hours), if any.
    pub estimate: Option<u32>,
    /// Due date.
    pub due_date: Option<NaiveDate>,
    /// Labels, sorted and unique.
    pub labels: Vec<String>,
    /// Tasks that must be closed before this one can complete.
    pub blocked_by: Vec<TaskId>,
    /// The workflow status key.
    pub status: String,
    /// The category of `status`.
    pub category: Category,
    /// Assignees (principal subjects), sorted and unique.
    pub assignees: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// Who changed it last.
    pub updated_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Incremented by each change; the ETag.
    pub version: i64,
}

impl Task {
    /// The description escaped for HTML.
    pub fn description_html(&self) -> String {
        escape_html(&self.description)
    }
}

/// Input creating a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Title, 1-200 characters.
    pub title: String,
    /// Description, up to 20,000 characters.
    #[serde(default)]
    pub description: String,
    /// Priority (default none).
    #[serde(default)]
    pub priority: Priority,
    /// Estimate, 0-10,000.
    #[serde(default)]
    pub estimate: Option<u32>,
    /// Due date.
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
    /// Labels, up to 20 of 1-50 characters.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Parent task (same project).
    #[serde(default)]
    pub parent_id: Option<TaskId>,
    /// Blocking tasks (same project, no cycles).
    #[serde(default)]
    pub blocked_by: Vec<TaskId>,
    /// Milestone (same project).
    #[serde(default)]
    pub milestone_id: Option<MilestoneId>,
    /// Status; the workflow's initial status if absent.
    #[serde(default)]
    pub status: Option<String>,
    /// Assignees, up to 10; each must exist and be able to read the project.
    #[serde(default)]
    pub assignees: Vec<String>,
}

impl NewTask {
    /// One error per bad field (existence checks are the service's).
    pub fn validate(&self, workflow: &Workflow) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(msg) = text_error(&self.title, 1, MAX_TITLE) {
            errors.push(FieldError::new("title", msg));
        }
        if let Some(msg) = long_text_error(&self.description, MAX_DESCRIPTION) {
            errors.push(FieldError::new("description", msg));
        }
        if self.estimate.is_some_and(|e| e > MAX_ESTIMATE) {
            errors.push(FieldError::new(
                "estimate",
                format!("must be at most {MAX_ESTIMATE}"),
            ));
        }
        validate_labels(&self.labels, "labels", &mut errors);
        if self.blocked_by.len() > MAX_BLOCKERS {
            errors.push(FieldError::new(
                "blocked_by",
                format!("must list at most {MAX_BLOCKERS} tasks"),
            ));
        }
        if let Some(status) = &self.status
            && workflow.status(status).is_none()
        {
            errors.push(FieldError::new(
                "status",
                format!("{status:?} is not a status of this project's workflow"),
            ));
        }
        validate_assignees(&self.assignees, "assignees", &mut errors);
        errors
    }
}

/// Changes to a task; absent fields stay, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    /// New title.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub title: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// New priority.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub priority: Option<Priority>,
    /// New estimate, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub estimate: Option<Option<u32>>,
    /// New due date, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<NaiveDate>)]
    pub due_date: Option<Option<NaiveDate>>,
    /// New labels (replacing the old ones).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub labels: Option<Vec<String>>,
    /// New parent, or `null` to make it top-level.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<TaskId>)]
    pub parent_id: Option<Option<TaskId>>,
    /// New blockers (replacing the old ones).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub blocked_by: Option<Vec<TaskId>>,
    /// New milestone, or `null` to remove it from its milestone.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<MilestoneId>)]
    pub milestone_id: Option<Option<MilestoneId>>,
    /// New status; must be an allowed transition.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub status: Option<String>,
    /// New assignees (replacing the old ones).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub assignees: Option<Vec<String>>,
    /// Complete even with open blockers (needs `tracking:admin` on the project).
    #[serde(default)]
    pub force: bool,
}

impl TaskPatch {
    /// One error per bad field that can be judged without the store.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(t) = &self.title
            && let Some(msg) = text_error(t, 1, MAX_TITLE)
        {
            errors.push(FieldError::new("title", msg));
        }
        if let Some(d) = &self.description
            && let Some(msg) = long_text_error(d, MAX_DESCRIPTION)
        {
            errors.push(FieldError::new("description", msg));
        }
        if let Some(Some(e)) = self.estimate
            && e > MAX_ESTIMATE
        {
            errors.push(FieldError::new(
                "estimate",
                format!("must be at most {MAX_ESTIMATE}"),
            ));
        }
        if let Some(labels) = &self.labels {
            validate_labels(labels, "labels", &mut errors);
        }
        if let Some(b) = &self.blocked_by
            && b.len() > MAX_BLOCKERS
        {
            errors.push(FieldError::new(
                "blocked_by",
                format!("must list at most {MAX_BLOCKERS} tasks"),
            ));
        }
        if let Some(a) = &self.assignees {
            validate_assignees(a, "assignees", &mut errors);
        }
        errors
    }
}

/// How task lists are ordered; every order breaks ties by id, so it is
/// stable under concurrent writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskSort {
    /// Oldest first.
    #[default]
    Created,
    /// Least recently updated first.
    Updated,
    /// Most urgent first.
    Priority,
}

/// Filters of a task list; all given filters must match.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskFilter {
    /// Only this project (absent: every project the caller may read).
    #[serde(default)]
    pub project_id: Option<ProjectId>,
    /// Only this milestone.
    #[serde(default)]
    pub milestone_id: Option<MilestoneId>,
    /// Only this status key.
    #[serde(default)]
    pub status: Option<String>,
    /// Only this category.
    #[serde(default)]
    pub category: Option<Category>,
    /// Only tasks assigned to this subject.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Only tasks with this label.
    #[serde(default)]
    pub label: Option<String>,
    /// Only this priority.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Only tasks due on or before this day.
    #[serde(default)]
    pub due_before: Option<NaiveDate>,
    /// Only tasks due on or after this day.
    #[serde(default)]
    pub due_after: Option<NaiveDate>,
    /// Only tasks whose title contains this text (case-insensitive).
    #[serde(default)]
    pub q: Option<String>,
    /// Only sub-tasks of this task.
    #[serde(default)]
    pub parent_id: Option<TaskId>,
    /// Order (default `created`).
    #[serde(default)]
    pub sort: Option<TaskSort>,
    /// Page size, 1-500.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

impl TaskFilter {
    /// One error per bad field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(q) = &self.q
            && let Some(msg) = text_error(q, 1, 200)
        {
            errors.push(FieldError::new("q", msg));
        }
        for (field, value) in [
            ("status", &self.status),
            ("assignee", &self.assignee),
            ("label", &self.label),
        ] {
            if let Some(v) = value
                && let Some(msg) = text_error(v, 1, 200)
            {
                errors.push(FieldError::new(field, msg));
            }
        }
        if let Some(l) = self.limit
            && !(1..=500).contains(&l)
        {
            errors.push(FieldError::new("limit", "must be between 1 and 500"));
        }
        if let (Some(a), Some(b)) = (self.due_after, self.due_before)
            && b < a
        {
            errors.push(FieldError::new(
                "due_before",
                "must not be before due_after",
            ));
        }
        errors
    }
}

/// A field's change: from -> to, as JSON values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldChange {
    /// The field name.
    pub field: String,
    /// The value before (`null` when unset).
    pub from: serde_json::Value,
    /// The value after.
    pub to: serde_json::Value,
}

/// One entry of the activity log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    /// Id (time-ordered).
    pub id: ActivityId,
    /// The project.
    pub project_id: ProjectId,
    /// The task, for task activity.
    pub task_id: Option<TaskId>,
    /// Who did it.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What: `task.created`, `task.updated`, `task.commented`, `milestone.created`, ...
    pub action: String,
    /// Each changed field, from -> to.
    pub changes: Vec<FieldChange>,
}

/// A comment on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Comment {
    /// Id.
    pub id: CommentId,
    /// The task.
    pub task_id: TaskId,
    /// The project.
    pub project_id: ProjectId,
    /// Who wrote it.
    pub author: String,
    /// The text (plain; escape with [`escape_html`] to show as HTML).
    pub body: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Input of a comment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    /// The text, 1-10,000 characters.
    pub body: String,
}

impl NewComment {
    /// One error per bad field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.body.trim().is_empty() {
            errors.push(FieldError::new("body", "must not be empty"));
        } else if let Some(msg) = long_text_error(&self.body, MAX_COMMENT) {
            errors.push(FieldError::new("body", msg));
        }
        errors
    }
}

/// An in-app notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Id.
    pub id: NotificationId,
    /// Who it is for.
    pub recipient: String,
    /// The project.
    pub project_id: ProjectId,
    /// The task.
    pub task_id: Option<TaskId>,
    /// What happened (`task.updated`, ...).
    pub kind: String,
    /// A one-line plain-text summary.
    pub summary: String,
    /// Who caused it.
    pub actor: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it was marked read.
    pub read_at: Option<DateTime<Utc>>,
}

/// Event types a webhook can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "task.created",
    "task.updated",
    "task.commented",
    "milestone.created",
    "milestone.updated",
    "project.updated",
];

/// A webhook subscription (the secret is never shown again after creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Id.
    pub id: WebhookId,
    /// The project.
    pub project_id: ProjectId,
    /// Where events are POSTed.
    pub url: String,
    /// Subscribed event types (`*` for all).
    pub event_types: Vec<String>,
    /// Free text.
    pub description: String,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Why it was disabled, if it was.
    pub disabled_reason: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows with every change; the `ETag`, and what
    /// `If-Match` names.
    #[serde(default)]
    pub version: i64,
    /// The signing secrets, sealed; the first is current, later ones are
    /// kept until they expire during rotation.
    #[serde(skip_serializing, default)]
    #[schema(ignore)]
    pub secrets: Vec<SealedSecret>,
}

impl Webhook {
    /// Whether this subscription wants `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == "*" || t == event_type)
    }
}

/// A signing secret sealed at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The `whsec_...` secret, sealed by the [`Sealer`](jadugar_core::Sealer).
    pub sealed: String,
    /// When it stops being used (for secrets being rotated out).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Input creating a webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http(s)://` URL, allowed by the outbound address policy.
    pub url: String,
    /// Event types, at least one (`*` for all).
    pub event_types: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// Changes to a webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// New URL.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub url: Option<String>,
    /// New event types.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub event_types: Option<Vec<String>>,
    /// New description.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub description: Option<String>,
}

/// Field errors of a webhook's URL (syntax only; the address policy is the
/// service's) and event types.
pub fn validate_webhook_fields(
    url: Option<&str>,
    event_types: Option<&[String]>,
    description: Option<&str>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(u) = url {
        match url::Url::parse(u) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() =>
            {
                if u.len() > 2000 {
                    errors.push(FieldError::new("url", "must be at most 2000 characters"));
                } else if !parsed.username().is_empty() || parsed.password().is_some() {
                    errors.push(FieldError::new("url", "must not contain credentials"));
                }
            }
            _ => errors.push(FieldError::new(
                "url",
                "must be an absolute http or https URL",
            )),
        }
    }
    if let Some(types) = event_types {
        if types.is_empty() {
            errors.push(FieldError::new(
                "event_types",
                "must list at least one event type",
            ));
        }
        for (i, t) in types.iter().enumerate() {
            if t != "*" && !EVENT_TYPES.contains(&t.as_str()) {
                errors.push(FieldError::new(
                    format!("event_types[{i}]"),
                    format!("must be * or one of {}", EVENT_TYPES.join(", ")),
                ));
            }
        }
    }
    if let Some(d) = description
        && let Some(msg) = long_text_error(d, 1000)
    {
        errors.push(FieldError::new("description", msg));
    }
    errors
}

/// A webhook as returned once, at creation or secret rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookWithSecret {
    /// The subscription.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The new signing secret, `whsec_<base64>`; shown only now.
    pub secret: String,
}

/// An event in the transactional outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutboxEvent {
    /// Id; sent as `webhook-id` in the form `msg_<32 hex digits>`.
    pub id: EventId,
    /// The project.
    pub project_id: ProjectId,
    /// Type, e.g. `task.updated`.
    pub event_type: String,
    /// The JSON body sent (`{"type","timestamp","data"}`).
    pub payload: String,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting to be sent or retried.
    Pending,
    /// A 2xx was received.
    Succeeded,
    /// Retries were exhausted.
    Failed,
}

impl DeliveryState {
    /// Storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One attempt of a delivery, for the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The HTTP status received, if any.
    pub status: Option<u16>,
    /// How long the receiver took, in milliseconds.
    pub latency_ms: u64,
    /// The first bytes of the response body (or the error).
    pub excerpt: String,
}

/// One event to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Id.
    pub id: DeliveryId,
    /// The subscription.
    pub webhook_id: WebhookId,
    /// The event.
    pub event_id: EventId,
    /// The event type.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// The last attempts, most recent last (at most 20 kept).
    pub log: Vec<Attempt>,
}

/// Body of a replay request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Re-send every event of the project since this time (at most 10,000).
    pub since: DateTime<Utc>,
}

/// Changes a bulk update applies to every listed task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChanges {
    /// New status.
    #[serde(default)]
    pub status: Option<String>,
    /// New assignees (replacing).
    #[serde(default)]
    pub assignees: Option<Vec<String>>,
    /// New milestone, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<MilestoneId>)]
    pub milestone_id: Option<Option<MilestoneId>>,
    /// New labels (replacing).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Complete despite open blockers (needs `tracking:admin`).
    #[serde(default)]
    pub force: bool,
}

impl From<BulkChanges> for TaskPatch {
    fn from(b: BulkChanges) -> Self {
        TaskPatch {
            status: b.status,
            assignees: b.assignees,
            milestone_id: b.milestone_id,
            labels: b.labels,
            force: b.force,
            ..TaskPatch::default()
        }
    }
}

/// A bulk update request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUpdate {
    /// The tasks, 1 to the configured maximum (default 100).
    pub task_ids: Vec<TaskId>,
    /// What to change.
    pub changes: BulkChanges,
    /// Validate and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The outcome for one task of a bulk update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkItemResult {
    /// The task.
    pub task_id: TaskId,
    /// Whether it was (or, in a dry run, would be) updated.
    pub ok: bool,
    /// HTTP-like status of this item (200, 403, 404, 409, 422).
    pub status: u16,
    /// The task after the change (or as it would be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// The problem, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<jadugar_core::Problem>,
}

/// The result of a bulk update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// How many items succeeded.
    pub succeeded: usize,
    /// How many failed.
    pub failed: usize,
    /// One result per listed task, in order.
    pub items: Vec<BulkItemResult>,
}

/// The unread count of the caller's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnreadCount {
    /// Unread notifications.
    pub unread: u64,
}

/// Body of a mark-read request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The notifications to mark read; absent: all of the caller's.
    #[serde(default)]
    pub ids: Option<Vec<NotificationId>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_workflow_is_valid() {
        assert!(Workflow::default().validate("workflow").is_empty());
        let w = Workflow::default();
        assert!(w.allows("todo", "in_progress"));
        assert!(!w.allows("backlog", "done"));
    }

    #[test]
    fn a_status_the_workflow_dropped_may_move_to_any_status() {
        let w = Workflow::default();
        assert!(w.allows("triage", "done"));
        assert!(!w.allows("backlog", "done"));
    }

    #[test]
    fn bad_workflow_lists_every_field() {
        let w = Workflow {
            statuses: vec![WorkflowStatus {
                key: "Bad Key".into(),
                name: "".into(),
                category: Category::Started,
            }],
            transitions: vec![Transition {
                from: "x".into(),
                to: "y".into(),
            }],
            initial: "z".into(),
        };
        let fields: Vec<_> = w.validate("w").into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "w.statuses[0].key",
                "w.statuses[0].name",
                "w.transitions[0].from",
                "w.transitions[0].to",
                "w.initial"
            ]
        );
    }

    #[test]
    fn progress_excludes_canceled() {
        let p = Progress::from_tallies(&[
            CategoryTally {
                category: Category::Completed,
                count: 1,
                estimate: 3,
            },
            CategoryTally {
                category: Category::Started,
                count: 1,
                estimate: 1,
            },
            CategoryTally {
                category: Category::Canceled,
                count: 5,
                estimate: 100,
            },
        ]);
        assert_eq!(p.total, 2);
        assert_eq!(p.canceled, 5);
        assert_eq!(p.percent_by_count, 50.0);
        assert_eq!(p.percent_by_estimate, 75.0);
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let p: TaskPatch = serde_json::from_str(r#"{"estimate": null}"#).unwrap();
        assert_eq!(p.estimate, Some(None));
        assert_eq!(p.due_date, None);
    }

    #[test]
    fn webhook_fields() {
        let errs = validate_webhook_fields(
            Some("ftp://x"),
            Some(&["task.created".into(), "nope".into()]),
            None,
        );
        let fields: Vec<_> = errs.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["url", "event_types[1]"]);
    }
}
