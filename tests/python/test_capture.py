"""Inference data capture against the real binary: JSON Lines files whose
records match the requests and answers exactly (ids, variant, version,
protocol, outcome, tensors decoded from base64 for every protocol), shadow
answers beside the stable ones under one id, redaction and output filters,
sampling by percent, rotation and retention; and CloudEvents in KServe's
logger format to a real HTTP receiver started here, with serving unaffected
while the receiver is down, drops counted, and delivery resumed when it
returns."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import MODELS, Server

DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32, "BOOL": np.bool_}


def decode(tensor: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(tensor["data"]), DTYPES[tensor["datatype"]]).reshape(tensor["shape"])


def records(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("capture-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def wait_records(folder: Path, count: int, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(folder)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} records after {timeout}s"
        time.sleep(0.1)


def metric(server, name: str, **labels) -> float:
    for line in requests.get(f"http://{server.metrics}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def repo_with(tmp_path, mlp_capture: str | None, routes: str | None = None) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "mlp", repo / "mlp")
    shutil.copytree(MODELS / "iris", repo / "iris")
    if mlp_capture is not None:
        (repo / "mlp" / "config.yaml").write_text(f"capture: {mlp_capture}\n")
    if routes:
        (repo / "routes.yaml").write_text(routes)
    return repo


def test_records_match_requests_and_answers_on_every_protocol(tmp_path):
    out = tmp_path / "capture"
    server = Server("--capture-dir", str(out), repository=repo_with(tmp_path, "{}"))
    try:
        rng = np.random.default_rng(5)
        sent = {}
        http = httpclient.InferenceServerClient(server.http)
        grpc = grpcclient.InferenceServerClient(server.grpc)
        for i in range(6):
            x = rng.standard_normal((1 + i, 256)).astype(np.float32)
            module, client, binary = [(httpclient, http, False), (httpclient, http, True), (grpcclient, grpc, None)][i % 3]
            tensor = module.InferInput("input", list(x.shape), "FP32")
            if module is httpclient:
                tensor.set_data_from_numpy(x, binary_data=binary)
            else:
                tensor.set_data_from_numpy(x)
            result = client.infer("mlp", [tensor], request_id=f"req-{i}")
            sent[f"req-{i}"] = (x, result.as_numpy("output"), "grpc" if module is grpcclient else "http")
        # A refused request is recorded with its outcome; iris has no policy: nothing recorded.
        bad = requests.post(f"http://{server.http}/v2/models/mlp/infer", timeout=10, json={
            "id": "bad-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
        assert bad.status_code == 400
        iris = httpclient.InferInput("input", [1, 4], "FP32")
        iris.set_data_from_numpy(np.ones((1, 4), np.float32))
        http.infer("iris", [iris])
        found = {r["id"]: r for r in wait_records(out, 7)}
        time.sleep(0.3)
        assert len(records(out)) == 7, "iris has no capture policy"
        for request_id, (x, y, protocol) in sent.items():
            record = found[request_id]
            assert (record["model"], record["version"], record["protocol"], record["outcome"]) == ("mlp", "1", protocol, "success")
            assert record["http_status"] == 200 and record["grpc_code"] == "OK" and record["latency_us"] > 0
            assert record["endpoint"] is None and record["truncated"] is False
            np.testing.assert_array_equal(decode(record["inputs"][0]), x)
            np.testing.assert_array_equal(decode(record["outputs"][0]), y)
        refused = found["bad-1"]
        assert (refused["outcome"], refused["http_status"], refused["grpc_code"]) == ("invalid_argument", 400, "INVALID_ARGUMENT")
        assert "shape" in refused["error"] and refused["outputs"] == []
        assert metric(server, "switchyard_capture_records_total", sink="file") == 7
        assert metric(server, "switchyard_capture_dropped_total", sink="file", reason="queue_full") == 0
    finally:
        assert server.stop() == 0


def test_shadow_answers_beside_stable_ones_redaction_and_filters(tmp_path):
    out = tmp_path / "capture"
    routes = ("endpoints:\n  scoring:\n    variants: [{name: stable, model: mlp, weight: 100}]\n"
              "    shadow: {model: mlp, percent: 100}\n"
              "    capture: {redact: [input], outputs: [output]}\n")
    server = Server("--capture-dir", str(out), repository=repo_with(tmp_path, None, routes))
    try:
        http = httpclient.InferenceServerClient(server.http)
        x = np.full((2, 256), 0.5, np.float32)
        tensor = httpclient.InferInput("input", [2, 256], "FP32")
        tensor.set_data_from_numpy(x)
        for i in range(3):
            http.infer("scoring", [tensor], request_id=f"s-{i}")
        found = wait_records(out, 6)
        by_id: dict[str, dict] = {}
        for record in found:
            by_id.setdefault(record["id"], {})[record["variant"]] = record
        assert set(by_id) == {"s-0", "s-1", "s-2"}
        for pair in by_id.values():
            assert set(pair) == {"stable", "shadow"}, pair
            for record in pair.values():
                assert record["endpoint"] == "scoring" and record["model"] == "mlp"
                assert record["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [2, 256], "redacted": True}
            np.testing.assert_array_equal(decode(pair["stable"]["outputs"][0]), decode(pair["shadow"]["outputs"][0]))
        assert base64.b64encode(x.tobytes()).decode()[:40] not in "".join(p.read_text() for p in out.glob("*.jsonl"))
    finally:
        assert server.stop() == 0


def test_sampling_rotation_and_retention(tmp_path):
    out = tmp_path / "capture"
    server = Server("--capture-dir", str(out), "--capture-max-file-bytes", "20000", "--capture-keep-files", "2",
                    repository=repo_with(tmp_path, "{percent: 10}"))
    try:
        session = requests.Session()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.25] * 256}]}
        for _ in range(1000):
            assert session.post(f"http://{server.http}/v2/models/mlp/infer", json=body, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while metric(server, "switchyard_capture_queue_depth", sink="file") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        written = metric(server, "switchyard_capture_records_total", sink="file")
        assert 60 <= written <= 140, f"{written} of 1000 at 10%"
        files = sorted(out.glob("capture-*.jsonl"))
        # ~1.5 KB a record, 20 KB a file: many rotations, two kept besides the open one.
        assert 2 <= len(files) <= 3, [f.name for f in files]
        assert all(f.stat().st_size <= 20000 + 4096 for f in files)
        assert len(records(out)) < written, "older files were deleted"
    finally:
        assert server.stop() == 0


class Receiver:
    """A CloudEvents receiver: keeps each event's ce-* headers and body."""

    def __init__(self, port: int = 0) -> None:
        events = self.events = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                events.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1]


