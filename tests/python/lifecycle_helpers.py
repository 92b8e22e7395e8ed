"""Helpers for the hot-swap tests: version-stamped models, a steady client load
that records which version answered each request, and waiting."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from conftest import REPO

sys.path.insert(0, str(REPO / "models"))
import make_models  # noqa: E402


def versioned_bytes(version: int, padding_mb: float = 0.0) -> bytes:
    return make_models.make_versioned(version, padding_mb).SerializeToString()


def write_version(root: Path, model: str, version: int, data: bytes | None = None) -> Path:
    path = root / model / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data if data is not None else versioned_bytes(version))
    tmp.rename(path)
    return path


def infer_version(http_addr: str, model: str = "versioned", version: str | None = None, timeout: float = 10) -> tuple[int, str]:
    """One request; returns (HTTP status, served version) and checks y - x names that version."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.flatten().tolist()}]}
    response = requests.post(f"http://{http_addr}{path}", json=body, timeout=timeout)
    if response.status_code != 200:
        return response.status_code, response.text
    reply = response.json()
    y = np.array(reply["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
    offsets = set(np.round(y - x).astype(int).flatten().tolist())
    assert offsets == {int(reply["model_version"])}, f"output {offsets} does not match version {reply['model_version']}"
    return 200, reply["model_version"]


@dataclass
class SteadyLoad:
    """`clients` threads sending requests back to back until stopped."""

    http_addr: str
    clients: int = 8
    model: str = "versioned"
    results: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list = field(default_factory=list)

    def _run(self):
        session = requests.Session()
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.flatten().tolist()}]}
        url = f"http://{self.http_addr}/v2/models/{self.model}/infer"
        while not self._stop.is_set():
            try:
                response = session.post(url, json=body, timeout=10)
                if response.status_code != 200:
                    with self._lock:
                        self.failures.append((response.status_code, response.text))
                    continue
                reply = response.json()
                y = np.array(reply["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
                offsets = set(np.round(y - x).astype(int).flatten().tolist())
                version = int(reply["model_version"])
                with self._lock:
                    if offsets != {version}:
                        self.failures.append(("mixed", offsets, version))
                    self.results.append((time.monotonic(), version))
            except requests.RequestException as err:
                with self._lock:
                    self.failures.append(("transport", str(err)))

    def __enter__(self):
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def versions_seen(self) -> set[int]:
        with self._lock:
            return {v for _, v in self.results}

    def latest_version(self) -> int | None:
        with self._lock:
            return self.results[-1][1] if self.results else None


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def index(http_addr: str) -> list[dict]:
    return requests.post(f"http://{http_addr}/v2/repository/index", timeout=10).json()
