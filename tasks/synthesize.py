"""Tasks of the synthesize stage: PSF bank, pairs per split, preview."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import progress
from udcguard.config import Params
from udcguard.degradation.dataset import build_scene_sources, check_scene, scene_pairs
from udcguard.degradation.formation import PSFKernel
from udcguard.degradation.scenes import split_scenes
from udcguard.degradation.synth import plan_split
from udcguard.io.atomic import save_json, save_npy, save_png
from udcguard.io.manifest import MANIFEST_VERSION, load_manifest
from udcguard.optics.bank import build_psf_bank
from udcguard.optics.codes import kernel_codes
from udcguard.viz import hdr_display, image_grid, psf_to_rgb, tonemapped_display


@task(name="psf-bank", cache_policy=NO_CACHE)
def write_psf_bank(params: Params, out_dir: str, base_dir: str = ".") -> list[str]:
    """Simulate/load the PSF bank and its PCA kernel codes into ``out_dir``."""
    out = Path(out_dir)
    entries = build_psf_bank(params.psf, params.seed, Path(base_dir))
    bank = np.stack([e.psf for e in entries])  # (n, K, K, 3)
    kc = kernel_codes(bank, dim=params.psf.code_dim)
    for e in entries:
        save_npy(out / f"{e.name}.npy", e.psf.astype(np.float32))
        save_json(out / f"{e.name}.json", {"name": e.name, **e.meta})
    names = [e.name for e in entries]
    save_npy(out / "codes.npy", kc.codes)
    save_npy(out / "pca_mean.npy", kc.mean.astype(np.float32))
    save_npy(out / "pca_basis.npy", kc.basis.astype(np.float32))
    save_json(out / "codes.json", {"names": names, "dim": params.psf.code_dim,
                                   "explained_variance_ratio": kc.explained_variance_ratio})
    cols = min(len(entries), 6)
    rows = [[psf_to_rgb(e.psf) for e in entries[i : i + cols]] for i in range(0, len(entries), cols)]
    rows[-1] += [np.zeros_like(rows[0][0])] * (cols - len(rows[-1]))
    save_png(out / "preview.png", image_grid(rows, names[:cols] if len(rows) == 1 else [""] * cols))
    return names


@task(name="split-scenes", cache_policy=NO_CACHE)
def assign_splits(params: Params, base_dir: str = ".") -> dict[str, list[str]]:
    """Scene names per split (disjoint, scene groups kept whole), deterministic in the seed.

    Every scene is decoded once here, so that a corrupt or unsupported file stops the stage
    before any output is written.
    """
    sources = build_scene_sources(params.scenes, Path(base_dir))
    bar = progress(len(sources), "check scenes", "scenes")
    for source in sources.values():
        check_scene(source, params.scenes, params.dataset.crop_px)
        bar.update(1)
    bar.close()
    d = params.dataset
    fractions = {s: getattr(d, s).scene_fraction for s in ("train", "val", "test")}
    groups = {name: s.group for name, s in sources.items()}
    return split_scenes(sorted(sources), fractions, params.seed, groups)


@task(name="synthesize-split", cache_policy=NO_CACHE)
def synthesize_split(params: Params, split: str, scenes: list[str], psf_dir: str, out_dir: str, base_dir: str = ".") -> str:
    """Write the pairs of one split and its manifest; resumes pair by pair after a kill."""
    out = Path(out_dir) / split
    names = json.loads((Path(psf_dir) / "codes.json").read_text())["names"]
    psfs = [(n, PSFKernel(np.load(Path(psf_dir) / f"{n}.npy"))) for n in names]  # spectra cached per split
    sources = build_scene_sources(params.scenes, Path(base_dir))
    plans = plan_split(split, scenes, getattr(params.dataset, split).pairs_per_scene)
    todo = [p for p in plans if not (out / "records" / f"{p.id}.json").exists()]
    by_scene = sorted({p.scene for p in todo})
    bar = progress(len(by_scene), f"synthesize {split}", "scenes")
    for scene in by_scene:
        mine = [p for p in plans if p.scene == scene]
        gen = scene_pairs(sources[scene], mine, psfs, seed=params.seed, scenes=params.scenes,
                          dataset=params.dataset, formation=params.formation)
        for plan, gt, lq, rec in gen:
            sha = {"gt": save_npy(out / "gt" / f"{plan.id}.npy", gt),
                   "lq": save_npy(out / "lq" / f"{plan.id}.npy", lq)}
            save_json(out / "records" / f"{plan.id}.json",
                      {**rec, "gt": f"gt/{plan.id}.npy", "lq": f"lq/{plan.id}.npy", "sha256": sha})
        bar.update(1)
    bar.close()
    pairs = [json.loads((out / "records" / f"{p.id}.json").read_text()) for p in plans]
    save_json(out / "manifest.json", {"version": MANIFEST_VERSION, "split": split, "seed": params.seed,
                                      "dtype": params.dataset.dtype, "crop_px": params.dataset.crop_px,
                                      "scenes": sorted(scenes), "groups": sorted({sources[s].group for s in scenes}),
                                      "pairs": pairs})
    load_manifest(out / "manifest.json")  # validates what was written
    return str(out / "manifest.json")


@task(name="preview", cache_policy=NO_CACHE)
def write_preview(udc_dir: str, psf_dir: str, rows: int, split: str = "test") -> str:
    """Grid of scene / PSF / degraded / tone-mapped examples -> ``<udc_dir>/preview.png``."""
    root = Path(udc_dir)
    m = load_manifest(root / split / "manifest.json")
    step = max(1, len(m.pairs) // rows)
    grid = []
    for rec in m.pairs[::step][:rows]:
        gt, lq = np.load(root / split / rec.gt), np.load(root / split / rec.lq)
        psf = np.load(Path(psf_dir) / f"{rec.psf}.npy")
        grid.append([hdr_display(gt), psf_to_rgb(psf), hdr_display(lq), tonemapped_display(gt), tonemapped_display(lq)])
    titles = ["scene (linear)", "PSF (log)", "degraded (linear)", "gt tone-mapped", "input tone-mapped"]
    labels = [f"{r.scene} / {r.psf}" for r in m.pairs[::step][:rows]]
    out = root / "preview.png"
    save_png(out, image_grid(grid, titles, labels))
    return str(out)
