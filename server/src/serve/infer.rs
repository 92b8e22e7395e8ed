//! The transport-neutral inference request: what the HTTP and gRPC edges
//! decode into, its check against the model's signature, and the call into the
//! model. Edges only translate; every rule about inputs lives here.

use std::sync::Arc;
use std::time::Instant;

use switchyard_runtimes::{Parameter, RequestContext, Sequence, Signature, Tensor};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::serve::model::ModelVersion;
use crate::serve::{RequestLimits, Serving};

/// A decoded request. Tensors are well formed (sizes match shapes); whether
/// they fit the model is checked by `validate`.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model: String,
    pub version: Option<String>,
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for; `None` = all of the model's outputs.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Queue priority, 1 = most urgent (the `priority` parameter; 0 or absent = default).
    pub priority: Option<u32>,
    /// The `timeout` parameter (µs): may only shorten the model's default.
    pub timeout: Option<std::time::Duration>,
    /// Request headers (HTTP) or metadata (gRPC): routing reads pins and sticky keys here.
    pub headers: http::HeaderMap,
    /// Which protocol carried it (`http`, `grpc`), for records.
    pub protocol: &'static str,
    /// Request-level parameters, typed, in the order given (sticky keys read
    /// them; a forwarding runtime passes them on, less the gateway's own).
    pub parameters: Vec<(String, Parameter)>,
}

/// One output a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// The classification extension: the top `k` classes as `"score:index[:label]"` strings.
    pub classification: Option<usize>,
}

impl RequestedOutput {
    pub fn named(name: impl Into<String>) -> Self {
        RequestedOutput {
            name: name.into(),
            classification: None,
        }
    }
}

/// Checks a `classification` parameter's class count.
pub fn class_count(output: &str, k: i128) -> Result<usize, ApiError> {
    usize::try_from(k).ok().filter(|&k| (1..=65_536).contains(&k)).ok_or_else(|| {
        ApiError::invalid(format!(
            "output `{output}`: parameter `classification` is the number of classes to return (1 or more), got {k}"
        ))
    })
}

/// Parameters the gateway itself consumes: never forwarded upstream.
const GATEWAY_PARAMETERS: &[&str] = &["priority", "timeout", "binary_data_output"];

impl InferRequest {
    /// A request parameter's value as text (sticky keys).
    pub fn parameter_text(&self, name: &str) -> Option<String> {
        self.parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_text())
    }

    /// What a forwarding runtime passes on; `None` when there is nothing to pass.
    fn forwarded_context(&self) -> Result<Option<Arc<RequestContext>>, ApiError> {
        let parameter = |name: &str| {
            self.parameters
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, v)| v)
        };
        let flag = |name: &str| match parameter(name) {
            None => Ok(false),
            Some(Parameter::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::invalid(format!(
                "parameter `{name}` is a boolean, got {}",
                other.as_text()
            ))),
        };
        let sequence = match parameter("sequence_id") {
            None | Some(Parameter::Int(0)) => None,
            Some(Parameter::Int(id)) if *id < 0 => {
                return Err(ApiError::invalid(format!(
                    "parameter `sequence_id` must be positive, got {id}"
                )));
            }
            Some(Parameter::Text(id)) if id.is_empty() => None,
            Some(Parameter::Int(id)) => Some(id.to_string()),
            Some(Parameter::Text(id)) => Some(id.clone()),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "parameter `sequence_id` is an integer or a string, got {}",
                    other.as_text()
                )));
            }
        };
        let sequence = match sequence {
            Some(id) => Some(Sequence {
                id,
                start: flag("sequence_start")?,
                end: flag("sequence_end")?,
            }),
            None => None,
        };
        let context = RequestContext {
            parameters: self
                .parameters
                .iter()
                .filter(|(key, _)| !GATEWAY_PARAMETERS.contains(&key.as_str()))
                .cloned()
                .collect(),
            // Classified outputs are asked for raw: the gateway classifies them.
            outputs: self
                .outputs
                .as_ref()
                .map(|outputs| outputs.iter().map(|o| o.name.clone()).collect()),
            sequence,
        };
        Ok((!context.is_empty()).then(|| Arc::new(context)))
    }
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
    /// When the request went through a route.
    pub routed: Option<Routed>,
}

