#!/usr/bin/env python3
"""Payload-capture cost: the batched mlp at c=64 with capture off and with
capture on at 100% to JSON Lines files, side by side in one run, alternating
A/B/A/B so drift hits both; server pinned to core 0, load generator to core 1.
Prints server CPU µs per request, throughput and p50/p99 for each, and the
ratio (target: ≤ 1.10 CPU per request with capture).

Usage: python3 bench/capture.py [--duration 10s] [--rounds 2] [--protocol grpc]
(needs `make build-release`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MODEL, drive, start_switchyard  # noqa: E402

CONFIG = """\
max_batch_size: 128
dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}
"""


def repository(root: Path, capture: bool) -> Path:
    repo = root / ("with" if capture else "without")
    version = repo / "mlp" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").symlink_to(MODEL)
    (repo / "mlp" / "config.yaml").write_text(CONFIG + ("capture: {}\n" if capture else ""))
    return repo


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--protocol", default="grpc")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    rows: dict[str, list] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for label in ("off", "on"):
                extra = ["--capture-dir", str(root / "records")] if label == "on" else []
                server = start_switchyard(0, extra, repository(root / f"{label}-{len(rows[label])}", label == "on"),
                                          name=f"capture-{label}")
                try:
                    rows[label].append(drive(server, args.protocol, args.concurrency, args.duration, 1, None))
                finally:
                    server.stop()
        written = sum(1 for path in (root / "records").glob("*.jsonl") for _ in path.open())
        print(f"| capture | req/s | server CPU µs/request | p50 ms | p99 ms | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        summary = {}
        for label, runs in rows.items():
            cpu = statistics.median(r.cpu_us_per_request for r in runs)
            summary[label] = cpu
            print(f"| {label} | {statistics.median(r.rps for r in runs):.0f} | {cpu:.1f} | "
                  f"{statistics.median(r.p50_ms for r in runs):.2f} | {statistics.median(r.p99_ms for r in runs):.2f} | "
                  f"{sum(r.errors for r in runs)} |")
        print(f"\nCPU per request, capture on ÷ off: {summary['on'] / summary['off']:.3f} "
              f"({args.protocol}, c={args.concurrency}, {args.rounds} rounds of {args.duration}; {written} records written)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
