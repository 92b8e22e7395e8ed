"""tritonclient (HTTP JSON, HTTP binary, gRPC) against the real binary; every
output is checked against onnxruntime run in Python on the same input."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from reference import TRITON_DTYPES, assert_output_matches, expected, inputs_for, triton_inputs

MODELS = ["mlp", "iris", "typed"]
BATCHES = [1, 7, 64]
PROTOCOLS = ["http-json", "http-binary", "grpc"]


def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None):
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc)
        tensors = triton_inputs(grpcclient, inputs)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        result = client.infer(model, tensors, outputs=requested, request_id="req-42")
        assert result.get_response().id == "req-42"
        return result
    binary = protocol == "http-binary"
    client = httpclient.InferenceServerClient(server.http)
    tensors = triton_inputs(httpclient, inputs, binary)
    requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    result = client.infer(model, tensors, outputs=requested, request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    return result


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", MODELS)
def test_outputs_match_onnxruntime(server, model, batch, protocol):
    inputs = inputs_for(model, batch)
    want = expected(model, inputs)
    # Ask for the outputs explicitly so the binary choice applies to each one.
    result = infer(server, protocol, model, inputs, outputs=list(want))
    for name, value in want.items():
        assert_output_matches(name, result.as_numpy(name), value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_all_outputs_returned_when_none_requested(server, protocol):
    inputs = inputs_for("iris", 3)
    result = infer(server, protocol, "iris", inputs)
    want = expected("iris", inputs)
    for name, value in want.items():
        assert_output_matches(name, result.as_numpy(name), value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requested_output_subset(server, protocol):
    inputs = inputs_for("iris", 5)
    result = infer(server, protocol, "iris", inputs, outputs=["probabilities"])
    assert result.as_numpy("label") is None
    assert_output_matches("probabilities", result.as_numpy("probabilities"), expected("iris", inputs)["probabilities"])


@pytest.mark.parametrize("protocol", ["http-binary", "grpc"])
def test_four_mib_request(server, protocol):
    inputs = {"input": np.random.default_rng(7).standard_normal((4096, 256)).astype(np.float32)}
    assert inputs["input"].nbytes == 4 << 20
    result = infer(server, protocol, "mlp", inputs, outputs=["output"])
    assert_output_matches("output", result.as_numpy("output"), expected("mlp", inputs)["output"])


def test_versioned_inference_and_metadata(server):
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert http.is_model_ready("mlp", "1") and grpc.is_model_ready("mlp", "1")
    meta = http.get_model_metadata("mlp", "1")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}]
    assert meta["platform"] == "onnxruntime_onnx"
    gmeta = grpc.get_model_metadata("typed")
    assert [(t.name, t.datatype) for t in gmeta.inputs] == [("ids", "INT64"), ("mask", "BOOL"), ("half", "FP16"), ("text", "BYTES")]
    server_meta = http.get_server_metadata()
    assert server_meta["name"] == "switchyard" and "binary_tensor_data" in server_meta["extensions"]
    tensor = httpclient.InferInput("input", [1, 256], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 256), np.float32), binary_data=True)
    result = http.infer("mlp", [tensor], model_version="1")
    assert result.get_response()["model_version"] == "1"


def test_repository_index_on_both_protocols(server):
    # The samples, and the pipeline over three of them (models/triton is a repository of its own, not listed).
    bundled = {(name, "READY") for name in ["mlp", "iris", "typed", "normalize", "topk", "mlp_pipeline"]}
    http_index = httpclient.InferenceServerClient(server.http).get_model_repository_index()
    assert {(m["name"], m["state"]) for m in http_index} == bundled
    grpc_index = grpcclient.InferenceServerClient(server.grpc).get_model_repository_index()
    assert {(m.name, m.state) for m in grpc_index.models} == bundled


def test_typed_exact_values_over_json(server):
    client = httpclient.InferenceServerClient(server.http)
    values = {
        "ids": np.array([[1, -2, 2**40, -(2**40)]], dtype=np.int64),
        "mask": np.array([[True, False, False, True]]),
        "half": np.array([[0.5, -1.0, 65504.0, 0.0]], dtype=np.float16),
        "text": np.array([["héllo wörld".encode()]], dtype=np.object_),
    }
    tensors = []
    for name, value in values.items():
        t = httpclient.InferInput(name, list(value.shape), TRITON_DTYPES[value.dtype])
        t.set_data_from_numpy(value, binary_data=False)
        tensors.append(t)
    result = client.infer("typed", tensors)
    np.testing.assert_array_equal(result.as_numpy("ids_doubled"), values["ids"] * 2)
    np.testing.assert_array_equal(result.as_numpy("mask_inverted"), ~values["mask"])
    np.testing.assert_array_equal(result.as_numpy("half_scaled"), values["half"] * np.float16(0.5))
    assert [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("text_copy").flatten()] == ["héllo wörld".encode()]