/// (endpoint, variant) that served a routed request.
pub type Routed = (String, String);

/// Reads the `priority` and `timeout` request parameters (0 means "default").
pub fn queue_parameters(
    priority: Option<i128>,
    timeout_us: Option<i128>,
) -> Result<(Option<u32>, Option<std::time::Duration>), ApiError> {
    let priority = match priority {
        None | Some(0) => None,
        Some(p) => Some(u32::try_from(p).map_err(|_| {
            ApiError::invalid(format!(
                "parameter `priority` must be a small non-negative integer, got {p}"
            ))
        })?),
    };
    let timeout = match timeout_us {
        None | Some(0) => None,
        Some(t) => Some(std::time::Duration::from_micros(u64::try_from(t).map_err(
            |_| {
                ApiError::invalid(format!(
                    "parameter `timeout` must be a non-negative number of microseconds, got {t}"
                ))
            },
        )?)),
    };
    Ok((priority, timeout))
}

/// Refuses tensors over the configured size limits, before any model work.
pub fn check_limits(limits: &RequestLimits, request: &InferRequest) -> Result<(), ApiError> {
    for input in &request.inputs {
        let elements = input.element_count();
        if elements > limits.max_tensor_elements {
            return Err(ApiError::new(
                crate::error::ErrorKind::PayloadTooLarge,
                format!(
                    "input `{}` has {elements} elements; the limit is {} (--max-tensor-elements)",
                    input.name(),
                    limits.max_tensor_elements
                ),
            ));
        }
        if let Some(long) = input
            .byte_strings()
            .map(<[u8]>::len)
            .find(|&n| n > limits.max_bytes_element)
        {
            return Err(ApiError::new(
                crate::error::ErrorKind::PayloadTooLarge,
                format!(
                    "input `{}` has a {long}-byte element; the limit is {} (--max-bytes-element)",
                    input.name(),
                    limits.max_bytes_element
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the request's inputs and requested outputs against the model.
pub fn validate(model: &ModelVersion, request: &InferRequest) -> Result<(), ApiError> {
    let signature: &Signature = &model.signature;
    let name = &model.name;
    let expected_inputs = || {
        signature
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
    };
    for (index, input) in request.inputs.iter().enumerate() {
        if request.inputs[..index]
            .iter()
            .any(|earlier| earlier.name() == input.name())
        {
            return Err(ApiError::invalid(format!(
                "input `{}` is given twice",
                input.name()
            )));
        }
        let spec = signature.input(input.name()).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown input `{}` for model `{name}`; expected inputs: {:?}",
                input.name(),
                expected_inputs()
            ))
        })?;
        if input.datatype() != spec.datatype {
            return Err(ApiError::invalid(format!(
                "input `{}`: expected datatype {}, got {}",
                spec.name,
                spec.datatype,
                input.datatype()
            )));
        }
        if !spec.accepts_shape(input.shape()) {
            return Err(ApiError::invalid(format!(
                "input `{}`: expected shape {:?}, got {:?}",
                spec.name,
                spec.shape,
                input.shape()
            )));
        }
        let max = model.config.max_batch_size;
        if max > 0 {
            // Zero rows are a valid (empty) batch: the answer has zero rows too.
            let rows = input.shape().first().copied().unwrap_or(0);
            if rows > i64::from(max) {
                return Err(ApiError::invalid(format!(
                    "input `{}`: batch dimension is {rows}, but model `{name}` takes at most {max} rows (max_batch_size)",
                    spec.name
                )));
            }
        }
    }
    if model.config.max_batch_size > 0
        && let Some(first) = request.inputs.first()
        && let Some(other) = request
            .inputs
            .iter()
            .find(|t| t.shape().first() != first.shape().first())
    {
        return Err(ApiError::invalid(format!(
            "inputs `{}` and `{}` have different batch dimensions ({:?} vs {:?}); all inputs need the same number of rows",
            first.name(),
            other.name(),
            first.shape().first(),
            other.shape().first()
        )));
    }
    for spec in &signature.inputs {
        if !request.inputs.iter().any(|input| input.name() == spec.name) {
            return Err(ApiError::invalid(format!(
                "missing input `{}` for model `{name}`; expected inputs: {:?}",
                spec.name,
                expected_inputs()
            )));
        }
    }
    if let Some(requested) = &request.outputs {
        for (index, output) in requested.iter().enumerate() {
            let Some(spec) = signature.output(&output.name) else {
                let known: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
                return Err(ApiError::invalid(format!(
                    "unknown output `{}` requested from model `{name}`; its outputs are {known:?}",
                    output.name
                )));
            };
            if output.classification.is_some() {
                crate::serve::classify::check(spec)?;
            }
            let output = &output.name;
            if requested[..index]
                .iter()
                .any(|earlier| earlier.name == *output)
            {
                return Err(ApiError::invalid(format!(
                    "output `{output}` is requested twice"
                )));
            }
        }
    }
    Ok(())
}

/// Where an inference ended, for metrics and logs.
pub struct Served {
    pub model: Option<Arc<ModelVersion>>,
    pub started: Instant,
    /// The route that took the request, once chosen (error answers name it too).
    pub routed: Option<Routed>,
}

impl Served {
    /// Counts the finished request under its model (empty labels when none
    /// was found, so clients cannot create series) and outcome.
    pub fn record<T>(&self, metrics: &Metrics, protocol: &str, result: &Result<T, ApiError>) {
        let (model, version) = self
            .model
            .as_ref()
            .map(|m| (m.name.as_str(), m.version.to_string()))
            .unwrap_or(("", String::new()));
        let outcome = match result {
            Ok(_) => "success",
            Err(err) => err.kind.as_label(),
        };
        metrics.observe_request(model, &version, protocol, outcome, self.started.elapsed());
    }
}

/// Resolves, validates and runs a request. `served.model` is set once the
/// model is known, so edges can label metrics even for failures.
pub async fn infer(
    serving: &Serving,
    request: InferRequest,
    served: &mut Served,
) -> Result<InferResponse, ApiError> {
    check_limits(&serving.limits, &request)?;
    let catalog = serving.catalog.snapshot();
    // An endpoint's capture policy wins over its models' own, and is decided
    // before routing, so that its shadow copy is recorded with the same id.
    let endpoint_capture = serving.capture.as_ref().and_then(|_| {
        let policy = catalog
            .routes
            .endpoints
            .get(&request.model)?
            .capture
            .clone()?;
        let id = request
            .id
            .clone()
            .unwrap_or_else(crate::serve::capture::new_id);
        policy.sample_now().then_some((policy, id))
    });
    let crate::serve::route::Routing {
        model,
        routed,
        shadow,
    } = crate::serve::route::route(
        &catalog,
        &request,
        endpoint_capture
            .as_ref()
            .map(|(policy, id)| (policy, id.as_str())),
    )?;
    served.model = Some(model.clone());
    served.routed.clone_from(&routed);
    let capture = serving.capture.as_ref().and_then(|capture| {
        let (policy, id) = match endpoint_capture {
            Some(decided) => decided,
            // A route-file endpoint decided above; a model rolling out a
            // version keeps the model's own policy.
            None if catalog.routes.endpoints.contains_key(&request.model) => return None,
            None => {
                let policy = model.config.capture.clone()?;
                if !policy.sample_now() {
                    return None;
                }
                (
                    policy,
                    request
                        .id
                        .clone()
                        .unwrap_or_else(crate::serve::capture::new_id),
                )
            }
        };
        let routed = routed.as_ref().map(|(e, v)| (e.as_str(), v.as_str()));
        Some((
            capture,
            crate::serve::capture::Pending::start(policy, id, &request, routed),
        ))
    });
    // A pipeline's steps resolve in this same catalog; anything else lets it go
    // (retired versions free once their own requests finish).
    let catalog = model.pipeline().is_some().then_some(catalog);
    // A classified output is strings here, raw numbers in the shadow: not comparable.
    let classified = request
        .outputs
        .iter()
        .flatten()
        .any(|o| o.classification.is_some());
    let result = run(serving, catalog.as_deref(), &model, request).await;
    if let Some((endpoint, variant)) = &routed {
        serving
            .traffic
            .record(endpoint, variant, result.is_ok(), served.started.elapsed());
    }
    // Offered once the stable answer is known (its outputs are compared with
    // the shadow's); still never waited for.
    if let Some(mut shadow) = shadow {
        shadow.stable = result
            .as_ref()
            .ok()
            .filter(|_| !classified)
            .map(|r| r.outputs.clone());
        serving.traffic.offer_shadow(shadow);
    }
    if let Some((capture, pending)) = capture {
        let outcome = result.as_ref().map(|response| response.outputs.as_slice());
        capture.offer(pending.finish(&model, served.started.elapsed(), outcome));
    }
    let mut response = result?;
    response.routed = routed;
    Ok(response)
}

/// Validates and runs a request on `model` (a pipeline runs its steps in
/// `catalog`), keeping the outputs asked for.
async fn run(
    serving: &Serving,
    catalog: Option<&crate::serve::catalog::Catalog>,
    model: &Arc<ModelVersion>,
    mut request: InferRequest,
) -> Result<InferResponse, ApiError> {
    let id = request.id.take();
    let requested = request.outputs.take();
    let mut produced = match (model.pipeline(), catalog) {
        (Some(pipeline), Some(catalog)) => {
            validate(model, &request)?;
            crate::serve::pipeline::run(serving, catalog, model, pipeline, request).await?
        }
        (Some(_), None) => return Err(ApiError::internal("a pipeline ran without its catalog")),
        (None, _) => {
            request.outputs = requested.clone();
            call_model(model, request).await?
        }
    };
    let composed = model.pipeline().is_some();
    // Keep only outputs the signature exposes, in the order asked for.
    let outputs = match requested {
        Some(requested) => requested
            .iter()
            .map(|output| {
                let tensor = take_output(&mut produced, &output.name, composed)?;
                match output.classification {
                    None => Ok(tensor),
                    Some(k) => crate::serve::classify::classify(
                        &tensor,
                        k,
                        model.labels(&output.name),
                        model.config.max_batch_size > 0,
                    ),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        // A pipeline leaves out what a skipped step did not produce.
        None if composed => produced,
        None => model
            .signature
            .outputs
            .iter()
            .map(|spec| take_output(&mut produced, &spec.name, false))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(InferResponse {
        model_name: model.name.clone(),
        model_version: model.version.to_string(),
        id,
        outputs,
        routed: None,
    })
}

/// One model request (also a pipeline step): validated, queued in the
/// model's batcher, answered with every output the runtime gave.
pub async fn call_model(
    model: &Arc<ModelVersion>,
    request: InferRequest,
) -> Result<Vec<Tensor>, ApiError> {
    validate(model, &request)?;
    let context = if model.forwards_requests() {
        request.forwarded_context()?
    } else {
        None
    };
    let InferRequest {
        inputs,
        priority,
        timeout,
        ..
    } = request;
    model.infer(inputs, priority, timeout, context).await
}

fn take_output(produced: &mut Vec<Tensor>, name: &str, composed: bool) -> Result<Tensor, ApiError> {
    let index = produced.iter().position(|t| t.name() == name).ok_or_else(|| {
        if composed {
            ApiError::invalid(format!(
                "output `{name}` was not produced: the steps it comes from were skipped (their conditions did not hold)"
            ))
        } else {
            ApiError::internal(format!("the runtime gave no output `{name}`"))
        }
    })?;
    Ok(produced.swap_remove(index))
}
