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
    /// A version offered to a rollout beside the pinned one (MLflow's
    /// candidate alias): loaded too, it becomes the rollout's candidate.
    pub candidate: Option<u64>,
}

/// How a rollout of one of a source's versions ended, for a source that
/// records it (MLflow: the serving alias moves, tags say why).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub version: u64,
    /// The stable version it was judged against.
    pub previous: u64,
    pub promoted: bool,
    pub reason: String,
    /// What it was judged on (JSON: the decisions and their numbers).
    pub evidence: String,
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

    /// Records a rollout's outcome in the source itself (most sources keep none).
    async fn record_rollout(
        &self,
        _model: &str,
        _record: &RolloutRecord,
    ) -> Result<(), SourceError> {
        Ok(())
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

/// Streams `chunks` into `dest` atomically (temp file, then rename): memory
/// holds a few chunks in flight, never the file, so a multi-GB version does
/// not double the process's RSS. The writes run on a blocking thread. A failed
/// stream or write leaves no file behind. Returns the bytes written.
pub async fn stream_atomically<S, E>(dest: &Path, mut chunks: S) -> Result<u64, String>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let path = tmp.clone();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(&path)?;
        let mut written = 0u64;
        while let Some(chunk) = receiver.blocking_recv() {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok(written)
    });
    let mut failure = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            // A closed channel means the writer failed: its error says why.
            Ok(chunk) => {
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                failure = Some(err.to_string());
                break;
            }
        }
    }
    drop(sender);
    let written = writer
        .await
        .map_err(|e| format!("the writer thread failed: {e}"))
        .and_then(|r| r.map_err(|e| format!("writing {}: {e}", tmp.display())));
    let result = match (failure, written) {
        (None, Ok(written)) => std::fs::rename(&tmp, dest)
            .map(|()| written)
            .map_err(|e| e.to_string()),
        (Some(reason), _) => Err(reason),
        (None, Err(reason)) => Err(reason),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A cache folder name derived from content identity: the first 8 bytes of
/// the SHA-256 of the parts, in hex (the same in every build).
pub fn content_key(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v/model.onnx");
        let chunks: Vec<Result<bytes::Bytes, String>> = (0..100u8)
            .map(|i| Ok(bytes::Bytes::from(vec![i; 10_000])))
            .collect();
        let written = stream_atomically(&dest, futures::stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(written, 1_000_000);
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(data.len(), 1_000_000);
        assert!(data[..10_000].iter().all(|&b| b == 0) && data[990_000..].iter().all(|&b| b == 99));
        // Cut off half way: the error is reported, no file and no temp file remain.
        let broken = dir.path().join("w/model.onnx");
        let chunks: Vec<Result<bytes::Bytes, String>> = vec![
            Ok(bytes::Bytes::from_static(b"partial")),
            Err("connection reset".to_owned()),
        ];
        let err = stream_atomically(&broken, futures::stream::iter(chunks))
            .await
            .unwrap_err();
        assert!(err.contains("connection reset"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn content_keys_are_fixed_for_given_parts() {
        assert_eq!(
            content_key(&["bucket", "key"]),
            content_key(&["bucket", "key"])
        );
        assert_ne!(
            content_key(&["bu", "cketkey"]),
            content_key(&["bucket", "key"])
        );
        assert_eq!(content_key(&["a"]).len(), 16);
    }
}
