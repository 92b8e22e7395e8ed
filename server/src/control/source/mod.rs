//! Where models come from. A `Source` lists models and versions (with a
//! fingerprint that changes when content changes) and materializes a version
//! as a local folder holding its model file. Sources: a local folder (the
//! default, watched), S3-compatible object storage, and the MLflow Model
//! Registry. They know nothing of loading, batching or serving.

pub mod local;
pub mod mlflow;
pub mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Model files a version folder may hold (ONNX, TorchScript), in order of preference.
pub const MODEL_FILES: &[&str] = &["model.onnx", "model.pt"];

/// One version as the source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionListing {
    /// Changes whenever the version's content changes (mtime+size, ETag, immutable id).
    pub fingerprint: String,
}

pub use crate::config::file::ConfigText;

/// One model as the source lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelListing {
    pub versions: BTreeMap<u64, VersionListing>,
    /// The model's config file (name, text or why it is unreadable), if the source has one.
    pub config: Option<(String, ConfigText)>,
    /// Versions named by aliases (MLflow), alias → version.
    pub aliases: BTreeMap<String, u64>,
    /// When set, only this version is wanted (an alias or a pinned version).
    pub pinned: Option<u64>,
}

pub type Listing = BTreeMap<String, ModelListing>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The source could not be reached or listed; what is serving stays.
    #[error("{source_name} is unreachable: {reason}")]
    Unreachable { source_name: String, reason: String },
    /// A version could not be fetched.
    #[error("fetching {what} from {source_name}: {reason}")]
    Fetch {
        source_name: String,
        what: String,
        reason: String,
    },
}

#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// A short name for logs, metrics and errors (`local:/models`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Lists every model and version.
    async fn list(&self) -> Result<Listing, SourceError>;

    /// Makes a version available locally; returns the folder holding its model file.
    async fn fetch(
        &self,
        model: &str,
        version: u64,
        listing: &VersionListing,
    ) -> Result<PathBuf, SourceError>;

    /// Whether new or changed versions must be seen unchanged twice before
    /// loading (a local folder may hold a half-copied file; object stores and
    /// registries publish whole objects).
    fn needs_settling(&self) -> bool {
        false
    }
}

/// The folder a `--model-repository` value names, when it names one (a path
/// or `file://path`); `None` for every other scheme. The one place that
/// decides which values are local.
pub fn local_path(uri: &str) -> Option<PathBuf> {
    match uri.split_once("://") {
        None => Some(PathBuf::from(uri)),
        Some(("file", path)) => Some(PathBuf::from(path)),
        Some(_) => None,
    }
}

/// Parses a `--model-repository` value: a folder, `s3://bucket/prefix` or
/// `mlflow://host:port/<model>@<alias>` / `mlflow://host:port/<model>/<version>`.
pub fn from_uri(uri: &str, cache_dir: &Path) -> Result<Box<dyn Source>, String> {
    if let Some(path) = local_path(uri) {
        return Ok(Box::new(local::LocalSource::new(&path)?));
    }
    if let Some(rest) = uri.strip_prefix("s3://") {
        return Ok(Box::new(s3::S3Source::new(rest, cache_dir)?));
    }
    if uri.starts_with("mlflow://") || uri.starts_with("mlflow+https://") {
        return Ok(Box::new(mlflow::MlflowSource::new(uri, cache_dir)?));
    }
    let scheme = uri.split_once("://").map_or(uri, |(scheme, _)| scheme);
    Err(format!(
        "unknown model repository scheme `{scheme}://`; expected a folder, s3:// or mlflow://"
    ))
}

/// Writes `data` to `dest` atomically (temp file, then rename), so a reader
/// never sees a half-written file.
pub fn write_atomically(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dest)
}

/// A cache folder name derived from content identity (hex of a 64-bit hash of the parts).
pub fn content_key(parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
