//! Running composed models (native pipelines and Triton ensembles): each
//! step is an ordinary request to its model (or routed endpoint), so it goes
//! through that model's own queue and batcher and batches with the steps of
//! other requests. Steps start as soon as the steps they take tensors from
//! have finished (independent steps run at once); tensors pass between steps
//! in process as the same shared buffers, renamed, never re-encoded. One
//! deadline, the priority and the request's parameters carry through all steps.
//!
//! Whether a pipeline can serve is checked against each catalog as it is
//! published (`check_all`): step models and endpoints exist, are loaded and
//! not pipelines themselves, and every wired tensor's producer and consumer
//! agree on datatype and shape. The reason, naming the step and the tensor,
//! makes the pipeline unavailable until a later catalog fixes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use switchyard_runtimes::{DataType, Parameter, Tensor, TensorSpec};
use tracing::{Instrument, info, warn};

use crate::config::model::ModelConfig;
use crate::config::pipeline::{Literal, PipelineSpec, StepTarget, Subject, TensorRef, Test};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Metrics, PipelineStepMetrics, VersionStats};
use crate::serve::Serving;
use crate::serve::catalog::Catalog;
use crate::serve::infer::InferRequest;
use crate::serve::model::ModelVersion;

/// A loaded pipeline: its graph, its statistics, and why it cannot serve.
pub struct Pipeline {
    name: String,
    spec: Arc<PipelineSpec>,
    stats: VersionStats,
    /// Set from the latest catalog; `None` = every step can run.
    problem: Mutex<Option<String>>,
    step_metrics: Vec<PipelineStepMetrics>,
}

impl Pipeline {
    pub fn new(
        name: &str,
        spec: Arc<PipelineSpec>,
        config: &ModelConfig,
        metrics: &Metrics,
    ) -> Self {
        let step_metrics = spec
            .steps
            .iter()
            .map(|step| metrics.pipeline_step(name, &step.name))
            .collect();
        Pipeline {
            name: name.to_owned(),
            stats: VersionStats::new(config.max_batch_size as usize),
            // Unchecked until the first catalog that holds it is published.
            problem: Mutex::new(Some("its steps are not checked yet".to_owned())),
            spec,
            step_metrics,
        }
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    pub fn stats(&self) -> &VersionStats {
        &self.stats
    }

    /// Why the pipeline cannot serve now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_problem(&self, problem: Option<String>) {
        let mut current = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if *current == problem {
            return;
        }
        match &problem {
            Some(reason) => warn!(pipeline = %self.name, %reason, "Pipeline unavailable."),
            None => info!(pipeline = %self.name, "Pipeline ready: every step can run."),
        }
        *current = problem;
    }
}

/// Re-checks every pipeline of `catalog` against it (each publish calls this).
pub fn check_all(catalog: &Catalog) {
    for entry in catalog.models.values() {
        for version in entry.versions.values() {
            if let Some(pipeline) = version.pipeline() {
                pipeline.set_problem(check(catalog, version, pipeline.spec()).err());
            }
        }
    }
}

