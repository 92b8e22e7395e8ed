"""Operations and hardening against the real binary: bearer tokens on both
protocols, tensor limits, graceful shutdown under load with no failed admitted
request, and a flood of malformed requests that leaves valid ones untouched."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import urllib3
from tritonclient.utils import InferenceServerException

from conftest import MODELS, REPO, Server

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


def test_sigterm_under_load_fails_no_admitted_request(tmp_path):
    # Each request waits ~300 ms for company, so requests are in flight when the listeners close.
    (tmp_path / "mlp" / "1").mkdir(parents=True)
    (tmp_path / "mlp" / "1" / "model.onnx").write_bytes((MODELS / "mlp" / "1" / "model.onnx").read_bytes())
    (tmp_path / "mlp" / "config.yaml").write_text(
        "max_batch_size: 64\ndynamic_batching: {max_queue_delay_us: 300000, dispatch_when_idle: false}\n"
    )
    drain_delay = 1.0
    server = Server("--drain-delay", f"{drain_delay}s", "--drain-timeout", "10s", repository=tmp_path)
    results = []  # (started, finished, outcome)
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = session.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10)
                outcome = response.status_code
            except requests.ConnectionError as err:
                # Refused at connect (the listener is gone): never admitted. Anything else
                # (a reset or a cut answer) is recorded as what it is.
                refused = isinstance(getattr(err.args[0], "reason", None), urllib3.exceptions.NewConnectionError)
                outcome = "refused" if refused else f"{type(err).__name__}: {err}"
                time.sleep(0.01)
            except Exception as err:  # noqa: BLE001 - recorded, judged below
                outcome = f"{type(err).__name__}: {err}"
            results.append((started, time.monotonic(), outcome))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(server.process.pid, signal.SIGTERM)
    sigterm = time.monotonic()
    closed = sigterm + drain_delay
    # During the drain delay readiness is false but requests are still served.
    time.sleep(0.3)
    assert requests.get(f"http://{server.http}/v2/health/ready", timeout=5).status_code == 503
    assert server.process.wait(timeout=20) == 0
    stop.set()
    for t in threads:
        t.join()
    # Sent while the listeners were surely open (well before they close): each must be answered 200.
    admitted = [outcome for started, _, outcome in results if started < closed - 0.2]
    assert admitted and set(admitted) == {200}, {o for o in admitted if o != 200}
    # Some of them were still in flight when the listeners closed, and were drained.
    assert any(finished > closed and outcome == 200 for started, finished, outcome in results if started < closed)
    # Around and after the close: answered, or refused at connect; never a server error.
    later = [outcome for started, _, outcome in results if started >= closed - 0.2]
    assert all(outcome == 200 or isinstance(outcome, str) for outcome in later), later
    served_late = [o for o in later if o == 200]
    assert "refused" in later or served_late, later
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


def documented_series() -> set[str]:
    """The series docs/ARCHITECTURE.md's Metrics table lists."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(switchyard_[a-z_]+)`", section, flags=re.M))


