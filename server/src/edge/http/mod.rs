//! The KServe v2 REST edge (axum): health, metadata, inference (JSON and the
//! binary tensor extension), the repository extension, routed endpoints and
//! the MLflow webhook. Handlers decode, call the shared inference wrapper,
//! encode; errors become `{"error": ...}` through `ApiError`. Each route names
//! its `Operation`, and the one table in `edge` gives its auth scope.

pub mod codec;
pub mod compression;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use switchyard_runtimes::TensorSpec;

use crate::edge::{Edge, Operation, Protocol, model_info, observability};
use crate::error::ApiError;
use codec::{HEADER_CONTENT_LENGTH, decode_request, encode_response};

/// A route guarded by its operation's auth scope.
fn guarded(
    edge: &Arc<Edge>,
    operation: Operation,
    route: MethodRouter<Arc<Edge>>,
) -> MethodRouter<Arc<Edge>> {
    route.layer(axum::middleware::from_fn_with_state(
        (edge.clone(), operation),
        authenticate,
    ))
}

/// The REST API router.
pub fn router(edge: Arc<Edge>) -> Router {
    use Operation::*;
    let op = |operation, route| guarded(&edge, operation, route);
    Router::new()
        .route("/v2", op(ServerMetadata, get(server_metadata)))
        .route("/v2/health/live", op(ServerLive, get(live)))
        .route("/v2/health/ready", op(ServerReady, get(ready)))
        .route("/v2/models/{model}", op(ModelMetadata, get(model_metadata)))
        .route(
            "/v2/models/{model}/versions/{version}",
            op(ModelMetadata, get(model_metadata_versioned)),
        )
        .route("/v2/models/{model}/ready", op(ModelReady, get(model_ready)))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            op(ModelReady, get(model_ready_versioned)),
        )
        .route(
            "/v2/models/{model}/config",
            op(ModelConfig, get(model_config)),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            op(ModelConfig, get(model_config_versioned)),
        )
        .route("/v2/models/stats", op(ModelStatistics, get(all_statistics)))
        .route(
            "/v2/models/{model}/stats",
            op(ModelStatistics, get(model_statistics)),
        )
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            op(ModelStatistics, get(version_statistics)),
        )
        .route(
            "/v2/models/{model}/infer",
            op(ModelInfer, post(infer_latest)),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            op(ModelInfer, post(infer_versioned)),
        )
        .route(
            "/v2/repository/index",
            op(RepositoryIndex, post(repository_index)),
        )
        .route(
            "/v2/repository/models/{model}/load",
            op(ModelLoad, post(repository_load)),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            op(ModelUnload, post(repository_unload)),
        )
        .route(
            "/v2/repository/webhooks/mlflow",
            op(MlflowWebhook, post(mlflow_webhook)),
        )
        .route(
            "/v2/trace/setting",
            op(TraceSettings, get(trace_get).post(trace_post)),
        )
        .route(
            "/v2/models/{model}/trace/setting",
            op(TraceSettings, get(model_trace_get).post(model_trace_post)),
        )
        .route("/v2/logging", op(LogSettings, get(log_get).post(log_post)))
        .route(
            "/v2/systemsharedmemory/{*rest}",
            op(ServerMetadata, axum::routing::any(shared_memory)),
        )
        .route(
            "/v2/cudasharedmemory/{*rest}",
            op(ServerMetadata, axum::routing::any(shared_memory)),
        )
        .route("/v2/endpoints", op(Endpoints, get(list_endpoints)))
        .route(
            "/v2/endpoints/{endpoint}",
            op(Endpoints, get(get_endpoint)).merge(op(EndpointControl, put(put_endpoint))),
        )
        .route("/console", op(Console, get(console)))
        .route("/v2/rollouts", op(Endpoints, get(list_rollouts)))
        .route("/v2/rollouts/{endpoint}", op(Endpoints, get(get_rollout)))
        .route(
            "/v2/rollouts/{endpoint}/{action}",
            op(EndpointControl, post(command_rollout)),
        )
        .route(
            "/v2/endpoints/{endpoint}/canary/{action}",
            op(EndpointControl, post(command_canary)),
        )
        .fallback_service(op(Unknown, axum::routing::any(no_route)).with_state(edge.clone()))
        // Bodies are read with our own limit so an oversize one gets our 413 body.
        .layer(DefaultBodyLimit::disable())
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
                .timeout(edge.settings.request_timeout),
        )
        .with_state(edge)
}

