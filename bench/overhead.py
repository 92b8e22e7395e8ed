#!/usr/bin/env python3
"""The gateway's own cost per request, against the targets of issue 20, in one run.

    python3 bench/overhead.py [--before PATH/TO/switchyard] [--duration 4s] [--rounds 2]

Beside Switchyard (release build, `target/release`) it measures, on the same
cores and in the same run: the raw runtime in process (`switchyard
bench-runtime`, batch 1 and batched) and the protocol floor (the same server's
health endpoints: HTTP and gRPC with no model work, the "null server"). With
`--before` a second binary (e.g. built from the commit before a change) runs
alternately with the current one, round by round, so before/after is read
within one run on a noisy machine. Server on core 0, load generator on core 1;
server CPU per request from /proc; context switches per request with `perf
stat` when `perf` is installed. The medians over rounds are printed as one
markdown table, with each target's verdict.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1
CONCURRENCY = (1, 64)


def context_switches(pid: int, work) -> tuple[object, float]:
    """Runs `work()` while `perf stat` counts the server's context switches."""
    if shutil.which("perf") is None:
        return work(), float("nan")
    perf = subprocess.Popen(["perf", "stat", "-e", "context-switches", "-x", ",", "-p", str(pid)],
                            stderr=subprocess.PIPE, text=True)
    try:
        result = work()
    finally:
        perf.send_signal(2)
        err = perf.communicate(timeout=30)[1]
    switches = next((float(line.split(",")[0]) for line in err.splitlines()
                     if "context-switches" in line and line.split(",")[0].replace(".", "").isdigit()), float("nan"))
    return result, switches


