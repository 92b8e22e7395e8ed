"""Zero-size tensors and hostile config files: every request gets a prompt,
defined answer, and nothing a request or a file carries can pin a queue or
take the process down.

Zero-size inputs are a valid batch: the answer is 200 with zero-size outputs
of the right shapes and types (what ONNX Runtime returns for an empty batch),
on HTTP JSON, HTTP binary and gRPC, batching on and off."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import requests
import grpc
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from conftest import MODELS, Server
from lifecycle_helpers import index, wait_for

# Every datatype numpy (and so tritonclient) can carry; BF16 has no numpy type.
DATATYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
PROTOCOLS = ["http_json", "http_binary", "grpc"]
# An answer (of any kind) must come within this; a hang fails the test.
ANSWER_WITHIN_S = 10.0
BATCHING = "max_batch_size: 8\ndynamic_batching: {max_queue_delay_us: 2000}\n"


def identity_model(onnx_type: int) -> bytes:
    """y = x for a [N, M] tensor with both dims variable (zero allowed anywhere)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", onnx_type, ["N", "M"])],
        [helper.make_tensor_value_info("y", onnx_type, ["N", "M"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_model(root, name: str, data: bytes, config: str | None = None) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.onnx").write_bytes(data)
    if config is not None:
        (root / name / "config.yaml").write_text(config)


@pytest.fixture(scope="module")
def zero_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-size")
    for datatype, onnx_type in DATATYPES.items():
        data = identity_model(onnx_type)
        write_model(root, f"id_{datatype.lower()}", data)
        write_model(root, f"id_{datatype.lower()}_batched", data, BATCHING)
    mlp = (MODELS / "mlp" / "1" / "model.onnx").read_bytes()
    write_model(root, "mlp", mlp)
    write_model(root, "mlp_batched", mlp, "max_batch_size: 64\ndynamic_batching: {max_queue_delay_us: 500}\n")
    typed = (MODELS / "typed" / "1" / "model.onnx").read_bytes()
    write_model(root, "typed_batched", typed, "max_batch_size: 8\ndynamic_batching: {}\n")
    return root


@pytest.fixture(scope="module")
def zero_server(zero_repo):
    s = Server(repository=zero_repo)
    yield s
    assert s.stop() == 0


def values(datatype: str, shape: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([f"s{v}".encode() for v in rng.integers(0, 1000, count)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, count).astype(np.bool_).reshape(shape)
    # Small integers (quarters for floats): exact in every type and in JSON.
    raw = rng.integers(0, 100, count)
    if datatype.startswith("FP"):
        return (raw / 4).astype(triton_to_np_dtype(datatype)).reshape(shape)
    return raw.astype(triton_to_np_dtype(datatype)).reshape(shape)


def infer(server, protocol: str, model: str, tensors: dict[str, tuple[str, np.ndarray]]):
    """Sends one request; returns ("ok", {name: array}) or ("error", (status, message))."""
    try:
        if protocol == "grpc":
            client = grpcclient.InferenceServerClient(server.grpc)
            inputs = []
            for name, (datatype, array) in tensors.items():
                tensor = grpcclient.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer(model, inputs, client_timeout=ANSWER_WITHIN_S)
        else:
            client = httpclient.InferenceServerClient(server.http, network_timeout=ANSWER_WITHIN_S, connection_timeout=ANSWER_WITHIN_S)
            inputs = []
            for name, (datatype, array) in tensors.items():
                tensor = httpclient.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array, binary_data=protocol == "http_binary")
                inputs.append(tensor)
            outputs = None
            if protocol == "http_binary":
                outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=True) for o in client.get_model_metadata(model)["outputs"]]
            result = client.infer(model, inputs, outputs=outputs)
        names = [o["name"] if isinstance(o, dict) else o.name for o in result.get_response(**({"as_json": True} if protocol == "grpc" else {}))["outputs"]]
        return "ok", {name: result.as_numpy(name) for name in names}
    except InferenceServerException as err:
        return "error", (str(err.status()), err.message())


def assert_answer_is_defined(outcome, what: str) -> None:
    kind, detail = outcome
    if kind == "error":
        status, message = detail
        # A client mistake is a 4xx / INVALID_ARGUMENT; a hang or a server fault is never acceptable.
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), f"{what}: {status} {message}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    datatype=st.sampled_from(sorted(DATATYPES)),
    batched=st.booleans(),
    protocol=st.sampled_from(PROTOCOLS),
    rows=st.sampled_from([0, 0, 1, 2, 5]),
    cols=st.sampled_from([0, 0, 1, 3]),
    sent_as=st.one_of(st.none(), st.sampled_from(sorted(DATATYPES))),
    seed=st.integers(0, 2**16),
)
def test_every_request_gets_a_defined_answer_and_the_model_keeps_serving(zero_server, datatype, batched, protocol, rows, cols, sent_as, seed):
    model = f"id_{datatype.lower()}" + ("_batched" if batched else "")
    sent = sent_as or datatype
    x = values(sent, [rows, cols], seed)
    what = f"{model} {protocol} {sent}{[rows, cols]}"
    started = time.monotonic()
    outcome = infer(zero_server, protocol, model, {"x": (sent, x)})
    assert time.monotonic() - started < ANSWER_WITHIN_S, what
    assert_answer_is_defined(outcome, what)
    if sent == datatype:
        assert outcome[0] == "ok", f"{what}: {outcome}"
        y = outcome[1]["y"]
        assert y.shape == (rows, cols), what
        np.testing.assert_array_equal(y, x)
    else:
        assert outcome[0] == "error", f"{what} was accepted"
        assert "expected datatype" in outcome[1][1], outcome
    # The model is not left holding anything: a correct request is served at once.
    good = values(datatype, [1, 2], seed)
    started = time.monotonic()
    kind, result = infer(zero_server, protocol, model, {"x": (datatype, good)})
    assert kind == "ok" and time.monotonic() - started < 2.0, (what, kind, result)
    np.testing.assert_array_equal(result["y"], good)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["mlp", "mlp_batched"])
