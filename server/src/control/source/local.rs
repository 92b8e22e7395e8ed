//! The local model repository (`<root>/<model>/<version>/model.onnx` or
//! `model.pt`, config
//! beside the versions). Listing reads the folder; changes are noticed by a
//! `notify` watcher (create/modify/remove events, debounced by the caller) and
//! by the periodic re-scan. Fingerprints are the model file's size and mtime,
//! so a file still being written changes between scans and is not loaded
//! until it settles (or, when required, until a `READY` marker appears).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{Listing, MODEL_FILES, ModelListing, Source, SourceError, VersionListing};
use crate::config::names::valid_model_name;

#[derive(Debug, Clone)]
pub struct LocalSource {
    root: PathBuf,
    require_ready_marker: bool,
}

impl LocalSource {
    pub fn new(root: &Path) -> Result<Self, String> {
        if !root.is_dir() {
            return Err(format!(
                "model repository {} is not a directory",
                root.display()
            ));
        }
        Ok(LocalSource {
            root: root.to_owned(),
            require_ready_marker: false,
        })
    }

    /// Take a version only once `<version>/READY` exists.
    pub fn with_ready_marker(mut self, required: bool) -> Self {
        self.require_ready_marker = required;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn fingerprint(path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(format!("{}-{mtime}", meta.len()))
    }

    fn list_model(&self, dir: &Path) -> ModelListing {
        let mut listing = ModelListing::default();
        for name in ["config.yaml", "config.pbtxt"] {
            if listing.config.is_none() {
                listing.config = match crate::config::file::read_config_file(&dir.join(name)) {
                    Ok(None) => None,
                    Ok(Some(text)) => Some((name.to_owned(), text)),
                    Err(err) => Some((name.to_owned(), Err(err.to_string()))),
                };
            }
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return listing;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // "01" and "1" would collide; only canonical numbers are versions.
            let Some(version) = name
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0 && v.to_string() == name)
            else {
                continue;
            };
            let version_dir = entry.path();
            if self.require_ready_marker && !version_dir.join("READY").exists() {
                continue;
            }
            let Some(fingerprint) = MODEL_FILES
                .iter()
                .find_map(|file| Self::fingerprint(&version_dir.join(file)))
            else {
                continue;
            };
            listing
                .versions
                .insert(version, VersionListing { fingerprint });
        }
        listing
    }
}

#[async_trait::async_trait]
impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn list(&self) -> Result<Listing, SourceError> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            let entries =
                std::fs::read_dir(&source.root).map_err(|err| SourceError::Unreachable {
                    source_name: source.describe(),
                    reason: err.to_string(),
                })?;
            let mut listing = BTreeMap::new();
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !valid_model_name(&name) || !entry.path().is_dir() {
                    continue;
                }
                let model = source.list_model(&entry.path());
                if model.config.is_some() || !model.versions.is_empty() {
                    listing.insert(name, model);
                }
            }
            Ok(listing)
        })
        .await
        .map_err(|err| SourceError::Unreachable {
            source_name: self.describe(),
            reason: err.to_string(),
        })?
    }

    async fn fetch(
        &self,
        model: &str,
        version: u64,
        _listing: &VersionListing,
    ) -> Result<PathBuf, SourceError> {
        // Loaded in place: ONNX Runtime reads the whole file at load time.
        Ok(self.root.join(model).join(version.to_string()))
    }

    fn needs_settling(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_versions_configs_and_ready_markers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, body) in [
            ("a/1/model.onnx", "x"),
            ("a/2/model.onnx", "yy"),
            ("a/config.yaml", "max_batch_size: 4"),
            ("a/03/model.onnx", "z"),
            ("a/4/other.bin", "z"),
            ("b/config.pbtxt", "name: \"b\""),
            (".hidden/1/model.onnx", "x"),
        ] {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, body).unwrap();
        }
        let listing = LocalSource::new(root).unwrap().list().await.unwrap();
        assert_eq!(listing.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        let a = &listing["a"];
        assert_eq!(a.versions.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(a.versions[&2].fingerprint.starts_with("2-"));
        assert_eq!(a.config.as_ref().unwrap().0, "config.yaml");
        assert_eq!(listing["b"].config.as_ref().unwrap().0, "config.pbtxt");

        std::fs::write(root.join("a/2/READY"), "").unwrap();
        let marked = LocalSource::new(root)
            .unwrap()
            .with_ready_marker(true)
            .list()
            .await
            .unwrap();
        assert_eq!(
            marked["a"].versions.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
    }
}
