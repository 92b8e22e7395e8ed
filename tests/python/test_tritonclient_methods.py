"""Every public method of tritonclient's HTTP and gRPC InferenceServerClient,
called against the real binary: each works, or — for what Switchyard does not
offer (shared memory) — fails with a clear UNIMPLEMENTED / 400 message. The
lists below must cover every public method of the installed tritonclient, and
README.md's client-method table must list each one, so neither can drift."""

from __future__ import annotations

import queue
import re
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, REPO, Server

# Helpers that run in the client only (no server call).
CLIENT_ONLY = {"close", "plugin", "register_plugin", "unregister_plugin", "generate_request_body",
               "parse_response_body", "stop_stream"}
NOT_OFFERED = {"get_cuda_shared_memory_status", "register_cuda_shared_memory", "unregister_cuda_shared_memory",
               "get_system_shared_memory_status", "register_system_shared_memory", "unregister_system_shared_memory"}


def public_methods(client_class) -> set[str]:
    return {m for m in dir(client_class) if not m.startswith("_") and callable(getattr(client_class, m))}


@pytest.fixture(scope="module")
def control_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("methods")
    shutil.copytree(MODELS / "mlp", repo / "mlp")
    shutil.copytree(MODELS / "iris", repo / "iris")
    server = Server("--enable-model-control", repository=repo)
    yield server
    assert server.stop() == 0


def mlp_input(module, rows=2):
    x = np.full((rows, 256), 0.25, np.float32)
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def calls_for(module, client, server) -> dict:
    def infer():
        result = client.infer("mlp", [mlp_input(module)])
        assert result.as_numpy("output").shape == (2, 10)

    def async_infer():
        if module is httpclient:
            result = client.async_infer("mlp", [mlp_input(module)]).get_result()
        else:
            done: queue.Queue = queue.Queue()
            client.async_infer("mlp", [mlp_input(module)], callback=lambda result, error: done.put((result, error)))
            result, error = done.get(timeout=30)
            assert error is None, error
        assert result.as_numpy("output").shape == (2, 10)

    def load_unload():
        client.unload_model("iris")
        assert client.is_model_ready("iris") is False
        client.load_model("iris")
        assert client.is_model_ready("iris") is True

    def index():
        rows = client.get_model_repository_index()
        names = [r["name"] for r in rows] if module is httpclient else [m.name for m in rows.models]
        assert {"mlp", "iris"} <= set(names)

    calls = {
        "is_server_live": lambda: client.is_server_live() is True or pytest.fail("not live"),
        "is_server_ready": lambda: client.is_server_ready() is True or pytest.fail("not ready"),
        "is_model_ready": lambda: client.is_model_ready("mlp") is True or pytest.fail("mlp not ready"),
        "get_server_metadata": lambda: client.get_server_metadata(),
        "get_model_metadata": lambda: client.get_model_metadata("mlp"),
        "get_model_config": lambda: client.get_model_config("mlp"),
        "get_model_repository_index": index,
        "load_model": load_unload,
        "unload_model": load_unload,
        "get_inference_statistics": lambda: client.get_inference_statistics("mlp"),
        "get_trace_settings": lambda: client.get_trace_settings(),
        "update_trace_settings": lambda: client.update_trace_settings(settings={"trace_rate": "1"}),
        "get_log_settings": lambda: client.get_log_settings(),
        "update_log_settings": lambda: client.update_log_settings({"log_verbose_level": 0}),
        "infer": infer,
        "async_infer": async_infer,
    }
    if module is grpcclient:
        def stream():
            done: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: done.put((result, error)))
            try:
                client.async_stream_infer("mlp", [mlp_input(module)], request_id="s1")
                result, error = done.get(timeout=30)
                assert error is None and result.get_response().id == "s1", error
            finally:
                client.stop_stream()
        calls["start_stream"] = stream
        calls["async_stream_infer"] = stream
        calls["register_system_shared_memory"] = lambda: client.register_system_shared_memory("r", "/k", 64)
        calls["register_cuda_shared_memory"] = lambda: client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
    else:
        calls["register_system_shared_memory"] = lambda: client.register_system_shared_memory("r", "/k", 64)
        calls["register_cuda_shared_memory"] = lambda: client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
    calls["get_system_shared_memory_status"] = lambda: client.get_system_shared_memory_status()
    calls["unregister_system_shared_memory"] = lambda: client.unregister_system_shared_memory("r")
    calls["get_cuda_shared_memory_status"] = lambda: client.get_cuda_shared_memory_status()
    calls["unregister_cuda_shared_memory"] = lambda: client.unregister_cuda_shared_memory("r")
    return calls


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_every_tritonclient_method_works_or_says_clearly_why_not(control_server, module):
    addr = control_server.http if module is httpclient else control_server.grpc
    client = module.InferenceServerClient(addr)
    calls = calls_for(module, client, control_server)
    methods = public_methods(module.InferenceServerClient)
    assert methods - CLIENT_ONLY == set(calls), f"methods not exercised: {sorted(methods - CLIENT_ONLY - set(calls))}"
    for name, call in sorted(calls.items()):
        if name in NOT_OFFERED:
            with pytest.raises(InferenceServerException, match="shared memory is not offered") as err:
                call()
            if module is grpcclient:
                assert "UNIMPLEMENTED" in str(err.value.status()), (name, err.value.status())
            else:
                assert "400" in str(err.value.status()), (name, err.value.status())
        else:
            call()
    client.close()


def test_the_readme_lists_every_client_method():
    readme = (REPO / "README.md").read_text()
    table = readme.split("### tritonclient methods", 1)
    assert len(table) == 2, "README.md has no `### tritonclient methods` table"
    rows = {m for m in re.findall(r"^\| `([a-z_]+)` \|", table[1], re.M)}
    for module in (httpclient, grpcclient):
        missing = public_methods(module.InferenceServerClient) - CLIENT_ONLY - rows
        assert not missing, f"README's table misses {sorted(missing)}"
