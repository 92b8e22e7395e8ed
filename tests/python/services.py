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
    def __init__(self, name: str, args: list[str], ready_url: str, timeout: float, env: dict | None = None, cwd=None):
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.process = subprocess.Popen(
            args, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=cwd, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(ready_url, timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} did not start within {timeout}s:\n{self.log.read_text()[-3000:]}")

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
