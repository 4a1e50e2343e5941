"""ONNX Runtime: execution providers, session options by row count, and the executor, the one place that
runs graphs.
"""
