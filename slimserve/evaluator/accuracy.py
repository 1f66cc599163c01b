"""Served accuracy: the evaluation set sent through Triton, so the deployed artifact is the one scored.

Every sample goes through the KServe v2 API (tritonclient over HTTP) for the baseline and for the
candidate; the per-sample answers are compared pairwise (`AccuracyEvidence`). With labels `y` the
metric is accuracy; without, it is fidelity: agreement with the served baseline's answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import AccuracyEvidence
from slimserve.triton.process import ServingError

if TYPE_CHECKING:
    import numpy as np

NUMPY_TO_V2 = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
    "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL",
}  # fmt: skip


def load_npz(path: Path, field: str = "spec.data.evaluation") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Input arrays by name, and the labels `y` when present."""
    import numpy as np

    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{field} = {str(path)!r}: not a readable .npz ({exc}); write it with numpy.savez") from None
    labels = arrays.pop("y", None)
    if not arrays:
        raise InvalidInput(f"{field} = {str(path)!r}: no input arrays (only 'y'); add one array per model input")
    lengths = {len(a) for a in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(lengths) != 1:
        raise InvalidInput(f"{field} = {str(path)!r}: arrays have different lengths {sorted(lengths)}; align them")
    return arrays, labels


def _client(url: str) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url.removeprefix("http://").removeprefix("https://"), network_timeout=60)


def check_inputs(model: str, metadata: dict[str, Any], batching: bool, arrays: dict[str, np.ndarray]) -> None:
    """The data's arrays match the served model's inputs by name, dtype and per-sample shape."""
    problems = []
    declared = {i["name"]: i for i in metadata["inputs"]}
    for name in declared.keys() - arrays.keys():
        problems.append(
            f"spec.data.evaluation: no array '{name}' for model '{model}' input '{name}'; "
            f"the .npz holds {sorted(arrays)}: name arrays after the model's inputs"
        )
    for name, array in arrays.items():
        if name not in declared:
            continue
        spec = declared[name]
        want = [int(d) for d in spec["shape"]]
        if batching:
            want = want[1:]
        have = list(array.shape[1:])
        if len(want) != len(have) or any(w not in (-1, h) for w, h in zip(want, have, strict=True)):
            problems.append(
                f"spec.data.evaluation: array '{name}' has per-sample shape {have} but model '{model}' input "
                f"'{name}' expects {want}; reshape the data (or re-export the model) so they agree"
            )
        got = NUMPY_TO_V2.get(str(array.dtype))
        if got != spec["datatype"]:
            problems.append(
                f"spec.data.evaluation: array '{name}' is {array.dtype} ({got}) but model '{model}' input "
                f"'{name}' is {spec['datatype']}; cast the array"
            )
    if problems:
        raise InvalidInput(problems)


def predict(url: str, model: str, arrays: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The model's first output for every sample, served by Triton in batches."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = _client(url)
    try:
        metadata = client.get_model_metadata(model)
        config = client.get_model_config(model)
    except InferenceServerException as exc:
        raise ServingError(f"model '{model}' is not served at {url}: {exc}") from None
    batching = int(config.get("max_batch_size", 0)) > 0
    check_inputs(model, metadata, batching, arrays)
    if batching:
        batch_size = min(batch_size, int(config["max_batch_size"]))
    output = metadata["outputs"][0]["name"]
    count = len(next(iter(arrays.values())))
    results = []
    try:
        for start in range(0, count, batch_size if batching else 1):
            stop = min(start + (batch_size if batching else 1), count)
            inputs = []
            for name, array in arrays.items():
                chunk = np.ascontiguousarray(array[start:stop])
                tensor = httpclient.InferInput(name, list(chunk.shape), NUMPY_TO_V2[str(chunk.dtype)])
                tensor.set_data_from_numpy(chunk, binary_data=True)
                inputs.append(tensor)
            answer = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(output, binary_data=True)])
            results.append(answer.as_numpy(output))
    except InferenceServerException as exc:
        raise ServingError(f"model '{model}' failed on the evaluation set: {exc}") from None
    finally:
        client.close()
    return np.concatenate(results)


def evidence(baseline: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> AccuracyEvidence:
    """Pairwise agreement of two models' outputs (argmax over the last axis) on the same samples."""
    base_pred = baseline.argmax(axis=-1)
    cand_pred = candidate.argmax(axis=-1)
    reference = labels if labels is not None else base_pred
    base_ok = base_pred == reference
    cand_ok = cand_pred == reference
    return AccuracyEvidence(
        metric="accuracy" if labels is not None else "fidelity",
        n=int(len(base_ok)),
        baseline_correct=int(base_ok.sum()),
        candidate_correct=int(cand_ok.sum()),
        baseline_only=int((base_ok & ~cand_ok).sum()),
        candidate_only=int((cand_ok & ~base_ok).sum()),
    )


def served_accuracy(
    url: str, baseline: str, candidate: str, data: Path, candidate_url: str | None = None, batch_size: int = 64
) -> AccuracyEvidence:
    """Score baseline and candidate on the same samples, through the servers, pairwise."""
    arrays, labels = load_npz(data)
    base = predict(url, baseline, arrays, batch_size)
    cand = predict(candidate_url or url, candidate, arrays, batch_size)
    return evidence(base, cand, labels)
