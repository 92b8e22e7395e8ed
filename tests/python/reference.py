"""Inputs for the sample models and their expected outputs from onnxruntime in Python."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnxruntime

from conftest import MODELS


@lru_cache(maxsize=None)
def session(model: str) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(MODELS / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def inputs_for(model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + batch)
    if model == "mlp":
        return {"input": rng.standard_normal((batch, 256)).astype(np.float32)}
    if model == "iris":
        low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
        return {"input": rng.uniform(low, high, (batch, 4)).astype(np.float32)}
    if model == "typed":
        words = ["alpha", "βeta", "", "gamma delta", "日本"]
        return {
            "ids": rng.integers(-(2**40), 2**40, (batch, 4), dtype=np.int64),
            "mask": rng.integers(0, 2, (batch, 4)).astype(bool),
            "half": rng.standard_normal((batch, 4)).astype(np.float16),
            "text": np.array([[words[i % len(words)].encode()] for i in range(batch)], dtype=np.object_),
        }
    raise KeyError(model)


def expected(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model)
    feed = {}
    for name, value in inputs.items():
        # onnxruntime wants str elements for string tensors.
        feed[name] = np.vectorize(lambda b: b.decode())(value).astype(object) if value.dtype == np.object_ else value
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


TRITON_DTYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(bool): "BOOL",
    np.dtype(np.object_): "BYTES",
}


def triton_inputs(client_module, inputs: dict[str, np.ndarray], binary_data: bool | None = None) -> list:
    """tritonclient InferInputs (of `tritonclient.http` or `.grpc`) for `inputs`;
    `binary_data` is HTTP's choice of the binary extension."""
    tensors = []
    for name, value in inputs.items():
        tensor = client_module.InferInput(name, list(value.shape), TRITON_DTYPES[value.dtype])
        if binary_data is None:
            tensor.set_data_from_numpy(value)
        else:
            tensor.set_data_from_numpy(value, binary_data=binary_data)
        tensors.append(tensor)
    return tensors


def assert_output_matches(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got is not None, f"output {name} missing"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype == np.object_ or got.dtype == np.object_:
        as_bytes = lambda v: v if isinstance(v, bytes) else str(v).encode()
        assert [as_bytes(v) for v in got.flatten()] == [as_bytes(v) for v in want.flatten()], name
    elif want.dtype.kind == "f":
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    else:
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=name)
