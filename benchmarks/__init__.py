"""Benchmarks: run them as scripts, e.g. `python benchmarks/ingest.py` (see benchmarks/README.md)."""
