//! The one-shot commands: `jadugar migrate`, `jadugar backup`,
//! `jadugar user create` and `jadugar apikey create`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jadugar_host::HostError> {
//! use jadugar_host::{Config, commands};
//!
//! let config = Config::default();
//! let recorded = commands::migrate(&config).await?;
//! let bytes = commands::backup(&config, std::path::Path::new("./backup.db")).await?;
//! println!("{recorded} migrations; backup of {bytes} bytes");
//! # Ok(()) }
//! ```

use std::path::Path;

use jadugar_core::storage::{Database, redact_url};

use crate::backends::{Backends, open_database, sqlite_path};
use crate::components;
use crate::config::Config;
use crate::error::HostError;

/// Applies every component's migrations; returns how many migrations the
/// database has recorded in all.
pub async fn migrate(config: &Config) -> Result<i64, HostError> {
    let database = open_database(config).await?;
    let result = async {
        components::migrate_all(&database).await?;
        applied_migrations(&database)
            .await
            .map_err(|source| HostError::Database {
                url: redact_url(&config.effective_database_url()),
                source: source.into(),
            })
    }
    .await;
    database.close().await;
    result
}

async fn applied_migrations(database: &Database) -> Result<i64, sqlx::Error> {
    let count = match database {
        Database::Sqlite(pool) => {
            let exists: Option<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_optional(pool)
            .await?;
            if exists.is_none() {
                return Ok(0);
            }
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(pool)
                .await?
                .0
        }
        Database::Postgres(pool) => {
            let exists: (bool,) =
                sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?;
            if !exists.0 {
                return Ok(0);
            }
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM _sqlx_migrations")
                .fetch_one(pool)
                .await?
                .0
        }
    };
    Ok(count)
}

/// Writes a consistent copy of the SQLite database to `dest` with
/// `VACUUM INTO`, safe while the host is serving. Returns the copy's size
/// in bytes. For Postgres, explains how to use `pg_dump` instead.
pub async fn backup(config: &Config, dest: &Path) -> Result<u64, HostError> {
    let url = config.effective_database_url();
    let Some(source) = sqlite_path(&url) else {
        if url.starts_with("postgres") {
            return Err(HostError::Backup(format!(
                "the database is Postgres; back it up with its own tools, e.g. `pg_dump --format=custom --file=jadugar.dump '{}'`",
                redact_url(&url)
            )));
        }
        return Err(HostError::Backup(format!(
            "{} is not a database file that can be backed up",
            redact_url(&url)
        )));
    };
    if !source.exists() {
        return Err(HostError::Backup(format!(
            "no database at {} (has the host run with this configuration?)",
            source.display()
        )));
    }
    if dest.exists() {
        return Err(HostError::Backup(format!(
            "{} already exists; choose a new file",
            dest.display()
        )));
    }
    let dest_text = dest
        .to_str()
        .ok_or_else(|| HostError::Backup(format!("{} is not a UTF-8 path", dest.display())))?;
    let database = open_database(config).await?;
    let result = match &database {
        Database::Sqlite(pool) => sqlx::query("VACUUM INTO ?")
            .bind(dest_text)
            .execute(pool)
            .await
            .map_err(|e| HostError::Backup(format!("VACUUM INTO {}: {e}", dest.display()))),
        Database::Postgres(_) => Err(HostError::Backup("not a SQLite database".into())),
    };
    database.close().await;
    result?;
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|source| HostError::Io {
            context: format!("backup {}", dest.display()),
            source,
        })
}

/// What `jadugar user create` asks for.
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// Email (login name).
    pub email: String,
    /// Display name; empty means the email.
    pub display_name: String,
    /// Roles to grant; each must exist.
    pub roles: Vec<String>,
    /// The password; none generates one (returned once, and the user must
    /// change it at first login).
    pub password: Option<String>,
}

/// A user created by [`create_user`].
#[derive(Debug, Clone)]
pub struct CreatedUser {
    /// The new user's id.
    pub id: String,
    /// The normalised email.
    pub email: String,
    /// The generated password, when none was given.
    pub generated_password: Option<String>,
    /// When the store was empty, the first admin was created first (as
    /// `jadugar serve` would have): its email and one-time password (none
    /// when `admin_password` was configured).
    pub bootstrapped_admin: Option<(String, Option<String>)>,
}

/// What `jadugar apikey create` asks for.
#[derive(Debug, Clone)]
pub struct ApiKeySpec {
    /// The owner's email.
    pub owner: String,
    /// The key's label.
    pub name: String,
    /// Scopes; empty means all of the owner's permissions.
    pub scopes: Vec<String>,
    /// Lifetime in seconds; none never expires.
    pub expires_in_secs: Option<u64>,
}

/// An API key created by [`create_api_key`].
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key's id.
    pub id: String,
    /// The owner's id.
    pub owner: String,
    /// The scopes the key carries.
    pub scopes: Vec<String>,
    /// The full secret `jdg_<public id>_<secret>`, shown once.
    pub secret: String,
}

