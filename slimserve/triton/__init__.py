"""Serving variants behind Triton: the model repository builder and the local launcher."""