def measure(binary: Path, label: str, duration: str, input_file: Path) -> dict:
    """One round for one binary: raw runtime, floor, unbatched and batched rows."""
    run.RELEASE = binary.parent
    out: dict = {}
    raw = run.raw_ceiling(SERVER_CORE, 1)
    b1 = next(r for r in raw if r["batch"] == 1)
    best = max(raw, key=lambda r: r["rows_per_s"])
    out["raw_b1_us"] = 1e6 / b1["rows_per_s"]
    out["raw_b1_rps"] = b1["rows_per_s"]
    out["raw_b1_p50_ms"] = b1["p50_ms"]
    out["raw_row_us"] = 1e6 / best["rows_per_s"]
    for kind, repository in (("unbatched", run.plain_repository()), ("batched", run.batching_repository())):
        server = run.start_switchyard(SERVER_CORE, [], repository, f"{label}-{kind}")
        try:
            for protocol in ("http-json", "grpc"):
                for concurrency in CONCURRENCY:
                    if kind == "batched" and concurrency == 1:
                        continue
                    def work(protocol=protocol, concurrency=concurrency):
                        return run.drive(server, protocol, concurrency, duration, CLIENT_CORE, input_file)
                    row, switches = context_switches(server.process.pid, work)
                    key = (kind, protocol, concurrency)
                    seconds = float(duration.rstrip("s")) + 1  # with the warm-up
                    out[key] = {"rps": row.rps, "p50_ms": row.p50_ms, "p99_ms": row.p99_ms,
                                "cpu_us": row.cpu_us_per_request, "errors": row.errors,
                                "switches": switches / (row.rps * seconds) if row.rps else float("nan")}
                    print(f"  {label:6} {kind:9} {protocol:9} c={concurrency:<3} {row.rps:7.0f} req/s  "
                          f"p50 {row.p50_ms:.3f} ms  CPU {row.cpu_us_per_request:5.0f} µs/req  "
                          f"cs/req {out[key]['switches']:.2f}  errors {row.errors}", file=sys.stderr, flush=True)
            if kind == "unbatched":
                for protocol in ("http-live", "grpc-live"):
                    for concurrency in CONCURRENCY:
                        row = run.drive(server, protocol, concurrency, duration, CLIENT_CORE, None)
                        out[("floor", protocol, concurrency)] = {"p50_ms": row.p50_ms, "cpu_us": row.cpu_us_per_request}
        finally:
            server.stop()
    # The same c=1 round trip with a model that costs a few µs: what the
    # gateway adds at concurrency 1 without a long model run in between
    # (during which both cores fall idle and wake up slower).
    tiny = tiny_repository()
    raw = run_raw(tiny, "normalize")
    out["tiny_raw_p50_ms"] = raw["p50_ms"]
    server = run.start_switchyard(SERVER_CORE, [], tiny, f"{label}-tiny")
    try:
        for protocol, floor in (("http-json", "http-live"), ("grpc", "grpc-live")):
            row = run.drive(server, protocol, 1, duration, CLIENT_CORE, None, model="normalize")
            out[("tiny", protocol, 1)] = {"p50_ms": row.p50_ms}
            row = run.drive(server, floor, 1, duration, CLIENT_CORE, None)
            out[("tiny-floor", floor, 1)] = {"p50_ms": row.p50_ms}
            print(f"  {label:6} tiny      {protocol:9} c=1   p50 {out[('tiny', protocol, 1)]['p50_ms']:.3f} ms  "
                  f"floor p50 {row.p50_ms:.3f} ms  raw p50 {raw['p50_ms']:.3f} ms", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return out


def tiny_repository() -> Path:
    """The bundled `normalize` (256 floats in and out, a few µs a run), unbatched."""
    repo = run.CACHE / "repo-tiny"
    version = repo / "normalize" / "1"
    version.mkdir(parents=True, exist_ok=True)
    link = version / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(run.REPO / "models" / "normalize" / "1" / "model.onnx")
    return repo


def run_raw(repository: Path, model: str) -> dict:
    """The raw runtime at batch 1 for one model."""
    cmd = ["taskset", "-c", str(SERVER_CORE), str(run.RELEASE / "switchyard"), "bench-runtime",
           "--model-repository", str(repository), "--model", model, "--batch", "1", "--duration", "2s", "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[0]


def median(rounds: list[dict], *path) -> float:
    values = []
    for r in rounds:
        value = r
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def table(results: dict[str, list[dict]]) -> str:
    labels = list(results)
    lines = ["| figure | target | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]

    def row(name: str, target: str, compute, fmt: str, ok=None) -> None:
        cells = []
        for label in labels:
            value = compute(results[label])
            verdict = "" if ok is None else (" ✓" if ok(value) else " ✗")
            cells.append(format(value, fmt) + verdict)
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")

    row("raw ONNX Runtime, batch 1: µs/row (rows/s)", "", lambda r: median(r, "raw_b1_us"), ".0f")
    row("raw ONNX Runtime, best batch: µs/row", "", lambda r: median(r, "raw_row_us"), ".0f")
    for protocol, floor in (("http-json", "http-live"), ("grpc", "grpc-live")):
        key = ("unbatched", protocol, 64)
        row(f"unbatched {protocol} c=64: server CPU µs/req", "", lambda r, k=key: median(r, k, "cpu_us"), ".0f")
        row(f"unbatched {protocol} c=64: CPU − raw b1", "≤ 40 µs",
            lambda r, k=key: median(r, k, "cpu_us") - median(r, "raw_b1_us"), ".0f", lambda v: v <= 40)
        row(f"unbatched {protocol} c=64: req/s ÷ raw b1 rows/s", "≥ 0.7",
            lambda r, k=key: median(r, k, "rps") / median(r, "raw_b1_rps"), ".2f", lambda v: v >= 0.7)
        row(f"unbatched {protocol} c=64: context switches/req", "",
            lambda r, k=key: median(r, k, "switches"), ".2f")
        f64 = ("floor", floor, 64)
        row(f"unbatched {protocol} c=64: CPU − raw b1 − floor CPU", "",
            lambda r, k=key, f=f64: median(r, k, "cpu_us") - median(r, "raw_b1_us") - median(r, f, "cpu_us"), ".0f")
        bkey = ("batched", protocol, 64)
        row(f"batched {protocol} c=64: server CPU µs/req", "", lambda r, k=bkey: median(r, k, "cpu_us"), ".0f")
        row(f"batched {protocol} c=64: CPU − raw µs/row", "≤ 15 µs",
            lambda r, k=bkey: median(r, k, "cpu_us") - median(r, "raw_row_us"), ".0f", lambda v: v <= 15)
        row(f"floor {floor} c=64: server CPU µs/req (no model)", "",
            lambda r, f=f64: median(r, f, "cpu_us"), ".0f")
        row(f"batched {protocol} c=64: CPU − raw µs/row − floor CPU", "",
            lambda r, k=bkey, f=f64: median(r, k, "cpu_us") - median(r, "raw_row_us") - median(r, f, "cpu_us"), ".0f")
        ckey = ("unbatched", protocol, 1)
        fkey = ("floor", floor, 1)
        row(f"c=1 {protocol}: p50 µs", "",
            lambda r, k=ckey: median(r, k, "p50_ms") * 1000, ".0f")
        row(f"c=1 {floor}: floor p50 µs", "",
            lambda r, f=fkey: median(r, f, "p50_ms") * 1000, ".0f")
        row("raw b1 p50 µs", "", lambda r: median(r, "raw_b1_p50_ms") * 1000, ".0f")
        row(f"c=1 {protocol}: gateway = p50 − floor − raw b1", "≤ 25 µs",
            lambda r, k=ckey, f=fkey: (median(r, k, "p50_ms") - median(r, f, "p50_ms") - median(r, "raw_b1_p50_ms")) * 1000,
            ".0f", lambda v: v <= 25)
        tkey, tfloor = ("tiny", protocol, 1), ("tiny-floor", floor, 1)
        row(f"c=1 {protocol}, 5 µs model (`normalize`): gateway = p50 − floor − raw b1", "≤ 25 µs",
            lambda r, k=tkey, f=tfloor: (median(r, k, "p50_ms") - median(r, f, "p50_ms") - median(r, "tiny_raw_p50_ms")) * 1000,
            ".0f", lambda v: v <= 25)
    return "\n".join(lines)


def sweep_threads(duration: str, input_file: Path) -> str:
    """Server on one core: edge (I/O) threads × model instances, unbatched, c=64."""
    lines = ["| I/O threads | instances | protocol | req/s | server CPU µs/req | context switches/req |",
             "|---:|---:|---|---:|---:|---:|"]
    for io_threads, instances in ((1, 1), (2, 1), (1, 2), (4, 1)):
        config = None if instances == 1 else f"instance_count: {instances}\n"
        repository = run.mlp_repository(f"repo-instances-{instances}", config)
        server = run.start_switchyard(SERVER_CORE, ["--io-threads", str(io_threads)], repository, f"io{io_threads}")
        try:
            for protocol in ("http-json", "grpc"):
                row, switches = context_switches(
                    server.process.pid,
                    lambda protocol=protocol: run.drive(server, protocol, 64, duration, CLIENT_CORE, input_file))
                per_request = switches / (row.rps * (float(duration.rstrip("s")) + 1)) if row.rps else float("nan")
                lines.append(f"| {io_threads} | {instances} | {protocol} | {row.rps:.0f} | "
                             f"{row.cpu_us_per_request:.0f} | {per_request:.2f} |")
                print(lines[-1], file=sys.stderr, flush=True)
        finally:
            server.stop()
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a second switchyard binary, run alternately with the current one")
    parser.add_argument("--duration", default="4s")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", action="store_true",
                        help="instead: the server on one core with 1/2/4 I/O threads and 1/2 model instances")
    args = parser.parse_args()
    if args.threads:
        print(sweep_threads(args.duration, run.write_input_file()))
        return 0
    after = run.REPO / "target" / "release" / "switchyard"
    binaries = {"after" if args.before else "now": after}
    if args.before:
        # The before server beside today's load generator and runtime library.
        folder = Path(tempfile.mkdtemp(prefix="switchyard-before-"))
        shutil.copy2(args.before, folder / "switchyard")
        for name in ("switchyard-load", "libonnxruntime.so"):
            if (after.parent / name).exists():
                (folder / name).symlink_to((after.parent / name).resolve())
        binaries = {"before": folder / "switchyard", **binaries}
    input_file = run.write_input_file()
    results: dict[str, list[dict]] = {label: [] for label in binaries}
    for round_number in range(args.rounds):
        order = list(binaries) if round_number % 2 == 0 else list(reversed(binaries))
        for label in order:
            print(f"== round {round_number + 1}: {label}", file=sys.stderr, flush=True)
            results[label].append(measure(binaries[label], label, args.duration, input_file))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