async fn authenticate(
    State((edge, operation)): State<(Arc<Edge>, Operation)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(err) = edge.authorize(operation, authorization) {
        let unauthenticated = err.kind == crate::error::ErrorKind::Unauthenticated;
        let mut response = err.into_response();
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return response;
    }
    next.run(request).await
}

/// The metrics router, served on its own port.
pub fn metrics_router(metrics: crate::metrics::Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(metrics): State<crate::metrics::Metrics>| async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                },
            ),
        )
        .fallback(no_route)
        .with_state(metrics)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Shared memory is not offered; the extension's paths say so instead of a bare 404.
async fn shared_memory() -> ApiError {
    ApiError::invalid(
        "shared memory is not offered by Switchyard: send tensors in the request \
         (the binary tensor extension carries them without extra copies)",
    )
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": crate::edge::SERVER_NAME,
        "version": crate::edge::SERVER_VERSION,
        "extensions": crate::edge::EXTENSIONS,
    }))
    .into_response()
}

// Health bodies as the Open Inference Protocol's REST spec defines them
// (`$live_server_response`, `$ready_server_response`, `$ready_model_response`);
// the status codes carry the same answer for clients that read only those.
async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

fn readiness(ready: bool, body: serde_json::Value) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn ready(State(edge): State<Arc<Edge>>) -> Response {
    let ready = edge.is_ready();
    readiness(ready, json!({"ready": ready}))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<serde_json::Value> {
    specs
        .iter()
        .map(|spec| json!({"name": spec.name, "datatype": spec.datatype.as_str(), "shape": spec.shape}))
        .collect()
}

fn metadata_of(edge: &Edge, model: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let found = model_info::metadata(&edge.serving.catalog.snapshot(), model, version)?;
    Ok(axum::Json(json!({
        "name": found.name,
        "versions": found.versions,
        "platform": found.platform,
        "inputs": tensor_metadata(&found.inputs),
        "outputs": tensor_metadata(&found.outputs),
    }))
    .into_response())
}

async fn model_metadata(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    metadata_of(&edge, &model, None)
}

async fn model_metadata_versioned(
    State(edge): State<Arc<Edge>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_of(&edge, &model, Some(&version))
}

fn readiness_of(edge: &Edge, model: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let ready = model_info::ready(&edge.serving.catalog.snapshot(), model, version)?;
    Ok(readiness(ready, json!({"name": model, "ready": ready})))
}

async fn model_ready(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    readiness_of(&edge, &model, None)
}

async fn model_ready_versioned(
    State(edge): State<Arc<Edge>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    readiness_of(&edge, &model, Some(&version))
}

async fn model_config(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let found = edge.serving.catalog.snapshot().lookup(&model, None)?;
    Ok(axum::Json(model_info::config_json(&model_info::triton_config(&found))).into_response())
}

async fn model_config_versioned(
    State(edge): State<Arc<Edge>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = edge
        .serving
        .catalog
        .snapshot()
        .lookup(&model, Some(&version))?;
    Ok(axum::Json(model_info::config_json(&model_info::triton_config(&found))).into_response())
}

async fn all_statistics(State(edge): State<Arc<Edge>>) -> Result<Response, ApiError> {
    statistics_of(&edge, "", None)
}

async fn model_statistics(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    statistics_of(&edge, &model, None)
}

async fn version_statistics(
    State(edge): State<Arc<Edge>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    statistics_of(&edge, &model, Some(&version))
}

fn statistics_of(edge: &Edge, model: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let stats = model_info::statistics(&edge.serving.catalog.snapshot(), model, version)?;
    Ok(axum::Json(model_info::statistics_json(&stats)).into_response())
}

/// Reads a body up to `limit` bytes (after inflating a gzip or deflate
/// body); larger ones are refused with 413.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            crate::error::ErrorKind::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes (--max-request-bytes)"),
        )
    };
    let encoding = compression::request_encoding(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|err| {
        let over_limit = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            ApiError::invalid(format!("reading the request body failed: {err}"))
        }
    })?;
    match encoding {
        None => Ok(raw),
        // Inflating is CPU work: off the reactor threads.
        Some(encoding) => {
            tokio::task::spawn_blocking(move || compression::inflate(encoding, &raw, limit))
                .await
                .map_err(|err| ApiError::internal(format!("inflating the request body: {err}")))?
        }
    }
}

