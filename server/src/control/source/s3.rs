//! S3-compatible object storage (`s3://bucket/prefix`) through `object_store`.
//! Endpoint and credentials come from the standard `AWS_*` variables
//! (`AWS_ENDPOINT_URL` for MinIO, moto or other S3-compatible stores). One
//! LIST per poll finds changes by ETag; a version is downloaded once into a
//! content-addressed cache folder (temp file, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{
    Listing, MODEL_FILES, Source, SourceError, VersionListing, content_key, stream_atomically,
};
use crate::config::names::valid_model_name;

pub struct S3Source {
    bucket: String,
    prefix: String,
    store: Arc<dyn ObjectStore>,
    cache_dir: PathBuf,
    /// Config files by key: (ETag, text), so unchanged configs are not re-read.
    configs: Mutex<HashMap<String, (String, crate::config::file::ConfigText)>>,
}

impl S3Source {
    /// `location` is `bucket[/prefix]` (after `s3://`).
    pub fn new(location: &str, cache_dir: &Path) -> Result<Self, String> {
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err("s3:// needs a bucket name (s3://bucket/prefix)".to_owned());
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if std::env::var("AWS_DEFAULT_REGION").is_err() && std::env::var("AWS_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .build()
            .map_err(|err| format!("s3://{location}: {err}"))?;
        Ok(S3Source {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            store: Arc::new(store),
            cache_dir: cache_dir.join("s3"),
            configs: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    fn unreachable(&self, err: impl std::fmt::Display) -> SourceError {
        SourceError::Unreachable {
            source_name: self.describe(),
            reason: err.to_string(),
        }
    }

    async fn config_text(
        &self,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<crate::config::file::ConfigText, SourceError> {
        if let Ok(cache) = self.configs.lock()
            && let Some((seen, text)) = cache.get(key)
            && seen == etag
        {
            return Ok(text.clone());
        }
        // Known from the listing: a config over the bound is never downloaded.
        if size > crate::config::file::MAX_CONFIG_BYTES as u64 {
            return Ok(Err(format!(
                "the file is {size} bytes; config files may be at most {} bytes",
                crate::config::file::MAX_CONFIG_BYTES
            )));
        }
        let bytes = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| self.unreachable(e))?
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))?;
        let text = crate::config::file::config_text(&bytes);
        if let Ok(mut cache) = self.configs.lock() {
            cache.insert(key.to_owned(), (etag.to_owned(), text.clone()));
        }
        Ok(text)
    }
}

#[async_trait::async_trait]
impl Source for S3Source {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn list(&self) -> Result<Listing, SourceError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut listing: Listing = BTreeMap::new();
        let mut configs = Vec::new();
        for object in objects {
            let full = object.location.to_string();
            let rest = if self.prefix.is_empty() {
                full.as_str()
            } else {
                match full.strip_prefix(&format!("{}/", self.prefix)) {
                    Some(rest) => rest,
                    None => continue,
                }
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let etag = object
                .e_tag
                .clone()
                .unwrap_or_else(|| format!("{}-{}", object.size, object.last_modified));
            match parts.as_slice() {
                [model, file @ ("config.yaml" | "config.pbtxt")] if valid_model_name(model) => {
                    configs.push((
                        (*model).to_owned(),
                        (*file).to_owned(),
                        full.clone(),
                        etag,
                        object.size,
                    ));
                }
                [model, version, file] if valid_model_name(model) && MODEL_FILES.contains(file) => {
                    let Some(version) = version
                        .parse::<u64>()
                        .ok()
                        .filter(|v| *v > 0 && v.to_string() == *version)
                    else {
                        continue;
                    };
                    let versions = &mut listing.entry((*model).to_owned()).or_default().versions;
                    // The preferred file wins when a version has several.
                    let preferred = versions.get(&version).is_none_or(|listed| {
                        let (listed_file, _) = split_fingerprint(&listed.fingerprint);
                        rank(file) < rank(listed_file)
                    });
                    if preferred {
                        // The file name is part of the fingerprint, so `fetch` knows
                        // which object to get and a change of format is a change.
                        let fingerprint = format!("{file}:{etag}");
                        versions.insert(version, VersionListing { fingerprint });
                    }
                }
                _ => {}
            }
        }
        // config.yaml wins over config.pbtxt, as in a local folder.
        configs.sort_by(|a, b| (&a.0, &b.1).cmp(&(&b.0, &a.1)));
        for (model, file, key, etag, size) in configs {
            let entry = listing.entry(model).or_default();
            if entry.config.is_none() {
                entry.config = Some((file, self.config_text(&key, &etag, size).await?));
            }
        }
        Ok(listing)
    }

    async fn fetch(
        &self,
        model: &str,
        version: u64,
        listing: &VersionListing,
    ) -> Result<PathBuf, SourceError> {
        let (file_name, _) = split_fingerprint(&listing.fingerprint);
        let key = self.key(&format!("{model}/{version}/{file_name}"));
        let dir = self
            .cache_dir
            .join(content_key(&[&self.bucket, &key, &listing.fingerprint]));
        let file = dir.join(file_name);
        if file.is_file() {
            return Ok(dir);
        }
        let fail = |reason: String| SourceError::Fetch {
            source_name: self.describe(),
            what: key.clone(),
            reason,
        };
        // Streamed to disk: a large model is never held in memory whole.
        let chunks = self
            .store
            .get(&ObjectPath::from(key.as_str()))
            .await
            .map_err(|e| fail(e.to_string()))?
            .into_stream();
        stream_atomically(&file, chunks).await.map_err(fail)?;
        Ok(dir)
    }
}
/// `model.pt:<etag>` → (`model.pt`, `<etag>`).
fn split_fingerprint(fingerprint: &str) -> (&str, &str) {
    fingerprint
        .split_once(':')
        .filter(|(file, _)| MODEL_FILES.contains(file))
        .unwrap_or(("model.onnx", fingerprint))
}

/// Position in `MODEL_FILES`: lower is preferred.
fn rank(file: &str) -> usize {
    MODEL_FILES
        .iter()
        .position(|f| *f == file)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_carry_the_model_file() {
        assert_eq!(
            split_fingerprint("model.pt:\"abc\""),
            ("model.pt", "\"abc\"")
        );
        assert_eq!(split_fingerprint("model.onnx:e"), ("model.onnx", "e"));
        // ETags may hold colons; only a known file name is split off.
        assert_eq!(
            split_fingerprint("12-2026:01"),
            ("model.onnx", "12-2026:01")
        );
        assert!(rank("model.onnx") < rank("model.pt"));
        assert_eq!(rank("other.bin"), usize::MAX);
    }
}
