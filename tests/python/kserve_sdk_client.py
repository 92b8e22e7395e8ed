"""Runs the KServe Python SDK's clients (kserve from PyPI, in its own venv:
.cache/bench/kserve) against a Switchyard; test_kserve_sdk.py starts it and
checks what it prints. Usage: kserve_sdk_client.py HTTP_ADDR GRPC_ADDR IN.npy OUT.json"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(http: str, grpc: str, x: np.ndarray) -> dict:
    out: dict = {}
    base = f"http://{http}"
    for key in ["rest"]:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        out[key] = {
            "live": await rest.is_server_live(base),
            "ready": await rest.is_server_ready(base),
            "model_ready": await rest.is_model_ready(base, "mlp"),
            "unknown_model_ready": await _ready_or_error(rest.is_model_ready(base, "nope")),
        }
        for binary in (False, True):
            tensor = InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name="mlp", infer_inputs=[tensor], request_id=f"{key}-{binary}")
            response = await rest.infer(base, request, model_name="mlp")
            out[key]["binary" if binary else "json"] = {
                "id": response.id,
                "model_name": response.model_name,
                "output": response.outputs[0].as_numpy().tolist(),
            }
        await rest.close()
    client = InferenceGRPCClient(grpc, retries=0)
    out["grpc"] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready("mlp"),
    }
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    response = await client.infer(InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="grpc-1"))
    out["grpc"]["infer"] = {"id": response.id, "output": response.outputs[0].as_numpy().tolist()}
    try:
        bad = InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        await client.infer(InferRequest(model_name="mlp", infer_inputs=[bad]))
        out["grpc"]["bad_shape"] = "accepted"
    except Exception as err:  # the SDK raises grpc.aio.AioRpcError
        out["grpc"]["bad_shape"] = f"{type(err).__name__}: {getattr(err, 'code', lambda: '')()} {err}"
    await client.close()
    return out


async def _ready_or_error(call):
    try:
        return await call
    except Exception as err:
        return f"error: {type(err).__name__}"


if __name__ == "__main__":
    http, grpc, path, out = sys.argv[1:5]
    result = asyncio.run(main(http, grpc, np.load(path)))
    with open(out, "w") as f:
        json.dump(result, f)
