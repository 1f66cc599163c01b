"""The compression engine: recipes that turn a trained model into measured ONNX variants.

Entry point: `run_compression(model, base_dir, out_dir, progress=None) -> CompressionReport`.
Imports torch and onnxruntime: import this package only where those are installed.
"""

from slimserve.compression.pipeline import run_compression

__all__ = ["run_compression"]
