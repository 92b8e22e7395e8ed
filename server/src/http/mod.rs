//! The KServe v2 REST edge (axum): health, metadata, inference (JSON and the
//! binary tensor extension) and the repository extension. Handlers decode,
//! call `infer`, encode; errors become `{"error": ...}` through `ApiError`.

pub mod codec;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use switchyard_runtimes::TensorSpec;

use crate::error::ApiError;
use crate::infer::{Served, infer};
use crate::model::ModelVersion;
use crate::state::AppState;
use codec::{HEADER_CONTENT_LENGTH, decode_request, encode_response};

pub const SERVER_NAME: &str = "switchyard";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions we implement, as `/v2` reports them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
];

/// The REST API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_versioned),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_versioned),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_versioned),
        )
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_versioned),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/repository/webhooks/mlflow", post(mlflow_webhook))
        .route("/v2/endpoints", get(list_endpoints))
        .route("/v2/endpoints/{endpoint}", get(get_endpoint))
        .fallback(no_route)
        // Bodies are read with our own limit so an oversize one gets our 413 body.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        ApiError::new(
                            crate::error::ErrorKind::RequestTimeout,
                            "the request was not complete within --request-timeout",
                        )
                    },
                ))
                .timeout(state.settings.request_timeout),
        )
        .with_state(state)
}

/// What a path needs: nothing (probes, webhook), inference, or admin rights.
fn scope_of(method: &Method, path: &str) -> Option<crate::auth::Scope> {
    use crate::auth::Scope;
    if path.starts_with("/v2/health/") || path == "/v2/repository/webhooks/mlflow" {
        return None;
    }
    if method == Method::POST
        && path.starts_with("/v2/repository/models/")
        && (path.ends_with("/load") || path.ends_with("/unload"))
    {
        return Some(Scope::Admin);
    }
    Some(Scope::Inference)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(scope) = scope_of(request.method(), request.uri().path()) {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(err) = state.settings.tokens.check(authorization, scope) {
            let unauthenticated = err.kind == crate::error::ErrorKind::Unauthenticated;
            let mut response = err.into_response();
            if unauthenticated {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    }
    next.run(request).await
}

/// The metrics router, served on its own port.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<Arc<AppState>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    state.metrics.render(),
                )
            }),
        )
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": SERVER_VERSION,
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<serde_json::Value> {
    specs
        .iter()
        .map(|spec| json!({"name": spec.name, "datatype": spec.datatype.as_str(), "shape": spec.shape}))
        .collect()
}

fn metadata_of(state: &AppState, model: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let catalog = state.catalog();
    let found = catalog.lookup(model, version)?;
    let versions: Vec<String> = catalog
        .models
        .get(model)
        .map(|entry| entry.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({
        "name": found.name,
        "versions": versions,
        "platform": found.config.platform.as_str(),
        "inputs": tensor_metadata(&found.signature.inputs),
        "outputs": tensor_metadata(&found.signature.outputs),
    }))
    .into_response())
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    metadata_of(&state, &model, None)
}

async fn model_metadata_versioned(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_of(&state, &model, Some(&version))
}

fn readiness_of(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<StatusCode, ApiError> {
    match state.catalog().lookup(model, version) {
        Ok(_) => Ok(StatusCode::OK),
        // Known but not serving: "not ready" rather than an error.
        Err(err) if err.kind == crate::error::ErrorKind::Unavailable => {
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(err) => Err(err),
    }
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    readiness_of(&state, &model, None)
}

async fn model_ready_versioned(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    readiness_of(&state, &model, Some(&version))
}

/// The configuration in Triton's JSON shape, so `get_model_config` works.
fn config_json(model: &ModelVersion) -> serde_json::Value {
    let batching = model.config.max_batch_size > 0;
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        if batching {
            spec.shape.iter().skip(1).copied().collect()
        } else {
            spec.shape.clone()
        }
    };
    let tensors = |specs: &[TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|spec| {
                let dt = match spec.datatype {
                    switchyard_runtimes::DataType::Bytes => "TYPE_STRING".to_owned(),
                    other => format!("TYPE_{}", other.as_str()),
                };
                json!({"name": spec.name, "data_type": dt, "dims": dims(spec)})
            })
            .collect()
    };
    json!({
        "name": model.name,
        "platform": model.config.platform.as_str(),
        "backend": "onnxruntime",
        "max_batch_size": model.config.max_batch_size,
        "input": tensors(&model.signature.inputs),
        "output": tensors(&model.signature.outputs),
        "instance_group": [{"count": model.config.instance_count, "kind": "KIND_CPU"}],
    })
}

async fn model_config(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let found = state.catalog().lookup(&model, None)?;
    Ok(axum::Json(config_json(&found)).into_response())
}

async fn model_config_versioned(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = state.catalog().lookup(&model, Some(&version))?;
    Ok(axum::Json(config_json(&found)).into_response())
}

/// Reads a body up to `limit` bytes; larger ones are refused with 413.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            crate::error::ErrorKind::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes (--max-request-bytes)"),
        )
    };
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(ApiError::invalid(format!(
            "Content-Encoding {encoding:?} is not supported; send the body uncompressed"
        )));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let over_limit = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            ApiError::invalid(format!("reading the request body failed: {err}"))
        }
    })
}

