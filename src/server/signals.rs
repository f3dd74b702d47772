//! Process signals: SIGHUP reloads the config file, SIGTERM and SIGINT shut down.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;
use crate::config;

/// The process's signal handlers, installed: from here on SIGHUP, SIGTERM and SIGINT are
/// caught (queued until [`Signals::handle`] reads them) instead of killing the process.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers (in a tokio runtime). Do it before announcing that unpoll
    /// listens: a SIGHUP sent right after that line must reload, not kill the process.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Handle signals until shutdown; see [`handle`].
    pub async fn handle(self, app: Arc<App>, path: Option<PathBuf>) {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = self;
        serve(&mut hup, &mut term, &mut int, app, path).await;
    }
}

/// Handle signals until shutdown. `path` is the config file re-read on SIGHUP; without one
/// (`unpoll demo`, whose config is built in) SIGHUP is logged and ignored.
pub async fn handle(app: Arc<App>, path: Option<PathBuf>) -> std::io::Result<()> {
    Signals::install()?.handle(app, path).await;
    Ok(())
}

async fn serve(
    hup: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    app: Arc<App>,
    path: Option<PathBuf>,
) {
    loop {
        tokio::select! {
            _ = hup.recv() => match &path {
                Some(path) => reload(&app, path),
                None => tracing::warn!("SIGHUP: no config file to reload"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                app.handles.shutdown.cancel();
                return;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                app.handles.shutdown.cancel();
                return;
            }
            _ = app.handles.shutdown.cancelled() => return,
        }
    }
}

/// Re-read and validate `path`; swap it in when valid, keep the running config otherwise.
pub fn reload(app: &App, path: &std::path::Path) {
    match config::load_file(path) {
        Ok(config) => {
            for warning in app.reload(config) {
                tracing::warn!("{warning}");
            }
            tracing::info!(file = %path.display(), "config reloaded");
        }
        Err(errors) => app.reload_failed(&errors),
    }
}
