"""Served quality: the evaluation set sent through Triton, so the deployed artifact is the one scored.

Every sample goes through the KServe v2 API (tritonclient over HTTP) as its own batch-1 request, the
shape production clients send — so a batch-dependent variant (dynamic int8 computes its activation
scales per call) is scored the way it answers a user, not on batch-32 chunks. The answers of the
baseline and of the candidate are then compared sample by sample with the spec's metric
(`slimserve.evaluator.quality`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.api.spec import Quality
from slimserve.errors import InvalidInput, ServingError
from slimserve.evaluator.gate import QualityEvidence

if TYPE_CHECKING:
    import numpy as np


def load_npz(path: Path, field: str = "spec.data.evaluation") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Input arrays by name, and the labels `y` when present."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
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
    from tritonclient.utils import np_to_triton_dtype

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
        got = np_to_triton_dtype(array.dtype)
        if got != spec["datatype"]:
            problems.append(
                f"spec.data.evaluation: array '{name}' is {array.dtype} ({got}) but model '{model}' input "
                f"'{name}' is {spec['datatype']}; cast the array"
            )
    if problems:
        raise InvalidInput(problems)


def output_names(url: str, model: str) -> list[str]:
    """The served model's output names, in order (one metadata request)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url.removeprefix("http://").removeprefix("https://"), network_timeout=120)
    try:
        return [o["name"] for o in client.get_model_metadata(model)["outputs"]]
    except (InferenceServerException, OSError) as exc:
        raise ServingError(f"model '{model}' is not served at {url}: {exc}") from None
    finally:
        client.close()


def predict(url: str, model: str, arrays: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """One output of the model (`output`, default the first) for every sample, one request per sample."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = httpclient.InferenceServerClient(url.removeprefix("http://").removeprefix("https://"), network_timeout=120)
    try:
        try:
            metadata = client.get_model_metadata(model)
            config = client.get_model_config(model)
        except (InferenceServerException, OSError) as exc:
            raise ServingError(f"model '{model}' is not served at {url}: {exc}") from None
        batching = int(config.get("max_batch_size", 0)) > 0
        check_inputs(model, metadata, batching, arrays)
        names = [o["name"] for o in metadata["outputs"]]
        if output is not None and output not in names:
            raise InvalidInput(
                f"spec.quality.output = {output!r}: model '{model}' has outputs {names}; use one of them"
            )
        wanted = output or names[0]
        count = len(next(iter(arrays.values())))
        results = []
        for i in range(count):
            inputs = []
            for name, array in arrays.items():
                sample = np.ascontiguousarray(array[i : i + 1] if batching else array[i])
                tensor = httpclient.InferInput(name, list(sample.shape), np_to_triton_dtype(sample.dtype))
                tensor.set_data_from_numpy(sample, binary_data=True)
                inputs.append(tensor)
            requested = [httpclient.InferRequestedOutput(wanted, binary_data=True)]
            results.append(client.infer(model, inputs, outputs=requested).as_numpy(wanted))
    except (InferenceServerException, OSError) as exc:
        raise ServingError(f"model '{model}' failed on the evaluation set: {exc}") from None
    finally:
        client.close()
    return np.concatenate(results) if batching else np.stack(results)


def served_quality(
    quality: Quality,
    baseline: np.ndarray,
    candidate: np.ndarray,
    arrays: dict[str, np.ndarray],
    labels: np.ndarray | None,
    base_dir: Path | None = None,
    read: str | None = None,
) -> QualityEvidence:
    """The spec's metric on two models' served outputs, paired sample by sample.

    `read`: the name of the output compared when spec.quality.output is unset (auto's name hints use it).
    """
    from slimserve.evaluator import quality as q

    metric = q.resolve(quality, baseline, labels, quality.output, read)
    custom = q.load_function(metric.function, base_dir) if metric.function else None
    evidence, _, _ = q.compare(metric, baseline, candidate, labels, arrays.get("attention_mask"), custom)
    return evidence


def predict_onnx(path: Path, arrays: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """One output of an ONNX model run in-process (the uncompressed baseline in the evaluator Job)."""
    import numpy as np
    import onnxruntime as ort

    if not path.is_file():
        raise InvalidInput(
            f"--reference-onnx = '{path}': file not found; point it at the compression output's baseline"
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if output is not None and output not in names:
        raise InvalidInput(f"spec.quality.output = {output!r}: the baseline's outputs are {names}; use one of them")
    inputs = [i.name for i in session.get_inputs()]
    feed_names = inputs if len(inputs) > 1 or len(arrays) > 1 else [next(iter(arrays))]
    count = len(next(iter(arrays.values())))
    results = []
    for start in range(0, count, 64):
        feed = {i: arrays[a][start : start + 64] for i, a in zip(inputs, feed_names, strict=True)}
        results.append(session.run([output or names[0]], feed)[0])
    return np.concatenate(results)