async fn infer_latest(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_http(state, model, None, headers, body).await
}

async fn infer_versioned(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_http(state, model, Some(version), headers, body).await
}

async fn infer_http(
    state: Arc<AppState>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut served = Served {
        model: None,
        started: Instant::now(),
    };
    let span = tracing::info_span!("infer", model = %model, protocol = "http");
    crate::telemetry::adopt_parent(&span, &headers);
    let result = tracing::Instrument::instrument(
        async {
            let header_length = match headers.get(HEADER_CONTENT_LENGTH) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "Inference-Header-Content-Length must be a byte count, got {value:?}"
                        ))
                    })?,
            ),
        };
            let body = read_body(body, &headers, state.settings.max_request_bytes).await?;
            let mut decoded = tracing::info_span!("decode")
                .in_scope(|| decode_request(&model, version.as_deref(), body, header_length))?;
            decoded.request.headers = headers.clone();
            let response = infer(&state, decoded.request, &mut served).await?;
            let routed = response.routed.clone();
            tracing::info_span!("encode")
                .in_scope(|| encode_response(&decoded.binary, &response))
                .map(|encoded| (encoded, routed))
        },
        span,
    )
    .await;
    served.record(&state, "http", &result);
    match result {
        Ok((encoded, routed)) => {
            let mut response = Response::new(Body::from(encoded.body));
            let headers = response.headers_mut();
            if let Some((endpoint, variant)) = routed
                && let (Ok(endpoint), Ok(variant)) = (
                    HeaderValue::try_from(endpoint),
                    HeaderValue::try_from(variant),
                )
            {
                headers.insert("x-switchyard-endpoint", endpoint);
                headers.insert("x-switchyard-variant", variant);
            }
            match encoded.json_length {
                Some(len) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    headers.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(len));
                }
                None => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            response
        }
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, &headers, 64 << 10).await?;
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|err| ApiError::invalid(format!("malformed JSON request body: {err}")))?
    };
    Ok(axum::Json(state.catalog().index(request.ready)).into_response())
}

#[derive(Deserialize, Default)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// Parses a load/unload body; Triton's config/file overrides are refused, not ignored.
async fn control_request(
    headers: &HeaderMap,
    body: Body,
    allowed: &[&str],
) -> Result<(), ApiError> {
    let body = read_body(body, headers, 64 << 10).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: ControlRequest = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("malformed JSON request body: {err}")))?;
    if let Some(key) = request
        .parameters
        .keys()
        .find(|key| !allowed.contains(&key.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "parameter `{key}` is not supported; models load from the repository as they are"
        )));
    }
    Ok(())
}

async fn repository_load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    control_request(&headers, body, &[]).await?;
    state.load_model(&model).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    control_request(&headers, body, &["unload_dependents"]).await?;
    state.unload_model(&model).await?;
    Ok(StatusCode::OK)
}

/// MLflow registry webhook: verified, then the sources are re-read at once.
async fn mlflow_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(secret) = state.settings.mlflow_webhook_secret.as_deref() else {
        return Err(ApiError::new(
            crate::error::ErrorKind::PermissionDenied,
            "MLflow webhooks are disabled; start the server with --mlflow-webhook-secret",
        ));
    };
    let body = read_body(body, &headers, 1 << 20).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::webhook::verify(
        secret,
        header("x-mlflow-delivery-id"),
        header("x-mlflow-timestamp"),
        header("x-mlflow-signature"),
        &body,
        crate::webhook::unix_now(),
    )?;
    state.poke();
    Ok(axum::Json(json!({"accepted": true})).into_response())
}

/// One endpoint with its variants' weights and readiness and its canary's state.
fn endpoint_json(
    state: &AppState,
    catalog: &crate::catalog::Catalog,
    endpoint: &crate::routing::Endpoint,
) -> serde_json::Value {
    let canaries = state.traffic.canary_states();
    let variants: Vec<serde_json::Value> = endpoint
        .variants
        .iter()
        .map(|v| {
            let served = catalog.resolve(&v.target).ok();
            json!({
                "name": v.name,
                "model": v.target.model,
                "version": v.target.version,
                "alias": v.target.alias,
                "weight": v.weight,
                "ready": served.is_some(),
                "serving_version": served.map(|m| m.version.to_string()),
            })
        })
        .collect();
    json!({
        "name": endpoint.name,
        "variants": variants,
        "override_header": endpoint.override_header,
        "sticky": endpoint.sticky,
        "shadow": endpoint.shadow,
        "canary": endpoint.canary.as_ref().map(|policy| json!({
            "policy": policy,
            "state": canaries.get(&endpoint.name),
        })),
    })
}

async fn list_endpoints(State(state): State<Arc<AppState>>) -> Response {
    let catalog = state.catalog();
    let endpoints: Vec<serde_json::Value> = catalog
        .routes
        .endpoints
        .values()
        .map(|e| endpoint_json(&state, &catalog, e))
        .collect();
    axum::Json(json!({"endpoints": endpoints, "route_file_error": catalog.routes_error}))
        .into_response()
}

async fn get_endpoint(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let catalog = state.catalog();
    let endpoint = catalog
        .routes
        .endpoints
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("unknown endpoint `{name}`")))?;
    Ok(axum::Json(endpoint_json(&state, &catalog, endpoint)).into_response())
}
