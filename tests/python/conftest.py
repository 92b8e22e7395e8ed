"""Fixtures that run the real `switchyard` binary on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
ORT_LIB = REPO / ".cache" / "onnxruntime" / "lib" / "libonnxruntime.so"
MODELS = REPO / "models"
SERVICES_BIN = REPO / ".venv-services" / "bin"


class Server:
    """One switchyard process; its addresses come from its own `Listening.` log line."""

    def __init__(self, *extra_args: str, repository: Path | str = MODELS, env: dict | None = None) -> None:
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: build it first (make test does)")
        self.log_file = tempfile.NamedTemporaryFile(prefix="switchyard-", suffix=".log", delete=False)
        env = {**os.environ, **(env or {})}
        env.setdefault("ORT_DYLIB_PATH", str(ORT_LIB))
        # Each server its own model cache (and rollout memory) unless a test shares one.
        self.own_cache = None
        if "SWITCHYARD_MODEL_CACHE_DIR" not in env:
            self.own_cache = tempfile.mkdtemp(prefix="switchyard-cache-")
            env["SWITCHYARD_MODEL_CACHE_DIR"] = self.own_cache
        args = [
            str(BINARY),
            "--model-repository", str(repository),
            "--http-addr", "127.0.0.1:0",
            "--grpc-addr", "127.0.0.1:0",
            "--metrics-addr", "127.0.0.1:0",
            "--log-format", "json",
            *extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log_file, env=env)
        try:
            self.http, self.grpc, self.metrics = self._wait_for_listening(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _wait_for_listening(self, timeout: float) -> tuple[str, str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"switchyard exited with {self.process.returncode}:\n{self.log()}")
            for line in self.log().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "Listening.":
                    return event["http"], event["grpc"], event["metrics"]
            time.sleep(0.05)
        raise RuntimeError(f"switchyard did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log_file.closed:
            self.log_file.close()
            os.unlink(self.log_file.name)
        if self.own_cache:
            shutil.rmtree(self.own_cache, ignore_errors=True)
        return self.process.returncode


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="session")
def small_limits_server():
    """A server whose request limits are 1 MiB, for the oversize cases."""
    s = Server("--max-request-bytes", str(1 << 20), "--grpc-max-message-bytes", str(1 << 20))
    yield s
    assert s.stop() == 0
