//! The MLflow Model Registry as a source, over its REST API:
//! `mlflow://host:port/<model>@<alias>` serves the version an alias names,
//! `mlflow://host:port/<model>/<version>` one fixed version, and
//! `mlflow://host:port/<model>` the newest version. Aliases are read from
//! `registered-models/get` (moving an alias does not change the model's
//! `last_updated_timestamp`, so the alias list itself is compared each poll).
//! Artifacts are found with `model-versions/get-download-uri`, the model file
//! from the `MLmodel` file's `onnx` flavor, and downloaded through the
//! artifacts proxy (`mlflow-artifacts:`), from a local path, or from S3,
//! streamed to disk (never whole in memory).
//!
//! Rollouts: `...@champion?candidate=challenger` also loads the version the
//! candidate alias names, and a `switchyard.config` tag on the registered
//! model is its `config.yaml` (a `rollout:` policy there judges the
//! candidate). The outcome is written back: a promotion moves the serving
//! alias to the candidate; both outcomes tag the version (`switchyard.rollout`,
//! `switchyard.reason`, `switchyard.evidence`). Credentials are read as MLflow
//! clients read them: `MLFLOW_TRACKING_TOKEN` (bearer), else
//! `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (basic).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    Listing, ModelListing, RolloutRecord, Source, SourceError, VersionListing, content_key,
    stream_atomically,
};
use crate::config::names::valid_model_name;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Alias(String),
    Version(u64),
    Newest,
}

pub struct MlflowSource {
    base: String,
    model: String,
    selector: Selector,
    /// The alias whose version is offered to a rollout (`?candidate=`).
    candidate: Option<String>,
    credentials: Credentials,
    client: reqwest::Client,
    cache_dir: PathBuf,
}

/// How requests authenticate (the MLflow client's environment variables).
#[derive(Debug, Clone, Default)]
enum Credentials {
    #[default]
    None,
    Token(String),
    Basic(String, String),
}

impl Credentials {
    fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        match (
            var("MLFLOW_TRACKING_TOKEN"),
            var("MLFLOW_TRACKING_USERNAME"),
            var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Some(token), _, _) => Credentials::Token(token),
            (None, Some(user), password) => Credentials::Basic(user, password.unwrap_or_default()),
            _ => Credentials::None,
        }
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credentials::None => request,
            Credentials::Token(token) => request.bearer_auth(token),
            Credentials::Basic(user, password) => request.basic_auth(user, Some(password)),
        }
    }
}

/// The registered-model tag holding the model's Switchyard `config.yaml`.
const CONFIG_TAG: &str = "switchyard.config";

#[derive(Deserialize)]
struct RegisteredModelResponse {
    registered_model: RegisteredModel,
}

