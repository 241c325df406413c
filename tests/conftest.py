"""Test setup: everything local and temporary (Prefect home, MLflow store), no network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="udcguard-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP / 'mlflow.db'}"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("UDCGUARD_PREFECT_IDLE_S", "20")  # shared local Prefect servers of CLI subprocesses exit soon

import copy  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: A tiny but complete params dict: seconds on a CPU.
TINY: dict = {
    "seed": 3,
    "psf": {
        "kernel_size": 15,
        "code_dim": 3,
        "optics": {"focal_length_mm": 4.67, "aperture_mm": 2.0},
        "displays": [
            {"name": "toled", "layout": "toled", "opaque_transmission": 0.6, "variants": 1},
            {"name": "poled", "layout": "poled", "opaque_transmission": 0.7},
        ],
    },
    "scenes": {"photos": True, "wallpapers": "off", "panoramas": "off", "max_side_px": 96},
    "dataset": {
        "crop_px": 32,
        "train": {"scene_fraction": 0.6, "pairs_per_scene": 2},
        "val": {"scene_fraction": 0.2, "pairs_per_scene": 1},
        "test": {"scene_fraction": 0.2, "pairs_per_scene": 1},
        "preview_rows": 2,
    },
    "restorers": {"unet": {"arch": "unet", "size": "tiny"}, "discnet": {"arch": "discnet", "size": "tiny"}},
    "train": {"steps": 6, "batch_size": 4, "crop_px": 32, "checkpoint_every": 3},
    "diffusion": {"unet": "tiny", "num_train_timesteps": 100, "steps": 6, "batch_size": 4, "crop_px": 32,
                 "checkpoint_every": 3},
    "attack": {
        "max_images": 3,
        "batch_size": 2,
        "attacks": {
            "pgd_linf": {"attack": "pgd_linf", "eps": [2, 8], "options": {"steps": 3}},
            "cw_l2": {"attack": "cw_l2", "max_images": 2, "options": {"binary_steps": 2, "steps": 3}},
            "simba": {"attack": "simba", "eps": [4], "max_images": 2, "options": {"iterations": 5}},
        },
    },
    "lpips": {"net": "alex"},
    "purify": {"t_star": 5, "batch_size": 2, "seeds": 2,
               "selection": {"candidates": [0, 3, 5], "images": 2, "attack": "pgd_linf"}},
    "adaptive": {"settings": ["bpda", "eot", "full"], "eps": [8], "eot_samples": 2, "ddim_steps": 2,
                 "max_images": 2},
    "finetune": {"steps": 4, "batch_size": 4, "crop_px": 32, "t_stars": [3, 5], "train_images": 4,
                 "checkpoint_every": 2},
    "evaluate": {"batch_size": 2, "report_examples": 2, "draw_average": "mean"},
    "tracking": {"experiment": "tests"},
}


@pytest.fixture
def tiny() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
