//! `switchyard-load`: a load generator for KServe v2 servers. Drives HTTP JSON,
//! HTTP binary and gRPC in closed or open loop, checks every response, and
//! reports HDR latency percentiles, throughput over time and client CPU.
//! Depends on `switchyard-proto` only, never on the server.

pub mod bench_report;
pub mod chart;
pub mod client;
pub mod cpu;
pub mod drive;
pub mod payload;
pub mod report;
pub mod stats;
pub mod validate;
