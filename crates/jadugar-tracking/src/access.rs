//! The permission scheme of tracking.
//!
//! | permission | grants |
//! |---|---|
//! | `tracking:read` | read every project |
//! | `tracking:write` | read, create projects, change tasks, milestones, comments of every project |
//! | `tracking:admin` | write, plus workflows, webhooks, forced completion, on every project |
//! | `tracking:project:<id>:read` | read project `<id>` |
//! | `tracking:project:<id>:write` | write project `<id>` |
//! | `tracking:project:<id>:admin` | administer project `<id>` |
//!
//! Each level implies the ones below it. Core wildcards apply, so
//! `tracking:*` grants everything and `tracking:project:*:read` reads every
//! project. Creating a project needs the global `tracking:write`.
//!
//! ```
//! use jadugar_core::{Principal, PrincipalKind};
//! use jadugar_tracking::access::{allowed, Level};
//! use jadugar_tracking::model::ProjectId;
//!
//! let p = ProjectId::new();
//! let ana = Principal::new("ana", PrincipalKind::User)
//!     .with_permissions([format!("tracking:project:{p}:write")]);
//! assert!(allowed(&ana, Some(p), Level::Read));
//! assert!(allowed(&ana, Some(p), Level::Write));
//! assert!(!allowed(&ana, Some(p), Level::Admin));
//! assert!(!allowed(&ana, Some(ProjectId::new()), Level::Read));
//! ```

use jadugar_core::Principal;

use crate::error::Error;
use crate::model::ProjectId;

/// An access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Administer.
    Admin,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// The permissions any of which grants `level` on `project` (or globally).
pub fn wanted(project: Option<ProjectId>, level: Level) -> Vec<String> {
    let mut out = Vec::new();
    for l in [Level::Read, Level::Write, Level::Admin] {
        if l >= level {
            out.push(format!("tracking:{}", l.as_str()));
            if let Some(p) = project {
                out.push(format!("tracking:project:{p}:{}", l.as_str()));
            }
        }
    }
    out
}

/// Whether `principal` holds `level` on `project` (`None`: globally).
pub fn allowed(principal: &Principal, project: Option<ProjectId>, level: Level) -> bool {
    wanted(project, level).iter().any(|w| principal.can(w))
}

/// `Ok` if [`allowed`], else [`Error::Forbidden`] naming the project permission.
pub fn require(
    principal: &Principal,
    project: Option<ProjectId>,
    level: Level,
) -> Result<(), Error> {
    if allowed(principal, project, level) {
        Ok(())
    } else {
        Err(Error::Forbidden(match project {
            Some(p) => format!("tracking:project:{p}:{}", level.as_str()),
            None => format!("tracking:{}", level.as_str()),
        }))
    }
}
