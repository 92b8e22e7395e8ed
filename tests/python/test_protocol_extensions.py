"""Parts of the protocol clients call besides inference: the model
configuration over both protocols (one answer), the Open Inference Protocol's
health bodies, exact FP64 JSON values, and clear messages for typed contents
of the wrong kind."""

from __future__ import annotations

import grpc
import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import MODELS, Server


def batching_repo(tmp_path):
    import shutil

    shutil.copytree(MODELS / "mlp", tmp_path / "mlp")
    (tmp_path / "mlp" / "config.yaml").write_text(
        "max_batch_size: 64\ninstance_count: 2\nversion_policy: {latest: 1}\n"
        "queue: {capacity: 128, priority_levels: 2, default_priority: 2, default_timeout_us: 50000}\n"
        "dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [16, 32]}\n"
    )
    shutil.copytree(MODELS / "iris", tmp_path / "iris")
    return tmp_path


def test_get_model_config_works_on_both_protocols_with_one_answer(tmp_path):
    server = Server(repository=batching_repo(tmp_path))
    try:
        over_grpc = grpcclient.InferenceServerClient(server.grpc).get_model_config("mlp", as_json=True)["config"]
        over_http = httpclient.InferenceServerClient(server.http).get_model_config("mlp")
        assert over_grpc["name"] == over_http["name"] == "mlp"
        assert over_grpc["platform"] == over_http["platform"] == "onnxruntime_onnx"
        assert over_grpc["backend"] == over_http["backend"] == "onnxruntime"
        assert over_grpc["max_batch_size"] == over_http["max_batch_size"] == 64
        # protobuf JSON writes int64 as strings; the values are the same.
        assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in over_grpc["input"]] == \
               [(i["name"], i["data_type"], i["dims"]) for i in over_http["input"]] == [("input", "TYPE_FP32", [256])]
        assert [(o["name"], [int(d) for d in o["dims"]]) for o in over_grpc["output"]] == [("output", [10])]
        assert over_grpc["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
        assert over_http["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        batching = over_grpc["dynamic_batching"]
        assert batching["preferred_batch_size"] == [16, 32] == over_http["dynamic_batching"]["preferred_batch_size"]
        assert int(batching["max_queue_delay_microseconds"]) == 500
        assert int(batching["default_queue_policy"]["max_queue_size"]) == 128
        assert over_grpc["version_policy"] == {"latest": {"num_versions": 1}} == over_http["version_policy"]
        # The message tritonclient parses is Triton's own: every field lands where Triton puts it.
        message = grpcclient.InferenceServerClient(server.grpc).get_model_config("mlp").config
        assert message.max_batch_size == 64 and message.dynamic_batching.max_queue_delay_microseconds == 500
        # Unknown models and versions are NOT_FOUND, as for metadata.
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for request in [service_pb2.ModelConfigRequest(name="nope"), service_pb2.ModelConfigRequest(name="mlp", version="9")]:
                try:
                    stub.ModelConfig(request, timeout=10)
                    raise AssertionError("an unknown model has no config")
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND, err
        unbatched = json_format.MessageToDict(
            grpcclient.InferenceServerClient(server.grpc).get_model_config("iris").config, preserving_proto_field_name=True)
        assert "dynamic_batching" not in unbatched and unbatched.get("max_batch_size", 0) == 0
    finally:
        assert server.stop() == 0


def test_health_bodies_follow_the_open_inference_protocol(server):
    live = requests.get(f"http://{server.http}/v2/health/live", timeout=10)
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = requests.get(f"http://{server.http}/v2/health/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    model = requests.get(f"http://{server.http}/v2/models/mlp/ready", timeout=10)
    assert (model.status_code, model.json()) == (200, {"name": "mlp", "ready": True})
    versioned = requests.get(f"http://{server.http}/v2/models/mlp/versions/1/ready", timeout=10)
    assert versioned.json() == {"name": "mlp", "ready": True}
    # tritonclient reads only the status codes.
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")


def test_a_not_ready_model_says_so_in_the_body(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    server = Server("--exit-on-error=false", repository=tmp_path)
    try:
        model = requests.get(f"http://{server.http}/v2/models/broken/ready", timeout=10)
        assert (model.status_code, model.json()) == (503, {"name": "broken", "ready": False})
        ready = requests.get(f"http://{server.http}/v2/health/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
    finally:
        assert server.stop() == 0


def test_typed_contents_of_the_wrong_kind_name_the_mismatch(server):
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([1, 256])
    tensor.contents.int64_contents.extend([1] * 256)
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, timeout=10)
            raise AssertionError("int64_contents for an FP32 input must be refused")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "contents.fp32_contents" in err.details() and "contents.int64_contents" in err.details(), err.details()


def test_fp64_json_values_come_back_exactly(tmp_path):
    from onnx import TensorProto

    from test_zero_size import identity_model, write_model

    write_model(tmp_path, "id_fp64", identity_model(TensorProto.DOUBLE))
    server = Server(repository=tmp_path)
    try:
        x = np.random.default_rng(7).standard_normal((4, 64)) * 10.0 ** np.random.default_rng(8).integers(-300, 300, (4, 64))
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [4, 64], "data": x.flatten().tolist()}]}
        reply = requests.post(f"http://{server.http}/v2/models/id_fp64/infer", json=body, timeout=10).json()
        got = np.array(reply["outputs"][0]["data"], dtype=np.float64)
        assert np.array_equal(got, x.flatten()), np.flatnonzero(got != x.flatten())[:5]
    finally:
        assert server.stop() == 0


def test_compressed_requests_and_responses_with_tritonclient(server):
    from reference import expected

    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    want = expected("mlp", {"input": x})["output"]
    http = httpclient.InferenceServerClient(server.http)
    for algorithm in ("gzip", "deflate"):
        for binary in (True, False):
            tensor = httpclient.InferInput("input", [3, 256], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = http.infer("mlp", [tensor], request_compression_algorithm=algorithm,
                                response_compression_algorithm=algorithm)
            np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-5, atol=1e-6)
    grpc_client = grpcclient.InferenceServerClient(server.grpc)
    for algorithm in ("gzip", "deflate"):
        tensor = grpcclient.InferInput("input", [3, 256], "FP32")
        tensor.set_data_from_numpy(x)
        result = grpc_client.infer("mlp", [tensor], compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-5, atol=1e-6)
    # The response is compressed only when asked for.
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]}
    plain = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=body, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers
    packed = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=body, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert packed.headers["Content-Encoding"] == "gzip" and packed.json()["outputs"][0]["shape"] == [1, 10]
    unknown = requests.post(f"http://{server.http}/v2/models/mlp/infer", data=b"x", headers={"Content-Encoding": "br"}, timeout=10)
    assert unknown.status_code == 400 and "Content-Encoding" in unknown.json()["error"]


