"""Hot swaps from a local model folder under load: zero failed requests, every
answer from exactly one version, half-written and corrupt files never served,
Triton config.pbtxt repositories served unchanged, model control."""

from __future__ import annotations

import time

import requests

from conftest import MODELS, Server
from lifecycle_helpers import SteadyLoad, index, infer_version, versioned_bytes, wait_for, write_version

POLL = ["--repository-poll-interval", "200ms"]
BATCHING = "max_batch_size: 16\ndynamic_batching: {max_queue_delay_us: 500}\n"


def test_new_version_swaps_in_under_load_with_no_failed_request(tmp_path):
    (tmp_path / "versioned").mkdir()
    (tmp_path / "versioned" / "config.yaml").write_text(BATCHING)
    write_version(tmp_path, "versioned", 1)
    server = Server(*POLL, repository=tmp_path)
    try:
        assert infer_version(server.http) == (200, "1")
        with SteadyLoad(server.http, clients=8) as load:
            wait_for(lambda: len(load.results) > 50, 20, "requests before the swap")
            write_version(tmp_path, "versioned", 2)
            wait_for(lambda: load.latest_version() == 2, 20, "version 2 to serve")
            swapped = time.monotonic()
            wait_for(lambda: load.answered_after(swapped) > 100, 20, "requests after the swap")
        assert load.failures == [], load.failures[:5]
        assert load.versions_seen() == {1, 2}
        # Once version 2 answered, a request sent later never gets version 1 (one snapshot per request).
        assert load.older_after_newer() == []
        rows = index(server.http)
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [("versioned", "2", "READY")]
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        assert 'switchyard_model_loads_total{model="versioned",outcome="success"} 2' in metrics
    finally:
        assert server.stop() == 0


def test_half_written_and_corrupt_files_are_never_served(tmp_path):
    write_version(tmp_path, "versioned", 1)
    server = Server(*POLL, "--exit-on-error=false", repository=tmp_path)
    try:
        with SteadyLoad(server.http, clients=4) as load:
            # A copy in progress: half the file now, the rest after several scans.
            data = versioned_bytes(2, padding_mb=2)
            partial = tmp_path / "versioned" / "2" / "model.onnx"
            partial.parent.mkdir()
            with partial.open("wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(1.5)
                assert load.versions_seen() == {1}, "a half-written version was served"
                f.write(data[len(data) // 2 :])
            wait_for(lambda: load.latest_version() == 2, 20, "the completed version 2")

            # A corrupt version 3: the index says why, version 2 keeps serving.
            write_version(tmp_path, "versioned", 3, b"this is not an ONNX model")
            rows = wait_for(
                lambda: [r for r in index(server.http) if r.get("version") == "3" and r["state"] == "UNAVAILABLE"],
                20,
                "version 3 to be reported as failed",
            )
            assert "model.onnx" in rows[0]["reason"], rows
            time.sleep(0.5)
            assert load.latest_version() == 2
            assert infer_version(server.http) == (200, "2")
        assert load.failures == [], load.failures[:5]
        assert 3 not in load.versions_seen()
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        failures = next(l for l in metrics.splitlines() if l.startswith('switchyard_model_loads_total{model="versioned",outcome="failure"}'))
        assert float(failures.split()[-1]) >= 1, failures
        # Fixing the file heals it without a restart.
        write_version(tmp_path, "versioned", 3)
        wait_for(lambda: infer_version(server.http)[1] == "3", 20, "the fixed version 3")
    finally:
        assert server.stop() == 0


def test_a_bad_config_keeps_the_serving_version(tmp_path):
    write_version(tmp_path, "versioned", 1)
    server = Server(*POLL, repository=tmp_path)
    try:
        (tmp_path / "versioned" / "config.yaml").write_text("max_batch_sise: 4\n")
        rows = wait_for(
            lambda: [r for r in index(server.http) if r["state"] == "UNAVAILABLE"],
            20,
            "the config error in the index",
        )
        assert "max_batch_sise" in rows[0]["reason"], rows
        assert infer_version(server.http) == (200, "1")
    finally:
        assert server.stop() == 0


def test_triton_config_pbtxt_repository_serves_unchanged(tmp_path):
    model = tmp_path / "iris"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes((MODELS / "iris" / "1" / "model.onnx").read_bytes())
    (model / "config.pbtxt").write_text(
        """
name: "iris"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "label" data_type: TYPE_INT64 dims: [ ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
model_warmup [ { name: "w" batch_size: 1 } ]
"""
    )
    server = Server(repository=tmp_path)
    try:
        config = requests.get(f"http://{server.http}/v2/models/iris/config", timeout=10).json()
        assert config["max_batch_size"] == 8
        assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}
        reply = requests.post(f"http://{server.http}/v2/models/iris/infer", json=body, timeout=10).json()
        assert reply["outputs"][0]["data"] == [0, 2]
        too_many = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [9, 4], "data": [1.0] * 36}]}
        assert requests.post(f"http://{server.http}/v2/models/iris/infer", json=too_many, timeout=10).status_code == 400
        assert "model_warmup is not supported" in server.log()
    finally:
        assert server.stop() == 0


def test_model_control_unloads_and_loads(tmp_path):
    write_version(tmp_path, "versioned", 1)
    server = Server(*POLL, "--enable-model-control", repository=tmp_path)
    try:
        base = f"http://{server.http}/v2/repository/models/versioned"
        assert requests.post(f"{base}/unload", timeout=10).status_code == 200
        assert infer_version(server.http)[0] == 404
        time.sleep(0.6)  # the poller must not bring it back by itself
        assert infer_version(server.http)[0] == 404
        assert [r["state"] for r in index(server.http)] == ["UNAVAILABLE"]
        # Unloaded, still in the repository: "not ready" on both protocols, not "unknown".
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
        assert grpcclient.InferenceServerClient(server.grpc).is_model_ready("versioned") is False
        assert httpclient.InferenceServerClient(server.http).is_model_ready("versioned") is False
        ready = requests.get(f"http://{server.http}/v2/models/versioned/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (503, {"name": "versioned", "ready": False})
        assert requests.post(f"{base}/load", timeout=30).status_code == 200
        assert infer_version(server.http) == (200, "1")
        # Loading a model whose only version is corrupt reports why.
        write_version(tmp_path, "broken", 1, b"garbage")
        response = requests.post(f"http://{server.http}/v2/repository/models/broken/load", timeout=30)
        assert response.status_code == 400 and "model.onnx" in response.json()["error"], response.text
    finally:
        assert server.stop() == 0