fn names(specs: &[TensorSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

/// Whether two full shapes can hold the same tensor (`-1` matches any size).
fn shapes_fit(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x < 0 || y < 0 || x == y)
}

/// The signatures a step may run with (one per model version it can reach).
fn step_signatures(
    catalog: &Catalog,
    pipeline: &str,
    step: &str,
    target: &StepTarget,
) -> Result<Vec<Arc<ModelVersion>>, String> {
    let composed = |version: &Arc<ModelVersion>| -> Result<(), String> {
        if version.pipeline().is_some() {
            return Err(format!(
                "step `{step}`: model `{}` is a pipeline itself; list its steps in `{pipeline}` instead",
                version.name
            ));
        }
        Ok(())
    };
    match target {
        StepTarget::Model { name, version } => {
            if name == pipeline {
                return Err(format!("step `{step}`: the pipeline names itself, a cycle"));
            }
            if !catalog.models.contains_key(name) && !catalog.known_models.contains(name) {
                let known: Vec<&str> = catalog.models.keys().map(String::as_str).collect();
                return Err(format!(
                    "step `{step}`: unknown model `{name}`; models: {known:?}"
                ));
            }
            let found = catalog
                .lookup(name, version.map(|v| v.to_string()).as_deref())
                .map_err(|err| format!("step `{step}`: {}", err.message))?;
            composed(&found)?;
            Ok(vec![found])
        }
        StepTarget::Endpoint(name) => {
            let endpoint = catalog.routes.endpoints.get(name).ok_or_else(|| {
                let known: Vec<&str> = catalog
                    .routes
                    .endpoints
                    .keys()
                    .map(String::as_str)
                    .collect();
                format!("step `{step}`: unknown endpoint `{name}`; endpoints: {known:?}")
            })?;
            let reachable: Vec<Arc<ModelVersion>> = endpoint
                .variants
                .iter()
                .filter_map(|v| catalog.resolve(&v.target).ok())
                .collect();
            if reachable.is_empty() {
                return Err(format!(
                    "step `{step}`: endpoint `{name}` has no ready variant"
                ));
            }
            for version in &reachable {
                composed(version)?;
            }
            Ok(reachable)
        }
    }
}

/// Checks the pipeline's wiring against the models the catalog serves now.
fn check(catalog: &Catalog, pipeline: &ModelVersion, spec: &PipelineSpec) -> Result<(), String> {
    let mut versions: Vec<Vec<Arc<ModelVersion>>> = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        versions.push(step_signatures(
            catalog,
            &pipeline.name,
            &step.name,
            &step.target,
        )?);
    }
    // The spec of a tensor a step or output consumes: every version must produce it.
    let produced = |tensor: &TensorRef, consumer: &str| -> Result<Vec<TensorSpec>, String> {
        match tensor {
            TensorRef::Input(name) => pipeline
                .signature
                .input(name)
                .cloned()
                .map(|spec| vec![spec])
                .ok_or_else(|| format!("{consumer}: pipeline input `{name}` is never produced")),
            TensorRef::Output { step, name } => versions[*step]
                .iter()
                .map(|version| {
                    version.signature.output(name).cloned().ok_or_else(|| {
                        let outputs = names(&version.signature.outputs);
                        format!(
                            "{consumer} takes `{}`, which is never produced: model `{}` outputs {outputs:?}",
                            spec.describe(tensor),
                            version.name
                        )
                    })
                })
                .collect(),
        }
    };
    let fits = |consumer: &str,
                wanted: &TensorSpec,
                by: &str,
                tensor: &TensorRef,
                sources: &[TensorSpec]|
     -> Result<(), String> {
        for source in sources {
            if source.datatype != wanted.datatype {
                return Err(format!(
                    "{consumer}: datatype {} expected by {by}, but `{}` is {}",
                    wanted.datatype,
                    spec.describe(tensor),
                    source.datatype
                ));
            }
            if !shapes_fit(&source.shape, &wanted.shape) {
                return Err(format!(
                    "{consumer}: shape {:?} expected by {by}, but `{}` has shape {:?}",
                    wanted.shape,
                    spec.describe(tensor),
                    source.shape
                ));
            }
        }
        Ok(())
    };
    for (index, step) in spec.steps.iter().enumerate() {
        for version in &versions[index] {
            let model = format!("model `{}`", version.name);
            for (input, tensor) in &step.inputs {
                let consumer = format!("step `{}` input `{input}`", step.name);
                let wanted = version.signature.input(input).ok_or_else(|| {
                    let inputs = names(&version.signature.inputs);
                    format!("{consumer}: {model} has no input `{input}`; its inputs are {inputs:?}")
                })?;
                fits(
                    &consumer,
                    wanted,
                    &model,
                    tensor,
                    &produced(tensor, &consumer)?,
                )?;
            }
            if let Some(missing) = version
                .signature
                .inputs
                .iter()
                .find(|s| !step.inputs.iter().any(|(input, _)| *input == s.name))
            {
                return Err(format!(
                    "step `{}`: input `{}` of {model} is never produced: the step does not wire it",
                    step.name, missing.name
                ));
            }
        }
        if let Some(condition) = &step.when
            && let Subject::Tensor(tensor) = &condition.subject
        {
            produced(tensor, &format!("step `{}` condition", step.name))?;
        }
    }
    for output in &spec.outputs {
        let consumer = format!("output `{}`", output.name);
        let wanted = pipeline
            .signature
            .output(&output.name)
            .ok_or_else(|| format!("{consumer} is not declared"))?;
        for tensor in &output.from {
            fits(
                &consumer,
                wanted,
                "the pipeline's outputs",
                tensor,
                &produced(tensor, &consumer)?,
            )?;
        }
    }
    Ok(())
}

