"""Hot swaps from S3 (a real moto server) and the MLflow Model Registry (a real
`mlflow server` with sqlite and proxied local artifacts), both on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from conftest import Server
from lifecycle_helpers import SteadyLoad, index, infer_version, versioned_bytes, wait_for
from services import AWS, s3_bucket, start_mlflow, start_moto

POLL = ["--repository-poll-interval", "300ms"]


def test_s3_lists_loads_and_swaps_on_a_new_object(tmp_path):
    moto, endpoint = start_moto()
    try:
        s3 = s3_bucket(endpoint, "models")
        s3.put_object(Bucket="models", Key="prod/versioned/1/model.onnx", Body=versioned_bytes(1))
        s3.put_object(Bucket="models", Key="prod/versioned/config.yaml", Body=b"max_batch_size: 8\ndynamic_batching: {}\n")
        s3.put_object(Bucket="models", Key="other/ignored/1/model.onnx", Body=b"x")
        server = Server(*POLL, "--model-cache-dir", str(tmp_path / "cache"), repository="s3://models/prod",
                        env={**AWS, "AWS_ENDPOINT_URL": endpoint})
        try:
            assert infer_version(server.http) == (200, "1")
            assert [r["name"] for r in index(server.http)] == ["versioned"]
            with SteadyLoad(server.http, clients=8) as load:
                wait_for(lambda: len(load.results) > 30, 20, "requests before the swap")
                s3.put_object(Bucket="models", Key="prod/versioned/2/model.onnx", Body=versioned_bytes(2))
                wait_for(lambda: load.latest_version() == 2, 20, "version 2 from S3")
                swapped = time.monotonic()
                wait_for(lambda: load.answered_after(swapped) > 50, 20, "requests after the swap")
            assert load.failures == [], load.failures[:5]
            assert load.versions_seen() == {1, 2}
            assert load.older_after_newer() == []
            # A corrupt upload never replaces what serves.
            s3.put_object(Bucket="models", Key="prod/versioned/3/model.onnx", Body=b"corrupt")
            wait_for(lambda: any(r.get("version") == "3" and r["state"] == "UNAVAILABLE" for r in index(server.http)),
                     20, "version 3 reported as failed")
            assert infer_version(server.http) == (200, "2")
            # Fetched versions live in the content-addressed cache.
            assert list((tmp_path / "cache" / "s3").glob("*/model.onnx"))
        finally:
            assert server.stop() == 0
    finally:
        moto.stop()


def put_artifact(base: str, path: str, data: bytes) -> None:
    response = requests.put(f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}", data=data, timeout=30)
    assert response.status_code == 200, response.text


def register_version(base: str, name: str, version: int) -> str:
    """Logs the model as a run's artifacts (as mlflow.onnx.log_model would) and registers it."""
    run = requests.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"}, timeout=30).json()["run"]["info"]
    artifact_uri = run["artifact_uri"]
    assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri
    folder = artifact_uri.removeprefix("mlflow-artifacts:").lstrip("/") + "/model"
    put_artifact(base, f"{folder}/model.onnx", versioned_bytes(version))
    put_artifact(base, f"{folder}/MLmodel", b"flavors:\n  onnx:\n    data: model.onnx\n    onnx_version: 1.20.0\n")
    response = requests.post(f"{base}/api/2.0/mlflow/model-versions/create",
                             json={"name": name, "source": f"{artifact_uri}/model", "run_id": run["run_id"]}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]["version"]


def set_alias(base: str, name: str, alias: str, version: str) -> None:
    response = requests.post(f"{base}/api/2.0/mlflow/registered-models/alias",
                             json={"name": name, "alias": alias, "version": version}, timeout=30)
    assert response.status_code == 200, response.text


