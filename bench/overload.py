#!/usr/bin/env python3
"""Overload at 10× capacity: Switchyard with dynamic batching, `mlp`, batch-32 requests.

1. Measures capacity with a closed loop (64 clients).
2. Offers 10× that rate in an open loop for --duration, then reports: admitted
   requests' p99 (should stay near queue delay + compute, bounded by the queue),
   how fast refusals come back (429 / RESOURCE_EXHAUSTED), and the server's RSS
   before, at peak (VmHWM) and after.

Requests carry 32 rows each so that the server's capacity is low enough for
one client core to offer 10× of it.

Usage: python3 bench/overload.py [--protocol grpc] [--duration 5s]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CACHE, RELEASE, MODEL, Server, free_port, spawn, wait_http_ready  # noqa: E402

CONFIG = """\
max_batch_size: 128
queue: {capacity: 64}
dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}
"""


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def load_cmd(addr: str, protocol: str, extra: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), str(RELEASE / "switchyard-load"), "--addr", addr, "--protocol", protocol,
            "--model", "mlp", "--batch", "32", "--json", *extra]


def load(addr: str, protocol: str, extra: list[str], core: int) -> dict:
    warmup = [] if "--warmup" in extra else ["--warmup", "1s"]
    out = subprocess.run(load_cmd(addr, protocol, [*warmup, *extra], core), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http-binary"])
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()

    repo = CACHE / "repo-overload"
    (repo / "mlp" / "1").mkdir(parents=True, exist_ok=True)
    link = repo / "mlp" / "1" / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(MODEL)
    (repo / "mlp" / "config.yaml").write_text(CONFIG)

    http, grpc, metrics = free_port(), free_port(), free_port()
    process, log = spawn("overload", [str(RELEASE / "switchyard"), "--model-repository", str(repo),
                                      "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}",
                                      "--metrics-addr", f"127.0.0.1:{metrics}", "--log", "warn"], args.server_core)
    server = Server("switchyard", process, http, grpc, log)
    try:
        wait_http_ready(http, "/v2/health/ready", 60)
        addr = f"127.0.0.1:{grpc if args.protocol == 'grpc' else http}"
        before = rss_kib(process.pid)
        capacity = load(addr, args.protocol, ["--concurrency", "64", "--duration", "3s"], args.client_core)
        rate = capacity["throughput_rps"] * args.factor
        # The flood, and beside it a one-at-a-time probe: the flood's own error
        # latency includes its client's queueing at 10× rate; the probe's does not.
        flood = subprocess.Popen(load_cmd(addr, args.protocol, ["--warmup", "1s", "--rate", f"{rate:.0f}", "--duration",
                                                                args.duration, "--max-in-flight", "100000", "--timeout", "10s"],
                                          args.client_core), stdout=subprocess.PIPE, text=True)
        probe = load(addr, args.protocol, ["--warmup", "2s", "--concurrency", "1", "--duration", "2s"], args.client_core)
        out, _ = flood.communicate(timeout=600)
        over = json.loads(out)
        after = rss_kib(process.pid)
    finally:
        server.stop()

    offered = over["requests"] / over["elapsed_s"] if over["elapsed_s"] else 0
    print(f"| measure | value |\n|---|---:|")
    print(f"| capacity (closed loop, 64 clients) | {capacity['throughput_rps']:.0f} req/s ({capacity['throughput_rps'] * 32:.0f} rows/s), p99 {capacity['latency_ms']['p99']:.2f} ms |")
    print(f"| offered (open loop, {args.factor:.0f}×) | {rate:.0f} req/s target, {offered:.0f} req/s achieved |")
    print(f"| admitted | {over['ok']} ({over['throughput_rps']:.0f} req/s) |")
    print(f"| admitted latency p50 / p99 / max | {over['latency_ms']['p50']:.2f} / {over['latency_ms']['p99']:.2f} / {over['latency_ms']['max']:.2f} ms |")
    print(f"| refused | {over['errors']} {over['errors_by_kind']} |")
    print(f"| refusal latency, flood (from scheduled send) p50 / p99 | {over['error_latency_ms']['p50']:.3f} / {over['error_latency_ms']['p99']:.3f} ms |")
    print(f"| refusal latency, probe beside the flood p50 / p99 ({probe['errors']} refusals) | {probe['error_latency_ms']['p50']:.3f} / {probe['error_latency_ms']['p99']:.3f} ms |")
    print(f"| server RSS before / peak / after | {before['VmRSS'] / 1024:.1f} / {after['VmHWM'] / 1024:.1f} / {after['VmRSS'] / 1024:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