/// How one step ended.
enum StepState {
    Waiting,
    Running,
    Done,
    Skipped,
}

/// Runs a pipeline request: every step in dependency order, independent
/// ones at once. Returns the pipeline's outputs that were produced.
pub async fn run(
    serving: &Serving,
    catalog: &Catalog,
    model: &ModelVersion,
    pipeline: &Pipeline,
    request: InferRequest,
) -> Result<Vec<Tensor>, ApiError> {
    let started = Instant::now();
    let rows = if model.config.max_batch_size > 0 {
        request
            .inputs
            .first()
            .and_then(|t| t.shape().first())
            .map_or(1, |&r| r.max(0) as usize)
    } else {
        1
    };
    let result = run_steps(serving, catalog, model, pipeline, request).await;
    pipeline
        .stats
        .answered(rows, result.is_ok(), started.elapsed());
    if result.is_ok() {
        pipeline.stats.executed(rows, 1, started.elapsed());
    }
    result
}

async fn run_steps(
    serving: &Serving,
    catalog: &Catalog,
    model: &ModelVersion,
    pipeline: &Pipeline,
    request: InferRequest,
) -> Result<Vec<Tensor>, ApiError> {
    let spec = pipeline.spec();
    // One deadline for all steps: each gets what is left of it.
    let queue = &model.config.queue;
    let budget = request
        .timeout
        .into_iter()
        .chain(queue.default_timeout)
        .chain(std::iter::once(queue.max_request_time))
        .min()
        .unwrap_or(queue.max_request_time);
    let deadline = Instant::now() + budget;
    let InferRequest {
        inputs,
        priority,
        headers,
        parameters,
        protocol,
        ..
    } = request;
    let mut tensors: HashMap<TensorRef, Tensor> = inputs
        .into_iter()
        .map(|t| (TensorRef::Input(t.name().to_owned()), t))
        .collect();
    let mut states: Vec<StepState> = spec.steps.iter().map(|_| StepState::Waiting).collect();
    let mut running = FuturesUnordered::new();
    loop {
        for (index, step) in spec.steps.iter().enumerate() {
            if !matches!(states[index], StepState::Waiting)
                || step
                    .after
                    .iter()
                    .any(|&b| matches!(states[b], StepState::Waiting | StepState::Running))
            {
                continue;
            }
            let step_started = Instant::now();
            // A step fed by a skipped step is skipped, as is one whose condition fails.
            let fed = step
                .inputs
                .iter()
                .all(|(_, tensor)| tensors.contains_key(tensor));
            let holds = fed
                && match &step.when {
                    None => true,
                    Some(condition) => {
                        let value = match &condition.subject {
                            Subject::Parameter(name) => Value::Parameter(
                                parameters.iter().find(|(k, _)| k == name).map(|(_, v)| v),
                            ),
                            Subject::Tensor(tensor) => match tensors.get(tensor) {
                                Some(found) => Value::Tensor(found),
                                None => Value::Parameter(None),
                            },
                        };
                        holds(&value, &condition.test).map_err(|message| {
                            ApiError::invalid(format!(
                                "pipeline `{}` step `{}` condition: {message}",
                                pipeline.name, step.name
                            ))
                        })?
                    }
                };
            if !holds {
                states[index] = StepState::Skipped;
                pipeline.step_metrics[index].observe("skipped", step_started.elapsed());
                continue;
            }
            let step_inputs: Vec<Tensor> = step
                .inputs
                .iter()
                .map(|(input, tensor)| tensors[tensor].clone().with_name(input.clone()))
                .collect();
            let step_request = InferRequest {
                model: match &step.target {
                    StepTarget::Model { name, .. } | StepTarget::Endpoint(name) => name.clone(),
                },
                version: match &step.target {
                    StepTarget::Model {
                        version: Some(v), ..
                    } => Some(v.to_string()),
                    _ => None,
                },
                inputs: step_inputs,
                priority,
                timeout: Some(deadline.saturating_duration_since(Instant::now())),
                // Endpoints read pins and sticky keys from these; remote models forward parameters.
                headers: if matches!(step.target, StepTarget::Endpoint(_)) {
                    headers.clone()
                } else {
                    http::HeaderMap::new()
                },
                protocol,
                parameters: parameters.clone(),
                ..InferRequest::default()
            };
            let span = tracing::info_span!(
                "pipeline_step",
                pipeline = %pipeline.name,
                step = %step.name,
                target = %step.target,
            );
            states[index] = StepState::Running;
            running.push(
                async move {
                    let result = run_step(serving, catalog, &step.target, step_request).await;
                    (index, step_started, result)
                }
                .instrument(span),
            );
        }
        let Some((index, step_started, result)) = running.next().await else {
            break;
        };
        let step = &spec.steps[index];
        let outcome = match &result {
            Ok(_) => "success",
            Err(err) => err.kind.as_label(),
        };
        pipeline.step_metrics[index].observe(outcome, step_started.elapsed());
        match result {
            Ok(outputs) => {
                for tensor in outputs {
                    tensors.insert(
                        TensorRef::Output {
                            step: index,
                            name: tensor.name().to_owned(),
                        },
                        tensor,
                    );
                }
                states[index] = StepState::Done;
            }
            Err(err) => {
                // The step's kind (400, 429, 503, 504...) with the step named.
                return Err(ApiError::new(
                    err.kind,
                    format!(
                        "pipeline `{}` step `{}` ({}): {}",
                        pipeline.name, step.name, step.target, err.message
                    ),
                ));
            }
        }
    }
    // Clones share their buffers: one step output may feed two pipeline outputs.
    let outputs = spec
        .outputs
        .iter()
        .filter_map(|output| {
            let tensor = output.from.iter().find_map(|from| tensors.get(from))?;
            Some(tensor.clone().with_name(output.name.clone()))
        })
        .collect();
    Ok(outputs)
}

