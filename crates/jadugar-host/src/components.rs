//! Which components the host mounts, and how each one is built.
//!
//! Each component crate is wired here, and only here, under the same
//! contract: built from the [`Backends`](crate::Backends) and its section of
//! the [`Config`](crate::Config) (running its migrations), its router and
//! OpenAPI description mounted, its background work registered. Then the
//! adapters between components, which never know each other:
//!
//! - auth's [`AuthLayer`](jadugar_auth::AuthLayer) wraps every component
//!   route and the gateway, so each sees the caller's `Principal`;
//! - the registry is the gateway's `Discovery`;
//! - auth's users are tracking's assignee directory ([`AuthDirectory`]);
//! - the gateway is the fallback for everything outside `/v1` and the host's
//!   own paths, and serves `/openapi.json` and `/docs` with its upstreams'
//!   documents merged in.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use jadugar_core::storage::{Database, StorageError};
use jadugar_core::{Principal, PrincipalKind};
use jadugar_tracking::model::ProjectId;
use jadugar_tracking::notify::{AssigneeDirectory, AssigneeStatus};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::app::AppBuilder;
use crate::error::HostError;

/// The components the host knows, in the order they are mounted.
pub const COMPONENTS: &[&str] = &["auth", "registry", "tracking", "gateway"];

fn failed(component: &'static str) -> impl FnOnce(String) -> HostError {
    move |message| HostError::Component { component, message }
}

/// Builds and mounts every component on `builder`.
pub async fn mount_all(builder: AppBuilder) -> Result<AppBuilder, HostError> {
    let config = builder.config().clone();
    let backends = builder.backends().clone();
    let database = &backends.database;
    let redis = backends.redis.as_ref();

    // auth
    let auth = jadugar_auth::AuthService::from_backends(
        &config.auth,
        database,
        redis,
        backends.clock.clone(),
        backends.sealer.clone(),
    )
    .await
    .map_err(|e| failed("auth")(e.to_string()))?;
    let password = config
        .admin_password
        .as_ref()
        .map(|p| p.expose().to_owned());
    if let Some(admin) = auth
        .bootstrap(password)
        .await
        .map_err(|e| failed("auth")(e.to_string()))?
    {
        match admin.generated_password {
            Some(password) => eprintln!(
                "\n  Created the first admin, {}, with the one-time password\n\n      {password}\n\n  It must be changed at first login (POST /v1/auth/me/password).\n  Set JADUGAR_ADMIN_PASSWORD to choose it instead.\n",
                admin.email
            ),
            None => tracing::info!(email = %admin.email, "created the first admin"),
        }
    }
    let auth_layer = jadugar_auth::AuthLayer::new(auth.clone());
    let directory = Arc::new(AuthDirectory(auth.clone()));
    let builder = builder
        .mount(
            "auth",
            jadugar_auth::http::router(auth.clone()),
            jadugar_auth::http::openapi(),
        )
        .background(move |cancel| auth.spawn_background(cancel))
        .authenticate(auth_layer);

    // registry: blocking queries wait up to `max_wait_secs` by design.
    let registry = jadugar_registry::Registry::from_backends(
        &config.registry,
        database,
        redis,
        backends.clock.clone(),
        backends.sealer.clone(),
    )
    .await
    .map_err(|e| failed("registry")(e.to_string()))?;
    let registry_timeout = Duration::from_secs(
        config
            .registry
            .max_wait_secs
            .saturating_add(config.request_timeout_secs),
    );
    let discovery = registry.discovery();
    let builder = builder
        .mount_with_timeout(
            "registry",
            jadugar_registry::http::router(registry.clone()),
            jadugar_registry::http::openapi(),
            registry_timeout,
        )
        .background(move |cancel| registry.start(cancel));

    // tracking
    let tracking = jadugar_tracking::Tracking::from_backends(
        &config.tracking,
        database,
        redis,
        backends.clock.clone(),
        backends.sealer.clone(),
    )
    .await
    .map_err(|e| failed("tracking")(e.to_string()))?
    .with_directory(directory);
    let dispatcher = tracking
        .dispatcher()
        .map_err(|e| failed("tracking")(e.to_string()))?;
    let builder = builder
        .mount(
            "tracking",
            jadugar_tracking::http::router(tracking),
            jadugar_tracking::http::openapi(),
        )
        .background(move |cancel| dispatcher.start(cancel));

    // gateway: upstreams found through the registry. The host already
    // writes one access line per request and sets the request id, so the
    // gateway's own are off (or every proxied request would log twice).
    let mut gateway_config = config.gateway.clone();
    gateway_config.access_log = false;
    gateway_config.request_id = false;
    let gateway = jadugar_gateway::Gateway::builder_from_backends(
        &gateway_config,
        database,
        redis,
        backends.clock.clone(),
        backends.sealer.clone(),
        discovery,
    )
    .await
    .map_err(|e| failed("gateway")(e.to_string()))?
    // The host answers these itself: a route there would never be reached.
    .reserved_paths(crate::app::RESERVED_PREFIXES.iter().copied())
    .build()
    .await
    .map_err(|e| failed("gateway")(e.to_string()))?;
    let proxy = ServiceExt::<axum::extract::Request>::map_response(
        gateway.clone(),
        |response: http::Response<jadugar_gateway::ProxyBody>| response.map(Body::new),
    );
    let docs_gateway = gateway.clone();
    let background_gateway = gateway.clone();
    let builder = builder
        .mount(
            "gateway",
            jadugar_gateway::http::router(gateway),
            jadugar_gateway::http::openapi(),
        )
        .background(move |cancel| background_gateway.spawn_background(cancel))
        .docs(move |platform| jadugar_gateway::docs::router(docs_gateway, platform))
        .fallback(BoxCloneSyncService::new(proxy));

    Ok(builder)
}

