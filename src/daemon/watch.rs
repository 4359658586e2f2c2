//! Watches the config file for changes: editors that write a temp file and rename it, and Kubernetes
//! ConfigMaps that swap a `..data` symlink, both show up as events in the file's directory; after a short
//! quiet period the file is read and a change of content is reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before the file is read (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A watch on one config file.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl ConfigWatcher {
    /// Watches the directory holding `path`.
    pub fn new(path: &Path) -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::channel(64);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // A full channel already holds a wake-up; dropping this one loses nothing.
                    let _ = tx.try_send(());
                }
            })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            events,
            path: path.to_path_buf(),
            last: std::fs::read(path).ok(),
        })
    }

    /// Waits until the file's content differs from when it was last seen.
    pub async fn changed(&mut self) {
        loop {
            if self.events.recv().await.is_none() {
                return std::future::pending().await;
            }
            // Debounce: wait for a quiet period.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {}
            let now = std::fs::read(&self.path).ok();
            if now.is_some() && now != self.last {
                self.last = now;
                return;
            }
        }
    }
}
