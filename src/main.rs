//! The `unpoll` binary: parse arguments, load the config, bind, run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Exit status for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// unpoll: a reverse-proxy sidecar that turns browser polling into push.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, env = "UNPOLL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config: print a summary and exit 0, or every error and exit 64.
    Check,
    /// Print the SQL of a trigger that announces INSERT, UPDATE and DELETE on a table with
    /// NOTIFY (or through an outbox table), for a `[[notify]]` rule.
    SqlTrigger(SqlTriggerArgs),
    /// Start a built-in polling chat app with unpoll in front of it, and print its URLs.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where the chat is served through unpoll.
    #[arg(long, default_value = unpoll::demo::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the admin listener (the dashboard) listens.
    #[arg(long, default_value = unpoll::demo::DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// Print the demo's config (a starting point for a real app) and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Args)]
struct SqlTriggerArgs {
    /// The table whose changes are announced (`TABLE` or `SCHEMA.TABLE`).
    #[arg(long)]
    table: String,
    /// The Postgres channel to NOTIFY (the rule's `listen`).
    #[arg(long)]
    notify: String,
    /// Columns in the payload (default: the primary key, or `id`).
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// Write changes to this outbox table (created if missing) instead of the NOTIFY
    /// payload: nothing is lost while unpoll is disconnected.
    #[arg(long)]
    outbox: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::SqlTrigger(args)) => return sql_trigger(args),
        Some(Command::Demo(args)) => return demo(args),
        _ => {}
    }
    let Some(path) = cli.config else {
        err(format_args!(
            "unpoll: no config file; pass --config FILE or set UNPOLL_CONFIG"
        ));
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match unpoll::config::load_file(&path) {
        Ok(c) => c,
        Err(errors) => {
            err(format_args!(
                "{}: {} error(s)",
                path.display(),
                errors.len()
            ));
            for e in errors.iter() {
                err(format_args!("  {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            out(format_args!("{}: ok\n{}", path.display(), config.summary()));
            // Warnings do not fail the check: the config is valid today.
            for (key, warning) in config.warnings(std::time::SystemTime::now()) {
                err(format_args!("warning: {key}: {warning}"));
            }
            ExitCode::SUCCESS
        }
        Command::Run => run(config, path),
        Command::SqlTrigger(_) | Command::Demo(_) => {
            unreachable!("handled before the config is loaded")
        }
    }
}

/// One line on stderr. A closed or broken stderr must not turn an exit status into a panic
/// (101): the status is what scripts read.
fn err(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Text on stdout (`unpoll check | head` closes it early); a failed write is ignored.
fn out(message: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(message).and_then(|()| stdout.flush());
}

fn sql_trigger(args: SqlTriggerArgs) -> ExitCode {
    use unpoll::sources::postgres::trigger::{TriggerSpec, generate};
    let spec = TriggerSpec {
        table: args.table,
        notify: args.notify,
        columns: args.columns,
        outbox: args.outbox,
    };
    match generate(&spec) {
        Ok(sql) => {
            out(format_args!("{sql}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(format_args!("unpoll sql-trigger: {e}"));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The tokio runtime for `workers` (`0`: one per core).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    // One worker: tokio's single-threaded scheduler, which skips the work-stealing machinery
    // and measured ~25% less CPU per proxied request than a one-worker multi-thread runtime.
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build().map_err(|e| {
        err(format_args!("unpoll: cannot start the runtime: {e}"));
        ExitCode::FAILURE
    })
}

fn demo(args: DemoArgs) -> ExitCode {
    use unpoll::demo::{DEFAULT_UPSTREAM, Demo, config_text};
    if args.print_config {
        out(format_args!(
            "{}",
            config_text(args.listen, args.admin, DEFAULT_UPSTREAM)
        ));
        return ExitCode::SUCCESS;
    }
    let runtime = match runtime(1) {
        Ok(rt) => rt,
        Err(status) => return status,
    };
    let status = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let demo = match Demo::bind(args.listen, args.admin, shutdown.clone()).await {
            Ok(demo) => demo,
            Err(e) => {
                err(format_args!("unpoll demo: {e}"));
                return match e {
                    unpoll::demo::DemoError::Config(_) => ExitCode::from(EXIT_CONFIG),
                    unpoll::demo::DemoError::Bind(_) => ExitCode::FAILURE,
                };
            }
        };
        unpoll::logging::init(&demo.app.snapshot().config.log);
        out(format_args!(
            "unpoll demo: a polling chat app with unpoll in front of it\n\
             \x20 the chat, through unpoll:  http://{main}/   (open it in two windows)\n\
             \x20 the dashboard:             http://{admin}/\n\
             \x20 the chat app alone:        http://{upstream}/   (it polls every 3 s)\n\
             `unpoll demo --print-config` prints the config; Ctrl-C stops.\n",
            main = demo.main,
            admin = demo.admin,
            upstream = demo.upstream,
        ));
        let app = demo.app.clone();
        let signals = tokio::spawn(unpoll::server::signals::handle(app, None));
        demo.run().await;
        signals.abort();
        ExitCode::SUCCESS
    });
    unpoll::logging::flush(std::time::Duration::from_secs(1));
    status
}

fn run(config: unpoll::Config, path: PathBuf) -> ExitCode {
    unpoll::logging::init(&config.log);
    let runtime = match runtime(config.workers) {
        Ok(rt) => rt,
        Err(status) => return status,
    };
    let status = runtime.block_on(async move {
        let listeners = match unpoll::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot bind: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (main_addr, admin_addr) = match listeners.local_addrs() {
            Ok(addrs) => addrs,
            Err(e) => {
                tracing::error!("cannot read the bound addresses: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            main = %main_addr,
            admin = %admin_addr,
            upstream = %config.upstream,
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
        for (key, warning) in config.warnings(std::time::SystemTime::now()) {
            tracing::warn!(key = %key, "{warning}");
        }
        let app = unpoll::App::new(config, CancellationToken::new());
        let signals = tokio::spawn(unpoll::server::signals::handle(app.clone(), Some(path)));
        unpoll::run(listeners, app).await;
        signals.abort();
        tracing::info!("unpoll stopped");
        ExitCode::SUCCESS
    });
    // Log lines are written by a thread of their own; give the last ones a moment.
    unpoll::logging::flush(std::time::Duration::from_secs(1));
    status
}
