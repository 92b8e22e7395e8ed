//! What a runtime call carries besides its tensors: the trace context, the
//! deadline of the requests in it, and, for runtimes that forward requests
//! (remote upstreams), the request's own parameters, requested outputs and
//! sequence. The batcher merges only requests whose `RequestContext` is equal,
//! so a forwarded request never takes on another's parameters.

use std::sync::Arc;
use std::time::Instant;

/// A request parameter as the protocols carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Double(f64),
    Text(String),
}

impl Parameter {
    /// The value as the v2 JSON protocol carries it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Parameter::Bool(b) => serde_json::Value::from(*b),
            Parameter::Int(i) => serde_json::Value::from(*i),
            Parameter::Double(d) => serde_json::Value::from(*d),
            Parameter::Text(s) => serde_json::Value::from(s.as_str()),
        }
    }

    /// The value as text (sticky keys, sequence ids given as strings).
    pub fn as_text(&self) -> String {
        match self {
            Parameter::Bool(b) => b.to_string(),
            Parameter::Int(i) => i.to_string(),
            Parameter::Double(d) => d.to_string(),
            Parameter::Text(s) => s.clone(),
        }
    }
}

/// Triton's sequence parameters (`sequence_id`, `sequence_start`, `sequence_end`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sequence {
    /// The id as text: Triton allows integer and string ids.
    pub id: String,
    pub start: bool,
    pub end: bool,
}

/// One request's context that a forwarding runtime passes on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestContext {
    /// Request parameters to forward, in the order given (the gateway's own,
    /// such as `priority` and `timeout`, already removed).
    pub parameters: Vec<(String, Parameter)>,
    /// Outputs asked for; `None` = every output.
    pub outputs: Option<Vec<String>>,
    pub sequence: Option<Sequence>,
}

impl RequestContext {
    pub fn is_empty(&self) -> bool {
        self.parameters.is_empty() && self.outputs.is_none() && self.sequence.is_none()
    }
}

/// One runtime call.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// W3C trace context header value, for runtimes calling other services.
    pub traceparent: Option<String>,
    /// The latest deadline of the requests in the call: no answer is wanted after it.
    pub deadline: Option<Instant>,
    /// Set only for runtimes that forward requests (`Runtime::forwards_requests`).
    pub request: Option<Arc<RequestContext>>,
}
