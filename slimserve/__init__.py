"""slimserve: compress a trained model, serve its variants behind Triton, gate the canary."""

__version__ = "0.1.0"
