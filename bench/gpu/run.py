#!/usr/bin/env python3
"""GPU benchmark: Switchyard serving TorchScript resnet18 on cuda:0, batched,
against the raw runtime at the same batch sizes, in one run on one machine.

Made to run on a CUDA machine with no network and no Rust. It needs only:
  * target/release/switchyard built with `--features torch` and
    target/release/switchyard-load (`make bench-gpu-build`, on any machine);
  * models/torch_samples.py from this checkout (the model is made here, with
    fixed seeds; nothing is downloaded);
  * that machine's Python with PyTorch 2.11.0 (CUDA build): its torch/lib gives
    the binary libtorch's CUDA libraries, and it times PyTorch itself.

What it measures, per variant of the model (FP32 inputs; FP16 inputs cast to
FP32 on the device, half the bytes to move; FP16 inputs with FP16 autocast):
  * through the gateway: switchyard-load over gRPC, single-image requests,
    concurrency 64 and 256 (closed loop), images/s, latency, the mean batch
    the batcher formed, server CPU-seconds per image;
  * raw: `switchyard bench-runtime` (the same runtime code, in process, no
    server: host buffer in, host buffer out) at batch 64, 256 and the mean
    batch the gateway formed;
  * PyTorch from Python at the same batches, inputs already on the GPU (pure
    compute) and copied from pinned or pageable host memory: the transfer cost.
Prints a markdown table of images/s through the gateway ÷ raw images/s at the
matching batch size, and writes the figures as JSON ($OUT/gpu-bench.json when
OUT is set, else bench/out/gpu-bench.json).

Usage: python3 bench/gpu/run.py [--duration 15s] [--instances 2]
Finishes in about 3–4 minutes with the defaults. `--device cpu` (with small
settings) runs the same steps on a machine without CUDA; the test suite does
that to keep this script working where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "target" / "release"  # replaced by --bin-dir
CLK_TCK = os.sysconf("SC_CLK_TCK")

VARIANTS = {
    # name: (input datatype, torch options besides the device)
    "resnet18": ("FP32", {}),
    "resnet18_fp16_inputs": ("FP16", {"cast_inputs": "FP32"}),
    "resnet18_autocast": ("FP16", {"cast_inputs": "FP32", "autocast_fp16": True}),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def torch_lib(device: str) -> Path:
    import torch

    if not torch.__version__.startswith("2.11."):
        sys.exit(f"PyTorch {torch.__version__} found; the binary was built against libtorch 2.11.0")
    if device != "cpu" and not torch.cuda.is_available():
        sys.exit("PyTorch sees no CUDA device: run this on a CUDA machine (or pass --device cpu)")
    return Path(torch.__file__).parent / "lib"


def make_repository(root: Path, variants: list[str], device: str, instances: int, max_batch: int, delay_us: int) -> None:
    sys.path.insert(0, str(REPO / "models"))
    import torch_samples

    model = torch_samples.serialize("resnet18")
    for name in variants:
        datatype, torch_options = VARIANTS[name]
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.pt").write_bytes(model)
        config = {
            "platform": "pytorch_libtorch",
            "max_batch_size": max_batch,
            "instance_count": instances,
            "inputs": [{"name": "input", "datatype": datatype, "dims": [3, 224, 224]}],
            "outputs": [{"name": "output", "datatype": "FP32", "dims": [1000]}],
            "dynamic_batching": {"max_queue_delay_us": delay_us},
            "queue": {"capacity": 4096},
            "torch": {"device": device, **torch_options},
        }
        # JSON is YAML.
        (root / name / "config.yaml").write_text(json.dumps(config, indent=1))


class Server:
    def __init__(self, repository: Path, env: dict) -> None:
        self.log_file = tempfile.NamedTemporaryFile(prefix="switchyard-gpu-", suffix=".log", delete=False)
        args = [
            str(RELEASE / "switchyard"), "--model-repository", str(repository),
            "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
            "--log-format", "json", "--repository-poll-interval", "1h",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log_file, env=env)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"switchyard exited with {self.process.returncode}:\n{self.log()}")
            for line in self.log().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "Listening.":
                    self.http, self.grpc, self.metrics = event["http"], event["grpc"], event["metrics"]
                    return
            time.sleep(0.2)
        self.stop()
        sys.exit(f"switchyard did not start within 240 s:\n{self.log()}")

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def batch_totals(self, model: str) -> tuple[float, float]:
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10).read().decode()
        total = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for kind in total:
                if line.startswith(f"switchyard_batch_size_{kind}{{") and f'model="{model}"' in line:
                    total[kind] += float(line.rsplit(" ", 1)[1])
        return total["sum"], total["count"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def gateway_run(server: Server, model: str, concurrency: int, duration: str, warmup: str) -> dict:
    rows_before, batches_before = server.batch_totals(model)
    cpu_before = server.cpu_seconds()
    cmd = [
        str(RELEASE / "switchyard-load"), "--addr", server.grpc, "--protocol", "grpc", "--model", model,
        "--batch", "1", "--concurrency", str(concurrency), "--connections", "8",
        "--duration", duration, "--warmup", warmup, "--json",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"switchyard-load failed: {result.stderr[-2000:]}")
    summary = json.loads(result.stdout)
    rows_after, batches_after = server.batch_totals(model)
    cpu = server.cpu_seconds() - cpu_before
    rows = rows_after - rows_before
    batches = batches_after - batches_before
    return {
        "model": model,
        "concurrency": concurrency,
        "images_per_s": summary["throughput_rps"],
        "ok": summary["ok"],
        "errors": summary["errors"],
        "p50_ms": summary["latency_ms"]["p50"],
        "p99_ms": summary["latency_ms"]["p99"],
        "mean_batch": rows / batches if batches else 0.0,
        # Warm-up requests are in the server's CPU and batch counts too.
        "server_cpu_ms_per_image": 1000.0 * cpu / rows if rows else 0.0,
    }


def raw_runs(model: str, repository: Path, batches: list[int], env: dict, duration: str) -> dict[int, dict]:
    cmd = [
        str(RELEASE / "switchyard"), "bench-runtime", "--model-repository", str(repository), "--model", model,
        "--batch", ",".join(str(b) for b in batches), "--duration", duration, "--json",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"bench-runtime failed: {result.stderr[-2000:]}")
    return {r["batch"]: r for r in json.loads(result.stdout)}


def pytorch_reference(device: str, batches: list[int], seconds: float = 2.0) -> list[dict]:
    """resnet18 in PyTorch itself: compute alone, and with the copy in from host memory."""
    import torch

    sys.path.insert(0, str(REPO / "models"))
    import torch_samples

    cuda = device != "cpu"
    if not cuda:
        torch.set_num_threads(1)
    module = torch.jit.script(torch_samples.build("resnet18")).to(device).eval()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = []
    with torch.inference_mode():
        for batch in batches:
            host = torch.randn(batch, 3, 224, 224)
            on_device = host.to(device)
            modes = [("resident", lambda: on_device)]
            if cuda:
                pinned = host.pin_memory()
                modes += [
                    ("pinned_copy", lambda: pinned.to(device, non_blocking=True)),
                    ("pageable_copy", lambda: host.to(device)),
                ]
            row = {"batch": batch}
            for label, make_input in modes:
                for _ in range(3):
                    module(make_input()).cpu()
                sync()
                runs, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds or runs < 3:
                    module(make_input()).cpu()
                    runs += 1
                elapsed = time.perf_counter() - started
                row[f"{label}_images_per_s"] = batch * runs / elapsed
            if cuda:
                # The copy alone, for the transfer's share.
                sync()
                started = time.perf_counter()
                for _ in range(20):
                    host.to(device)
                sync()
                row["pageable_copy_ms"] = (time.perf_counter() - started) * 1000 / 20
            results.append(row)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="15s", help="measured time per gateway run")
    parser.add_argument("--warmup", default="3s")
    parser.add_argument("--raw-duration", default="3s", help="time per batch size for the raw runtime")
    parser.add_argument("--instances", type=int, default=2, help="model instances on cuda:0")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--delay-us", type=int, default=2000, help="dynamic batching max_queue_delay_us")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda:0", help="cpu: a dry run of the same steps without CUDA")
    parser.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release", help="where switchyard and switchyard-load are")
    args = parser.parse_args()
    global RELEASE
    RELEASE = args.bin_dir
    started = time.monotonic()
    for binary in ("switchyard", "switchyard-load"):
        if not (RELEASE / binary).exists():
            sys.exit(f"{RELEASE / binary} is missing: run `make bench-gpu-build` and carry target/release")

    lib = torch_lib(args.device)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    info = json.loads(subprocess.run([str(RELEASE / "switchyard"), "torch-info"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    log(f"libtorch as the binary sees it: {info}")
    if args.device != "cpu" and not info["cuda_available"]:
        sys.exit("the binary did not get CUDA (see cuda_part_error above)")

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    matching = sorted({min(c, args.max_batch) for c in concurrencies})
    gateway, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="switchyard-gpu-") as tmp:
        repository = Path(tmp)
        make_repository(repository, variants, args.device, args.instances, args.max_batch, args.delay_us)
        log("starting switchyard (loads and warms every variant on cuda:0)")
        server = Server(repository, env)
        try:
            for variant in variants:
                for concurrency in concurrencies:
                    log(f"gateway: {variant} at concurrency {concurrency}")
                    gateway.append(gateway_run(server, variant, concurrency, args.duration, args.warmup))
        finally:
            server.stop()
        for variant in variants:
            batches = sorted(set(matching) | {max(1, round(g["mean_batch"])) for g in gateway if g["model"] == variant})
            log(f"raw runtime: {variant} at batches {batches}")
            raw[variant] = raw_runs(variant, repository, batches, env, args.raw_duration)
    log("PyTorch reference")
    reference = pytorch_reference(args.device, matching)

    print(f"\n## resnet18 on {args.device} ({info['device_count']} CUDA device(s)), instances={args.instances}, "
          f"max_batch={args.max_batch}, delay={args.delay_us} µs\n")
    print("| variant | conc | gateway img/s | p50 ms | p99 ms | mean batch | raw img/s @mean batch | ratio | raw img/s @conc | ratio | server CPU ms/img | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for g in gateway:
        runs = raw[g["model"]]
        mean = max(1, round(g["mean_batch"]))
        at_mean = runs.get(mean, {}).get("rows_per_s", 0.0)
        at_conc = runs.get(min(g["concurrency"], args.max_batch), {}).get("rows_per_s", 0.0)
        g["raw_images_per_s_at_mean_batch"] = at_mean
        g["raw_images_per_s_at_concurrency"] = at_conc
        g["ratio_at_mean_batch"] = g["images_per_s"] / at_mean if at_mean else None
        g["ratio_at_concurrency"] = g["images_per_s"] / at_conc if at_conc else None
        print(f"| {g['model']} | {g['concurrency']} | {g['images_per_s']:.0f} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | "
              f"{g['mean_batch']:.1f} | {at_mean:.0f} | {g['ratio_at_mean_batch'] or 0:.2f} | {at_conc:.0f} | "
              f"{g['ratio_at_concurrency'] or 0:.2f} | {g['server_cpu_ms_per_image']:.3f} | {g['errors']} |")
    print("\n| PyTorch batch | resident img/s | pinned copy img/s | pageable copy img/s | pageable copy ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in reference:
        print(f"| {r['batch']} | {r['resident_images_per_s']:.0f} | {r.get('pinned_copy_images_per_s', 0):.0f} | "
              f"{r.get('pageable_copy_images_per_s', 0):.0f} | {r.get('pageable_copy_ms', 0):.2f} |")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-bench.json").write_text(json.dumps(
        {"torch_info": info, "args": vars(args), "gateway": gateway, "raw": raw, "pytorch": reference}, indent=1, default=str))
    log(f"done in {time.monotonic() - started:.0f} s; figures in {out_dir / 'gpu-bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
