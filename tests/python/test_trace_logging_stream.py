"""Trace and logging extensions (Triton's `/v2/trace/setting`, `/v2/logging`,
gRPC TraceSetting / LogSettings) through tritonclient on both protocols, the
log filter changing in the running process, admin-only access, and gRPC
streaming inference (`start_stream` / `async_stream_infer`) with values
checked against onnxruntime. Span sampling itself is checked with a real
OTLP collector in server/tests/tracing.rs."""

from __future__ import annotations

import queue
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server

ADMIN = "admin-token-0123456789abcdef"


def test_trace_settings_round_trip_on_both_protocols(server):
    over_http = httpclient.InferenceServerClient(server.http)
    over_grpc = grpcclient.InferenceServerClient(server.grpc)
    settings = over_http.get_trace_settings()
    assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_rate"] == "1"
    assert settings["trace_mode"] == "opentelemetry"
    updated = over_http.update_trace_settings(settings={"trace_rate": "10"})
    assert updated["trace_rate"] == "10" and updated["trace_sample_ratio"] == "0.1"
    # The gRPC answer is the same setting, in Triton's message.
    from_grpc = over_grpc.get_trace_settings(as_json=True)["settings"]
    assert from_grpc["trace_rate"] == {"value": ["10"]}
    off = over_grpc.update_trace_settings(settings={"trace_level": ["OFF"]}, as_json=True)["settings"]
    assert off["trace_level"] == {"value": ["OFF"]}
    assert over_http.get_trace_settings()["trace_level"] == ["OFF"]
    # None clears a setting: back to the start-up value.
    cleared = over_http.update_trace_settings(settings={"trace_level": None, "trace_rate": None})
    assert cleared["trace_level"] == ["TIMESTAMPS"] and cleared["trace_rate"] == "1"
    # A model's settings are the server's; changing them per model is refused, clearly.
    assert over_http.get_trace_settings(model_name="mlp")["trace_rate"] == "1"
    with pytest.raises(InferenceServerException, match="per-model trace settings"):
        over_http.update_trace_settings(model_name="mlp", settings={"trace_rate": "5"})
    with pytest.raises(InferenceServerException, match="per-model trace settings"):
        over_grpc.update_trace_settings(model_name="mlp", settings={"trace_rate": "5"})
    with pytest.raises(InferenceServerException, match="unknown"):
        over_http.get_trace_settings(model_name="nope")
    for bad, needle in [({"trace_rate": "often"}, "whole number"), ({"trace_file": "/tmp/x"}, "OTLP"),
                        ({"trace_level": ["TENSORS"]}, "not offered"), ({"colour": "red"}, "unknown trace setting")]:
        for client in (over_http, over_grpc):
            with pytest.raises(InferenceServerException, match=needle):
                client.update_trace_settings(settings=bad)
    assert over_http.get_trace_settings()["trace_rate"] == "1", "a refused change changes nothing"


def test_log_settings_change_the_running_filter(tmp_path):
    server = Server("--repository-poll-interval", "200ms")
    try:
        over_http = httpclient.InferenceServerClient(server.http)
        over_grpc = grpcclient.InferenceServerClient(server.grpc)
        settings = over_http.get_log_settings()
        assert settings["log_info"] is True and settings["log_verbose_level"] == 0
        assert settings["log_filter"] == "info" and settings["log_format"] == "json"  # conftest starts servers with --log-format json
        time.sleep(0.6)
        assert "Reconciling model sources." not in server.log(), "debug lines off by default"
        # Triton's verbose level 1 turns Switchyard's debug lines on, at once.
        assert over_grpc.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"][
            "log_verbose_level"] == {"uint32_param": 1}
        deadline = time.time() + 10
        while "Reconciling model sources." not in server.log():
            assert time.time() < deadline, "the new filter did not take effect"
            time.sleep(0.1)
        back = over_http.update_log_settings({"log_verbose_level": 0})
        assert back["log_filter"] == "info"
        mark = len(server.log())
        time.sleep(0.8)
        assert "Reconciling model sources." not in server.log()[mark + 200:], "debug lines stopped"
        # Our own key takes a tracing filter directly.
        assert over_http.update_log_settings({"log_filter": "warn,switchyard=info"})["log_warning"] is True
        # tritonclient's gRPC side types values by Triton's key names, so our
        # `log_filter` (a string) goes over HTTP here.
        for bad, needle, clients in [
                ({"log_file": "/tmp/x.log"}, "stderr", (over_http, over_grpc)),
                ({"log_format": "ISO8601"}, "--log-format", (over_http, over_grpc)),
                ({"log_filter": "=[bad"}, "log filter", (over_http,)),
                ({"log_info": "yes"}, "boolean", (over_http,)),
                ({"log_info": 3}, "boolean", (over_http,)),
                ({"log_filter": "info", "log_info": True}, "not both", (over_http,))]:
            for client in clients:
                with pytest.raises(InferenceServerException, match=needle):
                    client.update_log_settings(bad)
        assert over_http.get_log_settings()["log_filter"] == "warn,switchyard=info"
    finally:
        assert server.stop() == 0


