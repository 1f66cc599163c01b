"""The CompressedModel operator: `kopf run -m slimserve.operator`.

Importing the package registers the handlers with kopf. It never imports torch, onnxruntime,
tritonclient, locust, `slimserve.compression` or `slimserve.local` (the operator image stays
small; checked by import-linter and tests/kube/test_operator_imports.py).
"""

from slimserve.operator import handlers  # noqa: F401  (registers the kopf handlers)
