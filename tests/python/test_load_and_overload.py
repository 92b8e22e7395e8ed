"""The load tester's three request paths against the real binary (values
checked against onnxruntime), and overload end to end: a full queue answers
429 / RESOURCE_EXHAUSTED at admission while other models and probes beside the
flood are still answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import numpy as np
import pytest
import requests

from conftest import BINARY, MODELS, Server
from reference import expected

LOAD = BINARY.parent / "switchyard-load"


def run_load(*args: str) -> dict:
    done = subprocess.run([str(LOAD), "--json", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("protocol, extra", [("http-json", []), ("http-json", ["--http2"]), ("http-binary", []), ("grpc", [])])
def test_every_load_tester_path_gets_exact_answers(server, tmp_path, protocol, extra):
    x = np.random.default_rng(11).standard_normal((1, 256)).astype(np.float32)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": x.flatten().tolist()}]}))
    want = tmp_path / "expect.json"
    want.write_text(json.dumps({"outputs": {"output": expected("mlp", {"input": x})["output"].flatten().tolist()}}))
    addr = server.grpc if protocol == "grpc" else server.http
    summary = run_load("--addr", addr, "--protocol", protocol, "--model", "mlp", "--concurrency", "4", "--requests", "300",
                       "--warmup", "100ms", "--input-file", str(request), "--expect-file", str(want), "--tolerance", "1e-5", *extra)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (300, 300, 0), summary["errors_by_kind"]
    # A wrong expectation is caught, so the check above means something.
    want.write_text(json.dumps({"outputs": {"output": [0.0] * 10}}))
    wrong = run_load("--addr", addr, "--protocol", protocol, "--model", "mlp", "--requests", "5", "--warmup", "0s",
                     "--input-file", str(request), "--expect-file", str(want), *extra)
    assert wrong["ok"] == 0 and wrong["errors"] == 5, wrong


def metric(text: str, series: str) -> float:
    line = next((l for l in text.splitlines() if l.startswith(series + " ")), None)
    assert line is not None, f"{series} is not exposed"
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("protocol", ["grpc", "http-json"])
def test_a_full_queue_refuses_at_admission_and_the_rest_is_served(tmp_path, protocol):
    # Four places in the queue, and every batch waits 100 ms for company: a flood of
    # 48 clients keeps it full, so most requests must be refused, and at once.
    (tmp_path / "busy").mkdir()
    shutil.copytree(MODELS / "mlp" / "1", tmp_path / "busy" / "1")
    (tmp_path / "busy" / "config.yaml").write_text(
        "max_batch_size: 64\nqueue: {capacity: 4}\n"
        "dynamic_batching: {max_queue_delay_us: 100000, dispatch_when_idle: false}\n"
    )
    shutil.copytree(MODELS / "iris", tmp_path / "iris")
    server = Server(repository=tmp_path)
    probes: list = []
    stop = threading.Event()

    def probe():
        session = requests.Session()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
        while not stop.is_set():
            try:
                ready = session.get(f"http://{server.http}/v2/health/ready", timeout=5).status_code
                other = session.post(f"http://{server.http}/v2/models/iris/infer", json=body, timeout=5).status_code
                probes.append((ready, other))
            except Exception as err:  # noqa: BLE001 - a failed probe is a finding
                probes.append(repr(err))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        addr = server.grpc if protocol == "grpc" else server.http
        flood = run_load("--addr", addr, "--protocol", protocol, "--model", "busy", "--concurrency", "48",
                         "--duration", "2s", "--warmup", "0s")
    finally:
        stop.set()
        prober.join()
    try:
        refusal = "grpc_ResourceExhausted" if protocol == "grpc" else "http_429"
        refused = flood["errors_by_kind"].get(refusal, 0)
        assert flood["ok"] > 0 and refused > flood["ok"], flood["errors_by_kind"]
        assert flood["errors"] == refused, flood["errors_by_kind"]
        # Refused at admission: sooner than any admitted request, which waits its 100 ms batch delay.
        assert flood["error_latency_ms"]["p99"] < flood["latency_ms"]["p50"], (flood["error_latency_ms"], flood["latency_ms"])
        assert flood["latency_ms"]["p50"] >= 100
        # Beside the flood, the probes and the other model were answered, every time.
        assert len(probes) >= 5 and set(probes) == {(200, 200)}, set(map(str, probes))
        # Each refusal was counted by the queue.
        text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        counted = metric(text, 'switchyard_queue_rejections_total{model="busy",reason="queue_full",version="1"}')
        assert counted >= refused, (counted, refused)
    finally:
        assert server.stop() == 0
