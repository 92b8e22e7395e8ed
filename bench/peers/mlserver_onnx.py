"""A minimal MLServer runtime that runs an ONNX model with onnxruntime (1 thread),
so MLServer serves the same `mlp` file Switchyard does. It answers only the
outputs a request asks for, and with SWITCHYARD_PEER_LOG=1 appends each
request's parameters and requested outputs to requests.jsonl in its working
folder (the tests read it to see what reached the upstream)."""

import json
import os

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._log = os.environ.get("SWITCHYARD_PEER_LOG") == "1"
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        if self._log:
            parameters = payload.parameters.model_dump(exclude_none=True) if payload.parameters else {}
            with open("requests.jsonl", "a") as log:
                log.write(json.dumps({"parameters": parameters, "outputs": wanted,
                                      "rows": int(next(iter(feeds.values())).shape[0])}, default=str) + "\n")
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(wanted, results)],
        )
