"""Tests of the benchmark harness's own arithmetic (bench/run.py, bench/overhead.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run as bench  # noqa: E402


def test_parse_stat_handles_spaces_and_parens_in_the_command_name():
    line = "4242 (my (odd) server) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3"
    ppid, seconds = bench.parse_stat(line)
    assert ppid == 17
    assert seconds == (250 + 50) / bench.CLK_TCK


def test_tree_cpu_includes_this_process_and_its_children():
    import subprocess
    import time

    burn = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(flush=True)\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the child has burnt 0.3 s of CPU and is still alive
        own = time.process_time()
        tree = bench.tree_cpu_seconds(os.getpid())
        # Ours (at /proc's 10 ms resolution) plus the child's 0.3 s.
        assert tree >= own - 0.02 + 0.28, (tree, own)
        assert tree < own + 5, (tree, own)
    finally:
        child.kill()
        child.wait()
    assert bench.tree_cpu_seconds(2**22 + 12345) == 0.0  # no such process


def row(server, protocol, concurrency, rps, cpu):
    return bench.Row(server=server, protocol=protocol, concurrency=concurrency, rps=rps, p50_ms=1.0, p99_ms=2.0,
                     cpu_us_per_request=cpu, errors=0)


def test_table_ratios_are_computed_per_protocol_and_concurrency():
    raw = [{"batch": 1, "p50_ms": 0.07, "p99_ms": 0.1, "rows_per_s": 10000.0},
           {"batch": 32, "p50_ms": 0.8, "p99_ms": 1.0, "rows_per_s": 40000.0}]
    rows = [row("switchyard", "grpc", 64, 5000, 100), row("switchyard+batching", "grpc", 64, 20000, 50),
            row("mlserver", "grpc", 64, 1000, 500), row("mlserver", "http-json", 64, 1000, 400)]
    table = bench.markdown(rows, raw)
    mlserver_grpc = next(line for line in table.splitlines() if line.startswith("| mlserver | grpc"))
    assert "0.200, 0.100" in mlserver_grpc  # 100/500 and 50/500
    assert "| 0.10 | 0.03 |" in mlserver_grpc  # 1000 / 10000 raw b1, 1000 / 40000 best raw
    mlserver_json = next(line for line in table.splitlines() if line.startswith("| mlserver | http-json"))
    assert "–, –" in mlserver_json  # no Switchyard row to compare with
    batched = next(line for line in table.splitlines() if line.startswith("| switchyard+batching"))
    assert "| 2.00 | 0.50 |" in batched


def test_grafana_dashboard_uses_only_metrics_the_server_defines():
    import json
    import re

    repo = Path(__file__).resolve().parents[2]
    dashboard = json.loads((repo / "k8s" / "grafana" / "switchyard-dashboard.json").read_text())
    defined = set(re.findall(r'"(switchyard_[a-z_]+)"', (repo / "server" / "src" / "metrics.rs").read_text()))
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"switchyard_[a-z_]+", target["expr"])}
    assert used and used <= defined, used - defined


def test_the_overhead_table_subtracts_what_it_says_and_marks_each_target():
    import overhead

    def round_(cpu_unbatched: float, cpu_batched: float) -> dict:
        out = {"raw_b1_us": 70.0, "raw_b1_rps": 14000.0, "raw_b1_p50_ms": 0.070, "raw_row_us": 25.0,
               "tiny_raw_p50_ms": 0.005}
        for protocol, floor in (("http-json", "http-live"), ("grpc", "grpc-live")):
            out[("unbatched", protocol, 64)] = {"rps": 10500.0, "cpu_us": cpu_unbatched, "switches": 2.0}
            out[("unbatched", protocol, 1)] = {"p50_ms": 0.150, "cpu_us": 0.0, "switches": 1.0}
            out[("batched", protocol, 64)] = {"rps": 20000.0, "cpu_us": cpu_batched, "switches": 0.1}
            for concurrency in (1, 64):
                out[("floor", floor, concurrency)] = {"p50_ms": 0.060, "cpu_us": 10.0}
            out[("tiny", protocol, 1)] = {"p50_ms": 0.100}
            out[("tiny-floor", floor, 1)] = {"p50_ms": 0.065}
        return out

    # Medians of rounds: 100 and 120 → 110 µs, so 40 µs over raw; batched 35 → 10 over the row.
    text = overhead.table({"now": [round_(100, 30), round_(120, 40), round_(110, 35)]})
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    assert lines["unbatched grpc c=64: CPU − raw b1"].endswith("| 40 ✓ |")
    assert lines["unbatched grpc c=64: req/s ÷ raw b1 rows/s"].endswith("| 0.75 ✓ |")
    assert lines["unbatched grpc c=64: CPU − raw b1 − floor CPU"].endswith("| 30 |")
    assert lines["batched http-json c=64: CPU − raw µs/row"].endswith("| 10 ✓ |")
    # 150 − 60 − 70 = 20 µs of gateway latency at c=1.
    assert lines["c=1 grpc: gateway = p50 − floor − raw b1"].endswith("| 20 ✓ |")
    # 100 − 65 − 5 = 30 µs with the tiny model.
    assert lines["c=1 http-json, 5 µs model (`normalize`): gateway = p50 − floor − raw b1"].endswith("| 30 ✗ |")
    failing = overhead.table({"now": [round_(200, 80)]})
    assert "| 130 ✗ |" in failing and "| 55 ✗ |" in failing
