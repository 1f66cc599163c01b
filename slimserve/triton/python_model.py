"""Triton Python-backend model: runs the variant's `model.onnx` with onnxruntime.

Copied as `model.py` into each version directory when the local Triton (the `nvidia-pytriton` wheel,
which ships only the Python backend) serves the repository. It must stay standalone: the backend stub
imports it outside the slimserve package. Requests that Triton's dynamic batcher groups together are
concatenated on the batch dimension and run as one onnxruntime call, so batching pays off here as it
does in the native onnxruntime backend.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1") or 1)
        options.inter_op_num_threads = 1
        # Spinning pools keep a core busy after every call: on a shared CPU that core is Locust's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def _respond(self, outputs, sizes):
        responses, start = [], 0
        for size in sizes:
            pairs = zip(self.outputs, outputs, strict=True)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[start : start + size])) for n, o in pairs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def _run_one(self, request):
        feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
        try:
            outputs = self.session.run(self.outputs, feed)
        except Exception as exc:  # onnxruntime's errors name the input and the shape it expected
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}"))
        pairs = zip(self.outputs, outputs, strict=True)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in pairs]
        )

    def execute(self, requests):
        if not self.batching or len(requests) == 1:
            return [self._run_one(r) for r in requests]
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        try:
            feed = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            outputs = self.session.run(self.outputs, feed)
        except Exception:  # ragged shapes or one bad request: answer each on its own
            return [self._run_one(r) for r in requests]
        return self._respond(outputs, [f[self.inputs[0]].shape[0] for f in feeds])

    def finalize(self):
        self.session = None
