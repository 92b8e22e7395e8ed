"""bench/gpu/run.py, end to end on the CPU (`--device cpu`), so the script that
only a CUDA machine runs for real keeps working between such runs. Small
settings: the figures mean nothing here, the plumbing does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import BINARY, REPO


def test_gpu_bench_script_runs_end_to_end_on_cpu(tmp_path):
    cmd = [
        sys.executable, str(REPO / "bench" / "gpu" / "run.py"),
        "--device", "cpu", "--bin-dir", str(BINARY.parent),
        "--variants", "resnet18,resnet18_fp16_inputs",
        "--concurrency", "2", "--max-batch", "2", "--instances", "1",
        "--duration", "2s", "--warmup", "1s", "--raw-duration", "1s",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OUT": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| variant | conc | gateway img/s |" in result.stdout, result.stdout
    figures = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert [g["model"] for g in figures["gateway"]] == ["resnet18", "resnet18_fp16_inputs"]
    for run in figures["gateway"]:
        assert run["ok"] > 0 and run["errors"] == 0, run
        assert 1 <= run["mean_batch"] <= 2, run
        assert run["ratio_at_concurrency"] and run["ratio_at_concurrency"] > 0, run
        assert run["server_cpu_ms_per_image"] > 0, run
    assert set(figures["raw"]) == {"resnet18", "resnet18_fp16_inputs"}
    assert figures["pytorch"][0]["resident_images_per_s"] > 0
