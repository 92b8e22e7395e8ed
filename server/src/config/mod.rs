//! The config layer: what Switchyard reads to know what to serve, parsed into
//! validated types (parse, don't validate) and nothing else. It depends on no
//! other layer of the server.
//!
//! - `model`: per-model config (`config.yaml`) and its Triton mapping (`config.pbtxt`)
//! - `pbtxt`: protobuf text format, as Triton writes it
//! - `pipeline`: composed models (native pipelines, Triton ensembles) and their graph
//! - `routes`: the route file (endpoints, variants, shadows, canary policies)
//! - `rollout`: a model's rollout policy (how a new version earns its traffic)
//! - `file`: the size, encoding and nesting bounds every config file meets
//! - `names`: which model and endpoint names are accepted

pub mod capture;
pub mod file;
pub mod model;
pub mod names;
pub mod pbtxt;
pub mod pipeline;
pub mod rollout;
pub mod routes;