def test_cloudevents_in_kserve_logger_format_and_a_receiver_that_goes_away(tmp_path):
    receiver = Receiver()
    token = tmp_path / "token"
    token.write_text("capture-token-0123456789\n")
    server = Server("--capture-url", f"http://127.0.0.1:{receiver.port}/events", "--capture-token-file", str(token),
                    "--capture-retry-for", "1s", repository=repo_with(tmp_path, "{}"))
    try:
        http = httpclient.InferenceServerClient(server.http)
        x = np.arange(256, dtype=np.float32).reshape(1, 256) / 256
        tensor = httpclient.InferInput("input", [1, 256], "FP32")
        tensor.set_data_from_numpy(x)
        answer = http.infer("mlp", [tensor], request_id="ce-1").as_numpy("output")
        deadline = time.monotonic() + 10
        while len(receiver.events) < 2:
            assert time.monotonic() < deadline, receiver.events
            time.sleep(0.05)
        kinds = {headers["ce-type"]: (headers, body) for headers, body in receiver.events}
        request_headers, request_body = kinds["org.kubeflow.serving.inference.request"]
        response_headers, response_body = kinds["org.kubeflow.serving.inference.response"]
        for headers in (request_headers, response_headers):
            assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == "ce-1"
            assert headers["ce-source"] == "switchyard" and headers["ce-inferenceservicename"] == "mlp"
            assert headers["content-type"] == "application/json" and "ce-time" in headers
            assert headers["authorization"] == "Bearer capture-token-0123456789"
        np.testing.assert_array_equal(np.array(request_body["inputs"][0]["data"], np.float32).reshape(1, 256), x)
        np.testing.assert_allclose(np.array(response_body["outputs"][0]["data"], np.float32).reshape(1, 10), answer, rtol=1e-6)
        assert response_body["model_name"] == "mlp" and response_body["model_version"] == "1"

        session = requests.Session()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.25] * 256}]}

        def timed(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                assert session.post(f"http://{server.http}/v2/models/mlp/infer", json=body, timeout=10).status_code == 200
                samples.append(time.perf_counter() - started)
            return samples

        up = timed(300)
        port = receiver.port
        receiver.stop()
        down = timed(300)
        # The machine is shared: a loose bound that a blocked request path would still break.
        assert p99(down) < max(3 * p99(up), p99(up) + 0.02), (p99(up), p99(down))
        deadline = time.monotonic() + 15
        while metric(server, "switchyard_capture_dropped_total", sink="cloudevents", reason="sink_error") < 10:
            assert time.monotonic() < deadline, "undeliverable records were not counted"
            time.sleep(0.2)
        assert metric(server, "switchyard_capture_sink_errors_total", sink="cloudevents") > 0
        # Back on the same port: new records are delivered again.
        back = Receiver(port)
        try:
            deadline = time.monotonic() + 20
            while not any(h.get("ce-id") == "after" for h, _ in back.events):
                http.infer("mlp", [tensor], request_id="after")
                assert time.monotonic() < deadline, "delivery did not resume"
                time.sleep(0.5)
        finally:
            back.stop()
        assert "capture-token-0123456789" not in server.log()
    finally:
        assert server.stop() == 0