def test_zip_bombs_are_refused_with_memory_bounded(small_limits_server):
    """10 KB bodies that inflate to 64 MiB, against a 1 MiB limit: 413 /
    RESOURCE_EXHAUSTED, and the server never holds the inflated size."""
    import gzip
    import zlib

    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    server = small_limits_server
    rss_before = rss_kib(server.process.pid)
    for _ in range(5):
        reply = requests.post(f"http://{server.http}/v2/models/mlp/infer", data=bomb,
                              headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}, timeout=30)
        assert reply.status_code == 413 and "decompressed" in reply.json()["error"], reply.text
    # gRPC: a ModelInfer message whose compressed frame inflates past the limit.
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([4096, 256])
    request.raw_input_contents.append(b"\0" * (4096 * 256 * 4))
    with grpc.insecure_channel(server.grpc, compression=grpc.Compression.Gzip,
                               options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            try:
                stub.ModelInfer(request, timeout=30)
                raise AssertionError("an inflated message over the limit must be refused")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    grown = rss_kib(server.process.pid) - rss_before
    assert grown < 48 * 1024, f"RSS grew {grown} KiB"
    # deflate too, over HTTP.
    reply = requests.post(f"http://{server.http}/v2/models/mlp/infer", data=zlib.compress(b"\0" * (64 << 20), 9),
                          headers={"Content-Encoding": "deflate"}, timeout=30)
    assert reply.status_code == 413, reply.text


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_inference_statistics_on_both_protocols(tmp_path):
    server = Server(repository=batching_repo(tmp_path))
    try:
        x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
        grpc_client = grpcclient.InferenceServerClient(server.grpc)
        http = httpclient.InferenceServerClient(server.http)
        before = http.get_inference_statistics("mlp")["model_stats"]
        assert [(s["name"], s["version"], s["inference_count"]) for s in before] == [("mlp", "1", 0)]
        for _ in range(4):
            tensor = grpcclient.InferInput("input", [3, 256], "FP32")
            tensor.set_data_from_numpy(x)
            grpc_client.infer("mlp", [tensor])
        bad = grpcclient.InferInput("input", [1, 256], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 256), np.float32))
        stats = http.get_inference_statistics("mlp")["model_stats"][0]
        # Each row counts as an inference (Triton's rule); four requests ran.
        assert stats["inference_count"] == 12 and stats["inference_stats"]["success"]["count"] == 4, stats
        assert 1 <= stats["execution_count"] <= 4
        assert stats["inference_stats"]["success"]["ns"] > 0 and stats["inference_stats"]["queue"]["count"] == 4
        assert stats["inference_stats"]["compute_infer"]["ns"] > 0 and stats["last_inference"] > 1_700_000_000_000
        assert {b["batch_size"] for b in stats["batch_stats"]} <= {3, 6, 9, 12}
        over_grpc = grpc_client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
        assert int(over_grpc["inference_count"]) == 12 and over_grpc["version"] == "1"
        everything = http.get_inference_statistics()["model_stats"]
        assert {s["name"] for s in everything} == {"mlp", "iris"}
        assert grpc_client.get_inference_statistics("mlp", "1").model_stats[0].inference_count == 12
        assert "statistics" in http.get_server_metadata()["extensions"]
        assert requests.get(f"http://{server.http}/v2/models/nope/stats", timeout=10).status_code == 404
    finally:
        assert server.stop() == 0
