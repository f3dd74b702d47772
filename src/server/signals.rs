//! Process signals: SIGHUP reloads the config file, SIGTERM and SIGINT shut down.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::app::App;
use crate::config;

/// The process's handlers for SIGHUP, SIGTERM and SIGINT. Until they are installed each of
/// those signals kills the process (their default action), so [`Signals::install`] runs
/// before the process says it is up (the `listening` log line): a supervisor, or a test,
/// that sends SIGHUP as soon as it reads that line must get a reload, not a dead process.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Install the handlers; from here on the signals queue up for [`Signals::handle`].
    /// Must be called inside the Tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Handle signals until shutdown. `path` is the config file re-read on SIGHUP; without
    /// one (`unpoll demo`, whose config is built in) SIGHUP is logged and ignored.
    pub async fn handle(mut self, app: Arc<App>, path: Option<PathBuf>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => match &path {
                    Some(path) => reload(&app, path),
                    None => tracing::warn!("SIGHUP: no config file to reload"),
                },
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    app.handles.shutdown.cancel();
                    return;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: draining");
                    app.handles.shutdown.cancel();
                    return;
                }
                _ = app.handles.shutdown.cancelled() => return,
            }
        }
    }
}

/// Re-read and validate `path`; swap it in when valid, keep the running config otherwise.
pub(crate) fn reload(app: &App, path: &std::path::Path) {
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
