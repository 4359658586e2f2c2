//! Watches the config file and the certificate, key and CA files it names. Editors that write a temp file
//! and rename it, Kubernetes ConfigMaps and Secrets that swap a `..data` symlink, and certbot's `live/`
//! symlinks all show up as events in the file's directory; after a short quiet period the files are read
//! and a change of content is reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Quiet time after the last event before the files are read (editors and certbot write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A watch on the config file and the files it names.
pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    /// Watched files and their content when last seen.
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    dirs: BTreeSet<PathBuf>,
}

impl ConfigWatcher {
    /// Watches `config` and `others` (their directories).
    pub fn new(config: &Path, others: &[PathBuf]) -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::channel(64);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already holds a wake-up; dropping this one loses nothing.
                let _ = tx.try_send(());
            }
        })?;
        let mut watch = ConfigWatcher {
            watcher,
            events,
            files: vec![(config.to_path_buf(), None)],
            dirs: BTreeSet::new(),
        };
        watch.watch_dir(config)?;
        watch.follow(others);
        Ok(watch)
    }

    /// After a reload: watch the config file and `others` (the files the new config names), as they are now.
    pub fn follow(&mut self, others: &[PathBuf]) {
        self.files.truncate(1);
        self.files
            .extend(others.iter().map(|path| (path.clone(), None)));
        for path in others {
            if let Err(e) = self.watch_dir(path) {
                warn!(file = %path.display(), error = %e, "cannot watch for changes; reload with SIGHUP after changing it");
            }
        }
        for (path, last) in &mut self.files {
            *last = std::fs::read(path.as_path()).ok();
        }
    }

    fn watch_dir(&mut self, file: &Path) -> notify::Result<()> {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !self.dirs.contains(&dir) {
            self.watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            self.dirs.insert(dir);
        }
        Ok(())
    }

    /// Waits until a watched file's content differs from when it was last seen (a file that cannot be read
    /// mid-swap is not a change yet).
    pub async fn changed(&mut self) {
        loop {
            if self.events.recv().await.is_none() {
                return std::future::pending().await;
            }
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {}
            let mut changed = false;
            for (path, last) in &mut self.files {
                let now = std::fs::read(path.as_path()).ok();
                if now.is_some() && now != *last {
                    *last = now;
                    changed = true;
                }
            }
            if changed {
                return;
            }
        }
    }
}
