//! The local model repository (`<root>/<model>/<version>/model.onnx`, optional
//! `<root>/<model>/config.yaml`): finding models and versions on disk and
//! loading them into `ModelEntry`s. Knows nothing of transports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::catalog::ModelEntry;
use crate::metrics::Metrics;
use crate::model::{ModelVersion, model_file_name};
use crate::model_config::{ConfigDefaults, ModelConfig};

/// Whether `name` is safe as a model name: also a single path component, so it
/// can never reach outside the repository.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    defaults: ConfigDefaults,
}

impl Repository {
    pub fn open(root: &Path, defaults: ConfigDefaults) -> Result<Self, String> {
        if !root.is_dir() {
            return Err(format!(
                "model repository {} is not a directory",
                root.display()
            ));
        }
        Ok(Repository {
            root: root.to_owned(),
            defaults,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the models present: folders holding a config or a version folder.
    pub fn model_names(&self) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|err| format!("{}: {err}", self.root.display()))?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() || !valid_model_name(&name) {
                continue;
            }
            if path.join("config.yaml").is_file()
                || path.join("config.pbtxt").is_file()
                || !version_dirs(&path).is_empty()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether the repository holds a model of this name.
    pub fn contains(&self, name: &str) -> bool {
        valid_model_name(name) && self.root.join(name).is_dir()
    }

    /// Loads every version of `name` its policy selects. Blocking. Failures are
    /// recorded in the entry (per version, or for the whole model), never panics.
    pub fn load_model(&self, name: &str, metrics: &Metrics) -> ModelEntry {
        let dir = self.root.join(name);
        if !self.contains(name) {
            return ModelEntry::failed(format!(
                "no model `{name}` in repository {}",
                self.root.display()
            ));
        }
        let config = match ModelConfig::load(&dir, &self.defaults) {
            Ok((config, warnings)) => {
                for warning in warnings {
                    warn!(model = name, %warning, "Model configuration field has no effect.");
                }
                config
            }
            Err(err) => return ModelEntry::failed(err),
        };
        let present = version_dirs(&dir);
        let selected = config
            .version_policy
            .select(&present.keys().copied().collect::<Vec<_>>());
        if selected.is_empty() {
            return ModelEntry::failed(format!(
                "no version folder with {} matches the version policy {:?} (present: {:?})",
                model_file_name(config.platform),
                config.version_policy,
                present.keys().collect::<Vec<_>>()
            ));
        }
        let mut entry = ModelEntry::default();
        for version in selected {
            let Some(version_dir) = present.get(&version) else {
                continue;
            };
            match ModelVersion::load(name, version, version_dir, &config, metrics) {
                Ok(loaded) => {
                    entry.versions.insert(version, loaded);
                }
                Err(reason) => {
                    warn!(model = name, version, %reason, "Model version failed to load.");
                    entry.failed.insert(version, reason);
                }
            }
        }
        entry
    }
}

/// Numeric subfolders of a model folder, by version.
fn version_dirs(model_dir: &Path) -> BTreeMap<u64, PathBuf> {
    let Ok(entries) = std::fs::read_dir(model_dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // "01" and "1" would collide; only canonical numbers are versions.
            let version: u64 = name
                .parse()
                .ok()
                .filter(|v: &u64| v.to_string() == name && *v > 0)?;
            Some((version, entry.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_escape_the_repository() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            ".hidden",
            "a\\b",
            "name with space",
        ] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
        for good in ["mlp", "iris-v2", "resnet_50", "model.v1"] {
            assert!(valid_model_name(good), "{good:?}");
        }
    }

    #[test]
    fn only_canonical_numeric_folders_are_versions() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "2", "010", "0", "latest"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(
            version_dirs(dir.path()).keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
