//! Process signals: SIGHUP reloads the config file, SIGTERM and SIGINT shut down.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;
use crate::config;

/// Handle signals until shutdown. `path` is the config file re-read on SIGHUP; without one
/// (`unpoll demo`, whose config is built in) SIGHUP is logged and ignored.
pub async fn handle(app: Arc<App>, path: Option<PathBuf>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match &path {
                Some(path) => reload(&app, path),
                None => tracing::warn!("SIGHUP: no config file to reload"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                app.handles.shutdown.cancel();
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                app.handles.shutdown.cancel();
                return Ok(());
            }
            _ = app.handles.shutdown.cancelled() => return Ok(()),
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
