//! The local model repository (`<root>/<model>/<version>/model.onnx` or
//! `model.pt`, config
//! beside the versions). Listing reads the folder; changes are noticed by a
//! `notify` watcher (create/modify/remove events, debounced by the caller) and
//! by the periodic re-scan. Fingerprints are the model file's size and mtime,
//! so a file still being written changes between scans and is not loaded
//! until it settles (or, when required, until a `READY` marker appears).
//! A model with no files of its own (a remote one) may also be a single
//! `<root>/<model>.config.yaml`: the layout a Kubernetes ConfigMap mounted as
//! the repository gives, where keys cannot hold folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{Listing, MODEL_FILES, ModelListing, Source, SourceError, VersionListing};
use crate::config::names::valid_model_name;

/// `<model>.config.yaml` at the repository's top: a model with no files of its own.
const FLAT_CONFIG_SUFFIX: &str = ".config.yaml";

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
            let mut flat = Vec::new();
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if let Some(model) = name.strip_suffix(FLAT_CONFIG_SUFFIX)
                    && valid_model_name(model)
                    && entry.path().is_file()
                {
                    flat.push((model.to_owned(), entry.path()));
                    continue;
                }
                if !valid_model_name(&name) || !entry.path().is_dir() {
                    continue;
                }
                let model = source.list_model(&entry.path());
                if model.config.is_some() || !model.versions.is_empty() {
                    listing.insert(name, model);
                }
            }
            for (model, path) in flat {
                let config = match crate::config::file::read_config_file(&path) {
                    Ok(Some(text)) if !listing.contains_key(&model) => text,
                    Ok(Some(_)) => Err(format!(
                        "both {model}/ and {model}{FLAT_CONFIG_SUFFIX} define model `{model}`; keep one"
                    )),
                    Ok(None) => continue,
                    Err(err) => Err(err.to_string()),
                };
                listing.insert(
                    model,
                    ModelListing {
                        config: Some(("config.yaml".to_owned(), config)),
                        ..ModelListing::default()
                    },
                );
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

    #[tokio::test]
    async fn a_configmap_mount_lists_flat_model_configs() {
        // What the kubelet writes: keys are symlinks into a hidden, dated folder.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let data = root.join("..2026_12_01_00_00_00.1");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("iris.config.yaml"), "platform: remote\n").unwrap();
        std::fs::write(data.join("routes.yaml"), "endpoints: {}\n").unwrap();
        std::os::unix::fs::symlink(&data, root.join("..data")).unwrap();
        for key in ["iris.config.yaml", "routes.yaml"] {
            std::os::unix::fs::symlink(root.join("..data").join(key), root.join(key)).unwrap();
        }
        std::fs::create_dir_all(root.join("both/1")).unwrap();
        std::fs::write(root.join("both/config.yaml"), "max_batch_size: 1").unwrap();
        std::fs::write(root.join("both.config.yaml"), "max_batch_size: 2").unwrap();
        let listing = LocalSource::new(root).unwrap().list().await.unwrap();
        assert_eq!(listing.keys().collect::<Vec<_>>(), vec!["both", "iris"]);
        let iris = listing["iris"].config.as_ref().unwrap();
        assert!(
            iris.1.as_ref().is_ok_and(|text| text.contains("remote")),
            "{iris:?}"
        );
        assert!(listing["iris"].versions.is_empty());
        let both = listing["both"].config.as_ref().unwrap();
        assert!(
            both.1.as_ref().is_err_and(|e| e.contains("keep one")),
            "{both:?}"
        );
    }
}
