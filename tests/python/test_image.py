"""The container image, built here (scripts/build-image.sh: a base from Debian
packages, the binary built by the test command) and run with podman (runc,
cgroupfs) as the manifests run it: the rendered args, env and ConfigMap files,
uid 65532, a read-only root file system, emptyDirs as tmpfs. The standalone
gateway answers its probes and tritonclient, and drains on SIGTERM within its
grace period. For the native sidecar overlay, Switchyard and MLServer (uid
1000, read-only too, run from the MLServer venv's packages on a Debian python3
base) are two containers in one network namespace (`--network container:`),
started and stopped in the pod's order under load."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from conftest import MODELS, REPO

CONF = REPO / "scripts" / "containers.conf"
MLSERVER_SITE = REPO / ".cache" / "bench" / "mlserver" / "lib" / "python3.11" / "site-packages"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images():
    build = lambda *a: subprocess.run([str(REPO / "scripts" / "build-image.sh"), *a], env=ENV,  # noqa: E731
                                      capture_output=True, text=True, check=True, timeout=900).stdout.strip()
    return {"switchyard": build("--profile", "debug"), "python": build("--python-base")}


@pytest.fixture
def containers():
    started: list[str] = []
    yield started
    for name in reversed(started):
        podman("rm", "-f", "-t", "0", name, check=False)


def render(path: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / path)], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def run_switchyard(image, docs, tmp_path, containers, network, addrs) -> tuple[str, dict]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod.get("initContainers", []) + pod["containers"] if "switchyard" in c["image"])
    security = container["securityContext"]
    args = ["run", "-d", "--name", f"switchyard-{uuid.uuid4().hex[:8]}", f"--network={network}",
            f"--user={security['runAsUser']}:{security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for mount in container["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:mode=1777"]
        elif "configMap" in volume:
            configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
            folder = tmp_path / volume["name"]
            folder.mkdir()
            for key, text in configmap["data"].items():
                (folder / key).write_text(text)
            os.chmod(folder, 0o755)
            args += ["-v", f"{folder}:{mount['mountPath']}:ro"]
    for env in container.get("env", []):
        args += ["-e", f"{env['name']}={env['value']}"]
    # The pod's ports are the host's here: pick free ones.
    for key, port in addrs.items():
        args += ["-e", f"SWITCHYARD_{key}_ADDR=127.0.0.1:{port}"]
    args += [image, *container["args"]]
    name = args[3]
    podman(*args)
    containers.append(name)
    return name, {"container": container, "grace": pod.get("terminationGracePeriodSeconds", 30), "pod": pod}


def wait_for(url: str, budget: float, status: int = 200) -> float:
    started = time.monotonic()
    while True:
        try:
            if requests.get(url, timeout=2).status_code == status:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        assert time.monotonic() - started < budget, f"{url} did not answer {status} within {budget}s"
        time.sleep(0.2)


def test_the_standalone_image_runs_as_the_manifests_say(images, tmp_path, containers):
    docs = render("base")
    addrs = {"HTTP": free_port(), "GRPC": free_port(), "METRICS": free_port()}
    name, spec = run_switchyard(images["switchyard"], docs, tmp_path, containers, "host", addrs)
    container, base = spec["container"], f"http://127.0.0.1:{addrs['HTTP']}"
    startup = container["startupProbe"]
    wait_for(base + startup["httpGet"]["path"], startup["periodSeconds"] * startup["failureThreshold"])
    # The pool is not reachable from here: still ready (--ready-without-upstreams), 503 for its model.
    wait_for(base + container["readinessProbe"]["httpGet"]["path"], 30)
    assert requests.get(base + container["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
    inspect = json.loads(podman("inspect", name).stdout)[0]
    assert inspect["Config"]["User"] == "65532:65532" and inspect["HostConfig"]["ReadonlyRootfs"] is True
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{addrs['GRPC']}")
    assert client.is_server_ready() and client.get_server_metadata().name == "switchyard"
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert "waiting for the upstream" in index["fraud"].reason, index
    tensor = grpcclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="upstream") as err:
        client.infer("fraud", [tensor])
    assert "UNAVAILABLE" in str(err.value.status())
    # SIGTERM: readiness false at once, live during the drain delay, exit 0 within the grace period.
    t0 = time.monotonic()
    stopper = threading.Thread(target=podman, args=("stop", "-t", str(spec["grace"]), name), kwargs={"timeout": 120})
    stopper.start()
    wait_for(base + "/v2/health/ready", 5, status=503)
    assert requests.get(base + "/v2/health/live", timeout=5).status_code == 200
    stopper.join()
    assert time.monotonic() - t0 <= spec["grace"]
    assert json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"] == 0, podman("logs", name).stderr[-3000:]


def test_the_native_sidecar_pod_as_two_containers(images, tmp_path, containers):
    docs = render("overlays/sidecar")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mlserver_spec = next(c for c in pod["containers"] if c["name"] == "mlserver")
    # The pod's network namespace (its "pause" container).
    infra = f"pod-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", infra, "--network=host", images["python"], "sleep", "infinity")
    containers.append(infra)
    addrs = {"HTTP": free_port(), "GRPC": free_port(), "METRICS": free_port()}
    # Kubernetes starts the native sidecar first and the app once its startup probe passes.
    name, spec = run_switchyard(images["switchyard"], docs, tmp_path, containers, f"container:{infra}", addrs)
    container, base = spec["container"], f"http://127.0.0.1:{addrs['HTTP']}"
    startup = container["startupProbe"]
    wait_for(base + startup["httpGet"]["path"], startup["periodSeconds"] * startup["failureThreshold"])
    assert requests.get(base + container["readinessProbe"]["httpGet"]["path"], timeout=5).status_code == 503

    # MLServer as the overlay runs it (uid, env, read-only); its model-settings name the
    # ONNX runtime our MLServer venv has (the rendered ones name sklearn for a real cluster).
    settings = tmp_path / "mlserver" / "iris"
    settings.mkdir(parents=True)
    store = tmp_path / "store" / "iris"
    store.mkdir(parents=True)
    shutil.copy(MODELS / "iris" / "1" / "model.onnx", store / "model.onnx")
    rendered = json.loads(next(d for d in docs if d["kind"] == "ConfigMap" and
                               d["metadata"]["name"].startswith("mlserver-settings"))["data"]["model-settings.json"])
    rendered.update(implementation="mlserver_onnx.OnnxRuntime", parameters={"uri": "/mnt/store/iris/model.onnx"})
    (settings / "model-settings.json").write_text(json.dumps(rendered))
    for folder in [settings, settings.parent, store, store.parent, tmp_path]:
        os.chmod(folder, 0o755)
    security = mlserver_spec["securityContext"]
    mlserver = f"mlserver-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--name", mlserver, f"--network=container:{infra}", "--read-only", "--tmpfs", "/tmp:mode=1777",
            "-w", "/tmp", f"--user={security['runAsUser']}:{security['runAsGroup']}",
            "-v", f"{MLSERVER_SITE}:/opt/mlserver:ro", "-v", f"{REPO / 'bench' / 'peers'}:/peers:ro",
            "-v", f"{settings}:/mnt/models/iris:ro", "-v", f"{store.parent}:/mnt/store:ro",
            "-e", "PYTHONPATH=/opt/mlserver:/peers", "-e", "HOME=/tmp"]
    for env in mlserver_spec["env"]:
        args += ["-e", f"{env['name']}={env['value']}"]
    args += [images["python"], "python3", "-c",
             "import sys; from mlserver.cli import main; sys.argv = ['mlserver', 'start', '/mnt/models']; main()"]
    podman(*args)
    containers.append(mlserver)
    wait_for(base + container["readinessProbe"]["httpGet"]["path"], 90)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{addrs['GRPC']}")
    tensor = grpcclient.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(X)
    want = ort.InferenceSession(str(MODELS / "iris" / "1" / "model.onnx")).run(None, {"input": X})
    got = client.infer("iris", [tensor])
    np.testing.assert_array_equal(got.as_numpy("label").reshape(-1), want[0])
    np.testing.assert_allclose(got.as_numpy("probabilities"), want[1], rtol=1e-6)

    # Stop in the pod's order under load: the app after its preStop, the sidecar last.
    failures, done, stop = [], [0], threading.Event()

    def load():
        while not stop.is_set():
            try:
                client.infer("iris", [tensor], client_timeout=10)
                done[0] += 1
            except Exception as err:  # every failure is the test's finding
                failures.append(repr(err))

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(1)
    t0 = time.monotonic()
    pre_stop = float(mlserver_spec["lifecycle"]["preStop"]["exec"]["command"][1])
    app_stop = threading.Timer(pre_stop, lambda: podman("stop", "-t", "10", mlserver, timeout=60))
    app_stop.start()
    time.sleep(2)  # the endpoint removal: no new requests after this
    stop.set()
    worker.join()
    app_stop.join()
    podman("stop", "-t", str(spec["grace"]), name, timeout=120)
    assert time.monotonic() - t0 <= spec["grace"]
    assert json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"] == 0
    assert done[0] > 0 and not failures, f"{len(failures)} failed of {done[0]}: {failures[:3]}"
