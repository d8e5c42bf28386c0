//! Which components the host mounts, and how each one is built.
//!
//! Each component crate is wired here, and only here: built from the
//! [`Backends`](crate::Backends) and its section of the
//! [`Config`](crate::Config), its router and OpenAPI mounted, its
//! background work registered.

use jadugar_core::storage::Database;

use crate::app::AppBuilder;
use crate::error::HostError;

/// Mounts every available component on `builder`.
pub async fn mount_all(builder: AppBuilder) -> Result<AppBuilder, HostError> {
    Ok(builder)
}

/// Runs every component's migrations on `database`.
pub async fn migrate_all(database: &Database) -> Result<(), HostError> {
    let _ = database;
    Ok(())
}
