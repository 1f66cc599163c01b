"""The compression engine: recipes that turn a trained model into measured ONNX variants.

Entry point: `run_compression(model, base_dir, out_dir, progress=None) -> CompressionReport`
(slimserve.compression.pipeline). Imports torch and onnxruntime: import this package only where
those are installed. The package itself imports nothing, so its modules (`measure`, `search`,
`pipeline`) import each other without a cycle through it; `run_compression` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimserve.compression.pipeline import run_compression

__all__ = ["run_compression"]


def __getattr__(name: str) -> Any:
    if name == "run_compression":
        from slimserve.compression.pipeline import run_compression

        return run_compression
    raise AttributeError(f"module 'slimserve.compression' has no attribute {name!r}")
