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
    """`clients` threads sending requests back to back until stopped.

    `results` holds (started, finished, version) per answered request; every
    other outcome, including an exception of any kind in a thread, is a failure."""

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
            started = time.monotonic()
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
                    self.results.append((started, time.monotonic(), version))
            except Exception as err:  # noqa: BLE001 - any failure of a request is recorded, never lost with the thread
                with self._lock:
                    self.failures.append((type(err).__name__, str(err)))

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
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def versions_seen(self) -> set[int]:
        with self._lock:
            return {v for _, _, v in self.results}

    def latest_version(self) -> int | None:
        with self._lock:
            return self.results[-1][2] if self.results else None

    def answered_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for _, finished, _ in self.results if finished > moment)

    def older_after_newer(self) -> list:
        """Requests that started after a newer version had answered, yet were
        answered by an older one: a version flapping back (no grace allowed)."""
        with self._lock:
            results = sorted(self.results)
        newest_finished: dict[int, float] = {}
        for _, finished, version in results:
            newest_finished[version] = min(finished, newest_finished.get(version, finished))
        return [
            (started, version)
            for started, _, version in results
            if any(newer > version and started > seen for newer, seen in newest_finished.items())
        ]


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
