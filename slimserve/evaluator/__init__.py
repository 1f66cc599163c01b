"""Measuring served variants (accuracy, load, Prometheus) and the gate that judges them.

Only `slimserve.evaluator.gate` is pure python; the operator imports it, so it must stay free of
torch, onnxruntime, tritonclient, locust and numpy. The other modules import those lazily.
"""
