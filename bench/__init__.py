"""Benchmarks: each writes its table into BENCHMARKS.md (``python -m bench [NAME ...]``)."""
