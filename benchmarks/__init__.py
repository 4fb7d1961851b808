"""Benchmarks for bbvi: scripts that time bbvi against a hand-written limit, in one process.

Each benchmark is a module runnable as `python -m benchmarks.<name>`, with a `--quick` mode that CI
runs (so the scripts cannot rot) and a full mode whose JSON results land in `benchmarks/results/`.
Timings live here, as ratios measured in one process, never as thresholds in tests.
"""
