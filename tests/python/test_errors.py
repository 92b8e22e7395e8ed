"""Every client mistake gets a clear 4xx (HTTP) or gRPC code and an
`{"error": ...}` body that says what was wrong; the server keeps serving."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

MLP_INPUT = {"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}


def post(server, path: str, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"http://{server.http}{path}", data=data, headers=headers or {}, timeout=30)


def assert_error(response, status: int, *fragments: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


HTTP_CASES = {
    "unknown model": ("/v2/models/nope/infer", {"inputs": [MLP_INPUT]}, 404, ["unknown model `nope`"]),
    "unknown version": ("/v2/models/mlp/versions/9/infer", {"inputs": [MLP_INPUT]}, 404, ["no version 9"]),
    "non-numeric version": ("/v2/models/mlp/versions/latest/infer", {"inputs": [MLP_INPUT]}, 404, ["version `latest`"]),
    "wrong input name": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "name": "x"}]}, 400, ["unknown input `x`", "expected inputs"]),
    "wrong datatype": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "datatype": "FP64"}]}, 400, ["expected datatype FP32, got FP64"]),
    "unknown datatype": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "datatype": "FLOAT"}]}, 400, ["unknown datatype `FLOAT`"]),
    "wrong shape": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "shape": [1, 255], "data": [0.5] * 255}]}, 400, ["expected shape [-1, 256], got [1, 255]"]),
    "element count mismatch": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "data": [0.5] * 255}]}, 400, ["has 256 elements, but `data` holds 255"]),
    "wrong element type": ("/v2/models/mlp/infer", {"inputs": [{**MLP_INPUT, "data": ["a"] * 256}]}, 400, ["expected a number"]),
    "malformed json": ("/v2/models/mlp/infer", '{"inputs": [', 400, ["malformed JSON request body"]),
    "missing inputs field": ("/v2/models/mlp/infer", {"outputs": []}, 400, ["missing field `inputs`"]),
    "missing input tensor": ("/v2/models/mlp/infer", {"inputs": []}, 400, ["missing input `input`"]),
    "unknown requested output": ("/v2/models/mlp/infer", {"inputs": [MLP_INPUT], "outputs": [{"name": "logits"}]}, 400, ["unknown output `logits`"]),
    "no data": ("/v2/models/mlp/infer", {"inputs": [{k: v for k, v in MLP_INPUT.items() if k != "data"}]}, 400, ["no `data`"]),
}


@pytest.mark.parametrize("case", HTTP_CASES)
def test_http_errors(server, case):
    path, body, status, fragments = HTTP_CASES[case]
    assert_error(post(server, path, body), status, *fragments)


def test_http_binary_size_mismatch(server):
    header = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}]}
    body, headers = binary_body(header, b"\0" * 1020)
    assert_error(post(server, "/v2/models/mlp/infer", body, headers), 400, "binary_data_size 1024 runs past the end")
    body, headers = binary_body(header, b"\0" * 1028)
    assert_error(post(server, "/v2/models/mlp/infer", body, headers), 400, "no input claims")
    header["inputs"][0]["parameters"]["binary_data_size"] = 1020
    body, headers = binary_body(header, b"\0" * 1020)
    assert_error(post(server, "/v2/models/mlp/infer", body, headers), 400, "needs 1024 bytes of data, got 1020")


def test_http_bad_binary_header(server):
    response = post(server, "/v2/models/mlp/infer", {"inputs": [MLP_INPUT]}, {"Inference-Header-Content-Length": "lots"})
    assert_error(response, 400, "Inference-Header-Content-Length")
    response = post(server, "/v2/models/mlp/infer", {"inputs": [MLP_INPUT]}, {"Inference-Header-Content-Length": "999999"})
    assert_error(response, 400, "body has only")


def test_http_body_over_limit(small_limits_server):
    big = {"inputs": [{"name": "input", "shape": [1100, 256], "datatype": "FP32", "parameters": {"binary_data_size": 1100 * 1024}}]}
    body, headers = binary_body(big, b"\0" * (1100 * 1024))
    assert_error(post(small_limits_server, "/v2/models/mlp/infer", body, headers), 413, "larger than the limit of 1048576 bytes")
    # Chunked (no Content-Length) is cut off at the limit too.
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = requests.post(f"http://{small_limits_server.http}/v2/models/mlp/infer", data=chunks, headers=headers, timeout=30)
    assert_error(response, 413, "larger than the limit")


def test_unknown_route_and_model_metadata(server):
    response = requests.get(f"http://{server.http}/v2/models/nope", timeout=10)
    assert_error(response, 404, "unknown model `nope`")
    response = requests.get(f"http://{server.http}/v3/anything", timeout=10)
    assert_error(response, 404, "no route for GET /v3/anything")


def test_model_control_is_off_by_default(server):
    assert_error(post(server, "/v2/repository/models/mlp/unload", b""), 403, "--enable-model-control")
    assert_error(post(server, "/v2/repository/models/mlp/load", b""), 403, "--enable-model-control")


# ---- gRPC ----


def raw_request(model="mlp", version="", shape=(1, 256), datatype="FP32", name="input", payload=None, outputs=()):
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = name, datatype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(payload if payload is not None else np.zeros(shape, np.float32).tobytes())
    for output in outputs:
        request.outputs.add().name = output
    return request


def typed_contents_request():
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([1, 256])
    return request, tensor


def grpc_call(server, request):
    with grpc.insecure_channel(server.grpc) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def mixed_contents():
    request = raw_request()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 256)
    return request


def two_raw_entries():
    request = raw_request()
    request.raw_input_contents.append(b"\0" * 4)
    return request


def typed_wrong_field():
    request, tensor = typed_contents_request()
    tensor.contents.int64_contents.extend([1] * 256)
    return request


def no_inputs():
    return service_pb2.ModelInferRequest(model_name="mlp")


GRPC_CASES = {
    "unknown model": (lambda: raw_request(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model `nope`"),
    "unknown version": (lambda: raw_request(version="9"), grpc.StatusCode.NOT_FOUND, "no version 9"),
    "wrong input name": (lambda: raw_request(name="x"), grpc.StatusCode.INVALID_ARGUMENT, "unknown input `x`"),
    "wrong datatype": (lambda: raw_request(datatype="FP64", payload=b"\0" * 2048), grpc.StatusCode.INVALID_ARGUMENT, "expected datatype FP32, got FP64"),
    "wrong shape": (lambda: raw_request(shape=(1, 255)), grpc.StatusCode.INVALID_ARGUMENT, "expected shape [-1, 256], got [1, 255]"),
    "raw size mismatch": (lambda: raw_request(payload=b"\0" * 1020), grpc.StatusCode.INVALID_ARGUMENT, "needs 1024 bytes of data, got 1020"),
    "raw count mismatch": (two_raw_entries, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries"),
    "contents and raw mixed": (mixed_contents, grpc.StatusCode.INVALID_ARGUMENT, "use one form for all inputs"),
    "typed contents in the wrong field": (typed_wrong_field, grpc.StatusCode.INVALID_ARGUMENT, "its values go in `contents.fp32_contents`"),
    "missing inputs": (no_inputs, grpc.StatusCode.INVALID_ARGUMENT, "missing input `input`"),
    "unknown requested output": (lambda: raw_request(outputs=["logits"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown output `logits`"),
    "unknown datatype": (lambda: raw_request(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype `FLOAT`"),
}


@pytest.mark.parametrize("case", GRPC_CASES)
def test_grpc_errors(server, case):
    make, code, fragment = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as raised:
        grpc_call(server, make())
    assert raised.value.code() == code, raised.value.details()
    assert fragment in raised.value.details()


def test_grpc_typed_contents_work(server):
    from reference import expected

    request, tensor = typed_contents_request()
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    response = grpc_call(server, request)
    assert list(response.outputs[0].shape) == [1, 10]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 10)
    np.testing.assert_allclose(got, expected("mlp", {"input": x})["output"], rtol=1e-5, atol=1e-6)


def test_grpc_malformed_message(server):
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff\xff", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_message_over_limit(small_limits_server):
    request = raw_request(shape=(1100, 256))
    with pytest.raises(grpc.RpcError) as raised:
        grpc_call(small_limits_server, request)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()


def test_grpc_model_control_is_off_by_default(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(Exception) as raised:
        client.unload_model("mlp")
    assert "PERMISSION_DENIED" in str(raised.value.status())


def test_still_serving_after_errors(server, small_limits_server):
    for s in (server, small_limits_server):
        response = post(s, "/v2/models/mlp/infer", {"inputs": [MLP_INPUT]})
        assert response.status_code == 200, response.text
        assert len(response.json()["outputs"][0]["data"]) == 10
        reply = grpc_call(s, raw_request())
        assert len(reply.raw_output_contents[0]) == 40


def test_model_control_refuses_unknown_parameters_alike_on_both_protocols(tmp_path):
    """One rule for both edges: `unload_dependents` is taken, anything else refused."""
    import shutil

    import tritonclient.http as httpclient

    from conftest import MODELS, Server

    for model in ("mlp", "iris"):
        shutil.copytree(MODELS / model, tmp_path / model)
    server = Server("--enable-model-control", repository=tmp_path)
    try:
        response = post(server, "/v2/repository/models/iris/unload", {"parameters": {"bogus": True}})
        assert_error(response, 400, "parameter `bogus` is not supported")
        request = service_pb2.RepositoryModelUnloadRequest(model_name="iris")
        request.parameters["bogus"].bool_param = True
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.RepositoryModelUnload(request, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "parameter `bogus` is not supported" in raised.value.details()
            load = service_pb2.RepositoryModelLoadRequest(model_name="iris")
            load.parameters["config"].string_param = "{}"
            with pytest.raises(grpc.RpcError) as raised:
                stub.RepositoryModelLoad(load, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Still loaded: the refused calls changed nothing.
        assert grpcclient.InferenceServerClient(server.grpc).is_model_ready("iris")
        # What tritonclient sends is taken on both.
        grpcclient.InferenceServerClient(server.grpc).unload_model("iris", unload_dependents=True)
        assert not httpclient.InferenceServerClient(server.http).is_model_ready("iris")
        grpcclient.InferenceServerClient(server.grpc).load_model("iris")
        httpclient.InferenceServerClient(server.http).unload_model("iris", unload_dependents=True)
        assert not httpclient.InferenceServerClient(server.http).is_model_ready("iris")
    finally:
        assert server.stop() == 0
