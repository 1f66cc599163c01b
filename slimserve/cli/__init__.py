"""The `slimserve` command line."""
