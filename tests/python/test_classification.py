"""The classification extension as tritonclient asks for it
(`InferRequestedOutput(name, class_count=k)`): Triton's `"score:index:label"`
strings, top k per row, scores descending, on both protocols, with labels
from the model folder's labels.txt or an output's `label_filename` in
config.pbtxt, checked against onnxruntime's own scores."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server

LABELS = ["setosa", "versicolor", "virginica"]


def expected(scores: np.ndarray, k: int, labels) -> list[list[str]]:
    rows = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        rows.append([f"{row[i]:.6f}:{i}" + (f":{labels[i]}" if labels else "") for i in order])
    return rows


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification")
    shutil.copytree(MODELS / "iris", root / "iris")
    (root / "iris" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    shutil.copytree(MODELS / "iris", root / "iris_pbtxt")
    (root / "iris_pbtxt" / "flowers.txt").write_text("a\nb\nc\n")
    (root / "iris_pbtxt" / "config.pbtxt").write_text(
        'name: "iris_pbtxt"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "flowers.txt" } ]\n')
    shutil.copytree(MODELS / "mlp", root / "mlp")
    return root


def test_top_k_classes_on_both_protocols(repo):
    server = Server(repository=repo)
    try:
        x = np.random.default_rng(3).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (7, 4)).astype(np.float32)
        scores = ort.InferenceSession(str(MODELS / "iris" / "1" / "model.onnx")).run(["probabilities"], {"input": x})[0]
        for model, labels in [("iris", LABELS), ("iris_pbtxt", ["a", "b", "c"])]:
            for k in (1, 2, 3, 10):
                want = expected(scores, min(k, 3), labels)
                for module, client in [(httpclient, httpclient.InferenceServerClient(server.http)),
                                       (grpcclient, grpcclient.InferenceServerClient(server.grpc))]:
                    tensor = module.InferInput("input", list(x.shape), "FP32")
                    tensor.set_data_from_numpy(x)
                    # iris_pbtxt declares only `probabilities`, so only that output exists there.
                    wanted = [module.InferRequestedOutput("probabilities", class_count=k)]
                    if model == "iris":
                        wanted.append(module.InferRequestedOutput("label"))
                    result = client.infer(model, [tensor], outputs=wanted)
                    got = result.as_numpy("probabilities")
                    assert got.shape == (7, min(k, 3)), got.shape
                    assert [[v.decode() for v in row] for row in got] == want, (model, k, module.__name__)
                    if model == "iris":
                        assert result.as_numpy("label").shape[0] == 7, "other outputs come back raw"
        # Without labels: "score:index" only; over JSON too.
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.1] * 256}],
                "outputs": [{"name": "output", "parameters": {"classification": 2}}]}
        answer = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=body, timeout=10).json()
        out = answer["outputs"][0]
        assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
        assert all(s.count(":") == 1 for s in out["data"]), out["data"]
        # Bad class counts and non-numeric outputs are refused clearly.
        for bad, needle in [(0, "1 or more"), (-3, "1 or more"), ("two", "integer")]:
            body["outputs"][0]["parameters"]["classification"] = bad
            refused = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=body, timeout=10)
            assert refused.status_code == 400 and needle in refused.json()["error"], refused.text
        assert "classification" in requests.get(f"http://{server.http}/v2", timeout=10).json()["extensions"]
    finally:
        assert server.stop() == 0


def test_a_missing_label_file_refuses_the_version_with_its_name(tmp_path):
    shutil.copytree(MODELS / "iris", tmp_path / "iris")
    (tmp_path / "iris" / "config.pbtxt").write_text(
        'name: "iris"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "gone.txt" } ]\n')
    shutil.copytree(MODELS / "mlp", tmp_path / "mlp")
    server = Server("--exit-on-error=false", repository=tmp_path)
    try:
        index = {r["name"]: r for r in requests.post(f"http://{server.http}/v2/repository/index", timeout=10).json()}
        assert index["iris"]["state"] != "READY" and "gone.txt" in index["iris"]["reason"], index["iris"]
        assert index["mlp"]["state"] == "READY"
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(server.grpc).get_model_metadata("iris")
    finally:
        assert server.stop() == 0
