"""Operations and hardening against the real binary: bearer tokens on both
protocols, tensor limits, graceful shutdown under load with no failed admitted
request, and a flood of malformed requests that leaves valid ones untouched."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import Server

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
MLP = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]}


def test_bearer_tokens_guard_inference_and_model_control(tmp_path):
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(f"# admins\n{ADMIN_TOKEN}\n")
    server = Server("--enable-model-control", "--admin-tokens-file", str(tokens),
                    env={"SWITCHYARD_INFERENCE_TOKENS": INFER_TOKEN})
    base = f"http://{server.http}"
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    try:
        # Probes and metrics stay open.
        assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
        assert requests.get(f"http://{server.metrics}/metrics", timeout=10).status_code == 200
        missing = requests.post(f"{base}/v2/models/mlp/infer", json=MLP, timeout=10)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["error"]
        wrong = requests.post(f"{base}/v2/models/mlp/infer", json=MLP, headers=bearer("x" * 30), timeout=10)
        assert wrong.status_code == 401
        assert requests.get(f"{base}/v2/models/mlp", timeout=10).status_code == 401
        assert requests.post(f"{base}/v2/models/mlp/infer", json=MLP, headers=bearer(INFER_TOKEN), timeout=10).status_code == 200
        assert requests.post(f"{base}/v2/models/mlp/infer", json=MLP, headers=bearer(ADMIN_TOKEN), timeout=10).status_code == 200
        # Model control needs an admin token.
        denied = requests.post(f"{base}/v2/repository/models/iris/unload", headers=bearer(INFER_TOKEN), timeout=10)
        assert denied.status_code == 403
        assert requests.post(f"{base}/v2/repository/models/iris/unload", headers=bearer(ADMIN_TOKEN), timeout=10).status_code == 200
        assert requests.post(f"{base}/v2/repository/models/iris/load", headers=bearer(ADMIN_TOKEN), timeout=30).status_code == 200

        client = grpcclient.InferenceServerClient(server.grpc)
        assert client.is_server_live()  # probes need no token
        tensor = grpcclient.InferInput("input", [1, 256], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 256), np.float32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("mlp", [tensor])
        assert "UNAUTHENTICATED" in str(raised.value.status())
        result = client.infer("mlp", [tensor], headers={"authorization": f"Bearer {INFER_TOKEN}"})
        assert result.as_numpy("output").shape == (1, 10)
        with pytest.raises(InferenceServerException) as raised:
            client.unload_model("iris", headers={"authorization": f"Bearer {INFER_TOKEN}"})
        assert "PERMISSION_DENIED" in str(raised.value.status())
        assert INFER_TOKEN not in server.log() and ADMIN_TOKEN not in server.log()
    finally:
        assert server.stop() == 0


def test_tensor_limits(tmp_path):
    server = Server("--max-tensor-elements", "1000", "--max-bytes-element", "8")
    try:
        big = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [8, 256], "data": [0.0] * 2048}]}
        response = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=big, timeout=10)
        assert response.status_code == 413 and "--max-tensor-elements" in response.json()["error"]
        typed = {"inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "mask", "datatype": "BOOL", "shape": [1, 4], "data": [True] * 4},
            {"name": "half", "datatype": "FP16", "shape": [1, 4], "data": [1.0] * 4},
            {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["longer than eight"]},
        ]}
        response = requests.post(f"http://{server.http}/v2/models/typed/infer", json=typed, timeout=10)
        assert response.status_code == 413 and "--max-bytes-element" in response.json()["error"]
        assert requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10).status_code == 200
    finally:
        assert server.stop() == 0


def test_sigterm_under_load_fails_no_admitted_request():
    server = Server("--drain-delay", "1s", "--drain-timeout", "10s")
    results = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10)
                results.append(response.status_code)
            except requests.ConnectionError:
                # Refused after the listener closed: never admitted.
                results.append("refused")
                time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(server.process.pid, signal.SIGTERM)
    # During the drain delay readiness is false but requests are still served.
    time.sleep(0.3)
    assert requests.get(f"http://{server.http}/v2/health/ready", timeout=5).status_code == 503
    assert server.process.wait(timeout=20) == 0
    stop.set()
    for t in threads:
        t.join()
    answered = [r for r in results if r != "refused"]
    assert answered and all(status == 200 for status in answered), set(answered)
    server.stop()


def test_a_flood_of_malformed_requests_leaves_valid_ones_untouched():
    server = Server()
    rng = random.Random(0)
    garbage = [
        b"", b"{", b"[]", b'{"inputs": 5}', bytes(rng.getrandbits(8) for _ in range(2048)),
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[99999999999,99999999999],"data":[1]}]}',
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,256],"parameters":{"binary_data_size":-1}}]}',
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,256],"data":' + b"[" * 5000 + b"]" * 5000 + b"}]}",
    ]
    bad_statuses, good_statuses = [], []
    stop = threading.Event()

    def flood():
        session = requests.Session()
        while not stop.is_set():
            body = rng.choice(garbage)
            headers = {"Inference-Header-Content-Length": str(rng.randint(0, 4000))} if rng.random() < 0.3 else {}
            response = session.post(f"http://{server.http}/v2/models/mlp/infer", data=body, headers=headers, timeout=10)
            bad_statuses.append(response.status_code)

    def grpc_flood():
        with grpc.insecure_channel(server.grpc) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                       request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
            while not stop.is_set():
                try:
                    call(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512))), timeout=10)
                except grpc.RpcError as err:
                    bad_statuses.append(err.code().name)

    threads = [threading.Thread(target=flood) for _ in range(3)] + [threading.Thread(target=grpc_flood)]
    for t in threads:
        t.start()
    try:
        session = requests.Session()
        for _ in range(300):
            good_statuses.append(session.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10).status_code)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(good_statuses) == {200}
    assert len(bad_statuses) > 100
    assert all(s in (400, 404, 413) or s in ("INVALID_ARGUMENT", "NOT_FOUND", "UNKNOWN") for s in bad_statuses), \
        {s for s in bad_statuses if s not in (400, 404, 413)}
    assert server.stop() == 0


def test_a_slow_body_is_cut_off_with_408():
    import socket

    server = Server("--request-timeout", "1s")
    try:
        host, port = server.http.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 4000\r\n\r\n{")
            started = time.monotonic()
            reply = b""
            while b"\r\n\r\n" not in reply:
                try:
                    conn.sendall(b" ")
                except OSError:
                    pass
                conn.settimeout(0.2)
                try:
                    reply += conn.recv(4096)
                except socket.timeout:
                    pass
                assert time.monotonic() - started < 5, "no answer to a slow body"
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"--request-timeout" in reply
        # The server is fine afterwards.
        assert requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10).status_code == 200
    finally:
        assert server.stop() == 0


def test_metrics_expose_every_documented_series(tmp_path):
    server = Server()
    try:
        for _ in range(5):
            requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10)
        requests.post(f"http://{server.http}/v2/models/mlp/infer", json={"inputs": []}, timeout=10)
        text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        for series in [
            'switchyard_requests_total{model="mlp",outcome="success",protocol="http",version="1"} 5',
            'switchyard_requests_total{model="mlp",outcome="invalid_argument",protocol="http",version="1"} 1',
            "switchyard_request_duration_seconds_bucket",
            "switchyard_queue_duration_seconds_bucket",
            "switchyard_compute_duration_seconds_bucket",
            "switchyard_batch_size_bucket",
            'switchyard_queue_depth{model="mlp",version="1"} 0',
            'switchyard_in_flight_requests{model="mlp",version="1"} 0',
            'switchyard_model_ready{model="mlp",version="1"} 1',
            'switchyard_model_loads_total{model="mlp",outcome="success"} 1',
            "switchyard_model_load_duration_seconds_bucket",
            'switchyard_model_events_total{event="swapped_in",model="mlp"} 1',
            "switchyard_source_up{",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ]:
            assert series in text, series
    finally:
        assert server.stop() == 0


def test_a_model_that_keeps_failing_is_marked_unhealthy_and_others_keep_serving(tmp_path):
    import shutil

    from conftest import MODELS
    from lifecycle_helpers import make_models, write_version

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text(
        "warmup: false\nunhealthy_after_failures: 3\nunhealthy_cooldown_ms: 1500\n")
    write_version(tmp_path, "broken", 1, make_models.make_broken().SerializeToString())
    shutil.copytree(MODELS / "mlp", tmp_path / "mlp")
    server = Server(repository=tmp_path)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0.0] * 8}]}
    url = f"http://{server.http}/v2/models/broken/infer"
    try:
        for _ in range(3):
            response = requests.post(url, json=body, timeout=10)
            assert response.status_code == 500 and "model execution failed" in response.json()["error"]
        tripped = requests.post(url, json=body, timeout=10)
        assert tripped.status_code == 503 and "3 batches failed in a row" in tripped.json()["error"], tripped.text
        assert requests.get(f"http://{server.http}/v2/health/ready", timeout=10).status_code == 503
        assert requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10).status_code == 200
        time.sleep(1.7)
        # After the cool-down it is tried again (and trips again at once).
        assert requests.post(url, json=body, timeout=10).status_code == 500
        assert requests.post(url, json=body, timeout=10).status_code == 503
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0