def test_zero_rows_give_zero_row_outputs_of_the_right_type(zero_server, protocol, model):
    kind, outputs = infer(zero_server, protocol, model, {"input": ("FP32", np.zeros((0, 256), np.float32))})
    assert kind == "ok", outputs
    assert outputs["output"].shape == (0, 10) and outputs["output"].dtype == np.float32


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_typed_input_empty_and_mixed_rows(zero_server, protocol):
    empty = {
        "ids": ("INT64", np.zeros((0, 4), np.int64)),
        "mask": ("BOOL", np.zeros((0, 4), np.bool_)),
        "half": ("FP16", np.zeros((0, 4), np.float16)),
        "text": ("BYTES", np.zeros((0, 1), object)),
    }
    kind, outputs = infer(zero_server, protocol, "typed_batched", empty)
    assert kind == "ok", outputs
    assert {name: (a.shape, a.dtype.kind) for name, a in outputs.items()} == {
        "ids_doubled": ((0, 4), "i"),
        "mask_inverted": ((0, 4), "b"),
        "half_scaled": ((0, 4), "f"),
        "text_copy": ((0, 1), "O"),
    }
    # Zero rows in one input and one row in another: the batch dims disagree.
    mixed = {**empty, "mask": ("BOOL", np.ones((1, 4), np.bool_))}
    kind, (status, message) = infer(zero_server, protocol, "typed_batched", mixed)
    assert kind == "error" and "different batch dimensions" in message, message


def test_a_flood_of_zero_row_requests_leaves_the_model_serving(zero_server):
    """The regression: ~1,000 zero-row gRPC calls used to fill the queue for good."""
    empty = np.zeros((0, 256), np.float32)
    x = np.random.default_rng(0).random((1, 256), dtype=np.float32)

    def zero_rows(model: str) -> str:
        client = grpcclient.InferenceServerClient(zero_server.grpc)
        tensor = grpcclient.InferInput("input", [0, 256], "FP32")
        tensor.set_data_from_numpy(empty)
        try:
            return str(client.infer(model, [tensor], client_timeout=30).as_numpy("output").shape)
        except InferenceServerException as err:
            return f"{err.status()}: {err.message()}"

    for model in ["mlp", "mlp_batched"]:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(zero_rows, [model] * 1200))
        assert set(answers) == {"(0, 10)"}, {a: answers.count(a) for a in set(answers)}
        client = grpcclient.InferenceServerClient(zero_server.grpc)
        tensor = grpcclient.InferInput("input", [1, 256], "FP32")
        tensor.set_data_from_numpy(x)
        started = time.monotonic()
        assert client.infer(model, [tensor], client_timeout=5).as_numpy("output").shape == (1, 10)
        assert time.monotonic() - started < 1.0
    metrics = requests.get(f"http://{zero_server.metrics}/metrics", timeout=10).text
    depths = [line for line in metrics.splitlines() if line.startswith("switchyard_queue_depth{") and 'model="mlp' in line]
    assert depths and all(line.endswith(" 0") for line in depths), depths


