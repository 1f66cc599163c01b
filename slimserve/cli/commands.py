"""Imports every command module so that each registers itself on the app."""

from slimserve.cli import validate  # noqa: F401
from slimserve.cli import compress  # noqa: F401
from slimserve.cli import run  # noqa: F401
from slimserve.cli import package  # noqa: F401
from slimserve.cli import evaluate  # noqa: F401
