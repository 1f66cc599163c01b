"""slimserve's canary load, for running Locust by hand: `locust -f loadtests/locustfile.py ...`.

The load itself ships inside the package (`slimserve/evaluator/locustfile.py`), so an installed
slimserve (the worker image) has it too; this file only re-exports it.
"""

from slimserve.evaluator.locustfile import *  # noqa: F403
