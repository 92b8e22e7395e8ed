//! Pipelines: the steps of a composed model and how tensors flow between
//! them, from a native `config.yaml` (`platform: pipeline`) or a Triton
//! ensemble (`ensemble_scheduling` in `config.pbtxt`). Both become one
//! `PipelineSpec` whose graph is checked here without the catalog: names,
//! wiring, tensors consumed but never produced, cycles. Whether the step
//! models exist and their types and shapes fit is checked against the catalog
//! (`serve::pipeline`), since models come and go.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepTarget {
    /// A model, optionally one version of it (else its default version).
    Model { name: String, version: Option<u64> },
    /// An endpoint of the route file: its split, pins and canary apply.
    Endpoint(String),
}

impl std::fmt::Display for StepTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepTarget::Model {
                name,
                version: None,
            } => write!(f, "model `{name}`"),
            StepTarget::Model {
                name,
                version: Some(v),
            } => write!(f, "model `{name}` version {v}"),
            StepTarget::Endpoint(name) => write!(f, "endpoint `{name}`"),
        }
    }
}

/// Where a tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorRef {
    /// An input of the pipeline's request.
    Input(String),
    /// An output of an earlier step (by index into `steps`).
    Output { step: usize, name: String },
}

/// A literal a condition compares with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Literal {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Literal::Bool(b) => Some(f64::from(u8::from(*b))),
            Literal::Int(i) => Some(*i as f64),
            Literal::Float(x) => Some(*x),
            Literal::Text(_) => None,
        }
    }
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// A request parameter.
    Parameter(String),
    /// An earlier step's output: the condition must hold for every element.
    Tensor(TensorRef),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Equals(Literal),
    NotEquals(Literal),
    GreaterThan(f64),
    LessThan(f64),
}

/// A step runs only when its condition holds (KServe's Switch node).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub subject: Subject,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique within the pipeline; errors and metrics name it.
    pub name: String,
    pub target: StepTarget,
    /// The step model's input name ← where the tensor comes from.
    pub inputs: Vec<(String, TensorRef)>,
    pub when: Option<Condition>,
    /// Steps that must finish first (from `inputs` and `when`), ascending.
    pub after: Vec<usize>,
}

/// A pipeline output: the first of `from` that was produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOutput {
    pub name: String,
    pub from: Vec<TensorRef>,
}

/// A checked pipeline graph (acyclic, every consumed tensor has a producer).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    pub steps: Vec<Step>,
    pub outputs: Vec<PipelineOutput>,
}

impl PipelineSpec {
    /// `name` of a reference, as a config writes it (`step.output` or an input name).
    pub fn describe(&self, tensor: &TensorRef) -> String {
        match tensor {
            TensorRef::Input(name) => name.clone(),
            TensorRef::Output { step, name } => format!("{}.{name}", self.steps[*step].name),
        }
    }

    /// Every target the steps name (each once).
    pub fn targets(&self) -> Vec<&StepTarget> {
        let mut targets: Vec<&StepTarget> = Vec::new();
        for step in &self.steps {
            if !targets.contains(&&step.target) {
                targets.push(&step.target);
            }
        }
        targets
    }

    /// Fills each step's `after` from its references and refuses cycles.
    fn link(mut self) -> Result<Self, String> {
        for step in &mut self.steps {
            let mut after: Vec<usize> = step
                .inputs
                .iter()
                .map(|(_, r)| r)
                .chain(match &step.when {
                    Some(Condition {
                        subject: Subject::Tensor(r),
                        ..
                    }) => Some(r),
                    _ => None,
                })
                .filter_map(|r| match r {
                    TensorRef::Output { step, .. } => Some(*step),
                    TensorRef::Input(_) => None,
                })
                .collect();
            after.sort_unstable();
            after.dedup();
            step.after = after;
        }
        // Depth-first search; a step met again while on the path closes a cycle.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        fn visit(
            steps: &[Step],
            at: usize,
            marks: &mut [Mark],
            path: &mut Vec<usize>,
        ) -> Result<(), String> {
            match marks[at] {
                Mark::Done => return Ok(()),
                Mark::OnPath => {
                    let start = path.iter().position(|&s| s == at).unwrap_or(0);
                    let names: Vec<String> = path[start..]
                        .iter()
                        .chain(std::iter::once(&at))
                        .map(|&s| format!("`{}`", steps[s].name))
                        .collect();
                    return Err(format!(
                        "steps {} form a cycle: each waits for the next one's outputs",
                        names.join(" → ")
                    ));
                }
                Mark::New => {}
            }
            marks[at] = Mark::OnPath;
            path.push(at);
            for &before in &steps[at].after {
                visit(steps, before, marks, path)?;
            }
            path.pop();
            marks[at] = Mark::Done;
            Ok(())
        }
        let mut marks = vec![Mark::New; self.steps.len()];
        for at in 0..self.steps.len() {
            visit(&self.steps, at, &mut marks, &mut Vec::new())?;
        }
        Ok(self)
    }
}

