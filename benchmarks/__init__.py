"""Benchmarks: goals measured as ratios in one run (`python -m benchmarks.compression`), not timed tests."""
