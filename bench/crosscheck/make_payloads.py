#!/usr/bin/env python3
"""Payloads for the wrk (HTTP JSON) and h2load (gRPC) cross-checks of switchyard-load.
Writes bench/out/wrk_post.lua and bench/out/grpc_body.bin from bench/out/mlp_b1.json."""

import json
import struct
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

OUT = Path(__file__).resolve().parents[1] / "out"
request = json.loads((OUT / "mlp_b1.json").read_text())
body = json.dumps(request)
(OUT / "wrk_post.lua").write_text(
    'wrk.method = "POST"\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
    f"wrk.body = {json.dumps(body)}\n"
)
grpc_request = service_pb2.ModelInferRequest(model_name="mlp")
tensor = grpc_request.inputs.add()
tensor.name, tensor.datatype = "input", "FP32"
tensor.shape.extend([1, 256])
grpc_request.raw_input_contents.append(np.array(request["inputs"][0]["data"], dtype=np.float32).tobytes())
message = grpc_request.SerializeToString()
(OUT / "grpc_body.bin").write_bytes(b"\0" + struct.pack(">I", len(message)) + message)
print("wrote", OUT / "wrk_post.lua", OUT / "grpc_body.bin")