#[derive(Deserialize)]
struct RegisteredModel {
    #[serde(default)]
    aliases: Vec<Alias>,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct Alias {
    alias: String,
    version: String,
}

#[derive(Deserialize)]
struct SearchResponse {
    #[serde(default)]
    model_versions: Vec<ModelVersionInfo>,
}

#[derive(Deserialize)]
struct ModelVersionInfo {
    version: String,
}

#[derive(Deserialize)]
struct DownloadUri {
    artifact_uri: String,
}

#[derive(Deserialize)]
struct MlModelFile {
    #[serde(default)]
    flavors: BTreeMap<String, serde_yaml_ng::Value>,
}

impl MlflowSource {
    pub fn new(uri: &str, cache_dir: &Path) -> Result<Self, String> {
        let (scheme, rest) = match uri.strip_prefix("mlflow+https://") {
            Some(rest) => ("https", rest),
            None => ("http", uri.strip_prefix("mlflow://").unwrap_or(uri)),
        };
        let (host, path) = rest.split_once('/').ok_or_else(|| {
            format!("{uri}: expected mlflow://host:port/<model>[@alias|/version]")
        })?;
        let (path, candidate) = match path.split_once('?') {
            None => (path, None),
            Some((path, query)) => {
                let mut candidate = None;
                for pair in query.split('&') {
                    match pair.split_once('=') {
                        Some(("candidate", alias)) if !alias.is_empty() => {
                            candidate = Some(alias.to_owned())
                        }
                        _ => {
                            return Err(format!(
                                "{uri}: unknown query `{pair}`; the one option is `?candidate=<alias>`"
                            ));
                        }
                    }
                }
                (path, candidate)
            }
        };
        let (model, selector) = if let Some((model, alias)) = path.split_once('@') {
            (model, Selector::Alias(alias.to_owned()))
        } else if let Some((model, version)) = path.split_once('/') {
            let version = version
                .parse()
                .map_err(|_| format!("{uri}: `{version}` is not a model version number"))?;
            (model, Selector::Version(version))
        } else {
            (path, Selector::Newest)
        };
        if !valid_model_name(model) {
            return Err(format!(
                "{uri}: registered model `{model}` is not a valid serving name (letters, digits, `_`, `-`, `.`)"
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|err| err.to_string())?;
        Ok(MlflowSource {
            base: format!("{scheme}://{host}"),
            model: model.to_owned(),
            selector,
            candidate,
            credentials: Credentials::from_env(),
            client,
            cache_dir: cache_dir.join("mlflow"),
        })
    }

    fn unreachable(&self, err: impl std::fmt::Display) -> SourceError {
        SourceError::Unreachable {
            source_name: self.describe(),
            reason: err.to_string(),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, SourceError> {
        let request = self.client.get(format!("{}{path}", self.base)).query(query);
        let body = self.send(path, request).await?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(format!("{path}: {e}")))
    }

    /// A registry write (`POST` of a JSON body).
    async fn post_json(&self, path: &str, body: serde_json::Value) -> Result<(), SourceError> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(path, request).await.map(drop)
    }

    /// Sends a registry call with the credentials; its body, or why it failed.
    async fn send(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, SourceError> {
        let response = self
            .credentials
            .apply(request)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(self.unreachable(format!(
                "{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(body)
    }

    fn artifact_error(&self, what: String) -> impl Fn(String) -> SourceError + '_ {
        move |reason| SourceError::Fetch {
            source_name: self.describe(),
            what: what.clone(),
            reason,
        }
    }

    /// Where the artifact `name` under `artifact_uri` is read from.
    fn locate(&self, artifact_uri: &str, name: &str) -> Result<Artifact, SourceError> {
        let fail = self.artifact_error(format!("{artifact_uri}/{name}"));
        if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            // mlflow-artifacts:/path or mlflow-artifacts://host/path: the proxy path is what follows the host.
            let path = match rest.strip_prefix("//") {
                Some(with_host) => with_host
                    .split_once('/')
                    .map(|(_, p)| p)
                    .unwrap_or_default(),
                None => rest.trim_start_matches('/'),
            };
            return Ok(Artifact::Proxy(format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}",
                self.base
            )));
        }
        if let Some(bucket_key) = artifact_uri.strip_prefix("s3://") {
            let (bucket, key) = bucket_key.split_once('/').unwrap_or((bucket_key, ""));
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let path =
                object_store::path::Path::from(format!("{}/{name}", key.trim_end_matches('/')));
            return Ok(Artifact::S3(Box::new(store), path));
        }
        let local = artifact_uri.strip_prefix("file://").unwrap_or(artifact_uri);
        if local.starts_with('/') {
            return Ok(Artifact::Local(Path::new(local).join(name)));
        }
        Err(fail(
            "unsupported artifact location; expected mlflow-artifacts:, s3:// or a local path"
                .to_owned(),
        ))
    }

    /// The artifact's chunks as they arrive (HTTP body, S3 object).
    async fn open(
        &self,
        artifact: Artifact,
        what: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>, SourceError>
    {
        use futures::{StreamExt, TryStreamExt};
        use object_store::ObjectStoreExt;
        let fail = self.artifact_error(what.to_owned());
        match artifact {
            Artifact::Proxy(url) => {
                let response = self
                    .credentials
                    .apply(self.client.get(&url))
                    .send()
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(fail(format!("HTTP {status}")));
                }
                Ok(
                    futures::stream::try_unfold(response, |mut response| async move {
                        let chunk = response.chunk().await.map_err(|e| e.to_string())?;
                        Ok(chunk.map(|chunk| (chunk, response)))
                    })
                    .boxed(),
                )
            }
            Artifact::S3(store, path) => Ok(store
                .get(&path)
                .await
                .map_err(|e| fail(e.to_string()))?
                .into_stream()
                .map_err(|e| e.to_string())
                .boxed()),
            Artifact::Local(path) => {
                let data = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
                Ok(futures::stream::iter([Ok(bytes::Bytes::from(data))]).boxed())
            }
        }
    }

    /// Reads a small artifact (the `MLmodel` file) whole.
    async fn read_artifact(
        &self,
        artifact_uri: &str,
        name: &str,
    ) -> Result<bytes::Bytes, SourceError> {
        use futures::TryStreamExt;
        let what = format!("{artifact_uri}/{name}");
        let artifact = self.locate(artifact_uri, name)?;
        let chunks: Vec<bytes::Bytes> = self
            .open(artifact, &what)
            .await?
            .try_collect()
            .await
            .map_err(self.artifact_error(what))?;
        Ok(chunks.concat().into())
    }

    /// Streams the artifact (the model file) into `dest`, never whole in memory.
    async fn download_artifact(
        &self,
        artifact_uri: &str,
        name: &str,
        dest: &Path,
    ) -> Result<(), SourceError> {
        let what = format!("{artifact_uri}/{name}");
        let fail = self.artifact_error(what.clone());
        if let Artifact::Local(path) = self.locate(artifact_uri, name)? {
            // A local file is copied by the kernel, then renamed into place.
            let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
            }
            return std::fs::copy(&path, &tmp)
                .and_then(|_| std::fs::rename(&tmp, dest))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    fail(e.to_string())
                });
        }
        let chunks = self.open(self.locate(artifact_uri, name)?, &what).await?;
        stream_atomically(dest, chunks).await.map_err(fail)?;
        Ok(())
    }
}

