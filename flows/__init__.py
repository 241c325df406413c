"""Prefect flows, one per stage, plus ``pipeline``; ``python -m flows`` is the CLI.

Run from the repository root (DVC and Prefect deployments do so).
"""
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