/// Tracking's assignees are auth's users: a subject may be assigned when it
/// is an enabled user holding `tracking:read` or
/// `tracking:project:<id>:read`, directly or through its roles.
#[derive(Debug, Clone)]
pub struct AuthDirectory(pub jadugar_auth::AuthService);

#[async_trait::async_trait]
impl AssigneeDirectory for AuthDirectory {
    async fn check(&self, subject: &str, project: ProjectId) -> AssigneeStatus {
        let Ok(id) = subject.parse::<jadugar_auth::model::UserId>() else {
            return AssigneeStatus::Unknown;
        };
        let record = match self.0.store().get_user(id).await {
            Ok(Some(record)) if !record.user.disabled => record,
            Ok(_) => return AssigneeStatus::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "assignee lookup failed");
                return AssigneeStatus::Unknown;
            }
        };
        let permissions = match self.0.permissions_of(&record.user.roles).await {
            Ok(permissions) => permissions,
            Err(e) => {
                tracing::warn!(error = %e, "assignee permissions lookup failed");
                return AssigneeStatus::NoAccess;
            }
        };
        let user = Principal::new(subject, PrincipalKind::User).with_permissions(permissions);
        if user.can("tracking:read") || user.can(&format!("tracking:project:{project}:read")) {
            AssigneeStatus::Ok
        } else {
            AssigneeStatus::NoAccess
        }
    }
}

/// Runs every component's migrations on `database`.
pub async fn migrate_all(database: &Database) -> Result<(), HostError> {
    let step = |component: &'static str| {
        move |e: StorageError| HostError::Component {
            component,
            message: format!("migrations: {e}"),
        }
    };
    jadugar_auth::store::SqlStore::new(database.clone())
        .await
        .map_err(step("auth"))?;
    database
        .migrate(
            &jadugar_registry::store::sql::SQLITE_MIGRATOR,
            &jadugar_registry::store::sql::POSTGRES_MIGRATOR,
        )
        .await
        .map_err(step("registry"))?;
    jadugar_tracking::store::SqlStore::new(database.clone())
        .migrate()
        .await
        .map_err(step("tracking"))?;
    jadugar_gateway::store::SqlRouteStore::new(database.clone())
        .await
        .map_err(step("gateway"))?;
    Ok(())
}
