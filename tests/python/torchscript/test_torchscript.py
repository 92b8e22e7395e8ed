"""The libtorch runtime (`--features torch` build) against PyTorch in Python.

Run by `make test` in its TorchScript pass, with .venv-torch (PyTorch 2.11.0
imported from the very libtorch unpack the binary was built against) and a
binary built with the feature. Every value is compared with what `torch.jit.load` of the same file
computes here on the same inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import BINARY, MODELS, Server
from reference import TRITON_DTYPES

TORCH_MODELS = MODELS / "torch"
DTYPES = {**TRITON_DTYPES, np.dtype(np.float64): "FP64"}
torch.set_num_threads(1)
# PyTorch 2.11 marks TorchScript deprecated in favour of torch.export; tch reads TorchScript only.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.fixture(scope="module")
def server():
    s = Server(repository=TORCH_MODELS)
    yield s
    assert s.stop() == 0


def reference(model: str, *args: np.ndarray):
    module = torch.jit.load(str(TORCH_MODELS / model / "1" / "model.pt"))
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in args])


def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray]):
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc)
        module = grpcclient
    else:
        client = httpclient.InferenceServerClient(server.http)
        module = httpclient
    tensors = []
    for name, value in inputs.items():
        tensor = module.InferInput(name, list(value.shape), DTYPES[value.dtype])
        if protocol == "grpc":
            tensor.set_data_from_numpy(value)
        else:
            tensor.set_data_from_numpy(value, binary_data=protocol == "http-binary")
        tensors.append(tensor)
    return client.infer(model, tensors)


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_mlp_tuple_outputs_match_pytorch(server, protocol, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 256)).astype(np.float32)
    logits, probabilities = reference("mlp_torch", x)
    result = infer(server, protocol, "mlp_torch", {"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities.numpy(), rtol=1e-5, atol=1e-6)


def test_mlp_torch_computes_what_the_onnx_sample_does(server):
    # The same weights in both formats: libtorch and ONNX Runtime agree.
    import onnxruntime

    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(MODELS / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (want,) = session.run(["output"], {"input": x})
    got = infer(server, "grpc", "mlp_torch", {"input": x}).as_numpy("output")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet18_matches_pytorch(server, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    want = reference("resnet18", x).numpy()
    got = infer(server, "grpc", "resnet18", {"input": x}).as_numpy("output")
    assert got.shape == (batch, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def to_bf16_bytes(values: np.ndarray) -> bytes:
    # Values chosen to be exact in bfloat16, so truncation is the conversion.
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def from_bf16_bytes(data: bytes) -> np.ndarray:
    return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def test_typed_dict_outputs_over_binary_http(server):
    """INT64, BOOL, FP16 and BF16 in; a dict out, named by key. Raw binary
    extension request, since numpy has no bfloat16 for the client to use."""
    rng = np.random.default_rng(0)
    ids = rng.integers(-(2**40), 2**40, (2, 4), dtype=np.int64)
    mask = rng.integers(0, 2, (2, 4)).astype(bool)
    half = rng.standard_normal((2, 4)).astype(np.float16)
    brain = np.array([[1.5, -2.0, 0.25, 3.0], [0.0, -0.5, 8.0, 1.0]], dtype=np.float32)
    parts = [ids.tobytes(), mask.tobytes(), half.tobytes(), to_bf16_bytes(brain)]
    names = ["ids", "mask", "half", "brain"]
    types = ["INT64", "BOOL", "FP16", "BF16"]
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": t, "shape": [2, 4], "parameters": {"binary_data_size": len(p)}}
                for n, t, p in zip(names, types, parts)
            ],
            "outputs": [
                {"name": n, "parameters": {"binary_data": True}}
                for n in ["ids_doubled", "mask_inverted", "half_scaled", "brain_doubled"]
            ],
        }
    ).encode()
    response = requests.post(
        f"http://{server.http}/v2/models/typed_torch/infer",
        data=header + b"".join(parts),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:length])
    body = response.content[length:]
    outputs = {}
    offset = 0
    for out in meta["outputs"]:
        size = out["parameters"]["binary_data_size"]
        outputs[out["name"]] = (out["datatype"], body[offset : offset + size])
        offset += size
    # The reference gets brain as FP32: numpy has no bfloat16 (its values are exact in both).
    want = reference("typed_torch", ids, mask, half, brain)
    assert outputs["ids_doubled"][0] == "INT64"
    np.testing.assert_array_equal(np.frombuffer(outputs["ids_doubled"][1], "<i8").reshape(2, 4), want["ids_doubled"].numpy())
    assert outputs["mask_inverted"][0] == "BOOL"
    np.testing.assert_array_equal(np.frombuffer(outputs["mask_inverted"][1], np.bool_).reshape(2, 4), ~mask)
    assert outputs["half_scaled"][0] == "FP16"
    np.testing.assert_array_equal(np.frombuffer(outputs["half_scaled"][1], "<f2").reshape(2, 4), want["half_scaled"].numpy())
    assert outputs["brain_doubled"][0] == "BF16"
    np.testing.assert_array_equal(from_bf16_bytes(outputs["brain_doubled"][1]).reshape(2, 4), want["brain_doubled"].numpy())


def test_concurrent_rows_are_batched_and_stay_row_exact(server):
    """32 clients at once: each gets PyTorch's answer for its own rows while
    the batcher merges them (fewer runs than requests)."""

    def metric_sum(name: str) -> float:
        text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and 'model="mlp_torch"' in line
        )

    before_runs = metric_sum("switchyard_batch_size_count")
    rows = [np.random.default_rng(100 + i).standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(96)]

    def one(x):
        client = grpcclient.InferenceServerClient(server.grpc)
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("mlp_torch", [tensor]).as_numpy("output")

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, rows))
    for x, got in zip(rows, results):
        np.testing.assert_allclose(got, reference("mlp_torch", x)[0].numpy(), rtol=1e-5, atol=1e-5)
    runs = metric_sum("switchyard_batch_size_count") - before_runs
    assert 0 < runs < len(rows), f"{runs} runs for {len(rows)} requests: nothing was batched"


def test_triton_config_and_positional_names(server):
    meta = requests.get(f"http://{server.http}/v2/models/guarded", timeout=10).json()
    assert meta["platform"] == "pytorch_libtorch"
    assert [t["name"] for t in meta["inputs"]] == ["INPUT__0"]
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    result = infer(server, "http-json", "guarded", {"INPUT__0": x})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x * 2)


@pytest.mark.parametrize("protocol", ["http-json", "grpc"])
def test_failing_forward_is_a_clear_error_and_the_model_keeps_serving(server, protocol):
    bad = np.array([[1.0, 2000.0, 3.0, 4.0]], dtype=np.float32)
    with pytest.raises(InferenceServerException) as raised:
        infer(server, protocol, "guarded", {"INPUT__0": bad})
    assert "at most 1000" in str(raised.value)
    status = str(raised.value.status())
    assert status in ("500", "StatusCode.INTERNAL"), status
    good = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(infer(server, protocol, "guarded", {"INPUT__0": good}).as_numpy("OUTPUT__0"), good * 2)


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_zero_rows_give_what_pytorch_gives(server, protocol):
    # An empty batch is a batch: zero-row outputs, the shapes and types PyTorch returns.
    x = np.zeros((0, 256), np.float32)
    logits, probabilities = reference("mlp_torch", x)
    result = infer(server, protocol, "mlp_torch", {"input": x})
    assert result.as_numpy("output").shape == tuple(logits.shape) == (0, 10)
    assert result.as_numpy("probabilities").shape == tuple(probabilities.shape)
    image = infer(server, protocol, "resnet18", {"input": np.zeros((0, 3, 224, 224), np.float32)})
    assert image.as_numpy("output").shape == (0, 1000)
    # The model keeps serving at once.
    one = np.ones((1, 256), np.float32)
    np.testing.assert_allclose(infer(server, protocol, "mlp_torch", {"input": one}).as_numpy("output"), reference("mlp_torch", one)[0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input": np.zeros((1, 255), np.float32)}, "shape"),
        ({"input": np.zeros((1, 256), np.float64)}, "FP64"),
        ({"input": np.zeros((129, 256), np.float32)}, "max_batch_size"),
    ],
)
def test_bad_inputs_are_refused_before_libtorch(server, inputs, message):
    with pytest.raises(InferenceServerException) as raised:
        infer(server, "http-json", "mlp_torch", inputs)
    assert str(raised.value.status()) == "400", raised.value
    assert message in str(raised.value), raised.value


def write_model(root: Path, name: str, config: str, source: str = "guarded") -> None:
    (root / name / "1").mkdir(parents=True)
    shutil.copy(TORCH_MODELS / source / "1" / "model.pt", root / name / "1" / "model.pt")
    (root / name / "config.yaml").write_text(config)


def test_unusable_models_show_why_and_the_rest_serve(tmp_path):
    base = "platform: pytorch_libtorch\nmax_batch_size: 8\ninputs: [{name: x, datatype: FP32, dims: [4]}]\noutputs: [{name: y, datatype: FP32, dims: [4]}]\n"
    write_model(tmp_path, "ok", base)
    write_model(tmp_path, "on_gpu", base + "torch: {device: 'cuda:0'}\n")
    write_model(tmp_path, "wrong_outputs", base.replace("outputs: [{name: y, datatype: FP32, dims: [4]}]", "outputs: [{name: y, datatype: FP32, dims: [4]}, {name: z, datatype: FP32, dims: [4]}]"))
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.pt").write_bytes(b"PK\x03\x04 not really a zip archive")
    (tmp_path / "corrupt" / "config.yaml").write_text(base)
    (tmp_path / "exported" / "1").mkdir(parents=True)
    exported = torch.export.export(torch.nn.Identity(), (torch.ones(2, 4),))
    torch.export.save(exported, str(tmp_path / "exported" / "1" / "model.pt"))
    (tmp_path / "exported" / "config.yaml").write_text(base)
    s = Server("--exit-on-error=false", repository=tmp_path)
    try:
        index = {m["name"]: m for m in requests.post(f"http://{s.http}/v2/repository/index", timeout=10).json()}
        assert index["ok"]["state"] == "READY"
        assert index["on_gpu"]["state"] == "UNAVAILABLE"
        assert "cuda:0 is not available" in index["on_gpu"]["reason"], index["on_gpu"]
        assert index["corrupt"]["state"] == "UNAVAILABLE"
        reason = index["corrupt"]["reason"]
        assert "not a loadable TorchScript module" in reason and "failed finding central directory" in reason, reason
        assert "frame #" not in reason, "C++ backtraces stay out of the reason"
        assert index["exported"]["state"] == "UNAVAILABLE"
        assert "torch.export .pt2 archive" in index["exported"]["reason"], index["exported"]
        # One tensor back where two are declared: caught by the warm-up, not by a client.
        assert index["wrong_outputs"]["state"] == "UNAVAILABLE"
        assert "declares 2 output(s)" in index["wrong_outputs"]["reason"], index["wrong_outputs"]
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(infer(s, "grpc", "ok", {"x": x}).as_numpy("y"), x * 2)
    finally:
        assert s.stop() == 0


def torch_info(env_extra: dict) -> dict:
    env = {**os.environ, **env_extra}
    out = subprocess.run([str(BINARY), "torch-info"], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def full_install_library_path() -> str:
    """torch/lib and the nvidia-* wheels' lib folders this Python imports
    torch with: the libraries of a full PyTorch 2.11 install."""
    folders = [Path(torch.__file__).parent / "lib"]
    for entry in dict.fromkeys(map(Path, sys.path)):
        folders += sorted(entry.glob("nvidia/*/lib"))
    return ":".join(map(str, folders))


def test_binary_loads_libtorch_cuda_part_when_present():
    """The regression that silently loses CUDA (libtorch_cuda.so dropped at
    link time) shows on a CPU-only machine too: with a full PyTorch install on
    the library path the CUDA part must load (no driver here, so no devices)."""
    info = torch_info({"LD_LIBRARY_PATH": full_install_library_path()})
    assert info["cuda_part_loaded"] is True, info
    assert info["cuda_part_error"] is None
    assert info["cuda_available"] is (torch.cuda.is_available())
    # Built against a libtorch with CUDA support: each CUDA instance gets its own stream.
    assert info["stream_per_instance"] is True
    # With the lean CPU set the CUDA part cannot load (no cuDNN etc.): CPU only, with the reason.
    lean = torch_info({"LD_LIBRARY_PATH": ""})
    assert lean["cuda_part_loaded"] is False
    assert ".so" in lean["cuda_part_error"]
    assert lean["intra_op_threads"] == 1


def test_torchscript_models_come_from_s3_too(tmp_path):
    """model.pt objects are listed and fetched like model.onnx (a real moto server)."""
    from services import AWS, s3_bucket, start_moto

    moto, endpoint = start_moto()
    try:
        s3 = s3_bucket(endpoint, "models")
        for name in ["config.yaml", "1/model.pt"]:
            s3.put_object(Bucket="models", Key=f"prod/mlp_torch/{name}",
                          Body=(TORCH_MODELS / "mlp_torch" / name).read_bytes())
        env = {**AWS, "AWS_ENDPOINT_URL": endpoint}
        s = Server("--model-cache-dir", str(tmp_path / "cache"), repository="s3://models/prod", env=env)
        try:
            x = np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)
            got = infer(s, "grpc", "mlp_torch", {"input": x}).as_numpy("output")
            np.testing.assert_allclose(got, reference("mlp_torch", x)[0].numpy(), rtol=1e-5, atol=1e-5)
            assert list((tmp_path / "cache" / "s3").glob("*/model.pt"))
        finally:
            assert s.stop() == 0
    finally:
        moto.stop()