def test_trace_and_log_settings_need_an_admin_token(tmp_path):
    tokens = tmp_path / "admin"
    tokens.write_text(ADMIN + "\n")
    server = Server("--admin-tokens-file", str(tokens), env={"SWITCHYARD_INFERENCE_TOKENS": "infer-token-0123456789"})
    try:
        base = f"http://{server.http}"
        for path in ["/v2/trace/setting", "/v2/logging", "/v2/models/mlp/trace/setting"]:
            assert requests.get(base + path, timeout=10).status_code == 401
            inference = requests.get(base + path, headers={"Authorization": "Bearer infer-token-0123456789"}, timeout=10)
            assert inference.status_code == 403, (path, inference.text)
            assert requests.get(base + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).status_code == 200
        over_grpc = grpcclient.InferenceServerClient(server.grpc)
        with pytest.raises(InferenceServerException, match="(?i)token|auth"):
            over_grpc.get_log_settings()
        assert over_grpc.get_log_settings(headers={"authorization": f"Bearer {ADMIN}"}, as_json=True)["settings"]
    finally:
        assert server.stop() == 0


def test_stream_inference_answers_every_request_with_its_id(server):
    session = ort.InferenceSession(str(MODELS / "mlp" / "1" / "model.onnx"))
    rng = np.random.default_rng(7)
    inputs = {f"r{i}": rng.standard_normal((1 + i % 5, 256)).astype(np.float32) for i in range(40)}
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for request_id, data in inputs.items():
            tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            client.async_stream_infer("mlp", [tensor], request_id=request_id)
        # A bad request answers with an error in the stream and the stream goes on.
        wrong = grpcclient.InferInput("input", [1, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("mlp", [wrong], request_id="bad")
        unknown = grpcclient.InferInput("input", [1, 256], "FP32")
        unknown.set_data_from_numpy(np.zeros((1, 256), np.float32))
        client.async_stream_infer("nope", [unknown], request_id="nope")
        answered, errors = {}, []
        for _ in range(len(inputs) + 2):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                answered[result.get_response().id] = result.as_numpy("output")
        assert set(answered) == set(inputs)
        for request_id, data in inputs.items():
            expected = session.run(None, {"input": data})[0]
            np.testing.assert_allclose(answered[request_id], expected, rtol=1e-5, atol=1e-6)
        assert len(errors) == 2
        assert any("shape" in e for e in errors) and any("nope" in e for e in errors), errors
    finally:
        client.stop_stream()
        client.close()


def test_shared_memory_is_refused_clearly(server):
    over_grpc = grpcclient.InferenceServerClient(server.grpc)
    over_http = httpclient.InferenceServerClient(server.http)
    for call in [over_grpc.get_system_shared_memory_status, over_grpc.get_cuda_shared_memory_status,
                 lambda: over_grpc.register_system_shared_memory("r", "/k", 64),
                 lambda: over_grpc.unregister_system_shared_memory("r")]:
        with pytest.raises(InferenceServerException, match="shared memory is not offered") as err:
            call()
        assert "UNIMPLEMENTED" in str(err.value.status())
    for call in [over_http.get_system_shared_memory_status, over_http.get_cuda_shared_memory_status,
                 lambda: over_http.register_system_shared_memory("r", "/k", 64)]:
        with pytest.raises(InferenceServerException, match="shared memory is not offered"):
            call()