async fn infer_latest(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_http(edge, model, None, headers, body).await
}

async fn infer_versioned(
    State(edge): State<Arc<Edge>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_http(edge, model, Some(version), headers, body).await
}

async fn infer_http(
    edge: Arc<Edge>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let decode = async {
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
        let body = read_body(body, &headers, edge.settings.max_request_bytes).await?;
        let decoded = decode_request(&model, version.as_deref(), body, header_length)?;
        Ok((decoded.request, decoded.binary))
    };
    let (result, routed) = crate::edge::infer(
        &edge,
        Protocol::Http,
        &model,
        headers.clone(),
        decode,
        |response, binary| encode_response(&binary, &response),
    )
    .await;
    let compress = compression::response_encoding(&headers);
    let name_route = |headers: &mut HeaderMap| {
        if let Some((endpoint, variant)) = &routed
            && let (Ok(endpoint), Ok(variant)) = (
                HeaderValue::try_from(endpoint.as_str()),
                HeaderValue::try_from(variant.as_str()),
            )
        {
            headers.insert(crate::edge::ENDPOINT_HEADER, endpoint);
            headers.insert(crate::edge::VARIANT_HEADER, variant);
        }
    };
    match result {
        Ok(encoded) => {
            let (body, content_encoding) = match compress {
                Some(encoding) => match compression::deflate(encoding, &encoded.body) {
                    Ok(packed) => (packed, Some(encoding.header_value())),
                    Err(err) => return err.into_response(),
                },
                None => (encoded.body, None),
            };
            let mut response = Response::new(Body::from(body));
            let headers = response.headers_mut();
            if let Some(value) = content_encoding {
                headers.insert(header::CONTENT_ENCODING, value);
            }
            name_route(headers);
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
        Err(err) => {
            let mut response = err.into_response();
            name_route(response.headers_mut());
            response
        }
    }
}

/// A settings body: one JSON object (an empty body changes nothing).
async fn settings_body(
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let body = read_body(body, headers, 64 << 10).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("a settings body is one JSON object: {err}")))
}

fn trace_json(settings: Vec<(&'static str, observability::TraceValue)>) -> Response {
    let object: serde_json::Map<String, serde_json::Value> = settings
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                observability::TraceValue::One(one) => json!(one),
                observability::TraceValue::List(list) => json!(list),
            };
            (key.to_owned(), value)
        })
        .collect();
    axum::Json(object).into_response()
}

/// Triton's JSON: a string, a list of strings, or null (clear); numbers are taken as written.
fn trace_updates(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<observability::TraceUpdate>, ApiError> {
    use serde_json::Value;
    let text = |key: &str, value: &Value| match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        other => Err(ApiError::invalid(format!(
            "trace setting `{key}` takes a string or a list of strings, got {other}"
        ))),
    };
    body.into_iter()
        .map(|(key, value)| {
            let values = match &value {
                Value::Null => None,
                Value::Array(items) => Some(
                    items
                        .iter()
                        .map(|item| text(&key, item))
                        .collect::<Result<_, _>>()?,
                ),
                one => Some(vec![text(&key, one)?]),
            };
            Ok((key, values))
        })
        .collect()
}

async fn trace_get(State(edge): State<Arc<Edge>>) -> Response {
    trace_json(observability::trace_settings(&edge.telemetry))
}

async fn trace_post(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let updates = trace_updates(settings_body(&headers, body).await?)?;
    Ok(trace_json(observability::update_trace_settings(
        &edge.telemetry,
        None,
        updates,
    )?))
}

async fn model_trace_get(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    edge.serving.catalog.snapshot().lookup(&model, None)?;
    Ok(trace_json(observability::trace_settings(&edge.telemetry)))
}

async fn model_trace_post(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    edge.serving.catalog.snapshot().lookup(&model, None)?;
    let updates = trace_updates(settings_body(&headers, body).await?)?;
    Ok(trace_json(observability::update_trace_settings(
        &edge.telemetry,
        Some(&model),
        updates,
    )?))
}

