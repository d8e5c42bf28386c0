//! The `jadugar` binary: parses arguments and configuration, then hands over
//! to the `jadugar_host` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use jadugar_host::config::{CONFIG_FILE_VAR, Config, LogFormat, NEW_USER_PASSWORD_VAR};
use jadugar_host::{HostError, commands, telemetry};

/// mimalloc rather than the system allocator: every request allocates a few
/// small blocks (header maps, bodies), which mimalloc serves from
/// thread-local free lists; in the gateway load benchmark it cut user-space
/// instructions per proxied request by 4-10 % (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Jadugar: authentication, service registry, progress tracking and API
/// gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "jadugar", version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, defaults and JADUGAR_*
    /// variables apply.
    #[arg(long, short, global = true, env = CONFIG_FILE_VAR, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format; overrides `log_format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (or HTTPS) until SIGINT/SIGTERM.
    Serve,
    /// Apply every component's database migrations and exit.
    Migrate,
    /// Write a consistent copy of the SQLite database to PATH (safe while
    /// serving).
    Backup {
        /// The file to create.
        path: PathBuf,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print its id. The password comes from stdin
    /// (--password-stdin) or JADUGAR_NEW_USER_PASSWORD; without either one
    /// is generated, printed once, and must be changed at first login.
    Create {
        /// Email (login name).
        #[arg(long)]
        email: String,
        /// Display name (default: the email).
        #[arg(long)]
        name: Option<String>,
        /// A role to grant (repeatable); it must exist.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ApikeyCommand {
    /// Create an API key for a user; prints only the secret on stdout
    /// (once: it cannot be shown again), details on stderr.
    Create {
        /// The owner's email.
        #[arg(long, value_name = "EMAIL")]
        owner: String,
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// A permission the key is limited to (repeatable; default: all of
        /// the owner's).
        #[arg(long = "scope", value_name = "PERMISSION")]
        scopes: Vec<String>,
        /// Lifetime in seconds, at least 1 (default: never expires).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        expires_in_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Report every problem in FILE (or --config) with its key and line;
    /// exit 2 if there is any.
    Check {
        /// The file to check; defaults to --config.
        file: Option<PathBuf>,
    },
    /// Print the effective configuration, secrets redacted.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(main_async(cli))
}

async fn main_async(cli: Cli) -> ExitCode {
    if let Command::Config {
        command: ConfigCommand::Check { file },
    } = &cli.command
    {
        let file = file.as_ref().or(cli.config.as_ref());
        return match Config::load(file.map(PathBuf::as_path)) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for problem in problems.iter() {
                    println!("{problem}");
                }
                ExitCode::from(2)
            }
        };
    }

    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("error: {problems}");
            return ExitCode::from(2);
        }
    };
    if let Some(format) = cli.log_format {
        config.log_format = match format {
            Format::Human => LogFormat::Human,
            Format::Json => LogFormat::Json,
        };
    }
    if let Err(e) = telemetry::init_tracing(config.log_format, &config.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }

    let result = match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => commands::migrate(&config).await.map(|count| {
            println!("migrations applied; the database records {count} in all");
        }),
        Command::Backup { path } => commands::backup(&config, &path).await.map(|bytes| {
            println!("backup written to {} ({bytes} bytes)", path.display());
        }),
        Command::User {
            command:
                UserCommand::Create {
                    email,
                    name,
                    roles,
                    password_stdin,
                },
        } => create_user(&config, email, name.unwrap_or_default(), roles, password_stdin).await,
        Command::Apikey {
            command:
                ApikeyCommand::Create {
                    owner,
                    name,
                    scopes,
                    expires_in_secs,
                },
        } => commands::create_api_key(
            &config,
            commands::ApiKeySpec {
                owner,
                name,
                scopes,
                expires_in_secs,
            },
        )
        .await
        .map(|key| {
            eprintln!(
                "created API key {} for user {} with scopes [{}]; the secret below is shown only once",
                key.id,
                key.owner,
                key.scopes.join(", ")
            );
            println!("{}", key.secret);
        }),
        Command::Config {
            command: ConfigCommand::Print,
        } => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { .. },
        } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                HostError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn create_user(
    config: &Config,
    email: String,
    name: String,
    roles: Vec<String>,
    password_stdin: bool,
) -> Result<(), HostError> {
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|source| HostError::Io {
                context: "read the password from stdin".into(),
                source,
            })?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            return Err(HostError::Auth(
                "password: --password-stdin read an empty line".into(),
            ));
        }
        Some(password)
    } else {
        std::env::var(NEW_USER_PASSWORD_VAR)
            .ok()
            .filter(|p| !p.is_empty())
    };
    let user = commands::create_user(
        config,
        commands::UserSpec {
            email,
            display_name: name,
            roles,
            password,
        },
    )
    .await?;
    if let Some((admin, password)) = &user.bootstrapped_admin {
        match password {
            Some(password) => eprintln!(
                "the store was empty: created the first admin, {admin}, with the one-time password {password} (it must be changed at first login)"
            ),
            None => eprintln!("the store was empty: created the first admin, {admin}"),
        }
    }
    match &user.generated_password {
        Some(password) => eprintln!(
            "created user {} with the one-time password {password} (shown only once; it must be changed at first login)",
            user.email
        ),
        None => eprintln!("created user {}", user.email),
    }
    println!("{}", user.id);
    Ok(())
}

async fn serve(config: Config) -> Result<(), HostError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HostError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    jadugar_host::run(listener, config, jadugar_host::shutdown_signal()).await
}
