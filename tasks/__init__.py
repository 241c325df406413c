"""Thin Prefect tasks: paths in -> udcguard library call -> files out -> small reference out.

Tasks never return tensors or models. Services (S3, MLflow, torchrun) live in ``ops``.
"""
