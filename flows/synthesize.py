"""Stage 1, synthesize: PSF bank (Fourier optics or measured) and UDC pairs per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from tasks.common import fingerprint
from tasks.synthesize import (
    assign_splits,
    synthesize_split,
    write_preview,
    write_psf_bank,
)
from ops.tracking import stage_run
from udcguard.config import load_params
from udcguard.io.atomic import staged_output

SPLITS = ("train", "val", "test")


@flow(name="synthesize")
def synthesize(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    data_dir: str = "data",
    base_dir: str = ".",
) -> dict[str, str]:
    """Write ``<data_dir>/psf`` and ``<data_dir>/udc`` (manifests, pairs, preview).

    ``overrides`` are dotted params keys (``{"dataset.crop_px": 128}``), as `--set`.
    """
    log = get_run_logger()
    params = load_params(params_path, overrides)
    data = Path(data_dir)
    psf_dir, udc_dir = data / "psf", data / "udc"
    with stage_run("synthesize", params, params_path) as run:
        splits = assign_splits(params, base_dir)  # decodes every scene: bad files fail first
        log.info("scenes per split: %s", {k: len(v) for k, v in splits.items()})
        with staged_output(psf_dir, fingerprint(params, "seed", "psf")) as stage:
            names = write_psf_bank(params, str(stage), base_dir)
        log.info("PSF bank: %d PSFs (%s)", len(names), ", ".join(names))
        with staged_output(udc_dir, fingerprint(params, "seed", "psf", "scenes", "formation", "dataset")) as stage:
            manifests = {s: synthesize_split(params, s, splits[s], str(psf_dir), str(stage), base_dir) for s in SPLITS}
            counts = {f"pairs_{s}": _count(manifests[s]) for s in SPLITS}
            write_preview(str(stage), str(psf_dir), params.dataset.preview_rows)
        run.log_metrics(counts | {"psfs": len(names)})
        run.log_image(udc_dir / "preview.png", "preview.png")
        run.log_image(psf_dir / "preview.png", "psf_preview.png")
    return {"psf": str(psf_dir), "udc": str(udc_dir)}


def _count(manifest: str) -> int:
    import json

    return len(json.loads(Path(manifest).read_text())["pairs"])
