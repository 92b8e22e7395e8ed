"""Rollouts fed by a real MLflow registry (3.x, started on 127.0.0.1): the
`challenger` alias offers a version, a `rollout:` policy (the registered
model's `switchyard.config` tag) judges it on live traffic, and the outcome
is written back — a promotion moves `champion` and tags the version with the
evidence, a rollback tags it with the reason."""

from __future__ import annotations

import json

import requests

from conftest import Server
from lifecycle_helpers import SteadyLoad, infer_version, versioned_bytes, wait_for
from services import start_mlflow
from test_lifecycle_registries import put_artifact, set_alias

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}]}

POLICY = """
rollout:
  shadow: {percent: 50, interval: 300ms, min_requests: 20, tolerance: {abs: 1.0e-5, rel: 0}}
  canary: {steps: [50, 100], interval: 300ms, min_requests: 20}
  keep_previous: 60s
"""


def register(base: str, name: str, data: bytes) -> str:
    """Logs `data` as a run's ONNX model artifacts and registers it as a new version."""
    run = requests.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"}, timeout=30).json()["run"]["info"]
    folder = run["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/") + "/model"
    put_artifact(base, f"{folder}/model.onnx", data)
    put_artifact(base, f"{folder}/MLmodel", b"flavors:\n  onnx:\n    data: model.onnx\n    onnx_version: 1.20.0\n")
    response = requests.post(f"{base}/api/2.0/mlflow/model-versions/create",
                             json={"name": name, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]},
                             timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]["version"]


def aliases(base: str, name: str) -> dict:
    model = requests.get(f"{base}/api/2.0/mlflow/registered-models/get", params={"name": name}, timeout=30).json()
    return {a["alias"]: a["version"] for a in model["registered_model"].get("aliases", [])}


def tags(base: str, name: str, version: str) -> dict:
    got = requests.get(f"{base}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version},
                       timeout=30).json()
    return {t["key"]: t["value"] for t in got["model_version"].get("tags", [])}


def rollout(server) -> dict:
    response = requests.get(f"http://{server.http}/v2/rollouts/versioned", timeout=10)
    return response.json() if response.status_code == 200 else {}


def test_moving_challenger_rolls_out_and_the_outcome_is_written_back_to_mlflow(tmp_path):
    mlflow, base = start_mlflow(tmp_path)
    try:
        assert requests.post(f"{base}/api/2.0/mlflow/registered-models/create", json={
            "name": "versioned", "tags": [{"key": "switchyard.config", "value": POLICY}]}, timeout=30).status_code == 200
        v1 = register(base, "versioned", versioned_bytes(1))
        # Version 2 answers as version 1 does (a faithful rebuild); version 3 does not.
        v2 = register(base, "versioned", versioned_bytes(1))
        v3 = register(base, "versioned", versioned_bytes(3))
        set_alias(base, "versioned", "champion", v1)
        server = Server("--repository-poll-interval", "200ms", "--model-cache-dir", str(tmp_path / "cache"),
                        repository=f"mlflow://{base.removeprefix('http://')}/versioned@champion?candidate=challenger")
        try:
            assert infer_version(server.http) == (200, "1")
            with SteadyLoad(server.http, clients=4) as load:
                wait_for(lambda: len(load.results) > 30, 20, "requests before the challenger moves")
                set_alias(base, "versioned", "challenger", v2)
                wait_for(lambda: rollout(server).get("versions", {}) == {"model": "versioned", "stable": 1,
                                                                         "candidate": 2}, 30,
                         "moving challenger to start a rollout")
                wait_for(lambda: rollout(server).get("phase") == "promoted", 60, "the promotion")
                wait_for(lambda: aliases(base, "versioned").get("champion") == v2, 20, "champion to move to 2")
                recorded = tags(base, "versioned", v2)
                assert recorded["switchyard.rollout"] == "promoted", recorded
                assert recorded["switchyard.compared_with"] == v1
                evidence = json.loads(recorded["switchyard.evidence"])
                decisions = [d["decision"] for d in evidence["decisions"]]
                assert "shadow_passed" in decisions and decisions[-1] == "promote", decisions
                assert len(recorded["switchyard.evidence"]) <= 5000
                # The moved champion is what Switchyard serves already: nothing reloads or flaps.
                wait_for(lambda: load.latest_version() == 2, 20, "version 2 serving")

                set_alias(base, "versioned", "challenger", v3)
                wait_for(lambda: rollout(server).get("versions", {}).get("candidate") == 3, 30,
                         "the next rollout for version 3")
                wait_for(lambda: rollout(server).get("phase") == "rolled_back", 60, "the rollback")
                wait_for(lambda: tags(base, "versioned", v3).get("switchyard.rollout") == "rolled_back", 20,
                         "the rollback to be tagged")
                reason = tags(base, "versioned", v3)["switchyard.reason"]
                assert "in the shadow phase" in reason and "outputs agree on 0.00%" in reason, reason
                assert aliases(base, "versioned")["champion"] == v2
            # Version 2 answers y = x + 1 by design; anything else is a failure.
            failures = [f for f in load.failures if f != ("mixed", {1}, 2)]
            assert failures == [], failures[:5]
            assert load.versions_seen() == {1, 2}, "a client saw version 3"
            answer = requests.post(f"http://{server.http}/v2/models/versioned/infer", json=BODY, timeout=10)
            assert (answer.status_code, answer.json()["model_version"]) == (200, "2")
            assert "Rollout outcome recorded in MLflow." in server.log()
        finally:
            assert server.stop() == 0
    finally:
        mlflow.stop()