/// Creates a user as the system actor, with the host's configuration and
/// backends (running auth's migrations first). On an empty store the first
/// admin is created before the user; should the user then be refused, the
/// error's message carries the admin's one-time password, which would
/// otherwise be lost.
///
/// ```no_run
/// # async fn demo() -> Result<(), jadugar_host::HostError> {
/// use jadugar_host::{Config, commands};
///
/// let user = commands::create_user(&Config::default(), commands::UserSpec {
///     email: "ada@example.com".into(),
///     display_name: "Ada".into(),
///     roles: vec![],
///     password: None,
/// })
/// .await?;
/// println!("{} {:?}", user.id, user.generated_password);
/// # Ok(()) }
/// ```
pub async fn create_user(config: &Config, spec: UserSpec) -> Result<CreatedUser, HostError> {
    let generated = match &spec.password {
        Some(_) => None,
        None => Some(generate_password()?),
    };
    let password = spec.password.clone().or_else(|| generated.clone());
    let admin_password = config
        .admin_password
        .as_ref()
        .map(|p| p.expose().to_owned());
    with_auth(config, |auth| async move {
        let bootstrapped_admin = auth
            .bootstrap(admin_password)
            .await
            .map_err(auth_error)?
            .map(|admin| (admin.email, admin.generated_password));
        let created = auth
            .create_user(
                None,
                jadugar_auth::service::NewUser {
                    email: spec.email,
                    display_name: spec.display_name,
                    password,
                    roles: spec.roles,
                    // A generated password is handed over, so it is a
                    // temporary one (set with the user, in one write).
                    must_change_password: generated.is_some(),
                },
            )
            .await
            .map_err(|e| match e {
                jadugar_auth::Error::Conflict(_)
                | jadugar_auth::Error::Store(jadugar_auth::store::StoreError::Conflict(_)) => {
                    HostError::Auth("email: a user with this email already exists".into())
                }
                other => auth_error(other),
            });
        match created {
            Ok(user) => Ok(CreatedUser {
                id: user.id.to_string(),
                email: user.email,
                generated_password: generated,
                bootstrapped_admin,
            }),
            // The first admin exists now whatever became of the user: its
            // one-time password must reach the operator even so.
            Err(error) => Err(match bootstrapped_admin {
                Some((admin, Some(admin_password))) => HostError::Auth(format!(
                    "{error}\nthe store was empty: the first admin, {admin}, was created \
                     with the one-time password {admin_password} (it must be changed at \
                     first login)"
                )),
                Some((admin, None)) => HostError::Auth(format!(
                    "{error}\nthe store was empty: the first admin, {admin}, was created"
                )),
                None => error,
            }),
        }
    })
    .await
}

/// Creates an API key for the user with email `spec.owner`, as the system
/// actor: the scopes must be covered by the owner's permissions.
///
/// ```no_run
/// # async fn demo() -> Result<(), jadugar_host::HostError> {
/// use jadugar_host::{Config, commands};
///
/// let key = commands::create_api_key(&Config::default(), commands::ApiKeySpec {
///     owner: "ada@example.com".into(),
///     name: "ci".into(),
///     scopes: vec!["tracking:read".into()],
///     expires_in_secs: Some(86_400),
/// })
/// .await?;
/// println!("{}", key.secret);
/// # Ok(()) }
/// ```
pub async fn create_api_key(config: &Config, spec: ApiKeySpec) -> Result<CreatedKey, HostError> {
    with_auth(config, |auth| async move {
        let email = jadugar_auth::model::normalize_email(&spec.owner)
            .map_err(|e| HostError::Auth(format!("owner: {}", e.message)))?;
        let owner = auth
            .store()
            .get_user_by_email(&email)
            .await
            .map_err(|e| auth_error(e.into()))?
            .ok_or_else(|| HostError::Auth(format!("owner: no user with email {email}")))?;
        let created = auth
            .create_api_key(
                None,
                jadugar_auth::service::NewApiKey {
                    name: spec.name,
                    scopes: spec.scopes,
                    expires_in_secs: spec.expires_in_secs,
                    owner: Some(owner.user.id),
                },
            )
            .await
            .map_err(auth_error)?;
        Ok(CreatedKey {
            id: created.key.id.to_string(),
            owner: owner.user.id.to_string(),
            scopes: created.key.scopes,
            secret: created.secret,
        })
    })
    .await
}

/// Opens the backends, builds auth (running its migrations), runs `f`,
/// then closes the backends whatever happened.
async fn with_auth<T, F, Fut>(config: &Config, f: F) -> Result<T, HostError>
where
    F: FnOnce(jadugar_auth::AuthService) -> Fut,
    Fut: std::future::Future<Output = Result<T, HostError>>,
{
    let backends = Backends::open(config).await?;
    let result = async {
        let auth = jadugar_auth::AuthService::from_backends(
            &config.auth,
            &backends.database,
            backends.redis.as_ref(),
            backends.clock.clone(),
            backends.sealer.clone(),
        )
        .await
        .map_err(|e| HostError::Component {
            component: "auth",
            message: e.to_string(),
        })?;
        f(auth).await
    }
    .await;
    backends.close().await;
    result
}

/// One line for an operator: field errors name their field.
fn auth_error(error: jadugar_auth::Error) -> HostError {
    use jadugar_auth::Error as E;
    match error {
        E::Validation(fields) => HostError::Auth(
            fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        E::Store(jadugar_auth::store::StoreError::Conflict(what)) | E::Conflict(what) => {
            HostError::Auth(format!("{what} already exists"))
        }
        other @ (E::NotFound(_) | E::NotAllowed(_) | E::Forbidden(_)) => {
            HostError::Auth(other.to_string())
        }
        other => HostError::Component {
            component: "auth",
            message: other.to_string(),
        },
    }
}

/// 128 random bits from the operating system's CSPRNG, as 32 hex characters.
fn generate_password() -> Result<String, HostError> {
    let bytes: [u8; 16] = rand::random();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
