"""vqinc benchmarks: run as modules from the checkout root, e.g. `python -m benchmarks.edits --quick`."""
