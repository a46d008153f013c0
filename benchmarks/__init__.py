"""Benchmarks: scripts that print a table of figures and write JSON (see README.md here).

They are not tests: nothing here runs under pytest. Run one with
``./run python -m benchmarks.<name>``.
"""