/// Where an artifact lives.
enum Artifact {
    /// Through the tracking server's artifacts proxy.
    Proxy(String),
    S3(Box<object_store::aws::AmazonS3>, object_store::path::Path),
    Local(PathBuf),
}

#[async_trait::async_trait]
impl Source for MlflowSource {
    fn describe(&self) -> String {
        let selector = match &self.selector {
            Selector::Alias(alias) => format!("@{alias}"),
            Selector::Version(v) => format!("/{v}"),
            Selector::Newest => String::new(),
        };
        format!("mlflow:{}/{}{selector}", self.base, self.model)
    }

    async fn list(&self) -> Result<Listing, SourceError> {
        let registered: RegisteredModelResponse = self
            .get_json(
                "/api/2.0/mlflow/registered-models/get",
                &[("name", &self.model)],
            )
            .await?;
        let aliases: BTreeMap<String, u64> = registered
            .registered_model
            .aliases
            .iter()
            .filter_map(|a| Some((a.alias.clone(), a.version.parse().ok()?)))
            .collect();
        let wanted = match &self.selector {
            Selector::Alias(alias) => match aliases.get(alias) {
                Some(&v) => Some(v),
                None => {
                    return Err(self.unreachable(format!(
                        "registered model `{}` has no alias `{alias}` (aliases: {:?})",
                        self.model,
                        aliases.keys().collect::<Vec<_>>()
                    )));
                }
            },
            Selector::Version(v) => Some(*v),
            Selector::Newest => {
                let filter = format!("name='{}'", self.model);
                let search: SearchResponse = self
                    .get_json(
                        "/api/2.0/mlflow/model-versions/search",
                        &[("filter", &filter)],
                    )
                    .await?;
                search
                    .model_versions
                    .iter()
                    .filter_map(|v| v.version.parse::<u64>().ok())
                    .max()
            }
        };
        // A candidate alias not set (yet, or any more) offers nothing.
        let candidate = self
            .candidate
            .as_ref()
            .and_then(|alias| aliases.get(alias).copied())
            .filter(|v| Some(*v) != wanted);
        let config = registered
            .registered_model
            .tags
            .iter()
            .find(|t| t.key == CONFIG_TAG)
            .map(|t| {
                (
                    format!("{CONFIG_TAG} (registered model tag)"),
                    crate::config::file::config_text(t.value.as_bytes()),
                )
            });
        let mut model = ModelListing {
            aliases,
            pinned: wanted,
            candidate,
            config,
            ..ModelListing::default()
        };
        for version in wanted.into_iter().chain(candidate) {
            // Model versions are immutable in MLflow: the number identifies the content.
            model.versions.insert(
                version,
                VersionListing {
                    fingerprint: format!("mlflow-{}-{version}", self.model),
                },
            );
        }
        Ok(BTreeMap::from([(self.model.clone(), model)]))
    }