fn log_json(settings: Vec<(&'static str, observability::LogValue)>) -> Response {
    let object: serde_json::Map<String, serde_json::Value> = settings
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                observability::LogValue::Bool(on) => json!(on),
                observability::LogValue::Uint(level) => json!(level),
                observability::LogValue::Text(text) => json!(text),
            };
            (key.to_owned(), value)
        })
        .collect();
    axum::Json(object).into_response()
}

async fn log_get(State(edge): State<Arc<Edge>>) -> Response {
    log_json(observability::log_settings(&edge.telemetry))
}

async fn log_post(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use serde_json::Value;
    let updates = settings_body(&headers, body)
        .await?
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Bool(on) => observability::LogValue::Bool(on),
                Value::String(text) => observability::LogValue::Text(text),
                Value::Number(number) => match number.as_u64().and_then(|n| u32::try_from(n).ok())
                {
                    Some(level) => observability::LogValue::Uint(level),
                    None => {
                        return Err(ApiError::invalid(format!(
                            "logging setting `{key}` takes a whole number, got {number}"
                        )));
                    }
                },
                other => {
                    return Err(ApiError::invalid(format!(
                        "logging setting `{key}` takes a boolean, a whole number or a string, got {other}"
                    )));
                }
            };
            Ok((key, value))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(log_json(observability::update_log_settings(
        &edge.telemetry,
        updates,
    )?))
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(edge): State<Arc<Edge>>,
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
    Ok(axum::Json(edge.serving.catalog.snapshot().index(request.ready)).into_response())
}

#[derive(Deserialize, Default)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// Parses a load/unload body and checks its parameters (`edge::check_control_parameters`).
async fn control_request(
    headers: &HeaderMap,
    body: Body,
    operation: Operation,
) -> Result<(), ApiError> {
    let body = read_body(body, headers, 64 << 10).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: ControlRequest = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("malformed JSON request body: {err}")))?;
    crate::edge::check_control_parameters(operation, request.parameters.keys().map(String::as_str))
}

async fn repository_load(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    control_request(&headers, body, Operation::ModelLoad).await?;
    edge.control.load_model(&model).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(edge): State<Arc<Edge>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    control_request(&headers, body, Operation::ModelUnload).await?;
    edge.control.unload_model(&model).await?;
    Ok(StatusCode::OK)
}

/// MLflow registry webhook: verified, then the sources are re-read at once.
async fn mlflow_webhook(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(secret) = edge.settings.mlflow_webhook_secret.as_deref() else {
        return Err(ApiError::new(
            crate::error::ErrorKind::PermissionDenied,
            "MLflow webhooks are disabled; start the server with --mlflow-webhook-secret",
        ));
    };
    let body = read_body(body, &headers, 1 << 20).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::edge::webhook::verify(
        secret,
        header("x-mlflow-delivery-id"),
        header("x-mlflow-timestamp"),
        header("x-mlflow-signature"),
        &body,
        crate::edge::webhook::unix_now(),
    )?;
    edge.control.poke();
    Ok(axum::Json(json!({"accepted": true})).into_response())
}

/// One endpoint with its variants' weights and readiness and its canary's state.
fn endpoint_json(
    edge: &Edge,
    catalog: &crate::serve::catalog::Catalog,
    endpoint: &crate::config::routes::Endpoint,
) -> serde_json::Value {
    let canaries = edge.rollouts.states();
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

/// The console page, embedded in the binary (no CDN, no build step).
const CONSOLE_PAGE: &str = include_str!("console/index.html");

async fn console() -> Response {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        CONSOLE_PAGE,
    )
        .into_response()
}

/// A rollout: what it moves (an endpoint's variants, or a model's stable and
/// candidate versions), its policy, phase, stage, step, the canary's weight,
/// each gate's last values and its decision history.
fn rollout_json(name: &str, view: &crate::control::rollouts::RolloutView) -> serde_json::Value {
    let (policy, state) = (&view.policy, &view.state);
    json!({
        "name": name,
        "kind": if view.model.is_some() { "model" } else { "endpoint" },
        "stable": policy.stable,
        "canary": policy.canary,
        "versions": view.model,
        "phase": state.phase,
        "stage": state.stage,
        "step": state.step,
        "steps": policy.steps,
        "canary_weight": view.canary_weight,
        "fleet": view.fleet.map(|(waiting, boundary)| json!({
            "waiting_for_replicas": waiting,
            "last_boundary_ms": boundary,
        })),
        "gates": {
            "min_requests": policy.min_requests,
            "min_success_rate": policy.min_success_rate,
            "max_p99_ms": policy.max_p99_ms,
            "max_p99_ratio": policy.max_p99_ratio,
            "failures_to_rollback": policy.failures_to_rollback,
        },
        "shadow_gates": view.shadow,
        "failed_checks": state.failed_checks,
        "last_decision": state.last_decision,
        "last_reason": state.last_reason,
        "last_canary": state.last_canary,
        "last_stable": state.last_stable,
        "last_shadow": state.last_shadow,
        "last_agreement": state.last_agreement,
        "history": state.history,
    })
}

