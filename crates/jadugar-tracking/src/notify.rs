//! Hooks the host can plug in: where notifications go besides the in-app
//! list ([`Notifier`]) and who may be assigned ([`AssigneeDirectory`]).
//! The directory also decides who is notified: a watcher it no longer
//! lets read the project gets no notification of the project's tasks.
//!
//! ```
//! use jadugar_tracking::notify::{AssigneeDirectory, AssigneeStatus, MemoryDirectory};
//! use jadugar_tracking::model::ProjectId;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let dir = MemoryDirectory::new().with_user("ana", ["tracking:read"]);
//! let p = ProjectId::new();
//! assert_eq!(dir.check("ana", p).await, AssigneeStatus::Ok);
//! assert_eq!(dir.check("bob", p).await, AssigneeStatus::Unknown);
//! # });
//! ```

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use jadugar_core::principal::permission_matches;

use crate::model::{Notification, ProjectId};

/// Delivers notifications outside the app (email, chat). Called after the
/// change is committed; failures are the notifier's to log, never the
/// request's.
#[async_trait]
pub trait Notifier: Debug + Send + Sync + 'static {
    /// Sends one notification.
    async fn notify(&self, notification: &Notification);
}

/// A notifier that does nothing (the in-app list is always kept).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopNotifier;

#[async_trait]
impl Notifier for NoopNotifier {
    async fn notify(&self, _notification: &Notification) {}
}

/// A notifier that keeps what it was given, for tests.
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<Notification>>,
}

impl RecordingNotifier {
    /// What was sent so far.
    pub fn sent(&self) -> Vec<Notification> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, notification: &Notification) {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(notification.clone());
    }
}

/// Whether someone may be assigned to tasks of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssigneeStatus {
    /// Exists and may read the project.
    Ok,
    /// No such user.
    Unknown,
    /// Exists but may not read the project.
    NoAccess,
}

/// Who exists and may read a project. The host backs this with the auth
/// user store (a user exists and holds `tracking:read` or
/// `tracking:project:<id>:read`, directly or through roles).
#[async_trait]
pub trait AssigneeDirectory: Debug + Send + Sync + 'static {
    /// Whether `subject` may be assigned to tasks of `project`.
    async fn check(&self, subject: &str, project: ProjectId) -> AssigneeStatus;
}

/// Accepts everyone: for deployments without a user directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct PermissiveDirectory;

#[async_trait]
impl AssigneeDirectory for PermissiveDirectory {
    async fn check(&self, _subject: &str, _project: ProjectId) -> AssigneeStatus {
        AssigneeStatus::Ok
    }
}

/// Users and their permissions in memory, for tests and demos.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    users: Mutex<HashMap<String, Vec<String>>>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user with permissions (same syntax as [`jadugar_core::Principal`]).
    pub fn with_user<I, S>(self, subject: &str, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set_user(subject, permissions);
        self
    }

    /// Adds a user, or replaces the permissions of one already here (a
    /// grant or a revocation while the service runs).
    pub fn set_user<I, S>(&self, subject: &str, permissions: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                subject.to_owned(),
                permissions.into_iter().map(Into::into).collect(),
            );
    }
}

#[async_trait]
impl AssigneeDirectory for MemoryDirectory {
    async fn check(&self, subject: &str, project: ProjectId) -> AssigneeStatus {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(perms) = users.get(subject) else {
            return AssigneeStatus::Unknown;
        };
        let wanted = crate::access::wanted(Some(project), crate::access::Level::Read);
        if perms
            .iter()
            .any(|g| wanted.iter().any(|w| permission_matches(g, w)))
        {
            AssigneeStatus::Ok
        } else {
            AssigneeStatus::NoAccess
        }
    }
}
