#!/usr/bin/env python3
"""Pipeline cost: normalize -> mlp -> topk served three ways in one run on one
machine, server pinned to core 0 and load generator to core 1:

  (a) the native pipeline `mlp_pipeline` (one request, three steps in the server);
  (b) the client chaining the three itself (normalize, then mlp on its output,
      then topk): switchyard-load cannot chain calls, so a threaded Python gRPC
      client does; its figures are per pipeline-equivalent request (three calls);
  (c) `fused`, the three in one ONNX graph (make_models.make_fused);

plus each step model on its own (switchyard-load) and the pipeline driven by the
same Python client as (b), so both comparisons are like for like. Every step
model batches (max 128, 500 µs). At each concurrency it prints server CPU µs per
request, throughput and p50/p99, and the pipeline's own overhead per step:
  vs steps:   (pipeline CPU/request − Σ step CPU/request, measured separately) / 3
  vs chained: (pipeline CPU/request − client-chained CPU/request, same Python client) / 3
Rounds alternate the order of the variants so drift hits all of them; figures
are medians over rounds. Writes bench/out/pipeline.json.

Usage: python3 bench/pipeline.py [--duration 10s] [--rounds 1] [--concurrency 1,64]
(needs `make build-release`; the Python client needs tritonclient[grpc], as in .venv).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, REPO, Row, drive, start_switchyard, tree_cpu_seconds  # noqa: E402

MODELS = REPO / "models"
BATCHING = "max_batch_size: 128\ndynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}\n"
FUSED_CONFIG = BATCHING + """\
inputs:
  - {name: raw, datatype: FP32, dims: [256]}
outputs:
  - {name: probabilities, datatype: FP32, dims: [10]}
  - {name: top_scores, datatype: FP32, dims: [3]}
  - {name: top_classes, datatype: INT64, dims: [3]}
"""
STEPS = ["normalize", "mlp", "topk"]
# (row label, how it is driven, the model it calls)
VARIANTS = [
    ("pipeline", "load", "mlp_pipeline"),
    ("pipeline (python client)", "python-pipeline", "mlp_pipeline"),
    ("client-chained (python client)", "python-chain", ""),
    ("fused", "load", "fused"),
    *[(f"step {step}", "load", step) for step in STEPS],
]


def repository(root: Path) -> Path:
    """The three steps (batching), the bundled pipeline over them, and the fused model."""
    sys.path.insert(0, str(MODELS))
    import make_models

    repo = root / "repo"
    for step in STEPS:
        version = repo / step / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").symlink_to(MODELS / step / "1" / "model.onnx")
        bundled = MODELS / step / "config.yaml"
        # The bundled mlp has no config (so no batching); the others batch already.
        (repo / step / "config.yaml").write_text(bundled.read_text() if bundled.exists() else BATCHING)
    (repo / "mlp_pipeline").mkdir()
    shutil.copy(MODELS / "mlp_pipeline" / "config.yaml", repo / "mlp_pipeline" / "config.yaml")
    (repo / "fused" / "1").mkdir(parents=True)
    (repo / "fused" / "1" / "model.onnx").write_bytes(make_models.make_fused().SerializeToString())
    (repo / "fused" / "config.yaml").write_text(FUSED_CONFIG)
    return repo


# ---------- the Python client (runs in its own process, pinned like switchyard-load) ----------

def python_client(grpc_addr: str, mode: str, concurrency: int, duration: float, warmup: float, server_pid: int) -> dict:
    """Closed loop: `concurrency` threads, each calling the pipeline, or chaining
    the three steps, back to back. Counts only requests finished inside the
    measured window, and reads the server's CPU at the window's edges."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    window = {"open": False}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def call(client, model: str, name: str, value):
        tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        return client.infer(model, [tensor])

    def worker(seed: int):
        client = grpcclient.InferenceServerClient(grpc_addr)
        raw = np.random.default_rng(seed).uniform(-1, 1, (1, 256)).astype(np.float32)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                if mode == "python-pipeline":
                    call(client, "mlp_pipeline", "raw", raw)
                else:
                    normalized = call(client, "normalize", "raw", raw).as_numpy("normalized")
                    logits = call(client, "mlp", "input", normalized).as_numpy("output")
                    call(client, "topk", "logits", logits)
                took = time.perf_counter() - started
                with lock:
                    if window["open"]:
                        latencies.append(took)
            except Exception as err:  # noqa: BLE001 - counted by kind, like switchyard-load does
                with lock:
                    if window["open"]:
                        errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    with lock:
        window["open"] = True
        cpu_before, opened = tree_cpu_seconds(server_pid), time.monotonic()
    time.sleep(duration)
    with lock:
        window["open"] = False
        cpu_after, closed = tree_cpu_seconds(server_pid), time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    done = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")  # noqa: E731
    return {"requests": done, "rps": done / (closed - opened), "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "cpu_us_per_request": (cpu_after - cpu_before) * 1e6 / done if done else float("nan"),
            "errors": sum(errors.values()), "error_kinds": errors}


