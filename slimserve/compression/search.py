"""Accuracy-aware search (placeholder until implemented)."""
def run_search(bench, baseline, search):  # type: ignore[no-untyped-def]
    raise NotImplementedError
