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
