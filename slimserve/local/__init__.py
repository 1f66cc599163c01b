"""The embedded runtime: the whole pipeline on one machine with the real Triton, Prometheus and Locust."""