    async fn record_rollout(&self, model: &str, record: &RolloutRecord) -> Result<(), SourceError> {
        let version = record.version.to_string();
        let outcome = if record.promoted {
            "promoted"
        } else {
            "rolled_back"
        };
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let tags = [
            ("switchyard.rollout", outcome.to_owned()),
            ("switchyard.reason", record.reason.clone()),
            ("switchyard.compared_with", record.previous.to_string()),
            ("switchyard.decided_at", at),
            ("switchyard.evidence", record.evidence.clone()),
        ];
        for (key, value) in tags {
            self.post_json(
                "/api/2.0/mlflow/model-versions/set-tag",
                serde_json::json!({"name": model, "version": version, "key": key, "value": value}),
            )
            .await?;
        }
        // The alias moves last: whoever sees it moved finds the evidence there.
        if record.promoted
            && let Selector::Alias(alias) = &self.selector
        {
            self.post_json(
                "/api/2.0/mlflow/registered-models/alias",
                serde_json::json!({"name": model, "alias": alias, "version": version}),
            )
            .await?;
        }
        tracing::info!(
            model,
            version = record.version,
            outcome,
            alias = ?match &self.selector {
                Selector::Alias(alias) if record.promoted => Some(alias.as_str()),
                _ => None,
            },
            "Rollout outcome recorded in MLflow."
        );
        Ok(())
    }

    async fn fetch(
        &self,
        model: &str,
        version: u64,
        listing: &VersionListing,
    ) -> Result<PathBuf, SourceError> {
        let dir = self
            .cache_dir
            .join(content_key(&[&self.base, model, &listing.fingerprint]));
        if dir.join("model.onnx").is_file() {
            return Ok(dir);
        }
        let version_text = version.to_string();
        let uri: DownloadUri = self
            .get_json(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", model), ("version", &version_text)],
            )
            .await?;
        let artifact_uri = uri.artifact_uri.trim_end_matches('/').to_owned();
        let mlmodel = self.read_artifact(&artifact_uri, "MLmodel").await?;
        let parsed: MlModelFile = crate::config::file::config_text(&mlmodel)
            .and_then(|text| crate::config::file::parse_yaml(&text))
            .map_err(|reason| SourceError::Fetch {
                source_name: self.describe(),
                what: format!("{artifact_uri}/MLmodel"),
                reason,
            })?;
        let data = parsed
            .flavors
            .get("onnx")
            .and_then(|flavor| flavor.get("data"))
            .and_then(|d| d.as_str())
            .map(str::to_owned)
            .ok_or_else(|| SourceError::Fetch {
                source_name: self.describe(),
                what: format!("{artifact_uri}/MLmodel"),
                reason: format!(
                    "no `onnx` flavor with a `data` file (flavors: {:?}); only ONNX models can be served",
                    parsed.flavors.keys().collect::<Vec<_>>()
                ),
            })?;
        if data.contains("..") || data.starts_with('/') {
            return Err(SourceError::Fetch {
                source_name: self.describe(),
                what: format!("{artifact_uri}/MLmodel"),
                reason: format!("the onnx flavor's data path `{data}` leaves the artifact folder"),
            });
        }
        self.download_artifact(&artifact_uri, &data, &dir.join("model.onnx"))
            .await?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let cache = Path::new("/tmp");
        let s = MlflowSource::new("mlflow://127.0.0.1:5000/iris@champion", cache).unwrap();
        assert_eq!(
            (s.base.as_str(), s.model.as_str()),
            ("http://127.0.0.1:5000", "iris")
        );
        assert_eq!(s.selector, Selector::Alias("champion".into()));
        let s = MlflowSource::new("mlflow+https://reg.example:443/iris/3", cache).unwrap();
        assert_eq!(
            (s.base.as_str(), &s.selector),
            ("https://reg.example:443", &Selector::Version(3))
        );
        assert_eq!(
            MlflowSource::new("mlflow://h:1/iris", cache)
                .unwrap()
                .selector,
            Selector::Newest
        );
        assert!(MlflowSource::new("mlflow://h:1/iris/latest", cache).is_err());
        assert!(MlflowSource::new("mlflow://h:1", cache).is_err());
        assert!(MlflowSource::new("mlflow://h:1/bad name", cache).is_err());
        let s =
            MlflowSource::new("mlflow://h:1/iris@champion?candidate=challenger", cache).unwrap();
        assert_eq!(
            (&s.selector, s.candidate.as_deref()),
            (&Selector::Alias("champion".into()), Some("challenger"))
        );
        assert!(MlflowSource::new("mlflow://h:1/iris@champion?candidate=", cache).is_err());
        assert!(MlflowSource::new("mlflow://h:1/iris@champion?stage=prod", cache).is_err());
    }
}
