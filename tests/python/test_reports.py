"""The load tester's and the benchmark's reports, as a reader sees them:
rendered by a real headless Chromium (Debian's package) to a PNG, with no
console errors; the charts' axes themselves are checked in loadtest's unit
tests (tick labels span the data and grow upwards)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import BINARY

LOAD = BINARY.parent / "switchyard-load"


def render(page, tmp_path) -> tuple[bytes, str]:
    """Chromium's screenshot of `page` and what it logged."""
    png = tmp_path / "page.png"
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1100,1400", f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return png.read_bytes(), done.stderr


def assert_renders_cleanly(page, tmp_path) -> None:
    image, log = render(page, tmp_path)
    assert image.startswith(b"\x89PNG") and len(image) > 20_000, len(image)
    console = [line for line in log.splitlines() if ":CONSOLE(" in line or "Uncaught" in line]
    assert console == [], console


def test_a_load_report_of_a_real_run_renders(server, tmp_path):
    report = tmp_path / "report.html"
    done = subprocess.run(
        [str(LOAD), "--addr", server.grpc, "--protocol", "grpc", "--concurrency", "8", "--duration", "2500ms",
         "--warmup", "200ms", "--report", str(report), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    page = report.read_text()
    assert page.count("<svg") == 3 and "<script" not in page
    # The axes name what they show, with units.
    for text in ["requests/s", "latency (ms)", "percentile", "p99.9"]:
        assert text in page, text
    assert summary["ok"] > 0
    assert_renders_cleanly(report, tmp_path)


def test_the_benchmark_report_renders_from_results(tmp_path):
    # Rows exactly as bench/run.py writes them.
    import sys
    from dataclasses import asdict

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import run as bench

    rows = []
    for server, rps, cpu in [("switchyard", 5000, 180), ("switchyard+batching", 15000, 60), ("mlserver", 900, 600)]:
        for concurrency in (1, 8, 64):
            rows.append(asdict(bench.Row(server=server, protocol="grpc", concurrency=concurrency, rps=rps * (1 + concurrency / 64),
                                         p50_ms=1.0 + concurrency / 10, p99_ms=2.0 + concurrency / 5, cpu_us_per_request=cpu,
                                         errors=0)))
    floor = [asdict(bench.Row(server="floor", protocol="grpc-live", concurrency=c, rps=60000.0, p50_ms=0.1, p99_ms=0.3,
                              cpu_us_per_request=14.0, errors=0)) for c in (1, 8, 64)]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"raw": [{"batch": 1, "p50_ms": 0.07, "p99_ms": 0.1, "rows_per_s": 14200.0},
                                           {"batch": 32, "p50_ms": 0.8, "p99_ms": 1.0, "rows_per_s": 39000.0}],
                                   "rows": rows, "floor": floor}))
    page, svg_dir = tmp_path / "bench.html", tmp_path / "svg"
    done = subprocess.run([str(LOAD), "bench-report", "--input", str(results), "--html", str(page), "--svg-dir", str(svg_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in svg_dir.iterdir()) == ["grpc-cpu.svg", "grpc-latency.svg", "grpc-throughput.svg"]
    assert "mlserver" in page.read_text() and "floor (grpc-live)" in (svg_dir / "grpc-throughput.svg").read_text()
    assert_renders_cleanly(page, tmp_path)
    # A results file that is not one is refused with its reason.
    results.write_text("{}")
    bad = subprocess.run([str(LOAD), "bench-report", "--input", str(results), "--html", str(page)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing field `rows`" in bad.stderr, bad.stderr
