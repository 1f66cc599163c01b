"""Imports every command module so that each registers itself on the app."""

from slimserve.cli import (
    compress,  # noqa: F401
    control,  # noqa: F401
    evaluate,  # noqa: F401
    fetch,  # noqa: F401
    package,  # noqa: F401
    run,  # noqa: F401
    validate,  # noqa: F401
)
