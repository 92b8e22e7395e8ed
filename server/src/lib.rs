//! Switchyard's server, in layers (folders), imports running one way:
//!
//! - `app`: flags → typed parts, the one builder, serve/shutdown (wires everything)
//! - `edge`: HTTP and gRPC, and what both share (auth scopes, inference wrapper, model info)
//! - `serve`: the request path (catalog, routing choice, batcher, models, traffic)
//! - `control`: the control plane (lifecycle, sources, model control, canary controller)
//! - `config`: model configs (YAML, Triton's pbtxt), route files, config file bounds
//! - leaves with no layer above them: `error`, `metrics`, `memory`, `sched`, `telemetry`
//!
//! `scripts/check-dependency-direction.sh` (run by `make lint`) checks the rules.
//! Entry point: `app::serve`.

pub mod app;
pub mod config;
pub mod control;
pub mod edge;
pub mod error;
pub mod fuzz_targets;
pub mod memory;
pub mod metrics;
pub mod sched;
pub mod serve;
pub mod telemetry;

pub use app::{App, Listeners, ServeOptions, serve};
