"""The remote runtime in front of a real MLServer (its own venv, started on
127.0.0.1 by the test): same values as calling MLServer directly, batching on
the gateway, fast 503 and readiness false when the upstream dies, recovery
without a restart, and fail-over between two upstreams."""

from __future__ import annotations

import datetime
import json
import threading
import time

import numpy as np
import requests
import tritonclient.grpc as grpcclient

from conftest import MODELS, Server
from lifecycle_helpers import wait_for
from services import start_mlserver

IRIS = MODELS / "iris" / "1" / "model.onnx"
IRIS_IO = (
    [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    [{"name": "label", "datatype": "INT64", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
)


def remote_repo(tmp_path, grpc_ports, extra=""):
    folder = tmp_path / "repo" / "iris-remote"
    folder.mkdir(parents=True)
    upstreams = ", ".join(f"127.0.0.1:{p}" for p in grpc_ports)
    (folder / "config.yaml").write_text(
        "platform: remote\nmax_batch_size: 32\ndynamic_batching: {max_queue_delay_us: 2000}\n"
        f"remote: {{upstreams: [{upstreams}], model: iris, probe_interval_ms: 200, connect_timeout_ms: 300, timeout_ms: 5000}}\n"
        + extra
    )
    return tmp_path / "repo"


def infer(client, model, x):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor])
    return result.as_numpy("label"), result.as_numpy("probabilities")


def test_remote_model_matches_mlserver_and_batches(tmp_path):
    mlserver, http_port, grpc_port = start_mlserver(tmp_path, IRIS, "iris", *IRIS_IO)
    server = None
    try:
        # Two concurrent upstream calls for 16 clients: requests must merge to keep up.
        server = Server(repository=remote_repo(tmp_path, [grpc_port], extra="instance_count: 2\n"))
        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        gateway = grpcclient.InferenceServerClient(server.grpc)
        meta = gateway.get_model_metadata("iris-remote")
        assert [(t.name, t.datatype) for t in meta.outputs] == [("label", "INT64"), ("probabilities", "FP32")]
        rng = np.random.default_rng(0)
        x = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (5, 4)).astype(np.float32)
        want_label, want_prob = infer(direct, "iris", x)
        got_label, got_prob = infer(gateway, "iris-remote", x)
        np.testing.assert_array_equal(got_label, want_label)
        np.testing.assert_allclose(got_prob, want_prob, rtol=1e-6)
        # Over HTTP JSON too.
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [5, 4], "data": x.flatten().tolist()}]}
        reply = requests.post(f"http://{server.http}/v2/models/iris-remote/infer", json=body, timeout=10).json()
        assert reply["outputs"][0]["data"] == want_label.flatten().tolist()

        # Zero rows go through the upstream too: an empty answer of the right shapes, at once.
        started = time.monotonic()
        empty = np.zeros((0, 4), np.float32)
        empty_label, empty_prob = infer(gateway, "iris-remote", empty)
        # The shapes MLServer itself gives (its codec makes the labels [N, 1]).
        direct_label, direct_prob = infer(direct, "iris", empty)
        assert (empty_label.shape, empty_prob.shape) == (direct_label.shape, direct_prob.shape) == ((0, 1), (0, 3))
        assert time.monotonic() - started < 5
        np.testing.assert_array_equal(infer(gateway, "iris-remote", x)[0], want_label)

        # 16 concurrent clients, each with its own rows: batched on the gateway, answers row-exact.
        errors = []

        def client(seed):
            local = grpcclient.InferenceServerClient(server.grpc)
            rows = np.random.default_rng(seed).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (seed % 3 + 1, 4)).astype(np.float32)
            for _ in range(10):
                label, prob = infer(local, "iris-remote", rows)
                want, want_p = infer(direct, "iris", rows)
                if not (np.array_equal(label, want) and np.allclose(prob, want_p, rtol=1e-6)):
                    errors.append(seed)

        threads = [threading.Thread(target=client, args=(s,)) for s in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        count = float(next(l for l in metrics.splitlines() if l.startswith('switchyard_batch_size_count{model="iris-remote"')).split()[-1])
        rows = float(next(l for l in metrics.splitlines() if l.startswith('switchyard_batch_size_sum{model="iris-remote"')).split()[-1])
        requests_served = sum(
            float(l.split()[-1]) for l in metrics.splitlines() if l.startswith('switchyard_requests_total{model="iris-remote"')
        )
        assert requests_served >= 160, requests_served
        # Merged: clearly fewer upstream calls than requests (rows per request alone cannot pass this).
        assert count < 0.75 * requests_served, (count, requests_served, rows)
    finally:
        if server:
            assert server.stop() == 0
        mlserver.stop()


def test_a_dead_upstream_gives_fast_503_and_recovers_without_restart(tmp_path):
    mlserver, http_port, grpc_port = start_mlserver(tmp_path, IRIS, "iris", *IRIS_IO)
    server = Server(repository=remote_repo(tmp_path, [grpc_port]))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    url = f"http://{server.http}/v2/models/iris-remote/infer"
    try:
        assert requests.post(url, json=body, timeout=10).status_code == 200
        died = time.time()
        mlserver.kill()
        wait_for(lambda: requests.get(f"http://{server.http}/v2/health/ready", timeout=5).status_code == 503, 10,
                 "readiness to turn false")
        # Ejected by the next probe (every 200 ms; a dead port refuses at once), read from
        # the server's own event log rather than this test's clock.
        ejected = [json.loads(line) for line in server.log().splitlines() if '"Upstream ejected."' in line]
        assert ejected, "no ejection logged"
        at = datetime.datetime.fromisoformat(ejected[0]["timestamp"]).timestamp()
        # One 200 ms interval, plus a margin for a loaded machine's timers.
        assert 0 <= at - died < 0.2 + 0.15, f"ejected {at - died:.3f} s after the upstream died"
        started = time.monotonic()
        response = requests.post(url, json=body, timeout=10)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 1.0
        assert "127.0.0.1" in response.json()["error"]
        gateway = grpcclient.InferenceServerClient(server.grpc)
        assert not gateway.is_model_ready("iris-remote")
        # MLServer comes back on the same port: Switchyard uses it again by itself.
        mlserver, _, _ = start_mlserver(tmp_path / "again", IRIS, "iris", *IRIS_IO, http_port=http_port, grpc_port=grpc_port)
        wait_for(lambda: requests.post(url, json=body, timeout=10).status_code == 200, 20, "recovery")
        assert requests.get(f"http://{server.http}/v2/health/ready", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
        mlserver.stop()


def test_two_upstreams_one_killed_mid_load(tmp_path):
    first, _, grpc_a = start_mlserver(tmp_path / "a", IRIS, "iris", *IRIS_IO)
    second, _, grpc_b = start_mlserver(tmp_path / "b", IRIS, "iris", *IRIS_IO)
    server = Server(repository=remote_repo(tmp_path, [grpc_a, grpc_b]))
    outcomes = []
    stop = threading.Event()

    def load():
        session = requests.Session()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}]}
        while not stop.is_set():
            response = session.post(f"http://{server.http}/v2/models/iris-remote/infer", json=body, timeout=10)
            outcomes.append((time.monotonic(), response.status_code))

    try:
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        first.stop()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        failures = [o for o in outcomes if o[1] != 200]
        # Retries on UNAVAILABLE move in-flight work to the live upstream; at most
        # the requests in flight on the killed one (8 clients) may fail.
        assert len(failures) <= 8, failures[:10]
        after = [o for o in outcomes if o[0] > killed_at + 1.0]
        assert after and all(status == 200 for _, status in after)
        index = requests.post(f"http://{server.http}/v2/repository/index", timeout=10).json()
        assert index[0]["state"] == "READY"
    finally:
        stop.set()
        assert server.stop() == 0
        first.stop()
        second.stop()
