"""A faithful remote runtime, against real upstreams started by the test:
MLServer (its own venv) over gRPC and over REST, and Switchyard itself as an
upstream for what MLServer does not offer (the binary tensor extension, TLS
with client certificates, bearer tokens). Request parameters and requested
outputs reach the upstream (MLServer's peer runtime logs what it received);
the requests of one sequence stay on one of two upstreams, and a sequence
whose upstream dies fails clearly instead of moving."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server
from services import start_mlserver
from test_tls import make_ca, make_cert

IRIS = MODELS / "iris" / "1" / "model.onnx"
IRIS_IO = (
    [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    [{"name": "label", "datatype": "INT64", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
)
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)


def repo_with(tmp_path, name, remote: str, extra: str = "") -> Path:
    folder = tmp_path / "repo" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"platform: remote\n{extra}remote: {remote}\n")
    return tmp_path / "repo"


def peer_log(workdir: Path, grpc_port: int) -> list[dict]:
    path = workdir / f"mlserver-{grpc_port}" / "requests.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def grpc_infer(client, model, x, outputs=None, parameters=None, **kwargs):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=wanted, parameters=parameters, **kwargs)


def test_parameters_and_requested_outputs_reach_mlserver_over_grpc_and_rest(tmp_path):
    mlserver, http_port, grpc_port = start_mlserver(tmp_path, IRIS, "iris", *IRIS_IO)
    server = None
    try:
        repo = repo_with(tmp_path, "iris-grpc", f"{{upstreams: [\"127.0.0.1:{grpc_port}\"], model: iris}}",
                         "max_batch_size: 16\ndynamic_batching: {max_queue_delay_us: 500}\n")
        (repo / "iris-rest").mkdir()
        (repo / "iris-rest" / "config.yaml").write_text(
            f"platform: remote\nremote: {{protocol: http, upstreams: [\"127.0.0.1:{http_port}\"], model: iris}}\n")
        server = Server(repository=repo)
        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        want = direct.infer("iris", [_input(X)])
        gateway = grpcclient.InferenceServerClient(server.grpc)
        for model in ["iris-grpc", "iris-rest"]:
            before = len(peer_log(tmp_path, grpc_port))
            result = grpc_infer(gateway, model, X, outputs=["probabilities"],
                                parameters={"customer": "acme", "threshold": 3, "explain": True})
            np.testing.assert_allclose(result.as_numpy("probabilities"), want.as_numpy("probabilities"), rtol=1e-6)
            assert result.as_numpy("label") is None, "only the requested output comes back"
            seen = peer_log(tmp_path, grpc_port)[before:]
            assert len(seen) == 1, seen
            assert seen[0]["outputs"] == ["probabilities"], f"{model}: the upstream was asked for {seen[0]['outputs']}"
            params = seen[0]["parameters"]
            assert params.get("customer") == "acme" and int(params.get("threshold")) == 3, params
            assert params.get("explain") in (True, "True", "true"), params
            assert "priority" not in params and "timeout" not in params, "the gateway's own parameters stay here"
            # Without parameters or an output list: every output, values as MLServer's own.
            plain = grpc_infer(gateway, model, X)
            np.testing.assert_array_equal(plain.as_numpy("label"), want.as_numpy("label"))
        # HTTP clients too, JSON in, JSON out, through the REST upstream.
        over_http = httpclient.InferenceServerClient(server.http)
        tensor = httpclient.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X, binary_data=False)
        result = over_http.infer("iris-rest", [tensor], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("label"), want.as_numpy("label"))
        # A malformed request answered 4xx by the REST upstream stays a client error here.
        bad = requests.post(f"http://{server.http}/v2/models/iris-rest/infer", timeout=10, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "nope"}]})
        assert bad.status_code == 400 and "nope" in bad.json()["error"]
    finally:
        if server:
            assert server.stop() == 0
        mlserver.stop()


def _input(x):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_a_sequence_stays_on_one_upstream_and_fails_clearly_when_it_dies(tmp_path):
    first, _, grpc_a = start_mlserver(tmp_path / "a", IRIS, "iris", *IRIS_IO)
    second, _, grpc_b = start_mlserver(tmp_path / "b", IRIS, "iris", *IRIS_IO)
    server = None
    try:
        repo = repo_with(tmp_path, "iris-seq",
                         f"{{upstreams: [\"127.0.0.1:{grpc_a}\", \"127.0.0.1:{grpc_b}\"], model: iris, "
                         "probe_interval_ms: 200, connect_timeout_ms: 300}",
                         "max_batch_size: 8\ndynamic_batching: {max_queue_delay_us: 2000}\ninstance_count: 4\n")
        server = Server(repository=repo)
        gateway = grpcclient.InferenceServerClient(server.grpc)
        sequences = range(1, 13)
        for step in range(4):
            for sequence in sequences:
                grpc_infer(gateway, "iris-seq", X[:1], sequence_id=sequence,
                           sequence_start=step == 0, sequence_end=step == 3)
        # String ids too, over HTTP.
        over_http = httpclient.InferenceServerClient(server.http)
        for step in range(3):
            tensor = httpclient.InferInput("input", [1, 4], "FP32")
            tensor.set_data_from_numpy(X[:1])
            over_http.infer("iris-seq", [tensor], sequence_id="session-x", sequence_start=step == 0, sequence_end=step == 2)
        where: dict[str, set] = {}
        for port, workdir in [(grpc_a, tmp_path / "a"), (grpc_b, tmp_path / "b")]:
            for record in peer_log(workdir, port):
                if "sequence_id" not in record["parameters"]:
                    continue  # the load-time warm-up
                assert record["rows"] == 1, "steps of sequences are never merged into one call"
                where.setdefault(str(record["parameters"]["sequence_id"]), set()).add(port)
        assert set(where) == {str(s) for s in sequences} | {"session-x"}
        assert all(len(ports) == 1 for ports in where.values()), where
        used = {port for ports in where.values() for port in ports}
        assert used == {grpc_a, grpc_b}, "power of two choices still spreads sequences"

        # A live sequence whose upstream dies: a clear error, never a silent move.
        grpc_infer(gateway, "iris-seq", X[:1], sequence_id=99, sequence_start=True)
        holder = next(port for port, workdir in [(grpc_a, tmp_path / "a"), (grpc_b, tmp_path / "b")]
                      if any(str(r["parameters"].get("sequence_id")) == "99" for r in peer_log(workdir, port)))
        (first if holder == grpc_a else second).kill()
        deadline = time.time() + 10
        while True:
            try:
                grpc_infer(gateway, "iris-seq", X[:1], sequence_id=99)
            except InferenceServerException as err:
                if "start the sequence again" in str(err):
                    assert err.status() == "StatusCode.UNAVAILABLE", err.status()
                    break
            assert time.time() < deadline, "the dead upstream's sequence was not refused"
            time.sleep(0.2)
        # Starting it again works, on the upstream that is left.
        grpc_infer(gateway, "iris-seq", X[:1], sequence_id=99, sequence_start=True)
        grpc_infer(gateway, "iris-seq", X[:1], sequence_id=99, sequence_end=True)
    finally:
        if server:
            assert server.stop() == 0
        first.stop()
        second.stop()


def switchyard_upstream(tmp_path, *args, env=None):
    repo = tmp_path / "upstream-repo"
    shutil.copytree(MODELS / "iris", repo / "iris")
    return Server(*args, repository=repo, env=env)


def test_binary_http_tls_with_client_certificates_and_a_token_header(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "ca", "server")
    make_cert(pki, "ca", "client")
    make_ca(pki, "other")
    make_cert(pki, "other", "stranger")
    token = "upstream-token-0123456789abcdef"
    upstream = switchyard_upstream(tmp_path, "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                                   "--tls-client-ca", str(pki / "ca.crt"), env={"SWITCHYARD_INFERENCE_TOKENS": token})
    server = None
    try:
        tls = f"tls: {{ca_file: \"{pki / 'ca.crt'}\", cert_file: \"{pki / 'client.crt'}\", key_file: \"{pki / 'client.key'}\"}}"
        headers = "headers: {authorization: \"Bearer ${UPSTREAM_TOKEN}\"}"
        repo = repo_with(tmp_path, "iris-grpc-tls",
                         f"{{upstreams: [\"{upstream.grpc}\"], model: iris, {tls}, {headers}}}")
        for name, remote in [
            ("iris-http-tls", f"{{protocol: http, binary_data: true, upstreams: [\"https://{upstream.http}\"], model: iris, {tls}, {headers}}}"),
            ("iris-no-token", f"{{upstreams: [\"{upstream.grpc}\"], model: iris, {tls}}}"),
            ("iris-stranger", f"{{upstreams: [\"{upstream.grpc}\"], model: iris, tls: {{ca_file: \"{pki / 'ca.crt'}\", "
                              f"cert_file: \"{pki / 'stranger.crt'}\", key_file: \"{pki / 'stranger.key'}\"}}, {headers}}}"),
            ("iris-no-env", f"{{upstreams: [\"{upstream.grpc}\"], model: iris, headers: {{authorization: \"Bearer ${{NOT_SET_ANYWHERE}}\"}}}}"),
        ]:
            (repo / name).mkdir()
            (repo / name / "config.yaml").write_text(f"platform: remote\nremote: {remote}\n")
        server = Server("--exit-on-error=false", repository=repo, env={"UPSTREAM_TOKEN": token})
        direct = grpcclient.InferenceServerClient(upstream.grpc, ssl=True, root_certificates=str(pki / "ca.crt"),
                                                  private_key=str(pki / "client.key"), certificate_chain=str(pki / "client.crt"))
        want = direct.infer("iris", [_input(X)], headers={"authorization": f"Bearer {token}"})
        gateway = grpcclient.InferenceServerClient(server.grpc)
        for model in ["iris-grpc-tls", "iris-http-tls"]:
            result = grpc_infer(gateway, model, X)
            np.testing.assert_array_equal(result.as_numpy("label"), want.as_numpy("label"))
            np.testing.assert_array_equal(result.as_numpy("probabilities"), want.as_numpy("probabilities"))
        index = {row["name"]: row for row in requests.post(f"http://{server.http}/v2/repository/index", timeout=10).json()}
        for model, needle in [("iris-no-token", "token"), ("iris-stranger", ""), ("iris-no-env", "NOT_SET_ANYWHERE")]:
            assert index[model]["state"] != "READY", index[model]
            assert needle.lower() in index[model].get("reason", "").lower(), index[model]
        assert token not in server.log(), "header values never reach the log"
    finally:
        if server:
            assert server.stop() == 0
        assert upstream.stop() == 0