HOSTILE_CONFIGS = {
    # name: (file, content, fragment of the reason)
    # 200,000 levels in 600 KB (under the size bound, so the parser meets it).
    "deep": ("config.pbtxt", b"p{" * 200_000 + b"}" * 200_000, "nest more than 32"),
    "huge": ("config.pbtxt", None, "larger than 1048576 bytes"),
    "not_utf8": ("config.pbtxt", b'name: "\xff\xfe"\nmax_batch_size: 8\n', "not UTF-8"),
    "huge_number": ("config.pbtxt", b"max_batch_size: 99999999999999999999999\n", "must be a 64-bit integer"),
    "out_of_range": ("config.pbtxt", b"instance_group [ { count: 4294967296 } ]\n", "between 0 and 4294967295"),
    "deep_yaml": ("config.yaml", b"a: " + b"[" * 300_000 + b"]" * 300_000, "nest more than 64"),
}


def write_hostile(root, name: str) -> None:
    file, content, _ = HOSTILE_CONFIGS[name]
    model = root / name
    (model / "1").mkdir(parents=True)
    shutil.copy(MODELS / "mlp" / "1" / "model.onnx", model / "1" / "model.onnx")
    path = model / file
    if content is None:
        # 100 MB of comments: a parser that reads it all would hold it all.
        with path.open("wb") as f:
            line = b"# " + b"x" * 1022 + b"\n"
            for _ in range(100 * 1024):
                f.write(line)
    else:
        path.write_bytes(content)


def test_hostile_config_files_are_refused_while_everything_else_serves(tmp_path):
    shutil.copytree(MODELS / "mlp", tmp_path / "mlp")
    server = Server("--repository-poll-interval", "200ms", "--exit-on-error=false", repository=tmp_path)
    try:
        for name in HOSTILE_CONFIGS:
            write_hostile(tmp_path, name)
        # A new version first settles (its files may still be copying), then its
        # config is read: wait for every model's final reason, not its first state.
        def refused():
            rows = index(server.http)
            reasons = {row["name"]: row.get("reason", "") for row in rows if row.get("state") == "UNAVAILABLE"}
            done = all(fragment in reasons.get(name, "") for name, (_, _, fragment) in HOSTILE_CONFIGS.items())
            return rows if done else None

        rows = wait_for(refused, 30, "every hostile config refused in the index, with its reason")
        reasons = {row["name"]: row.get("reason", "") for row in rows}
        for name, (_, _, fragment) in HOSTILE_CONFIGS.items():
            assert fragment in reasons[name], (name, reasons[name][:300])
        assert server.process.poll() is None, "the server must not exit"
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.25] * 256}]}
        reply = requests.post(f"http://{server.http}/v2/models/mlp/infer", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        ready = requests.get(f"http://{server.http}/v2/models/deep/ready", timeout=10)
        assert ready.status_code != 200
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("name", ["deep", "huge"])
def test_a_hostile_config_at_start_up_is_a_clean_refusal(tmp_path, name):
    write_hostile(tmp_path, name)
    # Exit on error (the default): a clear exit code and reason, never an abort.
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        Server(repository=tmp_path)
    assert HOSTILE_CONFIGS[name][2] in str(failed.value)


# gRPC typed `contents` fields by datatype (FP16/BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


@pytest.mark.parametrize("datatype", sorted(CONTENTS_FIELD))
@pytest.mark.parametrize("rows", [0, 3])
def test_grpc_typed_contents_carry_exact_values(zero_server, datatype, rows):
    x = values(datatype, [rows, 2], seed=rows)
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", datatype
    tensor.shape.extend([rows, 2])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(x.flatten().tolist())
    with grpc.insecure_channel(zero_server.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=ANSWER_WITHIN_S)
    assert list(response.outputs[0].shape) == [rows, 2]
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        got, offset = [], 0
        while offset < len(raw):
            size = int.from_bytes(raw[offset:offset + 4], "little")
            got.append(raw[offset + 4:offset + 4 + size])
            offset += 4 + size
        assert got == x.flatten().tolist()
    else:
        got = np.frombuffer(raw, dtype=np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")).reshape(rows, 2)
        np.testing.assert_array_equal(got, x)
