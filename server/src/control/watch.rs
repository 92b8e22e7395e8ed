//! Local folder watching: inotify events wake the source poller early.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use crate::control::Control;

/// Watches local repository folders and pokes the poller on changes
/// (create/modify/remove). The watcher lives as long as the returned guard.
pub fn watch_folders(
    control: &Arc<Control>,
    folders: &[PathBuf],
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    if folders.is_empty() {
        return None;
    }
    let weak = Arc::downgrade(control);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) && let Some(control) = weak.upgrade()
        {
            control.poke();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            warn!(error = %err, "Cannot watch the model repository; relying on periodic scans.");
            return None;
        }
    };
    for folder in folders {
        if let Err(err) = watcher.watch(folder, RecursiveMode::Recursive) {
            warn!(folder = %folder.display(), error = %err, "Cannot watch a model folder; relying on periodic scans.");
        }
    }
    Some(watcher)
}