/// One step's call: resolve its model (through the endpoint's routing, when
/// it names one) in the request's catalog, then an ordinary model request.
async fn run_step(
    serving: &Serving,
    catalog: &Catalog,
    target: &StepTarget,
    request: InferRequest,
) -> Result<Vec<Tensor>, ApiError> {
    if request.timeout.is_some_and(|left| left.is_zero()) {
        return Err(ApiError::new(
            ErrorKind::DeadlineExceeded,
            "the request's deadline passed before this step could start",
        ));
    }
    match target {
        StepTarget::Model { .. } => {
            let model = catalog.lookup(&request.model, request.version.as_deref())?;
            crate::serve::infer::call_model(&model, request).await
        }
        StepTarget::Endpoint(_) => {
            let started = Instant::now();
            let routing = crate::serve::route::route(catalog, &request, None)?;
            let result = crate::serve::infer::call_model(&routing.model, request).await;
            if let Some((endpoint, variant)) = &routing.routed {
                serving
                    .traffic
                    .record(endpoint, variant, result.is_ok(), started.elapsed());
            }
            if let Some(mut shadow) = routing.shadow {
                shadow.stable = result.as_ref().ok().cloned();
                serving.traffic.offer_shadow(shadow);
            }
            result
        }
    }
}

/// What a condition looks at.
enum Value<'a> {
    Parameter(Option<&'a Parameter>),
    Tensor(&'a Tensor),
}

/// Whether a condition holds. A missing parameter equals nothing (so
/// `not_equals` holds); a tensor condition holds when every element passes.
fn holds(value: &Value<'_>, test: &Test) -> Result<bool, String> {
    match value {
        Value::Parameter(None) => Ok(matches!(test, Test::NotEquals(_))),
        Value::Parameter(Some(parameter)) => {
            let number = match parameter {
                Parameter::Int(i) => Some(*i as f64),
                Parameter::Double(x) => Some(*x),
                Parameter::Bool(b) => Some(f64::from(u8::from(*b))),
                Parameter::Text(_) => None,
            };
            let equal = |literal: &Literal| match (parameter, literal) {
                (Parameter::Text(a), Literal::Text(b)) => a == b,
                (Parameter::Bool(a), Literal::Bool(b)) => a == b,
                (Parameter::Bool(_), _) | (_, Literal::Bool(_)) => false,
                _ => number.is_some() && number == literal.as_f64(),
            };
            let compared = |than: f64| {
                number.ok_or_else(|| {
                    format!(
                        "the parameter is text ({}); it cannot be compared with the number {than}",
                        parameter.as_text()
                    )
                })
            };
            Ok(match test {
                Test::Equals(literal) => equal(literal),
                Test::NotEquals(literal) => !equal(literal),
                Test::GreaterThan(than) => compared(*than)? > *than,
                Test::LessThan(than) => compared(*than)? < *than,
            })
        }
        Value::Tensor(tensor) => {
            if tensor.datatype() == DataType::Bytes {
                let texts: Vec<&[u8]> = tensor.byte_strings().collect();
                return match test {
                    Test::Equals(Literal::Text(t)) => Ok(texts.iter().all(|b| *b == t.as_bytes())),
                    Test::NotEquals(Literal::Text(t)) => {
                        Ok(texts.iter().all(|b| *b != t.as_bytes()))
                    }
                    _ => Err(format!(
                        "`{}` is BYTES: it can only be compared with text by equals/not_equals",
                        tensor.name()
                    )),
                };
            }
            let values: Vec<f64> = if tensor.datatype() == DataType::Bool {
                tensor.data().iter().map(|&b| f64::from(b)).collect()
            } else {
                crate::serve::classify::numbers(tensor)
                    .map_err(|err| err.message)?
                    .0
            };
            let literal_number = |literal: &Literal| {
                literal.as_f64().ok_or_else(|| {
                    format!(
                        "`{}` is {}: compare it with a number or a boolean",
                        tensor.name(),
                        tensor.datatype()
                    )
                })
            };
            Ok(match test {
                Test::Equals(literal) => {
                    let want = literal_number(literal)?;
                    values.iter().all(|&v| v == want)
                }
                Test::NotEquals(literal) => {
                    let want = literal_number(literal)?;
                    values.iter().all(|&v| v != want)
                }
                Test::GreaterThan(than) => values.iter().all(|&v| v > *than),
                Test::LessThan(than) => values.iter().all(|&v| v < *than),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_conditions() {
        let int = Parameter::Int(3);
        let text = Parameter::Text("fast".into());
        let yes = Parameter::Bool(true);
        assert!(
            holds(
                &Value::Parameter(Some(&int)),
                &Test::Equals(Literal::Float(3.0))
            )
            .unwrap()
        );
        assert!(holds(&Value::Parameter(Some(&int)), &Test::GreaterThan(2.5)).unwrap());
        assert!(!holds(&Value::Parameter(Some(&int)), &Test::LessThan(2.5)).unwrap());
        assert!(
            holds(
                &Value::Parameter(Some(&text)),
                &Test::Equals(Literal::Text("fast".into()))
            )
            .unwrap()
        );
        assert!(holds(&Value::Parameter(Some(&text)), &Test::GreaterThan(1.0)).is_err());
        assert!(
            holds(
                &Value::Parameter(Some(&yes)),
                &Test::Equals(Literal::Bool(true))
            )
            .unwrap()
        );
        assert!(
            !holds(
                &Value::Parameter(Some(&yes)),
                &Test::Equals(Literal::Int(1))
            )
            .unwrap()
        );
        // Missing: equals nothing.
        assert!(!holds(&Value::Parameter(None), &Test::Equals(Literal::Bool(true))).unwrap());
        assert!(
            holds(
                &Value::Parameter(None),
                &Test::NotEquals(Literal::Bool(true))
            )
            .unwrap()
        );
    }

    #[test]
    fn tensor_conditions_hold_for_every_element() {
        let t = Tensor::from_slice("x", DataType::Fp32, vec![3], &[0.5f32, 0.7, 0.9]).unwrap();
        assert!(holds(&Value::Tensor(&t), &Test::GreaterThan(0.4)).unwrap());
        assert!(!holds(&Value::Tensor(&t), &Test::GreaterThan(0.6)).unwrap());
        let b = Tensor::new(
            "b",
            DataType::Bool,
            vec![2],
            bytes::Bytes::from_static(&[1, 1]),
        )
        .unwrap();
        assert!(holds(&Value::Tensor(&b), &Test::Equals(Literal::Bool(true))).unwrap());
        assert!(!holds(&Value::Tensor(&b), &Test::Equals(Literal::Bool(false))).unwrap());
    }

    #[test]
    fn shapes_fit_with_wildcards() {
        assert!(shapes_fit(&[-1, 256], &[-1, 256]));
        assert!(shapes_fit(&[-1, 256], &[1, 256]));
        assert!(!shapes_fit(&[-1, 256], &[-1, 128]));
        assert!(!shapes_fit(&[-1, 256], &[256]));
    }
}
