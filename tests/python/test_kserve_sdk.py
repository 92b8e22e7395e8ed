"""The KServe Python SDK (kserve 0.21 from PyPI, in its own venv because its
pins differ from tritonclient's) against the real binary: liveness,
readiness and model readiness over REST and gRPC, and
inference with JSON and binary tensor data, values checked against
onnxruntime."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort

from conftest import MODELS, REPO

KSERVE_PYTHON = REPO / ".cache" / "bench" / "kserve" / "bin" / "python"


def test_kserve_sdk_rest_and_grpc_clients(server, tmp_path):
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: `make test` installs it"
    x = np.random.default_rng(11).standard_normal((5, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.json"
    run = subprocess.run([str(KSERVE_PYTHON), str(REPO / "tests" / "python" / "kserve_sdk_client.py"),
                          server.http, server.grpc, str(tmp_path / "x.npy"), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(out.read_text())
    want = ort.InferenceSession(str(MODELS / "mlp" / "1" / "model.onnx")).run(None, {"input": x})[0]
    for key in ["rest"]:
        rest = result[key]
        assert (rest["live"], rest["ready"], rest["model_ready"]) == (True, True, True), rest
        assert rest["unknown_model_ready"] in (False,) or str(rest["unknown_model_ready"]).startswith("error"), rest
        for form in ["json", "binary"]:
            assert rest[form]["id"] == f"{key}-{form == 'binary'}" and rest[form]["model_name"] == "mlp"
            np.testing.assert_allclose(np.array(rest[form]["output"], np.float32), want, rtol=1e-5, atol=1e-6)
    grpc = result["grpc"]
    assert (grpc["live"], grpc["ready"], grpc["model_ready"]) == (True, True, True), grpc
    assert grpc["infer"]["id"] == "grpc-1"
    np.testing.assert_allclose(np.array(grpc["infer"]["output"], np.float32), want, rtol=1e-5, atol=1e-6)
    assert "INVALID_ARGUMENT" in grpc["bad_shape"] and "shape" in grpc["bad_shape"], grpc["bad_shape"]
