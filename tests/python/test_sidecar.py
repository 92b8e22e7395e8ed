"""Sidecar mode exactly as k8s/ deploys it: Switchyard runs with the very files
the sidecar ConfigMap is generated from (k8s/components/sidecar-config/models)
in front of a real MLServer on the loopback ports that config names. If the
manifests and the tested config drift apart, this test fails."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import requests
import tritonclient.grpc as grpcclient

from conftest import MODELS, REPO, Server
from services import start_mlserver

SIDECAR = REPO / "k8s" / "components" / "sidecar-config"


def test_the_sidecar_configmap_serves_through_mlserver(tmp_path):
    kustomization = (SIDECAR / "kustomization.yaml").read_text()
    # Lay the files out as the Deployment's volume items do (key → path).
    items = dict(re.findall(r"\{key: ([\w.]+), path: ([\w./]+)\}", kustomization))
    assert items == {"routes.yaml": "routes.yaml", "iris.config.yaml": "iris/config.yaml"}, items
    repo = tmp_path / "models"
    for key, path in items.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SIDECAR / "models" / key, target)
    config = (repo / "iris" / "config.yaml").read_text()
    grpc_port = int(re.search(r'upstreams: \["127\.0\.0\.1:(\d+)"\]', config).group(1))
    inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    outputs = [{"name": "label", "datatype": "INT64", "shape": [-1]},
               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    mlserver, _, _ = start_mlserver(tmp_path, MODELS / "iris" / "1" / "model.onnx", "iris", inputs, outputs,
                                    grpc_port=grpc_port)
    server = Server("--routes", str(repo / "routes.yaml"), repository=repo)
    try:
        assert requests.get(f"http://{server.http}/v2/health/ready", timeout=10).status_code == 200
        client = grpcclient.InferenceServerClient(server.grpc)
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
        tensor = grpcclient.InferInput("input", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer("iris", [tensor]).as_numpy("label").flatten().tolist() == [0, 2]
    finally:
        assert server.stop() == 0
        mlserver.stop()
