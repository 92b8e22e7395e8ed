#!/usr/bin/env python3
"""What a shadow costs the stable path: p50/p99 and server CPU per request of
an endpoint with no shadow and with a 10% shadow of the same model, in one run
(alternating, server on core 0, load generator on core 1).

    python3 bench/shadow.py [--duration 5s] [--rounds 2] [--concurrency 8] [--percent 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

ROUTES = """endpoints:
  scorer:
    variants:
      - {{name: stable, model: mlp, weight: 100}}
{shadow}"""


def repository(percent: float) -> Path:
    repo = run.mlp_repository(f"repo-shadow-{percent:g}", run.BATCHING_CONFIG)
    shadow = f"    shadow: {{model: mlp, percent: {percent}}}\n" if percent else ""
    (repo / "routes.yaml").write_text(ROUTES.format(shadow=shadow))
    return repo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--percent", type=float, default=10.0)
    args = parser.parse_args()
    input_file = run.write_input_file()
    results: dict[float, list] = {0.0: [], args.percent: []}
    for round_number in range(args.rounds):
        order = list(results) if round_number % 2 == 0 else list(reversed(results))
        for percent in order:
            server = run.start_switchyard(0, [], repository(percent), f"shadow-{percent:g}")
            try:
                for protocol in ("grpc", "http-json"):
                    row = run.drive(server, protocol, args.concurrency, args.duration, 1, input_file, model="scorer")
                    results[percent].append((protocol, row))
                    print(f"  shadow {percent:g}% {protocol:9} {row.rps:7.0f} req/s p50 {row.p50_ms:.3f} "
                          f"p99 {row.p99_ms:.3f} ms CPU {row.cpu_us_per_request:.0f} µs/req errors {row.errors}",
                          file=sys.stderr, flush=True)
            finally:
                server.stop()
    print("| shadow | protocol | req/s | p50 ms | p99 ms | server CPU µs/req |")
    print("|---:|---|---:|---:|---:|---:|")
    for percent, rows in results.items():
        for protocol in ("grpc", "http-json"):
            mine = [r for p, r in rows if p == protocol]
            med = lambda f: statistics.median(f(r) for r in mine)  # noqa: E731
            print(f"| {percent:g}% | {protocol} | {med(lambda r: r.rps):.0f} | {med(lambda r: r.p50_ms):.3f} | "
                  f"{med(lambda r: r.p99_ms):.3f} | {med(lambda r: r.cpu_us_per_request):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
