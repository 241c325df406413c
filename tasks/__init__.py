"""Thin Prefect tasks: paths in -> udcguard library call -> files out -> small reference out.

Tasks never return tensors or models. ``tracking`` is the only module importing mlflow.
"""
