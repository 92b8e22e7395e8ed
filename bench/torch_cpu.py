#!/usr/bin/env python3
"""ONNX Runtime and libtorch side by side on the CPU, same MLP, same gateway.

`mlp` (ONNX) and `mlp_torch` (its exact weights as TorchScript) are served by
one Switchyard process (release build with `--features torch`, pinned to one
core) with the same batching settings; switchyard-load (pinned to the other
core) drives each over gRPC with batch-1 requests at concurrency 1 and 64.
The raw ceiling of each runtime comes from `switchyard bench-runtime` on the
server's core. Prints a markdown table: throughput, latency, server CPU per
request, and the ratios gateway ÷ raw (best batched rows/s) and the latency
the gateway adds over the raw batch-1 run.

Usage: make bench-gpu-build (or any release build with --features torch) &&
       python3 bench/torch_cpu.py [--duration 8s]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    BATCHING_CONFIG, RELEASE, REPO, free_port, spawn, tree_cpu_seconds, wait_http_ready, write_input_file,
)

TORCH_CONFIG = """\
platform: pytorch_libtorch
inputs: [{name: input, datatype: FP32, dims: [256]}]
outputs: [{name: output, datatype: FP32, dims: [10]}, {name: probabilities, datatype: FP32, dims: [10]}]
""" + BATCHING_CONFIG
MODELS = {"mlp": ("model.onnx", REPO / "models" / "mlp" / "1" / "model.onnx", BATCHING_CONFIG),
          "mlp_torch": ("model.pt", REPO / "models" / "torch" / "mlp_torch" / "1" / "model.pt", TORCH_CONFIG)}


def repository(root: Path) -> Path:
    for name, (file, source, config) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(source, root / name / "1" / file)
        (root / name / "config.yaml").write_text(config)
    return root


def raw(repo: Path, model: str, core: int) -> list[dict]:
    cmd = ["taskset", "-c", str(core), str(RELEASE / "switchyard"), "bench-runtime", "--model-repository", str(repo),
           "--model", model, "--batch", "1,8,32,128", "--threads", "1", "--duration", "2s", "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def drive(pid: int, grpc_port: int, model: str, concurrency: int, duration: str, core: int, inputs: Path) -> dict:
    cmd = ["taskset", "-c", str(core), str(RELEASE / "switchyard-load"), "--addr", f"127.0.0.1:{grpc_port}",
           "--protocol", "grpc", "--model", model, "--concurrency", str(concurrency), "--duration", duration,
           "--warmup", "1s", "--input-file", str(inputs), "--output", "output", "--json"]
    before = tree_cpu_seconds(pid)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    after = tree_cpu_seconds(pid)
    if result.returncode != 0:
        raise RuntimeError(f"switchyard-load failed: {result.stderr}")
    summary = json.loads(result.stdout)
    requests = summary["requests"] * (1 + 1.0 / summary["elapsed_s"])  # the warm-up's share of the CPU window
    return {"model": model, "concurrency": concurrency, "rps": summary["throughput_rps"],
            "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"],
            "cpu_us": (after - before) * 1e6 / requests, "errors": summary["errors"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    info = subprocess.run([str(RELEASE / "switchyard"), "torch-info"], capture_output=True, text=True)
    if info.returncode != 0:
        sys.exit(f"{RELEASE / 'switchyard'} has no libtorch runtime: build it with `make bench-gpu-build`")
    inputs = write_input_file()
    with tempfile.TemporaryDirectory(prefix="bench-torch-cpu-") as tmp:
        repo = repository(Path(tmp))
        ceilings = {model: raw(repo, model, args.server_core) for model in MODELS}
        http, grpc, metrics = free_port(), free_port(), free_port()
        process, log = spawn("switchyard", [str(RELEASE / "switchyard"), "--model-repository", str(repo),
                                            "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}",
                                            "--metrics-addr", f"127.0.0.1:{metrics}"], args.server_core)
        try:
            wait_http_ready(http, "/v2/health/ready", 120)
            rows = [drive(process.pid, grpc, model, c, args.duration, args.client_core, inputs)
                    for model in MODELS for c in (1, 64)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("| runtime | raw b1 p50 ms | raw best rows/s (batch) | conc. | req/s | p50 ms | p99 ms | server CPU µs/req | errors | req/s ÷ raw best | p50 − raw b1 p50 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ceiling = ceilings[row["model"]]
        b1 = next(r for r in ceiling if r["batch"] == 1)
        best = max(ceiling, key=lambda r: r["rows_per_s"])
        print(f"| {row['model']} | {b1['p50_ms']:.3f} | {best['rows_per_s']:.0f} ({best['batch']}) | {row['concurrency']} | "
              f"{row['rps']:.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['cpu_us']:.0f} | {row['errors']} | "
              f"{row['rps'] / best['rows_per_s']:.2f} | {row['p50_ms'] - b1['p50_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