def drive_python(server, mode: str, label: str, concurrency: int, duration: str, core: int) -> Row:
    seconds = parse_seconds(duration)
    cmd = ["taskset", "-c", str(core), sys.executable, __file__, "--client", mode,
           "--grpc-port", str(server.grpc_port), "--server-pid", str(server.process.pid),
           "--concurrency", str(concurrency), "--duration", duration]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"the Python client failed: {result.stderr}")
    summary = json.loads(result.stdout)
    return Row(server=label, protocol="grpc", concurrency=concurrency, rps=summary["rps"],
               p50_ms=summary["p50_ms"], p99_ms=summary["p99_ms"],
               cpu_us_per_request=summary["cpu_us_per_request"], errors=summary["errors"],
               error_kinds=summary["error_kinds"])


def parse_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


# ---------- the table ----------

def median_row(runs: list[Row]) -> Row:
    first = runs[0]
    return Row(server=first.server, protocol=first.protocol, concurrency=first.concurrency,
               rps=statistics.median(r.rps for r in runs), p50_ms=statistics.median(r.p50_ms for r in runs),
               p99_ms=statistics.median(r.p99_ms for r in runs),
               cpu_us_per_request=statistics.median(r.cpu_us_per_request for r in runs),
               errors=sum(r.errors for r in runs))


def report(rows: dict[tuple[str, int], Row], concurrencies: list[int]) -> str:
    lines = ["| variant | conc. | req/s | p50 ms | p99 ms | server CPU µs/request | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for concurrency in concurrencies:
        for label, _, _ in VARIANTS:
            r = rows[(label, concurrency)]
            lines.append(f"| {label} | {concurrency} | {r.rps:.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                         f"{r.cpu_us_per_request:.1f} | {r.errors} |")
    lines += ["", "Pipeline overhead per step (server CPU µs):", "",
              "| conc. | pipeline | Σ steps | (pipeline − Σ steps) / 3 | pipeline, python client | client-chained | (pipeline − chained) / 3 | fused |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency in concurrencies:
        cpu = lambda label: rows[(label, concurrency)].cpu_us_per_request  # noqa: E731
        steps = sum(cpu(f"step {step}") for step in STEPS)
        pipeline, python_pipeline, chained = cpu("pipeline"), cpu("pipeline (python client)"), cpu("client-chained (python client)")
        lines.append(f"| {concurrency} | {pipeline:.1f} | {steps:.1f} | {(pipeline - steps) / 3:.1f} | "
                     f"{python_pipeline:.1f} | {chained:.1f} | {(python_pipeline - chained) / 3:.1f} | {cpu('fused'):.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="10s", help="measured time per row (after 1s warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    # The Python client's own process (internal: started by this script under taskset).
    parser.add_argument("--client", choices=["python-pipeline", "python-chain"], help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client:
        summary = python_client(f"127.0.0.1:{args.grpc_port}", args.client, int(args.concurrency),
                                parse_seconds(args.duration), 1.0, args.server_pid)
        print(json.dumps(summary))
        return 0

    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    runs: dict[tuple[str, int], list[Row]] = {}
    try:
        repo = repository(root)
        for round_index in range(args.rounds):
            server = start_switchyard(args.server_core, [], repo, name="pipeline")
            try:
                # Rotate the order each round so drift does not favour one variant.
                shift = round_index % len(VARIANTS)
                for label, how, model in VARIANTS[shift:] + VARIANTS[:shift]:
                    for concurrency in concurrencies:
                        if how == "load":
                            row = drive(server, "grpc", concurrency, args.duration, args.client_core, None, model=model)
                            row.server = label
                        else:
                            row = drive_python(server, how, label, concurrency, args.duration, args.client_core)
                        print(f"   {label:32} c={concurrency:<4} {row.rps:8.0f} req/s  p50 {row.p50_ms:.3f} ms  "
                              f"cpu {row.cpu_us_per_request:.1f} µs/req  errors {row.errors}", file=sys.stderr)
                        runs.setdefault((label, concurrency), []).append(row)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = {key: median_row(value) for key, value in runs.items()}
    table = report(rows, concurrencies)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps([asdict(r) for r in rows.values()], indent=1))
    print(table)
    print(f"\n(gRPC, {args.rounds} round(s) of {args.duration} per row; server on core {args.server_core}, "
          f"clients on core {args.client_core}. The Python client is slower than switchyard-load, so its rows "
          "see less load and smaller batches; compare it with the pipeline row it drives.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