/// A step as `config.yaml` writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: String,
    pub model: Option<String>,
    pub version: Option<u64>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    pub when: Option<RawCondition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub parameter: Option<String>,
    pub tensor: Option<String>,
    pub equals: Option<Literal>,
    pub not_equals: Option<Literal>,
    pub greater_than: Option<f64>,
    pub less_than: Option<f64>,
}

/// An output's `from`: one reference or alternatives in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawFrom {
    One(String),
    Alternatives(Vec<String>),
}

impl RawFrom {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            RawFrom::One(one) => vec![one],
            RawFrom::Alternatives(all) => all,
        }
    }
}

/// Builds a native pipeline: `inputs` are the pipeline's input names,
/// `outputs` each output's `from` alternatives.
pub fn from_yaml(
    steps: Vec<RawStep>,
    inputs: &[String],
    outputs: Vec<(String, Vec<String>)>,
) -> Result<PipelineSpec, String> {
    if steps.is_empty() {
        return Err("a pipeline needs at least one step".to_owned());
    }
    let mut names: Vec<String> = Vec::new();
    for step in &steps {
        if step.name.is_empty() || step.name.contains('.') {
            return Err(format!(
                "step name `{}` must be non-empty and without `.` (references are `step.output`)",
                step.name
            ));
        }
        if names.contains(&step.name) {
            return Err(format!("step `{}` is named twice", step.name));
        }
        names.push(step.name.clone());
    }
    // A bare name is a pipeline input; `step.output` an output of that step.
    let reference = |text: &str, consumer: &str| -> Result<TensorRef, String> {
        if inputs.iter().any(|i| i == text) {
            return Ok(TensorRef::Input(text.to_owned()));
        }
        if let Some((step, output)) = text.split_once('.')
            && let Some(index) = names.iter().position(|n| n == step)
            && !output.is_empty()
        {
            return Ok(TensorRef::Output {
                step: index,
                name: output.to_owned(),
            });
        }
        Err(format!(
            "{consumer} takes `{text}`, which is never produced: it is neither a pipeline input ({inputs:?}) nor `<step>.<output>` of a step ({names:?})"
        ))
    };
    let mut built = Vec::with_capacity(steps.len());
    for (index, raw) in steps.into_iter().enumerate() {
        let target = match (raw.model, raw.endpoint) {
            (Some(name), None) => StepTarget::Model {
                name,
                version: raw.version,
            },
            (None, Some(name)) if raw.version.is_none() => StepTarget::Endpoint(name),
            (None, Some(_)) => {
                return Err(format!(
                    "step `{}`: an endpoint's variants choose the version; `version` is for `model`",
                    raw.name
                ));
            }
            _ => {
                return Err(format!(
                    "step `{}` needs exactly one of `model` or `endpoint`",
                    raw.name
                ));
            }
        };
        if raw.inputs.is_empty() {
            return Err(format!(
                "step `{}` has no `inputs`: map each of its model's inputs to a pipeline input or `<step>.<output>`",
                raw.name
            ));
        }
        let mut step_inputs = Vec::with_capacity(raw.inputs.len());
        for (input, source) in &raw.inputs {
            let tensor = reference(source, &format!("step `{}` input `{input}`", raw.name))?;
            if matches!(&tensor, TensorRef::Output { step, .. } if *step == index) {
                return Err(format!(
                    "steps `{0}` → `{0}` form a cycle: step `{0}` input `{input}` takes its own output `{source}`",
                    raw.name
                ));
            }
            step_inputs.push((input.clone(), tensor));
        }
        let when = raw
            .when
            .map(|c| condition(c, &raw.name, &reference))
            .transpose()?;
        built.push(Step {
            name: raw.name,
            target,
            inputs: step_inputs,
            when,
            after: Vec::new(),
        });
    }
    let mut pipeline_outputs = Vec::with_capacity(outputs.len());
    for (name, from) in outputs {
        if from.is_empty() {
            return Err(format!("output `{name}`: `from` lists nothing"));
        }
        let from = from
            .iter()
            .map(|text| reference(text, &format!("output `{name}`")))
            .collect::<Result<Vec<_>, _>>()?;
        pipeline_outputs.push(PipelineOutput { name, from });
    }
    PipelineSpec {
        steps: built,
        outputs: pipeline_outputs,
    }
    .link()
}

