"""The sidecar overlays' pod, played with real processes (no cluster runs
here): Switchyard starts with exactly the args, env and ConfigMap files that
`kubectl kustomize` renders for each sidecar overlay, before its model server
exists, as Kubernetes starts a native sidecar; its startup probe must pass
within the probe's budget and it must not exit. Then a real MLServer comes up
on the loopback port the config names: readiness follows and answers match
onnxruntime. Then the pod stops under load in the order the overlay implies
(native: the model server after its preStop, Switchyard last; classic: both
signalled together, the model server after its preStop), and no request fails."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import yaml

from conftest import MODELS, REPO, Server
from services import start_mlserver

IRIS_IO = ([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
           [{"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}])
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
# How long requests still arrive after the pod starts terminating (endpoint removal).
PROPAGATION_S = 2.0


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", value).groups()
    return float(number) / (1000 if unit == "ms" else 1)


def render(overlay: str) -> dict:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    native = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    switchyard = next(c for c in native + pod["containers"] if "switchyard" in c["image"])
    upstream = next(c for c in pod["containers"] if c is not switchyard)
    models_volume = next(v for v in pod["volumes"] if v["name"] == "models")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == models_volume["configMap"]["name"])
    mount = next(m["mountPath"] for m in switchyard["volumeMounts"] if m["name"] == "models")
    pre_stop = upstream["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", pre_stop
    return {"pod": pod, "native": bool(native), "switchyard": switchyard, "configmap": configmap,
            "mount": mount, "pre_stop": float(pre_stop[1]), "grace": pod["terminationGracePeriodSeconds"]}


def start_switchyard(rendered: dict, tmp_path: Path) -> tuple[Server, float]:
    repo = tmp_path / "configmap"
    repo.mkdir()
    # The kubelet writes each key as a file (the manifests mount no items).
    for key, text in rendered["configmap"]["data"].items():
        (repo / key).write_text(text)
    container = rendered["switchyard"]
    mount = rendered["mount"]
    args = []
    for arg in container["args"]:
        if arg.startswith("--model-repository="):
            assert arg == f"--model-repository={mount}", arg
            continue  # given as `repository` below, mapped to the laid-out files
        if arg == "--log-format=json":
            continue  # the test harness sets it too (it reads the JSON log)
        args.append(arg.replace(mount, str(repo)).replace("/var/cache/switchyard", str(tmp_path / "cache")))
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    started = time.monotonic()
    server = Server(*args, repository=repo, env=env)
    return server, started


def probe_ok(server: Server, probe: dict) -> bool:
    path = probe["httpGet"]["path"]
    try:
        return requests.get(f"http://{server.http}{path}", timeout=probe.get("timeoutSeconds", 1)).status_code == 200
    except requests.RequestException:
        return False


def iris_port(rendered: dict) -> int:
    config = rendered["configmap"]["data"]["iris.config.yaml"]
    return int(re.search(r'upstreams: \["127\.0\.0\.1:(\d+)"\]', config).group(1))


class Load:
    """Requests through Switchyard, as the Service would send them, until stopped."""

    def __init__(self, addr: str) -> None:
        self.client = grpcclient.InferenceServerClient(addr)
        self.stop, self.done, self.failures = threading.Event(), 0, []
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        tensor = grpcclient.InferInput("input", [2, 4], "FP32")
        tensor.set_data_from_numpy(X)
        while not self.stop.is_set():
            try:
                assert self.client.infer("iris", [tensor], client_timeout=10).as_numpy("label").reshape(-1).tolist() == [0, 2]
                self.done += 1
            except Exception as err:  # every failure is the test's finding
                self.failures.append(repr(err))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.mark.parametrize("overlay", ["sidecar", "sidecar-classic"])
def test_the_sidecar_pod_starts_before_its_model_server_and_stops_in_order(tmp_path, overlay):
    rendered = render(overlay)
    container = rendered["switchyard"]
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    server, started = start_switchyard(rendered, tmp_path)
    mlserver = None
    try:
        # Before any upstream: the startup probe passes in time and nothing exits.
        while not probe_ok(server, startup):
            assert time.monotonic() - started < budget, f"startup probe did not pass within {budget}s"
            time.sleep(0.2)
        assert probe_ok(server, container["livenessProbe"])
        assert not probe_ok(server, container["readinessProbe"]), "ready without its model server"
        refused = requests.post(f"http://{server.http}/v2/models/iris/infer", timeout=10, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
        assert refused.status_code == 503 and "upstream" in refused.json()["error"], refused.text
        time.sleep(2)
        assert server.process.poll() is None, f"Switchyard exited without its upstream:\n{server.log()}"

        # The model server comes up on the port the config names: ready, right answers.
        mlserver, _, _ = start_mlserver(tmp_path, MODELS / "iris" / "1" / "model.onnx", "iris", *IRIS_IO,
                                        grpc_port=iris_port(rendered))
        readiness = container["readinessProbe"]
        deadline = time.monotonic() + 30
        while not probe_ok(server, readiness):
            assert time.monotonic() < deadline, f"not ready 30 s after the model server:\n{server.log()}"
            time.sleep(0.2)
        want = ort.InferenceSession(str(MODELS / "iris" / "1" / "model.onnx")).run(None, {"input": X})
        tensor = grpcclient.InferInput("input", [2, 4], "FP32")
        tensor.set_data_from_numpy(X)
        got = grpcclient.InferenceServerClient(server.grpc).infer("iris", [tensor])
        # MLServer answers the label as [rows, 1].
        np.testing.assert_array_equal(got.as_numpy("label").reshape(-1), want[0])
        np.testing.assert_allclose(got.as_numpy("probabilities"), want[1], rtol=1e-6)

        # The pod stops under load, in the overlay's order.
        load = Load(server.grpc)
        time.sleep(1)
        t0 = time.monotonic()
        if not rendered["native"]:
            server.process.send_signal(15)  # classic: Switchyard and the preStop start together
        # The model server's SIGTERM comes when its preStop ends, whatever the load is doing.
        upstream_stop = threading.Timer(rendered["pre_stop"], mlserver.stop)
        upstream_stop.start()
        time.sleep(PROPAGATION_S)
        load.finish()  # the endpoint is gone: no new requests reach the pod
        upstream_stop.join()
        mlserver = None
        if rendered["native"]:
            server.process.send_signal(15)  # native: the sidecar stops last
        rc = server.process.wait(timeout=rendered["grace"])
        assert time.monotonic() - t0 <= rendered["grace"], "the pod outlived its grace period"
        assert rc == 0, server.log()
        assert load.done > 0 and not load.failures, f"{len(load.failures)} failed of {load.done}: {load.failures[:3]}"
    finally:
        if mlserver:
            mlserver.stop()
        server.stop()