def test_mlflow_alias_moves_swap_the_served_version(tmp_path):
    mlflow, base = start_mlflow(tmp_path)
    stopped = False
    try:
        assert requests.post(f"{base}/api/2.0/mlflow/registered-models/create", json={"name": "versioned"},
                             timeout=30).status_code == 200
        v1 = register_version(base, "versioned", 1)
        v2 = register_version(base, "versioned", 2)
        assert (v1, v2) == ("1", "2")
        set_alias(base, "versioned", "champion", v1)
        server = Server(*POLL, "--model-cache-dir", str(tmp_path / "cache"),
                        repository=f"mlflow://{base.removeprefix('http://')}/versioned@champion")
        try:
            assert infer_version(server.http) == (200, "1")
            with SteadyLoad(server.http, clients=8) as load:
                wait_for(lambda: len(load.results) > 30, 20, "requests before the alias moves")
                moved = time.monotonic()
                set_alias(base, "versioned", "champion", v2)
                wait_for(lambda: load.latest_version() == 2, 20, "the alias's new version")
                swap_seconds = time.monotonic() - moved
                swapped = time.monotonic()
                wait_for(lambda: load.answered_after(swapped) > 50, 20, "requests after the swap")
            assert load.failures == [], load.failures[:5]
            assert load.versions_seen() == {1, 2}
            assert load.older_after_newer() == []
            assert swap_seconds < 10, swap_seconds

            # The registry goes away: the last good version keeps serving, and the index says why.
            mlflow.stop()
            stopped = True
            rows = wait_for(lambda: [r for r in index(server.http) if "unreachable" in r.get("reason", "")], 30,
                            "the registry to be reported unreachable")
            assert rows[0]["state"] == "READY" and rows[0]["version"] == "2", rows
            assert infer_version(server.http) == (200, "2")
            metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
            assert "switchyard_source_up{" in metrics and "} 0" in metrics.split("switchyard_source_up{")[-1].splitlines()[0]
        finally:
            assert server.stop() == 0
    finally:
        if not stopped:
            mlflow.stop()


def test_a_signed_mlflow_webhook_swaps_without_waiting_for_the_poll(tmp_path):
    mlflow, base = start_mlflow(tmp_path)
    try:
        requests.post(f"{base}/api/2.0/mlflow/registered-models/create", json={"name": "versioned"}, timeout=30)
        v1 = register_version(base, "versioned", 1)
        v2 = register_version(base, "versioned", 2)
        set_alias(base, "versioned", "champion", v1)
        server = Server("--repository-poll-interval", "600s", "--mlflow-webhook-secret", "s3cret",
                        "--model-cache-dir", str(tmp_path / "cache"),
                        repository=f"mlflow://{base.removeprefix('http://')}/versioned@champion")
        try:
            hook = f"http://{server.http}/v2/repository/webhooks/mlflow"
            # Unsigned or wrongly signed deliveries are refused.
            assert requests.post(hook, json={}, timeout=10).status_code == 401
            bad = {"X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": str(int(time.time())),
                   "X-MLflow-Signature": "v1,AAAA"}
            assert requests.post(hook, json={}, headers=bad, timeout=10).status_code == 401
            # MLflow itself delivers the webhook when the alias moves.
            response = requests.post(f"{base}/api/2.0/mlflow/webhooks", json={
                "name": "switchyard", "url": hook, "secret": "s3cret",
                "events": [{"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"}],
            }, timeout=30)
            assert response.status_code == 200, response.text
            assert infer_version(server.http) == (200, "1")
            time.sleep(1.5)  # MLflow caches its webhook list (MLFLOW_WEBHOOK_CACHE_TTL=1 here)
            moved = time.monotonic()
            set_alias(base, "versioned", "champion", v2)
            wait_for(lambda: infer_version(server.http)[1] == "2", 30, "the webhook-triggered swap")
            assert time.monotonic() - moved < 30  # far sooner than the 600 s poll
        finally:
            assert server.stop() == 0
    finally:
        mlflow.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_large_s3_version_streams_to_disk_without_growing_rss(tmp_path):
    """A 256 MiB object arrives in chunks straight to the cache file: the
    server's peak RSS grows by far less than the file. (The object is not a
    valid model, so loading it fails fast: what is measured is the download.)"""
    moto, endpoint = start_moto()
    size = 256 << 20
    try:
        s3 = s3_bucket(endpoint, "models")
        s3.put_object(Bucket="models", Key="prod/versioned/1/model.onnx", Body=versioned_bytes(1))
        s3.put_object(Bucket="models", Key="prod/versioned/config.yaml",
                      Body=b"version_policy: all\n")
        server = Server(*POLL, "--model-cache-dir", str(tmp_path / "cache"), repository="s3://models/prod",
                        env={**AWS, "AWS_ENDPOINT_URL": endpoint})
        try:
            assert infer_version(server.http) == (200, "1")
            before = peak_rss_mib(server.process.pid)
            s3.put_object(Bucket="models", Key="prod/versioned/2/model.onnx", Body=b"\0" * size)
            wait_for(lambda: any(r.get("version") == "2" and r["state"] == "UNAVAILABLE" for r in index(server.http)),
                     60, "the large version fetched and refused")
            cached = list((tmp_path / "cache" / "s3").glob("*/model.onnx"))
            assert any(p.stat().st_size == size for p in cached), [p.stat().st_size for p in cached]
            grown = peak_rss_mib(server.process.pid) - before
            assert grown < 64, f"peak RSS grew {grown:.0f} MiB while a 256 MiB version downloaded"
            assert infer_version(server.http) == (200, "1")
        finally:
            assert server.stop() == 0
    finally:
        moto.stop()