fn condition(
    raw: RawCondition,
    step: &str,
    reference: &dyn Fn(&str, &str) -> Result<TensorRef, String>,
) -> Result<Condition, String> {
    let subject = match (raw.parameter, raw.tensor) {
        (Some(parameter), None) => Subject::Parameter(parameter),
        (None, Some(tensor)) => {
            let found = reference(&tensor, &format!("step `{step}` condition"))?;
            if matches!(found, TensorRef::Input(_)) {
                return Err(format!(
                    "step `{step}`: a condition's `tensor` is an earlier step's output (`<step>.<output>`), not the pipeline input `{tensor}`"
                ));
            }
            Subject::Tensor(found)
        }
        _ => {
            return Err(format!(
                "step `{step}`: `when` needs exactly one of `parameter` or `tensor`"
            ));
        }
    };
    let mut tests = Vec::new();
    if let Some(v) = raw.equals {
        tests.push(Test::Equals(v));
    }
    if let Some(v) = raw.not_equals {
        tests.push(Test::NotEquals(v));
    }
    if let Some(v) = raw.greater_than {
        tests.push(Test::GreaterThan(v));
    }
    if let Some(v) = raw.less_than {
        tests.push(Test::LessThan(v));
    }
    if tests.len() != 1 {
        return Err(format!(
            "step `{step}`: `when` needs exactly one of `equals`, `not_equals`, `greater_than` or `less_than`"
        ));
    }
    Ok(Condition {
        subject,
        test: tests.remove(0),
    })
}

/// One step of a Triton ensemble: model input → ensemble tensor, model output → ensemble tensor.
#[derive(Debug, Clone, Default)]
pub struct EnsembleStep {
    pub model_name: String,
    /// `-1` (or absent) = the latest version.
    pub model_version: i64,
    pub input_map: Vec<(String, String)>,
    pub output_map: Vec<(String, String)>,
}

