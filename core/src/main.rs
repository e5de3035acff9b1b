//! The `portcullis` command: serve, check a config, create API keys.

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::admin::{AdminRequest, AdminResponse};
use portcullis::clock::{Clock, SystemClock};
use portcullis::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

// mimalloc: measured cheaper than glibc malloc on the proxy's per-request allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "On-premises identity gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Overrides `data_dir` from the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file and print what it would run.
    Check {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// List the registered protocol plugins: built in, and loaded from the config's libraries.
    Plugins {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key and print its token (shown only this once).
    Create {
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, data_dir } => serve(&config, data_dir),
        Command::Check { config } => check(&config),
        Command::Plugins { config } => plugins(&config),
        Command::ApiKey {
            command:
                ApiKeyCommand::Create {
                    description,
                    config,
                    data_dir,
                },
        } => create_api_key(&config, data_dir, description),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    portcullis::server::worker_runtime().context("cannot start the async runtime")
}

fn serve(path: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path, data_dir.clone())?;
    let _log_guard = portcullis::logging::init(&config.log);
    runtime()?.block_on(portcullis::server::run(config, path.to_path_buf(), data_dir))?;
    Ok(())
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let registry = portcullis::plugins::Registry::load(&config.plugins, Vec::new(), Arc::new(SystemClock))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file = path.display().to_string();
    let mut modules = Vec::new();
    runtime()?.block_on(async {
        for (name, edge) in &config.edges {
            for (i, route) in edge.routes.iter().enumerate() {
                let module = match &route.auth {
                    Some(table) => Some(
                        portcullis::configure::config_auth_module(
                            &registry,
                            &file,
                            &format!("edges.{name}.routes[{i}].auth"),
                            table,
                        )
                        .await?,
                    ),
                    None => None,
                };
                modules.push(module);
            }
        }
        Ok::<_, portcullis::config::ConfigError>(())
    })?;
    let mut modules = modules.into_iter();
    println!("{}: OK (config version {})", path.display(), config.version);
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    let edge = &config.listeners.edge;
    let console = &config.listeners.console;
    println!("edge listener:    {}://{}", scheme(edge.tls.is_some()), edge.address);
    println!(
        "console listener: {}://{} (API under /api)",
        scheme(console.tls.is_some()),
        console.address
    );
    if let Some(echo) = &config.echo {
        println!("echo upstream:    http://{}", echo.address);
    }
    println!("data dir:         {}", config.data_dir.display());
    println!("backends:         {}", config.backends.len());
    for (name, b) in &config.backends {
        println!("  {name}: {}://{}", scheme(b.tls), b.address);
    }
    println!("edges:            {}", config.edges.len());
    for (name, e) in &config.edges {
        println!("  {name}: {}", e.hostports.join(", "));
        for r in &e.routes {
            let auth = match modules.next().flatten() {
                Some(m) if m.enabled => format!(", sign-in by `{}`", m.plugin),
                Some(m) => format!(", sign-in by `{}` (disabled)", m.plugin),
                None => String::new(),
            };
            println!(
                "    {} {} -> {}{}{auth}",
                r.match_type.as_str(),
                r.path,
                r.backend,
                if r.enabled { "" } else { " (disabled)" }
            );
        }
    }
    for plugin in registry.iter() {
        println!(
            "plugin:           {} {} from {}",
            plugin.info.name, plugin.info.version, plugin.origin
        );
    }
    Ok(())
}

fn plugins(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let registry = portcullis::plugins::Registry::load(&config.plugins, Vec::new(), Arc::new(SystemClock))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut any = false;
    for plugin in registry.iter() {
        any = true;
        let capabilities: Vec<String> = plugin.info.capabilities.iter().map(|c| format!("{c:?}")).collect();
        println!(
            "{} {} [{}] from {}",
            plugin.info.name,
            plugin.info.version,
            capabilities.join(", "),
            plugin.origin
        );
        println!("    {}", plugin.info.description);
    }
    if !any {
        println!("no plugins registered");
    }
    Ok(())
}

fn create_api_key(path: &Path, data_dir: Option<PathBuf>, description: String) -> anyhow::Result<()> {
    let config = load(path, data_dir)?;
    let rt = runtime()?;
    let request = AdminRequest::CreateApiKey {
        description: description.clone(),
    };
    let (id, token) = rt.block_on(async {
        match portcullis::admin::call(&config.data_dir, &request)
            .await
            .map_err(anyhow::Error::msg)?
        {
            Some(AdminResponse::ApiKey { id, token }) => Ok((id, token)),
            Some(AdminResponse::Error { message }) => Err(anyhow::anyhow!("the running server refused: {message}")),
            None => {
                let store = portcullis::store::open(&config.data_dir)?;
                portcullis::admin::create_api_key_in(&*store, description, SystemClock.now())
                    .await
                    .map_err(anyhow::Error::msg)
            }
        }
    })?;
    eprintln!("created API key {id}; its token is shown only now:");
    println!("{token}");
    Ok(())
}
