//! `switchyard bench-runtime`: times a model's runtime in process, with no
//! server in front, to give the ceiling the gateway is measured against.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use switchyard_runtimes::onnx::OnnxOptions;

use crate::config::model::{ModelConfig, Platform};
use crate::serve::model::load_runtimes;

/// Time a model's runtime in process (no server): the gateway's ceiling.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model repository.
    #[arg(long, env = "SWITCHYARD_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: std::path::PathBuf,
    /// Model name.
    #[arg(long, default_value = "mlp")]
    pub model: String,
    /// Version (default: the highest present).
    #[arg(long)]
    pub model_version: Option<u64>,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub batch: Vec<usize>,
    /// ONNX Runtime intra-op threads per session; libtorch's CPU threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Let idle ONNX Runtime threads spin.
    #[arg(long)]
    pub spinning: bool,
    /// Time spent per batch size.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "SWITCHYARD_ONNXRUNTIME_LIBRARY")]
    pub onnxruntime_library: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct BatchTiming {
    pub batch: usize,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub rows_per_s: f64,
}

pub fn run(args: &BenchArgs) -> Result<Vec<BatchTiming>, String> {
    let model_dir = args.model_repository.join(&args.model);
    let (mut config, _) = ModelConfig::load(
        &model_dir,
        &crate::config::model::ConfigDefaults {
            queue_capacity: 1,
            max_request_time: crate::config::model::DEFAULT_MAX_REQUEST_TIME,
            onnx: OnnxOptions::default(),
        },
    )?;
    let version = match args.model_version {
        Some(v) => v,
        None => std::fs::read_dir(&model_dir)
            .map_err(|e| format!("{}: {e}", model_dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .ok_or_else(|| format!("{} has no version folders", model_dir.display()))?,
    };
    match config.platform {
        Platform::Onnx => {
            switchyard_runtimes::onnx::init(args.onnxruntime_library.as_deref())
                .map_err(|e| e.to_string())?;
        }
        #[cfg(feature = "torch")]
        Platform::Torch => switchyard_runtimes::torch::init(args.threads),
        _ => {}
    }
    config.onnx = OnnxOptions {
        intra_op_threads: args.threads,
        inter_op_threads: 1,
        spinning: args.spinning,
    };
    // One instance: the first the config names (its device, for TorchScript).
    config.instance_count = 1;
    let mut runtimes = load_runtimes(&args.model, &model_dir.join(version.to_string()), &config)?;
    let runtime = runtimes.first_mut().ok_or("the model has no instances")?;
    let mut results = Vec::new();
    for &batch in &args.batch {
        let inputs = crate::serve::model::synthetic_inputs(runtime.signature(), batch)?;
        for _ in 0..10 {
            runtime.run(&inputs).map_err(|e| e.to_string())?;
        }
        let mut times = Vec::new();
        let started = Instant::now();
        while started.elapsed() < args.duration || times.len() < 20 {
            let t = Instant::now();
            runtime.run(&inputs).map_err(|e| e.to_string())?;
            times.push(t.elapsed());
        }
        times.sort_unstable();
        let pick =
            |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        let total: Duration = times.iter().sum();
        let mean_ms = total.as_secs_f64() * 1000.0 / times.len() as f64;
        results.push(BatchTiming {
            batch,
            runs: times.len(),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            mean_ms,
            rows_per_s: batch as f64 * 1000.0 / mean_ms,
        });
    }
    Ok(results)
}

pub fn print(args: &BenchArgs, results: &[BatchTiming]) {
    if args.json {
        println!("{}", serde_json::to_string(results).unwrap_or_default());
        return;
    }
    println!(
        "model {} ({} intra-op thread(s), ONNX Runtime spinning {})",
        args.model, args.threads, args.spinning
    );
    println!("| batch | runs | p50 ms | p99 ms | mean ms | rows/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
            r.batch, r.runs, r.p50_ms, r.p99_ms, r.mean_ms, r.rows_per_s
        );
    }
}
