//! The command line: parses `recd`'s arguments and dispatches each subcommand. Commands
//! for a running daemon go through one admin-call path (`AdminSocket::call`); `serve`
//! and `validate` have files of their own.

mod admin;
mod init;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{client, eval, export, shard, store, worker};

#[derive(Parser)]
#[command(name = "recd", version, about = "Precomputes recommendations and serves them over the Redis protocol")]
struct Cli {
    /// Daemon settings (default: the embedded defaults, relative to the working directory)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process; boxing would only obscure clap's derive")]
enum Cmd {
    /// Run the daemon: scheduler, store and sockets
    Serve {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminSocket,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Ask the running daemon to run JOB now; waits, exits non-zero if the run fails. With
    /// --export, run it here without a daemon and write its table as Parquet into DIR
    Run {
        job: String,
        #[command(flatten)]
        admin: AdminSocket,
        /// Write the run's rows as a Parquet part and its manifest into DIR (no daemon)
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Keep only shard I of N of the users (with --export); default: from
        /// JOB_COMPLETION_INDEX and RECD_SHARDS when set, as in a Kubernetes Indexed Job
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// Print a user's list from a table, best first, read over the socket
    Get {
        table: String,
        user: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Set recd up for your own interactions file in a new folder: recd.toml, popularity,
    /// ranking (with a model trained here) and diversity jobs, validated; prints the
    /// commands to serve, run, read and evaluate. Refuses to overwrite anything
    Init {
        #[command(flatten)]
        args: init::InitArgs,
    },
    /// Check job files (default: every file in the jobs folder); exit 1 on any error
    Validate { files: Vec<PathBuf> },
    /// Ask the running daemon to re-read the jobs folder
    Reload {
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Tables, versions, jobs and job file errors of the running daemon
    Status {
        /// One JSON object: tables with every retained version's gate results and lineage,
        /// registry models, jobs, job file errors
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Where a version of TABLE came from (default: the current one), as JSON: plugin
    /// build, model, each input's file, size, SHA-256 and rows, params hash, gate results
    Lineage {
        table: String,
        version: Option<u64>,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Each job with its next fire times in its zone
    Jobs {
        /// Fire times shown per job
        #[arg(long, default_value_t = 3)]
        next: usize,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// The newest runs of JOB (JSON): trigger, times, status, version, rows, error
    History {
        job: String,
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Stop scheduled and chained runs of JOB (kept across restarts)
    Pause {
        job: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Undo `recd pause JOB`
    Resume {
        job: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Make a retained version of TABLE current again (default: the one before the current)
    Rollback {
        table: String,
        version: Option<u64>,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Make VERSION of TABLE current, a version its job's gate held included
    Promote {
        table: String,
        version: u64,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Throw away VERSION of TABLE, which its job's gate held
    Discard {
        table: String,
        version: u64,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Remove TABLE, which no job publishes any more, with every version it keeps
    Drop {
        table: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Registry models: kept versions with their hashes, training metrics and the runs that
    /// used them; promote or roll back a version
    #[command(args_conflicts_with_subcommands = true)]
    Models {
        /// The model to list (default: every registry model)
        name: Option<String>,
        #[command(subcommand)]
        action: Option<ModelsAction>,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Publish the parts `recd run JOB --export` wrote for TABLE (every shard, from one
    /// run) as one new version, through the running daemon; a set that is incomplete or
    /// mixed is refused with the reason and nothing is published
    Import {
        table: String,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Copy the store in FROM into a new store in TO (sled export/import, verified before and
    /// after); for moving data between store formats. Run it with the daemon stopped.
    Migrate {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
    /// Check every table's current version against its published checksum, and that no
    /// staging data is left; exit 1 on any finding
    Verify {
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Quality of a published list table (or, with --churn, a churn table) against
    /// interactions after a cut-off
    Eval {
        #[command(flatten)]
        args: eval::EvalArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Keep the numbers with the version read (through the admin socket), for the
        /// dashboard's quality charts and `recd lineage`
        #[arg(long)]
        record: bool,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Plugin files: the build each holds (name, version, ABI, SHA-256), when it was first
    /// seen there, and the latest run that loaded it
    Plugins {
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Internal: one job run, spawned by `recd serve`
    #[command(hide = true)]
    Worker,
    /// Internal: load a plugin and check params (stdin) in a throwaway process
    #[command(hide = true)]
    ProbePlugin { path: PathBuf },
}

/// `--admin-socket`, which every command that talks to the daemon's admin socket takes.
#[derive(Subcommand)]
enum ModelsAction {
    /// Make kept VERSION of NAME current (older or newer than the current one)
    Promote { name: String, version: u64 },
    /// Make the version before NAME's current one current again (or VERSION)
    Rollback { name: String, version: Option<u64> },
    /// Throw away VERSION of NAME, which its job's gate held
    Discard { name: String, version: u64 },
}

#[derive(clap::Args)]
struct AdminSocket {
    /// The daemon's admin socket (default: `admin_socket` of the config)
    #[arg(long)]
    admin_socket: Option<PathBuf>,
}

impl AdminSocket {
    fn path(&self, config: &Config) -> PathBuf {
        let mut path = config.admin_socket.clone();
        override_path(&mut path, self.admin_socket.clone());
        path
    }

    /// The one path of every plain admin command: send the request, print the reply, exit
    /// non-zero on an error reply.
    fn call(&self, config: &Config, args: &[&str]) -> anyhow::Result<ExitCode> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        admin::print_reply(client::call(&self.path(config), &args)?)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Cmd::Worker => {
            init_tracing(LogStyle::Worker);
            return worker::main();
        }
        Cmd::ProbePlugin { path } => return worker::probe(path),
        _ => {}
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("recd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RECD_LOG` takes tracing's filter syntax. A worker logs without
/// timestamps because the daemon re-logs its lines with its own.
#[derive(PartialEq)]
enum LogStyle {
    Human,
    Json,
    Worker,
}

/// Filters come from `RECD_LOG`, else `RUST_LOG`, in tracing's syntax. They filter what is
/// printed only: the store's watch on sled's flusher sees its errors whatever they say.
fn init_tracing(style: LogStyle) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    let fmt = match style {
        LogStyle::Human => fmt.boxed(),
        LogStyle::Json => fmt.json().with_current_span(true).boxed(),
        LogStyle::Worker => fmt.without_time().with_level(true).with_target(true).boxed(),
    };
    // The watch first: it has counted sled's error by the time the error is printed.
    let flusher_watch = crate::store::FlusherWatch::new().with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
    tracing_subscriber::registry().with(flusher_watch).with(fmt.with_filter(filter)).init();
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref());
    let json = matches!((&cli.command, &config), (Cmd::Serve { .. }, Ok(c)) if c.log_json);
    init_tracing(if json { LogStyle::Json } else { LogStyle::Human });
    let mut config = config?;
    match cli.command {
        Cmd::Serve { socket, admin, data_dir } => {
            override_path(&mut config.socket, socket);
            override_path(&mut config.admin_socket, admin.admin_socket);
            override_path(&mut config.data_dir, data_dir);
            serve::serve(config)
        }
        Cmd::Run { job, admin, export: Some(dir), shard } => {
            anyhow::ensure!(admin.admin_socket.is_none(), "--export runs without a daemon: drop --admin-socket");
            let shard = match shard {
                Some(text) => shard::Shard::parse(&text)?,
                None => shard::Shard::from_env(|k| std::env::var(k).ok())?.unwrap_or(shard::Shard::WHOLE),
            };
            let manifest = export::export(&config, &job, &dir, shard)?;
            println!(
                "job {} shard {}: {} users, {} rows exported to {}",
                manifest.job,
                manifest.shard,
                manifest.users,
                manifest.rows,
                dir.join(&manifest.part).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { job, admin, export: None, shard } => {
            anyhow::ensure!(shard.is_none(), "--shard needs --export DIR: a daemon's run covers every user");
            admin::run(&admin.path(&config), &job)
        }
        Cmd::Get { table, user, socket } => {
            override_path(&mut config.socket, socket);
            let key = format!("{table}:{user}");
            admin::get(&config.socket, &key)
        }
        Cmd::Validate { files } => validate::validate(&config, files),
        Cmd::Init { args } => init::init(&args, &config),
        Cmd::Reload { admin } => admin.call(&config, &["RELOAD"]),
        Cmd::Status { json: false, admin } => admin.call(&config, &["STATUS"]),
        Cmd::Status { json: true, admin } => admin.call(&config, &["STATUS", "JSON"]),
        Cmd::Lineage { table, version, admin } => {
            let version = version.map(|v| v.to_string());
            let args: Vec<&str> = ["LINEAGE", &table].into_iter().chain(version.as_deref()).collect();
            admin.call(&config, &args)
        }
        Cmd::Jobs { next, admin } => admin.call(&config, &["JOBS", &next.to_string()]),
        Cmd::History { job, last, admin } => admin.call(&config, &["HISTORY", &job, &last.to_string()]),
        Cmd::Pause { job, admin } => admin.call(&config, &["PAUSE", &job]),
        Cmd::Resume { job, admin } => admin.call(&config, &["RESUME", &job]),
        Cmd::Eval { args, json, socket, record, admin } => {
            // Reads go over the read socket; only a record is sent to the admin socket.
            anyhow::ensure!(
                record || admin.admin_socket.is_none(),
                "--admin-socket needs --record: eval reads the table over the read socket (--socket)"
            );
            override_path(&mut config.socket, socket);
            let admin = admin.path(&config);
            // The version read is the one serving when the evaluation starts.
            let version = record.then(|| eval::serving_version(&admin, &args.table)).transpose()?;
            let (text, kept) = if args.churn {
                let report = eval::run_churn(&args, &config.socket)?;
                let text =
                    if json { serde_json::to_string_pretty(&report)? + "\n" } else { eval::render_churn(&report) };
                (text, report.to_record(&args))
            } else {
                let report = eval::run(&args, &config.socket)?;
                let text = if json { serde_json::to_string_pretty(&report)? + "\n" } else { eval::render(&report) };
                (text, report.to_record(&args))
            };
            print!("{text}");
            if let Some(version) = version {
                anyhow::ensure!(kept.users > 0, "--record: no user was counted (or scored), so nothing is recorded");
                eval::send_record(&admin, &args.table, version, &kept)?;
                eprintln!("recorded with table `{}` version {version}", args.table);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plugins { admin } => admin.call(&config, &["PLUGINS"]),
        Cmd::Rollback { table, version, admin } => {
            let version = version.map(|v| v.to_string());
            let args: Vec<&str> = ["ROLLBACK", &table].into_iter().chain(version.as_deref()).collect();
            admin.call(&config, &args)
        }
        Cmd::Promote { table, version, admin } => admin.call(&config, &["PROMOTE", &table, &version.to_string()]),
        Cmd::Discard { table, version, admin } => admin.call(&config, &["DISCARD", &table, &version.to_string()]),
        Cmd::Drop { table, admin } => admin.call(&config, &["DROP", &table]),
        Cmd::Models { name, action, admin } => {
            let args: Vec<String> = match action {
                None => name.into_iter().collect(),
                Some(ModelsAction::Promote { name, version }) => vec!["PROMOTE".into(), name, version.to_string()],
                Some(ModelsAction::Discard { name, version }) => vec!["DISCARD".into(), name, version.to_string()],
                Some(ModelsAction::Rollback { name, version }) => {
                    ["ROLLBACK".to_string(), name].into_iter().chain(version.map(|v| v.to_string())).collect()
                }
            };
            let args: Vec<&str> = std::iter::once("MODELS").chain(args.iter().map(String::as_str)).collect();
            admin.call(&config, &args)
        }
        Cmd::Import { table, dirs, admin } => {
            // The daemon reads the folders from its own working directory.
            let dirs: Vec<String> = dirs
                .iter()
                .map(|d| std::path::absolute(d).map(|p| p.display().to_string()))
                .collect::<Result<_, _>>()?;
            let args: Vec<&str> =
                ["IMPORT", table.as_str()].into_iter().chain(dirs.iter().map(String::as_str)).collect();
            admin.call(&config, &args)
        }
        Cmd::Migrate { from, to } => {
            // The copy is as private as the daemon's own store.
            crate::fsutil::private_umask();
            let tables = store::Store::migrate(&from, &to)?;
            crate::fsutil::make_private_dir(&to)?;
            println!("migrated {tables} tables from {} to {}", from.display(), to.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { admin } => admin.call(&config, &["VERIFY"]),
        Cmd::Worker | Cmd::ProbePlugin { .. } => unreachable!("handled in main"),
    }
}

fn override_path(slot: &mut PathBuf, value: Option<PathBuf>) {
    if let Some(v) = value {
        *slot = std::path::absolute(&v).unwrap_or(v);
    }
}