/// Builds a Triton ensemble's graph: tensors are named in one namespace
/// (the ensemble's inputs and every step's mapped outputs).
pub fn from_ensemble(
    steps: Vec<EnsembleStep>,
    inputs: &[String],
    outputs: &[String],
) -> Result<PipelineSpec, String> {
    if steps.is_empty() {
        return Err("ensemble_scheduling has no step".to_owned());
    }
    // Steps are named by their model; a model used twice gets `#2`, `#3`...
    let mut names: Vec<String> = Vec::new();
    for step in &steps {
        let used = names
            .iter()
            .filter(|n| n.split('#').next() == Some(step.model_name.as_str()))
            .count();
        names.push(if used == 0 {
            step.model_name.clone()
        } else {
            format!("{}#{}", step.model_name, used + 1)
        });
    }
    let mut producers: BTreeMap<&str, TensorRef> = BTreeMap::new();
    for name in inputs {
        producers.insert(name, TensorRef::Input(name.clone()));
    }
    for (index, step) in steps.iter().enumerate() {
        for (model_output, tensor) in &step.output_map {
            let produced = TensorRef::Output {
                step: index,
                name: model_output.clone(),
            };
            if producers.insert(tensor, produced).is_some() {
                return Err(format!(
                    "ensemble tensor `{tensor}` is produced twice (again by step `{}`)",
                    names[index]
                ));
            }
        }
    }
    let lookup = |tensor: &str, consumer: String| {
        producers.get(tensor).cloned().ok_or_else(|| {
            format!(
                "{consumer} takes ensemble tensor `{tensor}`, which is never produced: no step's output_map and no ensemble input names it"
            )
        })
    };
    let mut built = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        if step.model_name.is_empty() {
            return Err(format!("ensemble step {} has no model_name", index + 1));
        }
        let version = match step.model_version {
            v if v < 0 => None,
            0 => None,
            v => Some(v as u64),
        };
        let mut step_inputs = Vec::new();
        for (model_input, tensor) in &step.input_map {
            step_inputs.push((
                model_input.clone(),
                lookup(
                    tensor,
                    format!("step `{}` input `{model_input}`", names[index]),
                )?,
            ));
        }
        built.push(Step {
            name: names[index].clone(),
            target: StepTarget::Model {
                name: step.model_name.clone(),
                version,
            },
            inputs: step_inputs,
            when: None,
            after: Vec::new(),
        });
    }
    let pipeline_outputs = outputs
        .iter()
        .map(|name| {
            Ok(PipelineOutput {
                name: name.clone(),
                from: vec![lookup(name, format!("ensemble output `{name}`"))?],
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    PipelineSpec {
        steps: built,
        outputs: pipeline_outputs,
    }
    .link()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, model: &str, inputs: &[(&str, &str)]) -> RawStep {
        RawStep {
            name: name.to_owned(),
            model: Some(model.to_owned()),
            version: None,
            endpoint: None,
            inputs: inputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            when: None,
        }
    }

    fn outputs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), vec![b.to_string()]))
            .collect()
    }

    #[test]
    fn a_chain_links_in_order() {
        let spec = from_yaml(
            vec![
                step("pre", "normalize", &[("raw", "raw")]),
                step("score", "mlp", &[("input", "pre.normalized")]),
            ],
            &["raw".to_owned()],
            outputs(&[("out", "score.output")]),
        )
        .unwrap();
        assert_eq!(spec.steps[0].after, Vec::<usize>::new());
        assert_eq!(spec.steps[1].after, vec![0]);
        assert_eq!(spec.describe(&spec.outputs[0].from[0]), "score.output");
    }

    #[test]
    fn cycles_and_unproduced_tensors_are_refused_by_name() {
        let err = from_yaml(
            vec![
                step("a", "m", &[("x", "b.y")]),
                step("b", "m", &[("x", "a.y")]),
            ],
            &["raw".to_owned()],
            outputs(&[("out", "a.y")]),
        )
        .unwrap_err();
        assert!(
            err.contains("cycle") && err.contains("`a`") && err.contains("`b`"),
            "{err}"
        );
        let err = from_yaml(
            vec![step("a", "m", &[("x", "missing")])],
            &["raw".to_owned()],
            outputs(&[("out", "a.y")]),
        )
        .unwrap_err();
        assert!(
            err.contains("step `a` input `x`") && err.contains("never produced"),
            "{err}"
        );
        let err = from_yaml(
            vec![step("a", "m", &[("x", "raw")])],
            &["raw".to_owned()],
            outputs(&[("out", "nobody.y")]),
        )
        .unwrap_err();
        assert!(
            err.contains("output `out`") && err.contains("`nobody.y`"),
            "{err}"
        );
    }

    #[test]
    fn ensembles_map_one_tensor_namespace() {
        let spec = from_ensemble(
            vec![
                EnsembleStep {
                    model_name: "post".into(),
                    model_version: -1,
                    input_map: vec![("logits".into(), "mid".into())],
                    output_map: vec![("probabilities".into(), "PROB".into())],
                },
                EnsembleStep {
                    model_name: "mlp".into(),
                    model_version: 2,
                    input_map: vec![("input".into(), "RAW".into())],
                    output_map: vec![("output".into(), "mid".into())],
                },
            ],
            &["RAW".to_owned()],
            &["PROB".to_owned()],
        )
        .unwrap();
        assert_eq!(spec.steps[0].after, vec![1], "steps need not be in order");
        assert_eq!(
            spec.steps[1].target,
            StepTarget::Model {
                name: "mlp".into(),
                version: Some(2)
            }
        );
        assert_eq!(
            spec.describe(&spec.outputs[0].from[0]),
            "post.probabilities"
        );
        let err = from_ensemble(
            vec![EnsembleStep {
                model_name: "mlp".into(),
                model_version: -1,
                input_map: vec![("input".into(), "NOPE".into())],
                output_map: vec![("output".into(), "OUT".into())],
            }],
            &["RAW".to_owned()],
            &["OUT".to_owned()],
        )
        .unwrap_err();
        assert!(
            err.contains("step `mlp`") && err.contains("`NOPE`") && err.contains("never produced"),
            "{err}"
        );
    }
}