def documented_later() -> set[str]:
    """Series the table says exist only once something happens ("once a rollout ...")."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(switchyard_[a-z_]+)` \|[^|]*\|[^|]*\| once ", section, flags=re.M))


def exposed_families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE switchyard_")}


def series_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not exposed")


def test_metrics_expose_every_documented_series(tmp_path):
    import shutil

    for model in ("mlp", "iris"):
        shutil.copytree(MODELS / model, tmp_path / model)
    (tmp_path / "routes.yaml").write_text(
        "endpoints:\n  scorer:\n    variants:\n      - {name: stable, model: mlp, weight: 90}\n"
        "      - {name: next, model: iris, weight: 10}\n    shadow: {model: iris, percent: 5}\n"
        "    canary: {stable: stable, canary: next, steps: [10, 100], interval: 1h, min_requests: 1000}\n"
    )
    # A pipeline makes its step series.
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "config.yaml").write_text(
        "platform: pipeline\nmax_batch_size: 8\ninputs: [{name: x, datatype: FP32, dims: [256]}]\n"
        "outputs: [{name: y, datatype: FP32, dims: [10], from: score.output}]\n"
        "steps: [{name: score, model: mlp, inputs: {input: x}}]\n"
    )
    # A capture sink makes its series (they exist only where one is configured).
    server = Server("--capture-dir", str(tmp_path / "capture"), repository=tmp_path)
    try:
        metrics = f"http://{server.metrics}/metrics"
        # Before any request: every documented series is there, the countable ones at zero.
        text = requests.get(metrics, timeout=10).text
        documented = documented_series()
        assert len(documented) >= 20, documented
        later = documented_later()
        assert later == {"switchyard_rollout_position", "switchyard_rollout_failed_checks",
                         "switchyard_rollout_outcome"}, later
        exposed = exposed_families(text)
        assert exposed - documented == set(), f"exposed, not documented: {exposed - documented}"
        assert documented - later - exposed == set(), f"documented, not exposed: {documented - later - exposed}"
        for series in [
            'switchyard_queue_rejections_total{model="mlp",reason="queue_full",version="1"}',
            'switchyard_queue_rejections_total{model="mlp",reason="timeout",version="1"}',
            'switchyard_queue_rejections_total{model="mlp",reason="max_request_time",version="1"}',
            'switchyard_requests_total{model="mlp",outcome="overloaded",protocol="grpc",version="1"}',
            'switchyard_requests_total{model="mlp",outcome="internal",protocol="http",version="1"}',
            'switchyard_endpoint_requests_total{endpoint="scorer",outcome="failure",variant="next"}',
            'switchyard_canary_decisions_total{decision="rollback",endpoint="scorer"}',
            'switchyard_shadow_dropped_total{endpoint="scorer"}',
            'switchyard_capture_dropped_total{reason="queue_full",sink="file"}',
            'switchyard_capture_records_total{sink="file"}',
            'switchyard_model_events_total{event="retired",model="mlp"}',
            "switchyard_route_file_errors_total",
        ]:
            assert series_value(text, series) == 0, series

        for _ in range(5):
            requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10)
        requests.post(f"http://{server.http}/v2/models/mlp/infer", json={"inputs": []}, timeout=10)
        text = requests.get(metrics, timeout=10).text
        for series, value in [
            ('switchyard_requests_total{model="mlp",outcome="success",protocol="http",version="1"}', 5),
            ('switchyard_requests_total{model="mlp",outcome="invalid_argument",protocol="http",version="1"}', 1),
            ('switchyard_request_duration_seconds_count{model="mlp",protocol="http",version="1"}', 5),
            ('switchyard_queue_duration_seconds_count{model="mlp",version="1"}', 5),
            ('switchyard_compute_duration_seconds_count{model="mlp",version="1"}', 5),
            ('switchyard_batch_size_count{model="mlp",version="1"}', 5),
            ('switchyard_queue_depth{model="mlp",version="1"}', 0),
            ('switchyard_in_flight_requests{model="mlp",version="1"}', 0),
            ('switchyard_model_ready{model="mlp",version="1"}', 1),
            ('switchyard_model_loads_total{model="mlp",outcome="success"}', 1),
            ('switchyard_model_loads_total{model="mlp",outcome="failure"}', 0),
            ('switchyard_model_load_duration_seconds_count{model="mlp"}', 1),
            ('switchyard_model_events_total{event="swapped_in",model="mlp"}', 1),
            ('switchyard_route_weight{endpoint="scorer",variant="stable"}', 90),
        ]:
            assert series_value(text, series) == value, series
        assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
        sources = [line for line in text.splitlines() if line.startswith("switchyard_source_up{")]
        assert sources and all(line.endswith(" 1") for line in sources), sources
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
