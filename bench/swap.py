#!/usr/bin/env python3
"""Hot-swap benchmark: latency during a swap vs steady state, time from a new
file to serving it, and RSS after many swaps of a ~20 MB model.

1. Steady: closed loop (8 clients, HTTP binary) against version 1.
2. Swap: the same load while version 2 is copied in (atomic rename) 2 s in;
   p99 over the whole run is compared with steady state; a side poller
   measures the time from the rename to the first answer from version 2.
3. Memory: RSS after the first load, then after `--swaps` successive swaps
   (policy latest 1: each swap retires the previous version).

Usage: python3 bench/swap.py [--swaps 100] [--model-mb 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from run import RELEASE, Server, free_port, spawn, wait_http_ready  # noqa: E402


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def served_version(http: int) -> str | None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}).encode()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/versioned/infer", data=body)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["model_version"]
    except OSError:
        return None


def write_version(root: Path, version: int, data: bytes) -> None:
    path = root / "versioned" / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def load(http: int, duration: str, core: int) -> dict:
    cmd = ["taskset", "-c", str(core), str(RELEASE / "switchyard-load"), "--addr", f"127.0.0.1:{http}",
           "--protocol", "http-binary", "--model", "versioned", "--concurrency", "8", "--duration", duration,
           "--warmup", "1s", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--model-mb", type=float, default=20.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()

    import make_models

    models = {v: make_models.make_versioned(v, args.model_mb).SerializeToString() for v in (1, 2)}
    repo = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    write_version(repo, 1, models[1])
    http, grpc, metrics = free_port(), free_port(), free_port()
    process, log = spawn("swap", [str(RELEASE / "switchyard"), "--model-repository", str(repo),
                                  "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}",
                                  "--metrics-addr", f"127.0.0.1:{metrics}", "--repository-poll-interval", "200ms",
                                  "--log", "warn"], args.server_core)
    server = Server("switchyard", process, http, grpc, log)
    try:
        wait_http_ready(http, "/v2/health/ready", 60)
        steady = load(http, "5s", args.client_core)

        result: dict = {}

        def swap_later():
            time.sleep(3.0)  # 1 s warm-up + 2 s of measured load
            started = time.monotonic()
            write_version(repo, 2, models[2])
            while served_version(http) != "2":
                time.sleep(0.005)
            result["to_serving_s"] = time.monotonic() - started

        swapper = threading.Thread(target=swap_later)
        swapper.start()
        during = load(http, "5s", args.client_core)
        swapper.join()

        rss_first = rss_mib(process.pid)
        threads_first = threads(process.pid)
        started = time.monotonic()
        for i in range(args.swaps):
            version = 3 + i
            write_version(repo, version, make_models.make_versioned(version, args.model_mb).SerializeToString())
            while served_version(http) != str(version):
                time.sleep(0.01)
            old = repo / "versioned" / str(version - 1)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        swaps_s = time.monotonic() - started
        time.sleep(1.0)  # let the last retired version drain and drop
        rss_after = rss_mib(process.pid)
        threads_after = threads(process.pid)
    finally:
        server.stop()

    print("| measure | value |\n|---|---:|")
    for name, run in (("steady", steady), ("during a swap", during)):
        lat = run["latency_ms"]
        print(f"| {name}: req/s, p50 / p99 / max ms, errors | {run['throughput_rps']:.0f}, "
              f"{lat['p50']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f}, {run['errors']} |")
    print(f"| p99 during swap ÷ steady p99 | {during['latency_ms']['p99'] / steady['latency_ms']['p99']:.2f} |")
    print(f"| new file → first answer from it | {result.get('to_serving_s', float('nan')) * 1000:.0f} ms (poll interval 200 ms) |")
    print(f"| model file size | {len(models[1]) / (1 << 20):.1f} MiB |")
    print(f"| threads after the first swap / after the swaps | {threads_first} / {threads_after} |")
    print(f"| RSS after the first swap / after {args.swaps} more swaps | {rss_first:.1f} / {rss_after:.1f} MiB "
          f"({(rss_after / rss_first - 1) * 100:+.1f}%), {swaps_s / max(args.swaps, 1):.2f} s per swap |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