async fn list_rollouts(State(edge): State<Arc<Edge>>) -> Response {
    let rollouts: Vec<serde_json::Value> = edge
        .rollouts
        .rollouts()
        .iter()
        .map(|(name, view)| rollout_json(name, view))
        .collect();
    axum::Json(json!({ "rollouts": rollouts })).into_response()
}

async fn get_rollout(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rollouts = edge.rollouts.rollouts();
    let view = rollouts.get(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no rollout for `{name}`; rollouts: {:?}",
            rollouts.keys().collect::<Vec<_>>()
        ))
    })?;
    Ok(axum::Json(rollout_json(&name, view)).into_response())
}

async fn list_endpoints(State(edge): State<Arc<Edge>>) -> Response {
    let catalog = edge.serving.catalog.snapshot();
    let endpoints: Vec<serde_json::Value> = catalog
        .routes
        .endpoints
        .values()
        .map(|e| endpoint_json(&edge, &catalog, e))
        .collect();
    axum::Json(json!({"endpoints": endpoints, "route_file_error": catalog.routes_error}))
        .into_response()
}

/// `PUT /v2/endpoints/{name}`: `{"weights": {"<variant>": w, ...}, "force": false}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointUpdate {
    weights: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    force: bool,
}

async fn put_endpoint(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, &headers, 64 << 10).await?;
    let update: EndpointUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is {{\"weights\": {{\"<variant>\": <weight>, ...}}, \"force\": false}}: {e}"
        ))
    })?;
    crate::control::rollouts::set_weights(
        &edge.serving.catalog,
        &edge.rollouts,
        &edge.serving.metrics,
        &name,
        &update.weights,
        update.force,
    )
    .await?;
    get_endpoint(State(edge), Path(name)).await
}

/// `?force=true`: a command that changes this replica only (fleet mode).
#[derive(serde::Deserialize, Default)]
struct CommandQuery {
    #[serde(default)]
    force: bool,
}

/// Applies an operator's `action` to the rollout named `name`.
fn command(edge: &Edge, name: &str, action: &str, force: bool) -> Result<(), ApiError> {
    let command = crate::control::canary::CanaryCommand::parse(action).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown rollout action `{action}`; actions: pause, resume, abort, promote"
        ))
    })?;
    edge.rollouts
        .command(name, command, force, &edge.serving.metrics)
        .map(|_| ())
}

async fn command_canary(
    State(edge): State<Arc<Edge>>,
    Path((name, action)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<CommandQuery>,
) -> Result<Response, ApiError> {
    command(&edge, &name, &action, query.force)?;
    // A route-file endpoint answers with its variants; a model's rollout with itself.
    if edge
        .serving
        .catalog
        .snapshot()
        .routes
        .endpoints
        .contains_key(&name)
    {
        return get_endpoint(State(edge), Path(name)).await;
    }
    get_rollout(State(edge), Path(name)).await
}

/// `POST /v2/rollouts/{name}/{pause|resume|abort|promote}`: the same
/// commands, answered with the rollout.
async fn command_rollout(
    State(edge): State<Arc<Edge>>,
    Path((name, action)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<CommandQuery>,
) -> Result<Response, ApiError> {
    command(&edge, &name, &action, query.force)?;
    get_rollout(State(edge), Path(name)).await
}

async fn get_endpoint(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let catalog = edge.serving.catalog.snapshot();
    let endpoint = catalog
        .routes
        .endpoints
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("unknown endpoint `{name}`")))?;
    Ok(axum::Json(endpoint_json(&edge, &catalog, endpoint)).into_response())
}
