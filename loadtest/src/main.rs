//! The `switchyard-load` command line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use switchyard_load::client::{Wire, WireTarget, grpc_channels, http_client};
use switchyard_load::drive::{Bounds, Progress, closed_loop, open_loop};
use switchyard_load::payload::{
    ModelInfo, TensorInfo, concrete_shape, grpc_request, http_binary_body, http_json_body,
    inputs_from_json, random_inputs,
};
use switchyard_load::validate::Expectation;
use switchyard_load::{cpu, report};
use switchyard_proto::ModelMetadataRequest;
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// KServe v2 REST with JSON tensors.
    HttpJson,
    /// KServe v2 REST with the binary tensor extension (inputs and outputs).
    HttpBinary,
    /// KServe v2 gRPC with raw contents.
    Grpc,
    /// GET /v2/health/live: the load tester's own HTTP ceiling.
    HttpLive,
    /// ServerLive over gRPC: the load tester's own gRPC ceiling.
    GrpcLive,
}

/// Load generator for KServe v2 servers (Switchyard, Triton, MLServer, KServe).
/// Without a subcommand it runs a load.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard-load",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw the side-by-side benchmark's charts (from bench/run.py's results.json)
    /// into one HTML page and, with --svg-dir, one SVG file per chart.
    BenchReport {
        /// bench/run.py's results (bench/out/results.json).
        #[arg(long)]
        input: PathBuf,
        /// The HTML page to write.
        #[arg(long)]
        html: PathBuf,
        /// Folder for the SVG files (e.g. docs/bench).
        #[arg(long)]
        svg_dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Server address, host:port (the HTTP port for http-*, the gRPC port for grpc*).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: String,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Model to call.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Model version (default: the server's choice).
    #[arg(long)]
    model_version: Option<String>,
    /// Rows per request (replaces a variable first dimension).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Fixed shape for an input, e.g. `--shape input=1,256` (repeatable).
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<(String, Vec<i64>)>,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send the inputs of this KServe JSON request file instead of random ones.
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// Compare outputs with `{"outputs": {"name": [flat values]}}` from this file.
    #[arg(long)]
    expect_file: Option<PathBuf>,
    /// Relative tolerance for --expect-file.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Outputs to request (default: all).
    #[arg(long = "output")]
    outputs: Vec<String>,
    /// Closed loop: this many concurrent workers. Memory: about 0.3 MB per
    /// worker plus 20 KB per measured second (per-second latencies at 1%).
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    concurrency: usize,
    /// Open loop: requests per second, latency measured from the scheduled send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most requests in flight at once (later ones wait, and it counts).
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Length of the measured phase (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Number of measured requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured warm-up before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// HTTP: use HTTP/2 (prior knowledge) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    http2: bool,
    /// gRPC: number of connections (requests are spread round robin).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write an HTML report with charts to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Worker threads for the client (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s.split_once('=').ok_or("expected NAME=D1,D2,...")?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<i64>().map_err(|e| format!("{d}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((name.to_owned(), dims))
}

async fn fetch_metadata(args: &Args) -> Result<ModelInfo> {
    match args.protocol {
        Protocol::Grpc => {
            let channel = grpc_channels(&args.addr, 1, args.timeout).await?.remove(0);
            let meta = GrpcInferenceServiceClient::new(channel)
                .model_metadata(ModelMetadataRequest {
                    name: args.model.clone(),
                    version: args.model_version.clone().unwrap_or_default(),
                })
                .await
                .with_context(|| format!("model metadata for `{}`", args.model))?
                .into_inner();
            let convert =
                |t: &switchyard_proto::model_metadata_response::TensorMetadata| TensorInfo {
                    name: t.name.clone(),
                    datatype: t.datatype.clone(),
                    shape: t.shape.clone(),
                };
            Ok(ModelInfo {
                name: meta.name,
                inputs: meta.inputs.iter().map(convert).collect(),
                outputs: meta.outputs.iter().map(convert).collect(),
            })
        }
        _ => {
            let path = match &args.model_version {
                Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
                None => format!("/v2/models/{}", args.model),
            };
            let client = http_client(false, args.timeout);
            let uri: http::Uri = format!("http://{}{path}", args.addr).parse()?;
            let response = client
                .get(uri)
                .await
                .with_context(|| format!("GET {path} from {}", args.addr))?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await?
                .to_bytes();
            if !status.is_success() {
                bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(serde_json::from_slice(&body).context("model metadata JSON")?)
        }
    }
}

fn expectation(args: &Args, model: &ModelInfo) -> Result<Expectation> {
    let wanted: Vec<&TensorInfo> = model
        .outputs
        .iter()
        .filter(|o| args.outputs.is_empty() || args.outputs.contains(&o.name))
        .collect();
    let no_overrides = BTreeMap::new();
    let outputs = wanted
        .into_iter()
        .map(|o| {
            // Only the batch dimension is known in advance; others stay "any".
            let mut shape = o.shape.clone();
            if shape.first() == Some(&-1) && args.input_file.is_none() {
                shape[0] = concrete_shape(o, args.batch, &no_overrides)
                    .map(|s| s[0])
                    .unwrap_or(-1);
            }
            TensorInfo { shape, ..o.clone() }
        })
        .collect();
    let reference = match &args.expect_file {
        None => None,
        Some(path) => {
            let file: Value =
                serde_json::from_slice(&std::fs::read(path)?).context("expect file JSON")?;
            let map = file["outputs"]
                .as_object()
                .context("expect file needs an `outputs` object")?;
            Some(
                map.iter()
                    .map(|(k, v)| {
                        let values = v
                            .as_array()
                            .context("each expected output is a flat array")?
                            .iter()
                            .map(|x| {
                                x.as_f64()
                                    .or_else(|| x.as_bool().map(f64::from))
                                    .context("numbers only")
                            })
                            .collect::<Result<Vec<f64>>>()?;
                        Ok((k.clone(), values))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()?,
            )
        }
    };
    Ok(Expectation {
        outputs,
        reference,
        tolerance: args.tolerance,
    })
}

async fn build_target(args: &Args) -> Result<WireTarget> {
    if matches!(args.protocol, Protocol::HttpLive) {
        let uri = format!("http://{}/v2/health/live", args.addr).parse()?;
        let wire = Wire::HttpGet {
            client: http_client(args.http2, args.timeout),
            uri,
        };
        return Ok(WireTarget::new(wire, Expectation::default(), args.timeout));
    }
    if matches!(args.protocol, Protocol::GrpcLive) {
        let channels = grpc_channels(&args.addr, args.connections, args.timeout).await?;
        return Ok(WireTarget::new(
            Wire::GrpcLive { channels },
            Expectation::default(),
            args.timeout,
        ));
    }
    let model = fetch_metadata(args).await?;
    let inputs = match &args.input_file {
        Some(path) => inputs_from_json(
            &serde_json::from_slice(&std::fs::read(path)?).context("input file JSON")?,
        )?,
        None => random_inputs(
            &model,
            args.batch,
            &args.shapes.iter().cloned().collect(),
            args.seed,
        )?,
    };
    let expectation = expectation(args, &model)?;
    let infer_path = match &args.model_version {
        Some(v) => format!("/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("/v2/models/{}/infer", args.model),
    };
    let wire = match args.protocol {
        Protocol::HttpJson => Wire::HttpInfer {
            client: http_client(args.http2, args.timeout),
            uri: format!("http://{}{infer_path}", args.addr).parse()?,
            body: http_json_body(&inputs, &args.outputs)?,
            header_len: None,
        },
        Protocol::HttpBinary => {
            let (body, header_len) = http_binary_body(&inputs, &args.outputs)?;
            Wire::HttpInfer {
                client: http_client(args.http2, args.timeout),
                uri: format!("http://{}{infer_path}", args.addr).parse()?,
                body,
                header_len: Some(header_len),
            }
        }
        Protocol::Grpc => Wire::GrpcInfer {
            channels: grpc_channels(&args.addr, args.connections, args.timeout).await?,
            request: grpc_request(
                &args.model,
                args.model_version.as_deref(),
                &inputs,
                &args.outputs,
            ),
        },
        Protocol::HttpLive | Protocol::GrpcLive => unreachable!("handled above"),
    };
    Ok(WireTarget::new(wire, expectation, args.timeout))
}

async fn run(args: Args) -> Result<()> {
    let bounds = Bounds {
        warmup: args.warmup,
        duration: args.duration,
        requests: args.requests,
    };
    bounds.check().map_err(anyhow::Error::msg)?;
    let target = Arc::new(build_target(&args).await?);
    let label = format!(
        "{} {:?} batch {} {}",
        args.model,
        args.protocol,
        args.batch,
        match args.rate {
            Some(rate) => format!("open loop {rate}/s"),
            None => format!("concurrency {}", args.concurrency),
        }
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = match args.requests {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {pos} requests {per_sec} {wide_bar}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let progress: Option<Progress> = bar
        .clone()
        .map(|bar| Arc::new(move |n: u64| bar.set_position(n)) as Progress);
    let cpu_before = cpu::process_cpu_seconds("self").unwrap_or(0.0);
    let result = match args.rate {
        Some(rate) if rate > 0.0 => {
            open_loop(target, rate, args.max_in_flight, bounds, progress).await
        }
        Some(_) => bail!("--rate must be positive"),
        None => closed_loop(target, args.concurrency, bounds, progress).await,
    };
    let cpu_used = cpu::process_cpu_seconds("self").unwrap_or(0.0) - cpu_before;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = result.recorder.summary(result.elapsed, cpu_used);
    if let Some(path) = &args.report {
        std::fs::write(path, report::html(&summary, &label))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&summary)?)
    } else {
        report::text(&summary, &label)
    };
    // A closed pipe (the reader went away) is an error to report, not a panic.
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
        .context("writing the summary")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::BenchReport {
        input,
        html,
        svg_dir,
    }) = &cli.command
    {
        return match switchyard_load::bench_report::write(input, html, svg_dir.as_deref()) {
            Ok(count) => {
                eprintln!(
                    "switchyard-load: {count} charts written to {}",
                    html.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("switchyard-load: {err:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let args = cli.run;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchyard-load: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard-load: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
