"""Real services started on 127.0.0.1 for the tests: moto (S3) and MLflow.
Each runs from the services venv (.venv-services) and is stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from conftest import SERVICES_BIN


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, name: str, args: list[str], ready_url: str, timeout: float, env: dict | None = None, cwd=None,
                 exact_ok: bool = False):
        self.name = name
        fd, log = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        self.log = Path(log)
        # The child holds its own copy of the file; ours is closed at once.
        with os.fdopen(fd, "w") as log_file:
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                cwd=cwd, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                status = requests.get(ready_url, timeout=2).status_code
                if status == 200 or (status < 500 and not exact_ok):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} did not start within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """Dies at once (SIGKILL): its ports close with it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_moto() -> tuple[Service, str]:
    port = free_port()
    service = Service("moto", [str(SERVICES_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                      f"http://127.0.0.1:{port}/moto-api/", timeout=60)
    return service, f"http://127.0.0.1:{port}"


# What the moto server accepts, for boto3 here and for the switchyard process.
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def s3_bucket(endpoint: str, bucket: str):
    """A boto3 client for the moto server at `endpoint`, with `bucket` created."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=AWS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=bucket)
    return s3


def start_mlflow(workdir: Path) -> tuple[Service, str]:
    port = free_port()
    args = [
        str(SERVICES_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"), "--serve-artifacts", "--workers", "1",
    ]
    # MLflow refuses webhooks to 127.0.0.1 and to plain http unless allowed.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_ENABLE_WORKSPACES": "false",
           "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    service = Service("mlflow", args, f"http://127.0.0.1:{port}/health", timeout=120, env=env, cwd=workdir)
    return service, f"http://127.0.0.1:{port}"


MLSERVER_VENV = SERVICES_BIN.parents[1] / ".cache" / "bench" / "mlserver"
PEERS = SERVICES_BIN.parents[1] / "bench" / "peers"


def start_mlserver(workdir: Path, model_path: Path, name: str, inputs: list, outputs: list,
                   http_port: int | None = None, grpc_port: int | None = None) -> tuple[Service, int, int]:
    """A real MLServer (own venv, installed by the test command) serving an ONNX
    file through bench/peers/mlserver_onnx.py."""
    import json

    if http_port is None and grpc_port is None:
        # Ports picked here can be taken by someone else before MLServer binds them: one retry.
        try:
            return start_mlserver(workdir, model_path, name, inputs, outputs, free_port(), free_port())
        except RuntimeError:
            return start_mlserver(workdir / "retry", model_path, name, inputs, outputs, free_port(), free_port())
    http_port, grpc_port = http_port or free_port(), grpc_port or free_port()
    folder = workdir / f"mlserver-{grpc_port}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(), "host": "127.0.0.1",
        "parallel_workers": 0,
    }))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_onnx.OnnxRuntime",
        "parameters": {"uri": str(model_path)}, "inputs": inputs, "outputs": outputs,
    }))
    service = Service("mlserver", [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                      f"http://127.0.0.1:{http_port}/v2/models/{name}/ready", timeout=120,
                      env={"PYTHONPATH": str(PEERS), "SWITCHYARD_PEER_LOG": "1"}, cwd=folder, exact_ok=True)
    return service, http_port, grpc_port
