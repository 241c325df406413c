"""Benchmarks: each prints a ratio against a reference measured in the same run.

Run them from the repository root as modules, e.g. ``python -m bench.bench_attack``: the root
is then on ``sys.path`` (``tasks`` and ``flows`` import like in the pipeline; ``udcguard`` is installed).
"""
